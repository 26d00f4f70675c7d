"""Recovery training in the workbench, driven by Pilot: the Train panel builds a ``Train`` op,
the chart gets every step's loss and each evaluation's accuracy, bad values are refused inline,
and a cancelled run leaves the session as it was. Each flow ends by checking the Session itself.

One rcc-mini session with one compressed node (DARE on one layer, applied headlessly) is made
per module and copied for each test; training runs a handful of small batches. The refusals of
bad values are the panel's own (no training runs): they are tested on a fake session.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_session import fake_app
from tui_pilot import log_text, make_app, ready, running, settle, state_of, wait_until

from rcc.session import ops as O
from rcc.session.session import Session

C_FC = "visual.transformer.resblocks.0.mlp.c_fc"
SIZE = (120, 40)


@pytest.fixture(scope="module")
def demo_session(tmp_path_factory) -> Path:
    """rcc-mini + digits: root (1) → DARE at 50 % on one layer (2), made once, never opened for writing."""
    directory = tmp_path_factory.mktemp("demo") / "session"
    with Session.create(directory, device="cpu") as session:
        session.apply(O.EditLayers(layers=(C_FC,), settings={"sparsity": 0.5}))
        session.apply(O.RunStage(stage="dare", layers=(C_FC,)))
    return directory


async def open_train_tab(pilot) -> None:
    pilot.app.main.query_one("#layer-tree").focus()
    await pilot.press("4")  # the Train tab, the fourth
    await pilot.pause()


async def fill_train_panel(pilot, **fields: str) -> None:
    """Put ``fields`` in the panel's inputs at once (typing itself is tested on the editor)."""
    for name, text in fields.items():
        pilot.app.main.query_one(f"#train-{name.replace('_', '-')}").value = text
    await pilot.pause()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_train_from_the_panel_puts_every_loss_and_each_eval_on_the_chart(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        session = app.session
        parent = session.head
        assert [n.op_kind for n in session.nodes()][-1] == "run_stage"
        await open_train_tab(pilot)
        assert app.main.query_one("#tabs").active == "tab-train"
        await fill_train_panel(pilot, steps="6", eval_every="3", batch="8", lr="1e-4", attention="0.5")
        await pilot.click("#train")
        await wait_until(pilot, lambda: running(app), 10, "training to start")
        assert app.main.check_action("train", ()) is None  # dimmed while it runs
        await settle(pilot)

        nodes = {node.id: node for node in session.nodes()}
        new = nodes[session.head]
        assert new.op_kind == "train" and new.parent == parent
        record = session.ops()[-1]
        assert record.kind == "train" and O.op_from_dict(record.body).steps == 6
        assert record.body["eval_every"] == 3 and record.body["teacher"] is None
        assert record.body["attention_weight"] == 0.5  # attention transfer on the vision blocks
        # Pruning masks and structure survived: the new node stores as many numbers as its parent.
        assert new.metrics["size/params"] == nodes[parent].metrics["size/params"]
        assert session.graph.state(new.id).structure == session.graph.state(parent).structure

        chart = app.main.query_one("#metric-chart")
        assert chart.second_label == "loss"
        assert [step for step, _ in chart.second_points] == [1, 2, 3, 4, 5, 6]
        assert [loss for _, loss in chart.second_points] == pytest.approx(record.result["losses"])
        evals = [tuple(point) for point in record.result["evals"]]
        assert len(evals) >= 2 and set(evals) <= set(chart.points)  # each eval at the step it followed
        assert chart.points[0] == (0, pytest.approx(nodes[parent].metrics["val/primary"]))

        log = log_text(app)
        losses = record.result["losses"]
        assert f"loss {losses[0]:.4f} → {losses[-1]:.4f} over 6 steps" in log
        assert f"→ node {new.id}: val {new.metrics['val/primary']:.4f}" in log
        assert "done" in str(app.main.query_one("#train-status").render())
        assert "Train (recovery)" in [name for name, _, _ in app.main.commands()]


@pytest.mark.asyncio
async def test_bad_training_values_are_refused_inline_and_nothing_runs(tmp_path):
    app, session = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await open_train_tab(pilot)
        panel = app.main.query_one("#train-panel")
        for fields, named in (({"steps": "0"}, "steps 0"), ({"steps": "6", "lr": "abc"}, "lr 'abc'"),
                              ({"lr": "1e-4", "batch": "1"}, "batch_size 1"),
                              ({"batch": "8", "attention": "-1"}, "attention_weight -1.0"),
                              ({"attention": "0", "teacher": "99"}, "teacher node 99")):
            await fill_train_panel(pilot, **fields)
            await pilot.click("#train")
            await pilot.pause(0.1)
            assert named in panel.error and "allowed" in panel.error and "\n" not in panel.error
            assert panel.query_one("#train-error").has_class("error")
            assert not app.jobs.busy
        app.main.query_one("#layer-tree").focus()
        await pilot.press("T")  # the key builds the same op from the same fields: refused the same way
        await pilot.pause(0.1)
        assert "teacher node 99" in panel.error and not app.jobs.busy
        assert session.applied == []  # no op, no node


@pytest.mark.slow
@pytest.mark.asyncio
async def test_cancel_during_training_leaves_the_session_as_it_was(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        before = state_of(app.session)
        await open_train_tab(pilot)
        await fill_train_panel(pilot, steps="500", eval_every="", batch="8", lr="1e-4")
        app.main.query_one("#layer-tree").focus()
        await pilot.press("T")
        chart = app.main.query_one("#metric-chart")
        await wait_until(pilot, lambda: len(chart.second_points) >= 1, 120, "the first training step")
        app.main.action_cancel()
        await settle(pilot)
        assert state_of(app.session) == before  # same ops, nodes, head and plan
        assert any("cancelled" in str(n.message) for n in app._notifications)
        assert "cancelled" in str(app.main.query_one("#train-status").render())
        assert not app.main.query_one("#train").disabled  # ready for another run


# -- quick: the chart -----------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_a_batch_of_losses_is_one_chart_redraw_and_the_loss_axis_spans_every_step():
    from textual.app import App, ComposeResult

    from rcc_tui.widgets.charts import MetricChart

    class ChartApp(App):
        def compose(self) -> ComposeResult:
            yield MetricChart()

    app = ChartApp()
    async with app.run_test(size=(80, 24)) as pilot:
        chart = app.query_one(MetricChart)
        chart.start_run("train node 2 from the root, 1000 steps", second_label="loss")
        chart.add_point(0, 0.95)  # before training: one accuracy point at step 0
        await pilot.pause()
        redraws = []
        original = chart.refresh
        chart.refresh = lambda *args, **kwargs: redraws.append(1) or original(*args, **kwargs)
        chart.add_second_points((step, 2.0 / step) for step in range(1, 1001))
        assert len(redraws) == 1 and len(chart.second_points) == 1000
        chart.refresh = original
        text = chart.render().plain
        assert "loss" in text and "no points yet" not in text
        assert "1000" in text  # the step axis reaches the last loss, not only the last accuracy point
