"""The main screen: layer tree (left); editor, run panel, history and charts (tabs); log; status bar.

The screen owns the open session. Widgets only ask (messages); the screen turns each request
into a job for the app's runner (``app.jobs``): one op, a sequence of ops, a scan. Panels,
the status bar and the chart follow the runner's messages themselves; the screen redraws every
widget from the ``SessionView`` a job read after its ops, logs what each op did (in the engine's
words, ``rcc.services.outcomes``) and keeps the keys' enabled state. The session is never read
on the main thread while a job may be changing it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Input, RichLog, TabbedContent, TabPane, Tree

from rcc_tui.sensitivity import SensitivityRead, TreeSensitivity
from rcc_tui.session_jobs import OpsApplied, ScanStored, SessionOpened
from rcc_tui.sizes import bytes_text
from rcc_tui.widgets.charts import MetricChart, ParetoChart
from rcc_tui.widgets.history_view import HistoryView
from rcc_tui.widgets.layer_editor import LayerEditor
from rcc_tui.widgets.layer_tree import LayerPanel, LayerTree
from rcc_tui.widgets.node_details import NodeDetails
from rcc_tui.widgets.run_panel import RunPanel
from rcc_tui.widgets.status_bar import StatusBar
from rcc_tui.widgets.train_panel import TrainPanel
from rcc_tui.workers import SESSION, JobFailed, JobFinished, JobProgressed, JobStarted, describe_event

if TYPE_CHECKING:
    from rcc.session.ops import Op
    from rcc_tui.session_view import SessionView
    from rcc_tui.workbench_session import WorkbenchSession
    from rcc_tui.workers import Job

TABS = {"compress": "tab-compress", "history": "tab-history", "charts": "tab-charts", "train": "tab-train"}
NOTIFY_AFTER = 2.0  # seconds: an op that took longer says it is done in a notification too


class MainScreen(Screen):
    """The workbench."""

    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (110, "-wide"), (170, "-wider")]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (34, "-tall")]

    # One key, one meaning on this screen (tests/test_tui_keys.py checks it); listed on the help
    # screen (?) and in the README.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "run_stage", "Stage", id="rcc.run_stage"),
        Binding("c", "run_cascade", "Cascade", id="rcc.run_cascade"),
        Binding("x", "cancel", "Cancel", id="rcc.cancel"),
        Binding("a", "apply_edit", "Apply", id="rcc.apply_edit"),
        Binding("e", "focus_editor", "Edit", id="rcc.focus_editor"),
        Binding("E", "evaluate", "Evaluate (test)", id="rcc.evaluate", show=False),
        Binding("slash", "select_pattern", "Pattern", id="rcc.select_pattern"),
        Binding("t", "focus_tree", "Tree", id="rcc.focus_tree", show=False),
        Binding("escape", "focus_tree", "Tree", id="rcc.escape", show=False),
        Binding("1", "show_tab('compress')", "Compress tab", id="rcc.tab_compress", show=False),
        Binding("2", "show_tab('history')", "History tab", id="rcc.tab_history", show=False),
        Binding("3", "show_tab('charts')", "Charts tab", id="rcc.tab_charts", show=False),
        Binding("4", "show_tab('train')", "Train tab", id="rcc.tab_train", show=False),
        Binding("L", "focus_log", "Log", id="rcc.focus_log", show=False),
        Binding("T", "train", "Train", id="rcc.train"),  # shift+t: t is the tree
        # v: "view sensitivity"; s is the search, ctrl+s is XOFF in terminals.
        Binding("v", "scan_sensitivity", "Sensitivity", id="rcc.sensitivity", show=False),
        Binding("s", "search", "Search", id="rcc.search"),  # the Optuna search screen
    ]

    def __init__(self) -> None:
        super().__init__(id="main")
        self.session: WorkbenchSession | None = None
        self.view: SessionView | None = None
        self.targets: tuple[str, ...] = ()
        self.targets_description = "no layer"
        self._shutting_down = False
        self.sensitivity: TreeSensitivity | None = None  # what the tree's colours show

    @property
    def jobs(self):
        return self.app.jobs  # type: ignore[attr-defined]

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        with Horizontal(id="body"):
            yield LayerPanel(id="layers")
            with Vertical(id="right"):
                with TabbedContent(id="tabs", initial=TABS["compress"]):
                    with TabPane("Compress", id=TABS["compress"]), VerticalScroll(id="compress"):
                        yield LayerEditor(id="editor")
                        yield RunPanel(id="run")
                    with TabPane("History", id=TABS["history"]), Horizontal(id="history-pane"):
                        with Vertical(id="history-column"):
                            yield HistoryView(id="history")
                            yield NodeDetails(id="node-details")
                        yield ParetoChart(id="pareto")
                    with TabPane("Charts", id=TABS["charts"]):
                        yield MetricChart(id="metric-chart")
                    with TabPane("Train", id=TABS["train"]), VerticalScroll(id="train-pane"):
                        yield TrainPanel(id="train-panel")
                yield RichLog(id="log", wrap=True, markup=False, highlight=False, max_lines=2000)
        yield StatusBar("starting…", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.jobs.subscribe(self)
        self.query_one("#layers").border_title = "layers"
        self.query_one("#log").border_title = "log"
        self.query_one("#layers").loading = True
        self.query_one("#editor", LayerEditor).disabled = True
        self.query_one(LayerTree).focus()
        # The model loads after the first frame is on screen.
        self.call_after_refresh(self.open_session)

    # -- opening and closing ---------------------------------------------------------------
    def open_session(self) -> None:
        from rcc_tui.session_jobs import open_job

        app = self.app
        self.log_line(app.opening_text)  # type: ignore[attr-defined]
        self.jobs.start(open_job(app.session_factory, app.opening_title))  # type: ignore[attr-defined]

    def close_session(self) -> None:
        """Close the session (releases its lock); once, and only when no job holds it."""
        if self.session is not None and self.jobs.session_job is None:
            self.session.close()
            self.session = None
        self._shutting_down = True

    async def shut_down(self) -> None:
        """Cancel whatever runs, wait for it to stop, close the session."""
        job = self.jobs.session_job
        if job is not None and self.jobs.cancel(job):
            self.log_line("cancelling before quitting…")
            self.set_status(f"quitting: cancelling {job.title} (stops at the next layer or batch)…")
        await self.jobs.wait()
        self.close_session()

    def on_unmount(self) -> None:
        # The app is going away without shut_down (e.g. a test ending): never leave the lock held.
        session, self.session = self.session, None
        self._shutting_down = True
        self.jobs.close(then=session.close if session is not None else None)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def _deterministic(self) -> bool:
        return bool(getattr(self.app, "deterministic", False))

    def _path(self, directory: str) -> str:
        from pathlib import Path

        return Path(directory).name if self._deterministic else directory

    def log_line(self, text: str) -> None:
        stamp = "--:--:--" if self._deterministic else time.strftime("%H:%M:%S")
        self.query_one("#log", RichLog).write(Text(f"{stamp} {text}"))

    def set_status(self, text: str | Text) -> None:
        self.query_one(StatusBar).show(text)

    def idle_status(self, first: str = "") -> None:
        """The session's state on the status bar (after ``first``, e.g. how the last job ended)."""
        view = self.view
        if view is None:
            return
        node = view.head_node
        parts = [first] if first else []
        parts += [f"{view.model} · {view.data}", f"node {view.head} of {len(view.nodes)}"]
        if node is not None:
            metric = node.eval_metric
            if metric is not None:
                parts.append(f"{node.eval_split} {metric:.2%}")
            parts.append(f"{bytes_text(node.metrics.get('size/bytes'))} stored")
            if node.label:
                parts.append(f"“{node.label}”")
        self.set_status(" · ".join(parts) + " · ready")

    def start(self, op: Op, title: str | None = None, origin: object | None = None) -> bool:
        """Apply ``op`` as a job, unless something holds the session already or none is open."""
        from rcc_tui.session_jobs import op_job

        return self.start_job(lambda session, view: op_job(session, op, title or op.kind.replace("_", " "), view,
                                                           origin))

    def start_job(self, make: Any) -> bool:
        """Start ``make(session, view) -> Job`` on the session lane, or say why not."""
        if self.session is None or self.view is None:
            self.app.notify("the session is not open yet", severity="warning")
            return False
        running = self.jobs.session_job
        if running is not None:
            self.app.notify(f"{running.title} is running; wait for it, or cancel it (x)", severity="warning")
            return False
        self.jobs.start(make(self.session, self.view))
        return True

    def refresh_view(self, view: SessionView) -> None:
        """Redraw every widget from ``view``."""
        moved = self.view is None or self.view.head != view.head
        self.view = view
        tree = self.query_one(LayerTree)
        tree.show(view.layers, view.state, view.plan)
        history = self.query_one(HistoryView)
        history.show(view.nodes, view.head, view.test_split)
        if moved and view.head is not None:
            history.select_node(view.head)  # the cursor follows a new or checked-out node
        if moved:
            self.jobs.start(self._sensitivity_read(view))
        self.query_one(ParetoChart).show(view.nodes, view.head)
        self.query_one(TrainPanel).set_nodes(tuple(node.id for node in view.nodes), view.head)
        self._show_details(history.selected_node)
        self._load_editor()
        self.idle_status()

    def _show_details(self, node_id: int | None) -> None:
        view = self.view
        if view is None:
            return
        node = view.node(node_id)
        self.query_one(NodeDetails).show(node, view.parent_of(node), view.eval_split, view.test_split)

    def _model_bytes(self) -> float | None:
        node = self.view.head_node if self.view else None
        return None if node is None else node.metrics.get("size/bytes")

    def _load_editor(self) -> None:
        if self.view is None:
            return
        self.query_one(LayerEditor).load(self.view.layers, self.view.plan, self.targets, self.targets_description,
                                         self.view.state, self._model_bytes())
        self.query_one(RunPanel).set_targets(self.targets, self.targets_description)

    # -- the runner's messages -------------------------------------------------------------
    def on_job_started(self, message: JobStarted) -> None:
        if message.job.lane != SESSION:
            return
        self.refresh_bindings()  # Cancel on, Stage / Cascade / Apply dimmed
        self.app.sub_title = message.job.title
        if message.job.op is not None:
            self.log_line(f"▶ {message.job.title}")

    def on_job_progressed(self, message: JobProgressed) -> None:
        event = message.event
        if message.job.lane == SESSION and getattr(event, "metric", None) is not None:
            for point in message.events:
                if point.metric is not None:
                    self.log_line(f"  {describe_event(point, message.job.eval_split)}")  # an evaluated attempt or step

    def on_job_finished(self, message: JobFinished) -> None:
        result = message.result
        if isinstance(result, SensitivityRead):
            self._sensitivity_read_done(result)
            return
        if message.job.lane != SESSION:
            return
        self.refresh_bindings()  # the job has ended before its last message is delivered
        self.app.sub_title = ""
        if isinstance(result, SessionOpened):
            self._session_opened(result)
        elif isinstance(result, OpsApplied):
            self._ops_applied(message.job, result)
        elif isinstance(result, ScanStored):
            self._scan_stored(message.job, result)

    def on_job_failed(self, message: JobFailed) -> None:
        if message.job.lane != SESSION:
            return
        self.refresh_bindings()
        self.app.sub_title = ""
        if message.view is not None:  # a sequence moved the head before it failed
            self.refresh_view(message.view)
        text = message.message
        if self.session is None:  # opening the session failed: the app stays up
            self.query_one("#layers").loading = False
            self.set_status(f"no session: {text}")
            if self._shutting_down:
                return
        else:
            self.idle_status(("cancelled: " if message.cancelled else "failed: ") + message.job.title)
        self.log_line(("■ " if message.cancelled else "✗ ") + text)
        if message.trace:
            for line in message.trace.rstrip().splitlines():
                self.query_one("#log", RichLog).write(Text(f"  {line}"))
        title = message.job.title
        self.app.notify(text, title=f"{title} cancelled" if message.cancelled else f"{title} failed",
                        severity="warning" if message.cancelled else "error", timeout=8)

    def _session_opened(self, result: SessionOpened) -> None:
        if self._shutting_down:  # the app quit while the session was opening
            result.session.close()
            return
        from pathlib import Path

        self.session = result.session
        self.app.opened_directory = str(result.view.directory)  # type: ignore[attr-defined]
        self.query_one("#layers").loading = False
        self.refresh_view(result.view)
        view = result.view
        self.app.title = f"rcc-tui · {Path(view.directory).name}"
        head = view.head_node
        metric = head.eval_metric if head else None
        self.log_line(f"session {self._path(view.directory)}")
        self.log_line(f"  {view.model} on {view.data}, {len(view.layers)} layers, {len(view.nodes)} node{'s' if len(view.nodes) != 1 else ''}"
                      + (f", {head.eval_split} {metric:.2%}" if metric is not None else ""))
        self.query_one(LayerTree).focus()

    def _ops_applied(self, job: Job, result: OpsApplied) -> None:
        from rcc.services.outcomes import describe_outcome

        self.refresh_view(result.view)
        timing = "" if self._deterministic else f" ({job.seconds:.1f} s)"
        for index, outcome in enumerate(result.outcomes):
            text = describe_outcome(outcome, result.view.nodes)
            mark = "○" if outcome.unchanged else "✓"
            self.log_line(f"{mark} {text.headline}{timing if index == len(result.outcomes) - 1 else ''}")
            for line in text.details:
                self.log_line(f"  {line}")
        outcome = result.outcome
        if outcome.unchanged:
            self.app.notify(f"{job.title} changed no tensor: no node was recorded", title="no change",
                            severity="warning")
        elif job.seconds >= NOTIFY_AFTER or "out" in outcome.result:
            where = result.where()
            extra = f"; wrote {outcome.result['out']}" if "out" in outcome.result else ""
            self.app.notify(f"{job.title} done{where}{extra}", title="done")

    def _scan_stored(self, job: Job, result: ScanStored) -> None:
        scan = result.stored.result
        top = scan.ranked()[0] if scan.units else None
        seconds = "" if self._deterministic else f" ({scan.seconds:.1f} s)"
        self.log_line(f"✓ sensitivity of node {scan.node}: {len(scan.units)} layers, "
                      f"{scan.setting.describe()}{seconds}"
                      + (f"; most sensitive {top.name} (drift {top.drift:.3g})" if top else ""))
        self.log_line(f"  stored in {self._path(str(result.stored.path))}")
        if self.view is not None and scan.node == self.view.head:
            self._show_sensitivity(TreeSensitivity(node=scan.node, head=self.view.head, scores=scan.scores(),
                                                   setting=scan.setting.describe()))
        self.idle_status()

    # -- sensitivity colours ---------------------------------------------------------------
    def _show_sensitivity(self, found: TreeSensitivity | None) -> None:
        self.sensitivity = found
        self.query_one(LayerPanel).show_sensitivity(found.scores if found else None, found.legend() if found else "")

    def _sensitivity_read(self, view: SessionView) -> Job:
        from rcc_tui.sensitivity import read_job

        return read_job(view.directory, view.nodes, view.head)

    def _sensitivity_read_done(self, read: SensitivityRead) -> None:
        if not self.is_attached or self.view is None or self.view.head != read.head:
            return  # the head moved on while the file was read: its own read is on the way
        if read.error:
            self.log_line(f"✗ sensitivity: {read.error}")
        self._show_sensitivity(read.found)

    # -- widget requests -------------------------------------------------------------------
    @on(LayerTree.TargetsChanged)
    def _targets_changed(self, event: LayerTree.TargetsChanged) -> None:
        self.targets, self.targets_description = event.names, event.description
        self._load_editor()

    @on(Tree.NodeSelected, "#layer-tree")
    def _tree_row_entered(self, event: Tree.NodeSelected) -> None:
        """Enter on a layer row goes to the editor (on a tower or block it opens or closes it)."""
        data = event.node.data
        if data is not None and data.kind == "layer":
            self.action_focus_editor()

    @on(HistoryView.NodeHighlighted)
    def _history_cursor(self, event: HistoryView.NodeHighlighted) -> None:
        self._show_details(event.node)

    @on(LayerEditor.ApplyRequested)
    def _apply_edit(self, event: LayerEditor.ApplyRequested) -> None:
        from rcc.errors import RccError
        from rcc.session.ops import EditLayers

        editor = self.query_one(LayerEditor)
        try:
            op = EditLayers(layers=event.layers, settings=event.settings, reset=event.reset, budget=event.budget)
        except RccError as error:
            editor.show_error(str(error))
            return
        what = "reset" if event.reset else ", ".join(f"{k} {v}" for k, v in event.settings.items())
        if event.budget is not None:
            what = ", ".join(filter(None, (what, f"budget {event.budget:g}")))
        self.start(op, f"edit {len(event.layers)} layer{'s' if len(event.layers) != 1 else ''}: {what}", editor)

    @on(RunPanel.RunRequested)
    def _run_requested(self, event: RunPanel.RunRequested) -> None:
        self.start(event.op, event.title, self.query_one(RunPanel))

    @on(TrainPanel.TrainRequested)
    def _train_requested(self, event: TrainPanel.TrainRequested) -> None:
        self.start(event.op, event.title, self.query_one(TrainPanel))

    @on(RunPanel.CancelRequested)
    @on(TrainPanel.CancelRequested)
    def _cancel_requested(self) -> None:
        self.action_cancel()

    @on(HistoryView.CheckoutRequested)
    def _checkout(self, event: HistoryView.CheckoutRequested) -> None:
        self.checkout(event.node)

    @on(HistoryView.LabelRequested)
    def _label(self, event: HistoryView.LabelRequested) -> None:
        self.label(event.node)

    @on(HistoryView.CompareRequested)
    def _compare(self, event: HistoryView.CompareRequested) -> None:
        self.compare(event.a, event.b)

    # -- operations (also used by the command palette and the search screen) ---------------
    def checkout(self, node: int) -> bool:
        from rcc.session.ops import Checkout

        if self.view is not None and node == self.view.head:
            self.app.notify(f"node {node} is the current node already")
            return False
        return self.start(Checkout(node=node), f"check out node {node}")

    def apply_trial(self, study: str, trial: int) -> bool:
        """Make a search trial a node: one job that checks out the node it was searched from (if needed), then
        applies it."""
        from rcc_tui.session_jobs import apply_trial_job

        return self.start_job(lambda session, view: apply_trial_job(session, study, trial, view))

    def label(self, node: int) -> None:
        from rcc_tui.screens.label_screen import LabelScreen

        if self.view is None:
            return
        record = self.view.node(node)
        if record is None:
            return

        def done(answer: tuple[str, str] | None) -> None:
            if answer is None:
                return
            from rcc.errors import RccError
            from rcc.session.ops import Label

            text, note = answer
            try:
                op = Label(node=node, label=text, note=note)
            except RccError as error:
                self.app.notify(str(error), severity="error")
                self.log_line(f"✗ {error}")
                return
            self.start(op, f"label node {node}")

        self.app.push_screen(LabelScreen(node, record.label, record.note), done)

    def compare(self, a: int, b: int) -> None:
        from rcc_tui.screens.compare_screen import CompareScreen

        if self.view is None:
            return
        self.app.push_screen(CompareScreen(self.view.directory, a, b,
                                           device=self.app.config.device))  # type: ignore[attr-defined]

    def action_search(self) -> None:
        """Open the search screen on this session (it reads the session, never its lock)."""
        from rcc_tui.screens.search_screen import SearchScreen

        if self.view is None:
            self.app.notify("the session is not open yet", severity="warning")
            return
        device = self.app.config.device  # type: ignore[attr-defined]
        self.app.push_screen(SearchScreen(self.view.directory, device=device, eval_split=self.view.eval_split))

    def export(self, format: str = "compressed") -> bool:
        from rcc.services.export import export_op

        if self.view is None or self.view.head is None:
            return False
        return self.start(export_op(self.view.head, format), f"export node {self.view.head} ({format})")

    # -- actions ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        running = self.jobs.session_job is not None
        if action == "cancel":
            return True if running else None  # shown dimmed when nothing runs
        if action in ("run_stage", "run_cascade", "evaluate", "apply_edit", "scan_sensitivity", "train"):
            return None if running or self.session is None else True
        return True

    def action_run_stage(self) -> None:
        self.action_show_tab("compress")
        self.query_one(RunPanel).request("stage")

    def action_run_cascade(self) -> None:
        self.action_show_tab("compress")
        self.query_one(RunPanel).request("cascade")

    def action_train(self) -> None:
        self.action_show_tab("train")
        self.query_one(TrainPanel).request()

    def action_cancel(self) -> None:
        job = self.jobs.session_job
        if job is not None and self.jobs.cancel(job):
            self.log_line(f"cancelling {job.title}… (stops at the next layer or batch)")
        else:
            self.app.notify("nothing is running")

    def action_apply_edit(self) -> None:
        self.action_show_tab("compress")
        self.query_one(LayerEditor).action_apply()

    def action_reset_edit(self) -> None:
        self.query_one(LayerEditor).action_reset()

    def action_focus_editor(self) -> None:
        self.action_show_tab("compress")
        self.query_one(LayerEditor).focus_first()

    def action_evaluate(self, split: str | None = None) -> None:
        from rcc.session.ops import Evaluate

        if self.view is None:
            return
        split = split or self.view.test_split
        self.start(Evaluate(split=split), f"evaluate node {self.view.head} on {split}")

    def action_scan_sensitivity(self, rank: float | None = None, sparsity: float = 0.0) -> bool:
        """Scan the targets (all layers when none) of the current node; an analysis, so no op is recorded."""
        from rcc.analysis.sensitivity import ScanSetting
        from rcc.errors import RccError
        from rcc_tui.sensitivity import DEFAULT_RANK
        from rcc_tui.session_jobs import scan_job

        try:
            setting = ScanSetting(rank=DEFAULT_RANK if rank is None and not sparsity else rank, sparsity=sparsity)
        except RccError as error:
            self.app.notify(str(error), severity="error")
            return False
        view = self.view
        names = self.targets or (tuple(layer.name for layer in view.layers) if view else ())
        title = f"sensitivity of {len(names)} layer{'s' if len(names) != 1 else ''} ({setting.describe()})"
        if not self.start_job(lambda session, _view: scan_job(session, names, setting, title)):
            return False
        self.log_line(f"▶ {title} on node {view.head}")
        return True

    def action_select_pattern(self) -> None:
        self.query_one("#pattern", Input).focus()

    def action_clear_selection(self) -> None:
        self.query_one(LayerTree).action_clear_selection()

    def action_focus_tree(self) -> None:
        self.query_one(LayerTree).focus()

    def action_focus_log(self) -> None:
        self.query_one("#log", RichLog).focus()

    def action_show_tab(self, name: str) -> None:
        tabs = self.query_one(TabbedContent)
        tabs.active = TABS[name]
        if name == "history":
            self.query_one(HistoryView).focus()
        elif name == "charts":
            self.query_one(MetricChart).focus()

    def commands(self) -> list[tuple[str, str, Any]]:
        """(name, help, callback) of every action, for the command palette."""
        items: list[tuple[str, str, Any]] = [
            ("Run stage", "run the stage set in the run panel on the targets (r)", self.action_run_stage),
            ("Run cascade", "run the RCC cascade on the targets (c)", self.action_run_cascade),
            ("Cancel the running op", "stop between layers; the session stays as before (x)", self.action_cancel),
            ("Apply the layer edit", "apply the editor's changed fields to the targets (a)", self.action_apply_edit),
            ("Edit the targets", "focus the layer editor (e, or enter on a layer)", self.action_focus_editor),
            ("Reset the targets' overrides", "remove per-layer plan overrides of the targets", self.action_reset_edit),
            ("Evaluate on the test split", "add test metrics to the current node (E)", self.action_evaluate),
            ("Scan sensitivity", "each target layer alone at 50% rank: how far predictions drift (v)",
             self.action_scan_sensitivity),
            ("Export compressed", "write the current node with factors and packed masks",
             lambda: self.export("compressed")),
            ("Export dense", "write the current node in the original architecture", lambda: self.export("dense")),
            ("Export ONNX", "write the current node's image and text encoders for onnxruntime",
             lambda: self.export("onnx")),
            ("Export hf-compressed", "write the current node as a compressed-tensors checkpoint (Hugging Face models)",
             lambda: self.export("hf-compressed")),
            ("Select layers by pattern", "glob, tower:…, kind:…, block:… (/)", self.action_select_pattern),
            ("Clear the layer selection", "the targets follow the cursor again (u)", self.action_clear_selection),
            ("Show the layer tree", "focus the tree (t)", self.action_focus_tree),
            ("Show the editor and run panel", "the Compress tab (1)", lambda: self.action_show_tab("compress")),
            ("Show the history graph", "the History tab (2)", lambda: self.action_show_tab("history")),
            ("Show the charts", "the Charts tab (3)", lambda: self.action_show_tab("charts")),
            ("Show the train panel", "the Train tab (4)", lambda: self.action_show_tab("train")),
            ("Show the log", "focus the log pane (L)", self.action_focus_log),
            ("Search compression plans", "Optuna study: trials live, the Pareto front, apply a trial (s)",
             self.action_search),
            ("Train (recovery)", "distil the root (or the panel's teacher) into the current node (T)",
             self.action_train),
        ]
        if self.view is not None:
            for node in reversed(self.view.nodes):
                metric = node.eval_metric
                about = " · ".join(part for part in (
                    node.op_kind, f"{node.eval_split} {metric:.2%}" if metric is not None else "",
                    f"“{node.label}”" if node.label else "") if part)
                named = f"node {node.id}" + (f" “{node.label}”" if node.label else "")
                if node.id != self.view.head:
                    items.append((f"Check out {named}", about, lambda n=node.id: self.checkout(n)))
                    items.append((f"Compare {named} with the current node", about,
                                  lambda n=node.id: self.compare(n, self.view.head)))
                items.append((f"Label {named}", about, lambda n=node.id: self.label(n)))
        return items
