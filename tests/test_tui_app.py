"""The workbench app end to end on a real rcc-mini session, driven by Pilot: each flow ends by checking
the Session's own state (its ops, nodes, metrics, lock) and, for the main flow, a replay.

These are the app's few real end-to-end tests; what the screens and keys do is tested on a fake
session (tests/test_tui_workbench.py). One rcc-mini session is created headlessly per test run
and copied for each test (creating one costs ~10 s; opening a copy ~4 s). Plans touch one or two
layers so stages take seconds. The command-line wiring (open by name, the latest session, what
quitting prints) and the import budget of the first frame have quick tests at the end.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from tui_pilot import (
    log_text,
    make_app,
    op_kinds,
    plan_sparsity,
    ready,
    running,
    settle,
    state_of,
    tap,
    text_of,
    wait_until,
)

from rcc.session.session import Session

C_FC = "visual.transformer.resblocks.0.mlp.c_fc"
C_PROJ = "visual.transformer.resblocks.0.mlp.c_proj"
SIZE = (120, 40)



# -- opening ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_opening_the_demo_paints_first_then_loads_the_model_in_a_worker(tmp_path):
    directory = tmp_path / "new-session"
    app = make_app(directory, new=True)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert app.main.view is None  # the first frame is up before the model is loaded
        assert app.main.query_one("#layers").loading
        assert "torch" not in app.title
        await ready(pilot)
        session = app.session
        nodes = session.nodes()
        assert [n.op_kind for n in nodes] == ["load_model"] and session.head == nodes[0].id
        assert nodes[0].metrics["val/primary"] > 0.9
        assert op_kinds(session) == ["load_model"]
        tree = app.main.query_one("#layer-tree")
        assert [child.data.tower for child in tree.root.children] == ["vision", "text"]
        assert text_of(app, "#status").endswith("ready")
        assert app.theme == "rcc-dark"
    # Quitting closed the session: its lock is free, and it opens again with the same state.
    with Session.open(directory, device="cpu", load=False) as again:
        assert [n.id for n in again.nodes()] == [nodes[0].id]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_opening_a_locked_session_is_an_error_message_not_a_crash(session_dir):
    holder = Session.open(session_dir, device="cpu", load=False)
    try:
        app = make_app(session_dir)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: not app.jobs.busy, 60, "the open to fail")
            await pilot.pause()
            assert app.session is None
            assert "in use" in text_of(app, "#status")
            assert any("in use" in str(n.message) for n in app._notifications)
            await pilot.press("r")  # no session: refused with a message, no crash
            await pilot.pause()
    finally:
        holder.close()


# -- running ------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.asyncio
async def test_run_a_stage_then_check_out_the_root_and_branch_then_label(session_dir, tmp_path):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await plan_sparsity(pilot, C_FC, "0.5")
        await pilot.press("r")  # run the stage set in the run panel (dare ×1) on the target
        await settle(pilot)
        nodes = app.session.nodes()
        assert [n.op_kind for n in nodes] == ["load_model", "run_stage"]
        stage = nodes[-1]
        assert stage.parent == 1 and app.session.head == stage.id
        assert stage.metrics["size/params"] == nodes[0].metrics["size/params"] - 32768
        assert stage.metrics["val/primary"] > 0.8
        assert app.session.ops()[-1].body["layers"] == [C_FC]
        assert app.main.view.state[C_FC].sparsity == pytest.approx(0.5)
        chart = app.main.query_one("#metric-chart")
        assert chart.points == [(0, nodes[0].metrics["val/primary"]), (1, stage.metrics["val/primary"])]
        assert chart.second_label == "stored bytes"  # one quantity on the right axis: what each node stores
        assert [v for _, v in chart.second_points] == [n.metrics["size/bytes"] for n in nodes]

        # Check out the root from the history graph, then branch from it.
        await pilot.press("2")
        history = app.main.query_one("#history")
        assert history.has_focus and history.selected_node == stage.id
        await pilot.press("down", "enter")  # the root is below its child: newest on top
        await settle(pilot)
        assert app.session.head == 1
        assert op_kinds(app.session)[-1] == "checkout"
        assert app.main.view.state[C_FC].sparsity == 0.0  # the live model went back
        app.main.query_one("#layer-tree").focus()
        await pilot.press("r")
        await settle(pilot)
        nodes = app.session.nodes()
        assert len(nodes) == 3 and nodes[-1].parent == 1  # a second child of the root: a branch
        assert sorted(n.id for n in nodes if n.parent == 1) == [stage.id, nodes[-1].id]

        # Label the first branch through the label dialog.
        await pilot.press("2")
        history.select_node(stage.id)
        await pilot.press("l")
        await pilot.pause()
        from rcc_tui.screens.label_screen import LabelScreen

        assert isinstance(app.screen, LabelScreen)
        await pilot.press(*"dare-50", "tab", *"first try", "enter")
        await settle(pilot)
        labelled = next(n for n in app.session.nodes() if n.id == stage.id)
        assert (labelled.label, labelled.note) == ("dare-50", "first try")
        assert op_kinds(app.session) == ["load_model", "edit_layers", "run_stage", "checkout", "run_stage", "label"]

    # What was done in the app replays headlessly to the same metrics.
    from rcc.cli.main import main

    assert main(["replay", str(session_dir), "--out", str(tmp_path / "replayed"), "--verify", "--device", "cpu"]) == 0
    with Session.open(tmp_path / "replayed", read_only=True) as replayed, \
            Session.open(session_dir, read_only=True) as original:
        assert [(n.parent, n.op_kind, n.label, n.metrics) for n in replayed.nodes()] == \
               [(n.parent, n.op_kind, n.label, n.metrics) for n in original.nodes()]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_run_the_cascade_to_completion_with_every_phase_on_the_status_bar(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        assert len(app.main.view.layers) == 62 and app.session.head == 1  # opened at its head
        await plan_sparsity(pilot, C_PROJ, "0.3")
        await pilot.press("c")
        await wait_until(pilot, lambda: running(app), 10, "the cascade to start")
        lines = []
        while app.jobs.busy:  # what the status bar says, every 50 ms, until the cascade ends
            lines.append(text_of(app, "#status"))
            await pilot.pause(0.05)
        await settle(pilot)
        shown = [line for line in dict.fromkeys(lines) if "x cancels" in line]
        # Every line while it ran: a bar and a percentage first (visible at 80 columns), then the phase.
        assert shown and all(line[:10].strip("█░") == "" and line[10:16].strip().endswith(("%", "--"))
                             for line in shown)
        phases = [phase for phase in ("calibration", "evaluate", "saving") if any(f"· {phase} · " in line
                                                                                 for line in shown)]
        assert phases == ["calibration", "evaluate", "saving"], shown
        assert any("·   0% " in line or "  0% cascade" in line for line in shown)  # from the phase's start
        nodes = app.session.nodes()
        assert [n.op_kind for n in nodes] == ["load_model", "run_cascade"]
        record = app.session.ops()[-1]
        assert record.kind == "run_cascade" and record.body["layers"] == [C_PROJ]
        assert record.body["threshold"] == 0.95
        assert record.result["attempts"]  # one per stage at least
        assert nodes[-1].metrics["size/bytes"] < nodes[0].metrics["size/bytes"]
        chart = app.main.query_one("#metric-chart")
        assert len(chart.points) >= 1 + len(record.result["attempts"])  # every attempt is a chart point
        assert chart.second_label == "stored bytes" and chart.second_points[-1][1] == nodes[-1].metrics["size/bytes"]
        assert "done" in text_of(app, "#run-status")
        assert f"→ node 2: val {nodes[-1].metrics['val/primary']:.4f}" in log_text(app)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_cancel_a_run_leaves_the_session_as_it_was_and_clears_the_bar(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await plan_sparsity(pilot, "tower:text kind:mlp_in", "0.5")
        before = state_of(app.session)
        await pilot.press("c")
        await wait_until(pilot, lambda: running(app) and "%" in text_of(app, "#status"), 30, "the first phase")
        await tap(pilot, "x")
        await settle(pilot)
        assert state_of(app.session) == before  # same ops, nodes, head and plan
        assert any("cancelled" in str(n.message) for n in app._notifications)
        assert "cancelled" in text_of(app, "#run-status")
        status = app.main.query_one("#status")
        assert status.fraction is None and status.text.startswith("cancelled: cascade ≥0.95 on 6 layers ·")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_quitting_while_a_run_goes_asks_then_cancels_and_closes_the_session(session_dir):
    app = make_app(session_dir)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await plan_sparsity(pilot, "tower:text kind:mlp_in", "0.5")
        before = state_of(app.session)
        await pilot.press("c")
        await wait_until(pilot, lambda: running(app), 10, "the cascade to start")
        from rcc_tui.screens.quit_screen import QuitScreen

        await tap(pilot, "q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the question")
        await tap(pilot, "n")  # stay: the run goes on
        await wait_until(pilot, lambda: not isinstance(app.screen, QuitScreen), 10, "the question to close")
        assert running(app)
        await tap(pilot, "q")
        await wait_until(pilot, lambda: isinstance(app.screen, QuitScreen), 10, "the question")
        await tap(pilot, "y")
        # Until the app's own shutdown is over (leaving run_test earlier would start a second one).
        await wait_until(pilot, lambda: app._task is not None and app._task.done(), 120, "the app to exit")
        assert app._exit and app.session is None
    # The lock is released and nothing of the cancelled cascade was recorded.
    with Session.open(session_dir, device="cpu", load=False) as again:
        assert state_of(again) == before


def test_the_app_commands_parse():
    from rcc_tui.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["open", "S", "--device", "cuda:0", "--theme", "rcc-light", "--keymap", "k.toml"])
    assert (args.session, args.device, args.theme, args.keymap) == ("S", "cuda:0", "rcc-light", "k.toml")
    args = parser.parse_args(["new"])
    assert (args.model, args.data, args.session, args.device, args.theme) == ("rcc-mini", "digits", None, "auto", None)
    args = parser.parse_args(["serve"])
    assert (args.command, args.host, args.port, args.serve_command) == ("serve", "127.0.0.1", 8000, None)


def test_no_command_opens_a_new_demo_session_and_options_pass_through(monkeypatch, tmp_path):
    from rcc_tui.main import main

    calls = []
    monkeypatch.setenv("RCC_SESSIONS_DIR", str(tmp_path / "empty-home"))
    monkeypatch.setattr("rcc_tui.cli._run_app", lambda *args: calls.append(args) or 0)
    assert main([]) == 0  # no demo session yet: a new one
    assert calls[-1] == (None, True, "rcc-mini", "digits", "auto", None, None)
    assert main(["new", "--model", "open_clip:ViT-B-32", "--data", "digits", "--session", str(tmp_path / "s"),
                 "--device", "cpu", "--theme", "rcc-ansi", "--keymap", "k.toml"]) == 0
    assert calls[-1] == (str(tmp_path / "s"), True, "open_clip:ViT-B-32", "digits", "cpu", "rcc-ansi", "k.toml")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "session.db").touch()
    assert main(["open", str(tmp_path / "old"), "--device", "cuda:0"]) == 0
    assert calls[-1][:2] == (str(tmp_path / "old"), False) and calls[-1][4] == "cuda:0"


def _entry(path, model="rcc-mini"):
    from rcc.services.sessions import SessionEntry

    return SessionEntry(name=path.name, path=path, model=model, data="digits", nodes=3, head=3, head_eval=0.97,
                        head_params=1, last_change=1_700_000_000.0)


def test_rcc_tui_alone_offers_the_latest_demo_session_before_making_a_new_one(monkeypatch, tmp_path):
    from rcc_tui.main import main

    calls, questions, answers = [], [], []
    latest = _entry(tmp_path / "20250101-101010")
    monkeypatch.setattr("rcc_tui.cli._run_app", lambda *args: calls.append(args) or 0)
    monkeypatch.setattr("rcc.services.sessions.latest_session", lambda root=None, demo_only=False: latest)
    monkeypatch.setattr("rcc_tui.cli.ask", lambda question: questions.append(question) or answers.pop(0))
    answers[:] = [True, False, None]
    assert main([]) == 0  # yes: the latest demo session, reopened
    assert calls[-1][:2] == (str(latest.path), False)
    assert questions[-1].startswith("Reopen the latest demo session, 20250101-101010 (rcc-mini on digits, 3 nodes")
    assert main([]) == 0 and calls[-1][:2] == (None, True)  # no: a new session
    assert main([]) == 0 and calls[-1][:2] == (None, True)  # no terminal to ask on: a new one, as before


def test_open_takes_a_name_from_session_ls_a_path_or_nothing_then_asks(monkeypatch, tmp_path, capsys):
    from rcc_tui.main import main

    home = tmp_path / "home"
    (home / "20250101-101010").mkdir(parents=True)
    (home / "20250101-101010" / "session.db").touch()
    monkeypatch.setenv("RCC_SESSIONS_DIR", str(home))
    calls, answers = [], []
    monkeypatch.setattr("rcc_tui.cli._run_app", lambda *args: calls.append(args) or 0)
    assert main(["open", "20250101-101010"]) == 0  # the name `rcc-tui session ls` prints
    assert calls[-1][:2] == (str(home / "20250101-101010"), False)
    assert main(["open", "no-such-session"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-session' is not a session" in err and "20250101-101010" in err and err.count("\n") == 1

    latest = _entry(home / "20250101-101010", model="open_clip:ViT-B-32")
    monkeypatch.setattr("rcc.services.sessions.latest_session", lambda root=None, demo_only=False: latest)
    monkeypatch.setattr("rcc_tui.cli.ask", lambda question: answers.pop(0))
    answers[:] = [True, False, None]
    assert main(["open"]) == 0 and calls[-1][:2] == (str(latest.path), False)  # yes
    count = len(calls)
    assert main(["open"]) == 0 and len(calls) == count  # no: nothing opens
    assert main(["open"]) == 2  # no terminal to ask on: one line naming the latest
    assert "no session given and no terminal to ask on" in capsys.readouterr().err


def test_quitting_prints_where_the_session_is_and_how_to_reopen_it(monkeypatch, tmp_path, capsys):
    from rcc_tui import cli

    home = tmp_path / "home"
    monkeypatch.setenv("RCC_SESSIONS_DIR", str(home))
    for directory, word in ((home / "20250101-101010", "20250101-101010"),
                            (tmp_path / "my session", f"'{tmp_path / 'my session'}'")):
        def run(app, directory=directory):
            app.opened_directory = str(directory)

        monkeypatch.setattr("rcc_tui.app.RccApp.run", run)
        assert cli._run_app(str(directory), False, "rcc-mini", "digits", "cpu", None, None) == 0
        out = capsys.readouterr().out
        assert out == f"rcc-tui: session {directory}\nreopen it with: rcc-tui open {word}\n"


def test_open_and_new_refuse_bad_directories_with_exit_2(tmp_path, capsys):
    from rcc_tui.main import main

    assert main(["open", str(tmp_path)]) == 2
    assert "is not a session" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["new", "--session", str(tmp_path)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_help_and_the_first_frame_import_nothing_heavy():
    """`rcc-tui --help` loads neither Textual nor torch; the app module loads Textual but no ML library."""
    script = (
        "import sys\n"
        "from rcc_tui.main import build_parser\n"
        "build_parser().format_help()\n"
        "print(sorted(m for m in ('textual', 'torch') if m in sys.modules))\n"
        "import rcc_tui.app\n"
        "print(sorted(m for m in ('torch', 'transformers', 'open_clip', 'rcc.session.session') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["[]", "[]"]
