"""Recovery training in the workbench, driven by Pilot: the Train panel builds a ``Train`` op,
the chart gets every step's loss and each evaluation's accuracy, bad values are refused inline,
and a cancelled run leaves the session as it was. Each flow ends by checking the Session itself.

One rcc-mini session with one compressed node (DARE on one layer, applied headlessly) is made
per module and copied for each test; training runs a handful of small batches.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from tui_pilot import make_app, ready, settle, state_of, type_into, wait_until

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
    await pilot.press("5")
    await pilot.pause()


async def fill_train_panel(pilot, **fields: str) -> None:
    for name, text in fields.items():
        await type_into(pilot, f"#train-{name.replace('_', '-')}", text)


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
        await wait_until(pilot, lambda: app.main.runner.running, 10, "training to start")
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

        log = [str(line.text) for line in app.main.query_one("#log").lines]
        losses = record.result["losses"]
        assert any(f"loss {losses[0]:.4f} → {losses[-1]:.4f} over 6 steps" in line for line in log)
        assert any(f"→ node {new.id}, val {new.metrics['val/primary']:.2%}" in line for line in log)
        assert "done" in str(app.main.query_one("#train-status").render())
        assert "Train (recovery)" in [name for name, _, _ in app.main.commands()]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_bad_training_values_are_refused_inline_and_nothing_runs(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        before = state_of(app.session)
        await open_train_tab(pilot)
        panel = app.main.query_one("#train-panel")
        for fields, named in (({"steps": "0"}, "steps 0"), ({"steps": "6", "lr": "abc"}, "lr 'abc'"),
                              ({"lr": "1e-4", "batch": "1"}, "batch_size 1"),
                              ({"batch": "8", "attention": "-1"}, "attention_weight -1.0"),
                              ({"attention": "0", "teacher": "99"}, "teacher node 99")):
            await fill_train_panel(pilot, **fields)
            await pilot.click("#train")
            await pilot.pause(0.2)
            assert named in panel.error and "allowed" in panel.error and "\n" not in panel.error
            assert panel.query_one("#train-error").has_class("error")
            assert not app.main.runner.busy
        app.main.query_one("#layer-tree").focus()
        await pilot.press("T")  # the key builds the same op from the same fields: refused the same way
        await pilot.pause(0.2)
        assert "teacher node 99" in panel.error and not app.main.runner.busy
        assert state_of(app.session) == before  # no op recorded, no node made


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


# -- quick: the worker bridge --------------------------------------------------------------------

@pytest.mark.asyncio
async def test_loss_events_are_never_dropped_and_arrive_batched_in_order():
    from textual.app import App
    from textual.message import Message

    from rcc.session.progress import OpProgress
    from rcc_tui.workers import OpProgressed, OpRunner

    class Done(Message):
        pass

    class Sink(App):
        def __init__(self) -> None:
            super().__init__()
            self.got: list[Message] = []

        def on_op_progressed(self, message) -> None:
            self.got.append(message)

        def on_done(self, message) -> None:
            self.got.append(message)

    steps = 1000

    def job(progress, cancel):
        progress(OpProgress(op="train", phase="teacher", detail="node 1"))
        for step in range(1, steps + 1):  # a fast run: far more steps than a screen can draw one by one
            progress(OpProgress(op="train", phase="train", done=step, total=steps, loss=1.0 / step))
            if step % 250 == 0:
                progress(OpProgress(op="train", phase="train", done=step, total=steps, metric=step / steps))
            if step % 400 == 0:
                time.sleep(0.15)  # let the timer deliver a few ticks
        progress(OpProgress(op="evaluate", phase="evaluate"))
        return Done()

    app = Sink()
    async with app.run_test() as pilot:
        runner = OpRunner(app)
        runner.run("a fast training job", job)
        await asyncio.wait_for(runner.wait(), 30)
        await pilot.pause()
    messages = [m for m in app.got if isinstance(m, OpProgressed)]
    events = [event for m in messages for event in m.events]
    assert [e.done for e in events if e.loss is not None] == list(range(1, steps + 1))
    assert [e.loss for e in events if e.loss is not None] == [1.0 / s for s in range(1, steps + 1)]
    # Each accuracy point comes right after the loss of the step it evaluated.
    order = [(e.done, "metric" if e.metric is not None else "loss") for e in events
             if e.loss is not None or e.metric is not None]
    for step in (250, 500, 750, 1000):
        assert order[order.index((step, "loss")) + 1] == (step, "metric")
    batches = [m for m in messages if m.progress.loss is not None]
    assert len(batches) < 50  # one message per run of steps within a tick, not one per step
    assert all(m.progress is m.events[-1] for m in messages)
    assert isinstance(app.got[-1], Done)


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
