"""The main screen: layer tree (left); editor, run panel, history and charts (tabs); log; status.

The screen owns the open ``Session`` and the ``OpRunner`` that applies ops to it in a thread
worker. Widgets only ask (messages); the screen turns each request into one Session op, and
redraws every widget from the ``SessionView`` the worker read after the op. The session is
never read on the main thread while an op may be running.
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
from textual.widgets import Footer, Header, RichLog, Static, TabbedContent, TabPane

from rcc_tui.sensitivity import SensitivityScanned, TreeSensitivity
from rcc_tui.widgets.charts import MetricChart, ParetoChart
from rcc_tui.widgets.history_view import HistoryView
from rcc_tui.widgets.layer_editor import LayerEditor
from rcc_tui.widgets.layer_tree import LayerPanel, LayerTree, short_number
from rcc_tui.widgets.op_feedback import describe_progress
from rcc_tui.widgets.run_panel import RunPanel
from rcc_tui.widgets.train_panel import TrainPanel
from rcc_tui.workers import (
    OpFailed,
    OpFinished,
    OpProgressed,
    OpRunner,
    OpStarted,
    SessionOpened,
    SessionView,
)

if TYPE_CHECKING:
    from rcc.session.ops import Op
    from rcc.session.session import Session

TABS = {"compress": "tab-compress", "history": "tab-history", "charts": "tab-charts", "train": "tab-train"}


class MainScreen(Screen):
    """The workbench."""

    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (110, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (34, "-tall")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "run_stage", "Stage", id="rcc.run_stage"),
        Binding("c", "run_cascade", "Cascade", id="rcc.run_cascade"),
        Binding("x", "cancel", "Cancel", id="rcc.cancel"),
        Binding("a", "apply_edit", "Apply", id="rcc.apply_edit"),
        Binding("e", "evaluate", "Evaluate", id="rcc.evaluate", show=False),
        Binding("slash", "select_pattern", "Pattern", id="rcc.select_pattern"),
        Binding("t", "focus_tree", "Tree", id="rcc.focus_tree", show=False),
        Binding("escape", "focus_tree", "Tree", id="rcc.escape", show=False),
        Binding("1", "show_tab('compress')", "Edit", id="rcc.tab_compress", show=False),
        Binding("2", "show_tab('history')", "History", id="rcc.tab_history", show=False),
        Binding("3", "show_tab('charts')", "Charts", id="rcc.tab_charts", show=False),
        Binding("4", "focus_log", "Log", id="rcc.focus_log", show=False),
        Binding("5", "show_tab('train')", "Train tab", id="rcc.tab_train", show=False),
        Binding("T", "train", "Train", id="rcc.train"),  # shift+t: t is the tree, l labels in the history
        # v: "view sensitivity"; s is left free (search), ctrl+s is XOFF in terminals.
        Binding("v", "scan_sensitivity", "Sensitivity", id="rcc.sensitivity", show=False),
        Binding("s", "search", "Search", id="rcc.search"),  # the Optuna search screen
    ]

    def __init__(self) -> None:
        super().__init__(id="main")
        self.session: Session | None = None
        self.view: SessionView | None = None
        self.runner = OpRunner(self)
        self.targets: tuple[str, ...] = ()
        self.targets_description = "no layer"
        self._step = 0
        self._started = 0.0
        self._shutting_down = False
        self._busy = False  # between OpStarted and its end, as the screen has seen it (for the footer)
        self.sensitivity: TreeSensitivity | None = None  # what the tree's colours show

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
                        yield HistoryView(id="history")
                        yield ParetoChart(id="pareto")
                    with TabPane("Charts", id=TABS["charts"]):
                        yield MetricChart(id="metric-chart")
                    with TabPane("Train", id=TABS["train"]), VerticalScroll(id="train-pane"):
                        yield TrainPanel(id="train-panel")
                yield RichLog(id="log", wrap=False, markup=False, highlight=False, max_lines=2000)
        yield Static("starting…", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#layers").border_title = "layers"
        self.query_one("#log").border_title = "log"
        self.query_one("#layers").loading = True
        self.query_one("#editor", LayerEditor).disabled = True
        self.query_one(LayerTree).focus()
        # The model loads after the first frame is on screen.
        self.call_after_refresh(self.open_session)

    # -- opening and closing ---------------------------------------------------------------
    def open_session(self) -> None:
        config = self.app.config  # type: ignore[attr-defined]
        if config.session_dir is None or config.new:
            what = f"{config.model} on {config.data}"
            self.log_line(f"creating a session: {what}")

            def make(progress, cancel):
                from rcc.session.session import Session

                directory = config.session_dir or default_session_dir()
                return Session.create(directory, model=config.model, data=config.data, device=config.device,
                                      progress=progress, cancel=cancel)

            self.runner.open(f"loading {what}", make)
        else:
            self.log_line(f"opening session {self._path(config.session_dir)}")

            def reopen(progress, cancel):
                from rcc.session.session import Session

                return Session.open(config.session_dir, device=config.device, progress=progress)

            self.runner.open("opening the session", reopen)

    def close_session(self) -> None:
        """Close the session (releases its lock); once, and only when no op runs."""
        if self.session is not None and not self.runner.running:
            self.session.close()
            self.session = None
        self._shutting_down = True

    async def shut_down(self) -> None:
        """Cancel whatever runs, wait for it to stop, close the session."""
        if self.runner.cancel():
            self.log_line("cancelling before quitting…")
            self.set_status(f"quitting: cancelling {self.runner.title} (stops at the next layer or batch)…")
        await self.runner.wait(deliver=False)
        self.close_session()

    def on_unmount(self) -> None:
        # The app is going away without shut_down (e.g. a test ending): never leave the lock held.
        session, self.session = self.session, None
        self._shutting_down = True
        self.runner.close_when_done(session)

    # -- helpers ---------------------------------------------------------------------------
    @property
    def _deterministic(self) -> bool:
        return bool(getattr(self.app, "deterministic", False))

    def _path(self, directory: str) -> str:
        return _session_name(directory) if self._deterministic else directory

    def log_line(self, text: str) -> None:
        stamp = "--:--:--" if self._deterministic else time.strftime("%H:%M:%S")
        self.query_one("#log", RichLog).write(Text(f"{stamp} {text}"))

    def set_status(self, text: str | Text) -> None:
        self.query_one("#status", Static).update(text)

    def idle_status(self) -> None:
        view = self.view
        if view is None:
            return
        node = view.head_node
        parts = [f"{view.model} · {view.data}", f"node {view.head} of {len(view.nodes)}"]
        if node is not None:
            metric = node.eval_metric
            if metric is not None:
                parts.append(f"{node.eval_split} {metric:.2%}")
            parts.append(f"{short_number(node.metrics.get('size/params', node.params))} params")
            if node.label:
                parts.append(f"[{node.label}]")
        self.set_status(" · ".join(parts) + " · ready")

    def start(self, op: Op, title: str | None = None) -> bool:
        """Apply ``op`` in the worker, unless something runs already or no session is open."""
        if self.session is None or self.view is None:
            self.app.notify("the session is not open yet", severity="warning")
            return False
        if self.runner.running:
            self.app.notify(f"{self.runner.title} is running; wait for it, or cancel it (x)", severity="warning")
            return False
        self.runner.apply(self.session, op, title, previous=self.view)
        return True

    def refresh_view(self, view: SessionView) -> None:
        """Redraw every widget from ``view``."""
        moved = self.view is None or self.view.head != view.head
        self.view = view
        tree = self.query_one(LayerTree)
        tree.show(view.layers, view.state, view.plan)
        history = self.query_one(HistoryView)
        history.show(view.nodes, view.head)
        if moved and view.head is not None:
            history.select_node(view.head)  # the cursor follows a new or checked-out node
        if moved:
            self._load_sensitivity(view)
        self.query_one(ParetoChart).show(view.nodes, view.head)
        self.query_one(TrainPanel).set_nodes(tuple(node.id for node in view.nodes), view.head)
        self._load_editor()
        self.idle_status()

    def _model_total(self) -> float | None:
        node = self.view.head_node if self.view else None
        return None if node is None else node.metrics.get("size/total")

    def _load_editor(self) -> None:
        if self.view is None:
            return
        self.query_one(LayerEditor).load(self.view.layers, self.view.plan, self.targets, self.targets_description,
                                         self._model_total())
        self.query_one(RunPanel).set_targets(self.targets, self.targets_description)

    def _refresh_keys(self) -> None:
        """The footer's enabled keys, now and once the worker thread has surely returned."""
        self.refresh_bindings()
        self.set_timer(0.3, self.refresh_bindings)

    # -- worker messages -------------------------------------------------------------------
    @on(OpStarted)
    def _op_started(self, event: OpStarted) -> None:
        self._started = time.perf_counter()
        self._busy = True
        self.refresh_bindings()  # Cancel on, Stage / Cascade / Apply dimmed
        self.query_one(RunPanel).set_running(event.title)
        self.query_one(TrainPanel).set_running(event.title)
        self.set_status(f"{event.title}… (x cancels)")
        self.app.sub_title = event.title
        kind = event.op.kind if event.op is not None else None
        if kind in ("run_stage", "run_cascade"):
            self._step = 0
            chart = self.query_one(MetricChart)
            chart.start_run(event.title, second_label="params")
            head = self.view.head_node if self.view else None
            if head is not None and head.eval_metric is not None:
                chart.add_point(0, head.eval_metric, head.metrics.get("size/params"))
            threshold = getattr(event.op, "threshold", None)
            if threshold is not None and head is not None and head.eval_metric is not None:
                chart.set_threshold(threshold * head.eval_metric)
            else:
                chart.set_threshold(None)
        elif kind == "train":
            self._start_training_chart(event.title)
        if event.op is not None:
            self.log_line(f"▶ {event.title}")

    @on(OpProgressed)
    def _op_progressed(self, event: OpProgressed) -> None:
        progress = event.progress
        self.query_one(RunPanel).show_progress(progress)
        self.query_one(TrainPanel).show_progress(progress)
        text = describe_progress(progress)
        if progress.metric is not None:
            training = event.op is not None and event.op.kind == "train"
            self._step = progress.done if training else self._step + 1  # training: the step it evaluated after
            self.query_one(MetricChart).add_point(self._step, progress.metric, progress.params)
            self.log_line(f"  {text}")
        elif progress.loss is not None:  # a tick's batch of training steps: one chart redraw for all
            self.query_one(MetricChart).add_second_points((e.done, e.loss) for e in event.events)
        self.set_status(f"{self.runner.title}: {text} · x cancels")

    @on(SessionOpened)
    def _session_opened(self, event: SessionOpened) -> None:
        self._busy = False
        self._refresh_keys()
        self.query_one(RunPanel).set_running(None)
        self.query_one(TrainPanel).set_running(None)
        self.app.sub_title = ""
        if self._shutting_down:  # the app quit while the session was opening
            event.session.close()
            return
        self.session = event.session
        self.query_one("#layers").loading = False
        self.query_one(RunPanel).set_status("ready")
        self.query_one(TrainPanel).set_status("ready")
        self.refresh_view(event.view)
        view = event.view
        self.app.title = f"rcc-tui · {_session_name(view.directory)}"
        head = view.head_node
        metric = head.eval_metric if head else None
        self.log_line(f"session {self._path(view.directory)}: {view.model} on {view.data}, {len(view.layers)} layers, "
                      f"{len(view.nodes)} nodes" + (f", eval {metric:.2%} on {view.eval_split}" if metric else ""))
        self.query_one(LayerTree).focus()

    @on(OpFinished)
    def _op_finished(self, event: OpFinished) -> None:
        self._busy = False
        self._refresh_keys()
        self.query_one(RunPanel).set_running(None)
        self.query_one(TrainPanel).set_running(None)
        self.app.sub_title = ""
        outcome = event.outcome
        self.refresh_view(event.view)
        if outcome is None:
            return
        run_panel = self.query_one(RunPanel)
        node = next((n for n in event.view.nodes if n.id == outcome.node_after), None)
        seconds = time.perf_counter() - self._started
        where = ""
        if outcome.new_node is not None and node is not None:
            metric = node.eval_metric
            where = (f" → node {node.id}" + (f", {node.eval_split} {metric:.2%}" if metric is not None else "")
                     + f", {short_number(node.metrics.get('size/params', node.params))} params")
        elif outcome.node_after != outcome.node_before:
            where = f" → node {outcome.node_after}"
        timing = "" if self._deterministic else f" ({seconds:.1f} s)"
        self.log_line(f"✓ #{outcome.seq} {event.op.kind}{where}{timing}")
        run_panel.set_status(f"done: {self.runner.title}{where}")
        self.query_one(TrainPanel).set_status(f"done: {self.runner.title}{where}")
        if outcome.metrics and outcome.new_node is None and event.op.kind == "evaluate":
            primary = next((v for k, v in outcome.metrics.items() if k.endswith("/primary")), None)
            if primary is not None:
                self.log_line(f"  {getattr(event.op, 'split', '')}: {primary:.2%}")
        if event.op.kind in ("run_stage", "run_cascade") and node is not None:
            self._step += 1
            if node.eval_metric is not None:
                self.query_one(MetricChart).add_point(self._step, node.eval_metric,
                                                      node.metrics.get("size/params"))
            self.app.notify(f"{self.runner.title} done{where}", title="done")
        elif event.op.kind == "train":
            self._training_finished(outcome, node, where)
        elif event.op.kind == "export":
            self.app.notify(f"exported to {outcome.result.get('out')}", title="export")
            self.log_line(f"  wrote {outcome.result.get('out')}")

    @on(OpFailed)
    def _op_failed(self, event: OpFailed) -> None:
        self._busy = False
        self._refresh_keys()
        self.query_one(RunPanel).set_running(None)
        self.query_one(TrainPanel).set_running(None)
        self.app.sub_title = ""
        message = event.message
        self.query_one(RunPanel).set_status(("cancelled: " if event.cancelled else "failed: ") + self.runner.title)
        self.query_one(TrainPanel).set_status(("cancelled: " if event.cancelled else "failed: ") + self.runner.title)
        if event.op is None and self.session is None:  # opening the session failed: the app stays up
            self.query_one("#layers").loading = False
            self.set_status(f"no session: {message}")
            if self._shutting_down:
                return
        else:
            self.idle_status()
        self.log_line(("■ " if event.cancelled else "✗ ") + message)
        if event.trace:
            for line in event.trace.rstrip().splitlines():
                self.query_one("#log", RichLog).write(Text(f"  {line}"))
        self.app.notify(message, title=f"{event.title} cancelled" if event.cancelled else f"{event.title} failed",
                        severity="warning" if event.cancelled else "error", timeout=8)
        if event.op is not None and event.op.kind == "edit_layers":
            self.query_one(LayerEditor).show_error(message.removeprefix("op 'edit_layers': "))
        if event.op is not None and event.op.kind == "train" and not event.cancelled:
            self.query_one(TrainPanel).show_error(message)

    @on(SensitivityScanned)
    def _sensitivity_scanned(self, event: SensitivityScanned) -> None:
        self._busy = False
        self._refresh_keys()
        self.query_one(RunPanel).set_running(None)
        self.query_one(TrainPanel).set_running(None)
        self.app.sub_title = ""
        result = event.result
        top = result.ranked()[0] if result.units else None
        seconds = "" if self._deterministic else f" ({result.seconds:.1f} s)"
        self.log_line(f"✓ sensitivity of node {result.node}: {len(result.units)} layers, "
                      f"{result.setting.describe()}{seconds}"
                      + (f"; most sensitive {top.name} (drift {top.drift:.3g})" if top else ""))
        self.log_line(f"  stored in {self._path(event.path)}")
        self.query_one(RunPanel).set_status(f"done: {self.runner.title}")
        self.query_one(TrainPanel).set_status(f"done: {self.runner.title}")
        if self.view is not None and result.node == self.view.head:
            self._show_sensitivity(TreeSensitivity(node=result.node, head=self.view.head, scores=result.scores(),
                                                   setting=result.setting.describe()))
        self.idle_status()

    def _show_sensitivity(self, found: TreeSensitivity | None) -> None:
        self.sensitivity = found
        self.query_one(LayerPanel).show_sensitivity(found.scores if found else None, found.legend() if found else "")

    def _load_sensitivity(self, view: SessionView) -> None:
        """Read the head's stored scan (or its nearest scanned ancestor's) off the main thread."""
        from rcc_tui.sensitivity import read_tree_sensitivity

        directory, nodes, head = view.directory, view.nodes, view.head

        def read() -> None:
            from rcc.errors import RccError

            try:
                found, error = read_tree_sensitivity(directory, nodes, head), None
            except RccError as exc:  # a damaged file: say so, show no colours
                found, error = None, str(exc)
            self.app.call_from_thread(self._sensitivity_loaded, head, found, error)

        # Only reads analysis files, never the session: safe beside a running op; a newer read replaces it.
        self.run_worker(read, name="read sensitivity", group="sensitivity", thread=True, exclusive=True,
                        exit_on_error=False)

    def _sensitivity_loaded(self, head: int | None, found: TreeSensitivity | None, error: str | None) -> None:
        if not self.is_attached or self.view is None or self.view.head != head:
            return  # the head moved on while the file was read: its own read is on the way
        if error:
            self.log_line(f"✗ sensitivity: {error}")
        self._show_sensitivity(found)

    # -- widget requests -------------------------------------------------------------------
    @on(LayerTree.TargetsChanged)
    def _targets_changed(self, event: LayerTree.TargetsChanged) -> None:
        self.targets, self.targets_description = event.names, event.description
        self._load_editor()

    @on(LayerEditor.ApplyRequested)
    def _apply_edit(self, event: LayerEditor.ApplyRequested) -> None:
        from rcc.errors import RccError
        from rcc.session.ops import EditLayers

        try:
            op = EditLayers(layers=event.layers, settings=event.settings, reset=event.reset, budget=event.budget)
        except RccError as error:
            self.query_one(LayerEditor).show_error(str(error))
            return
        what = "reset" if event.reset else ", ".join(f"{k} {v}" for k, v in event.settings.items())
        if event.budget is not None:
            what = ", ".join(filter(None, (what, f"budget {event.budget:g}")))
        self.start(op, f"edit {len(event.layers)} layer{'s' if len(event.layers) != 1 else ''}: {what}")

    @on(RunPanel.RunRequested)
    def _run_requested(self, event: RunPanel.RunRequested) -> None:
        op = event.op
        scope = f"{len(op.layers)} layers" if op.layers else "the whole model"
        title = (f"{op.stage} ×{op.fraction:g} on {scope}" if op.kind == "run_stage"
                 else f"cascade ≥{op.threshold:g} on {scope}")
        self.start(op, title)

    @on(RunPanel.CancelRequested)
    def _cancel_requested(self) -> None:
        self.action_cancel()

    @on(TrainPanel.TrainRequested)
    def _train_requested(self, event: TrainPanel.TrainRequested) -> None:
        op = event.op
        head = self.view.head if self.view else None
        teacher = f"node {op.teacher}" if op.teacher is not None else "the root"
        self.start(op, f"train node {head} from {teacher}, {op.steps} steps")

    @on(TrainPanel.CancelRequested)
    def _train_cancel_requested(self) -> None:
        self.action_cancel()

    # -- training on the chart ---------------------------------------------------------------
    def _start_training_chart(self, title: str) -> None:
        """Accuracy on the left axis (the current node's eval at step 0), the loss per step on the right."""
        chart = self.query_one(MetricChart)
        chart.start_run(title, second_label="loss")
        chart.set_threshold(None)
        self._step = 0
        head = self.view.head_node if self.view else None
        if head is not None and head.eval_metric is not None:
            chart.add_point(0, head.eval_metric)

    def _training_finished(self, outcome: Any, node: Any, where: str) -> None:
        """Log the loss first → last and the eval before → after, as a stage's end is logged."""
        result = outcome.result
        losses = result.get("losses") or []
        if losses:
            self.log_line(f"  loss {losses[0]:.4f} → {losses[-1]:.4f} over {len(losses)} steps "
                          f"(teacher node {result.get('teacher')})")
        parent = next((n for n in self.view.nodes if node is not None and n.id == node.parent), None) \
            if self.view else None
        before = parent.eval_metric if parent is not None else None
        after = node.eval_metric if node is not None else None
        if before is not None and after is not None:
            self.log_line(f"  {node.eval_split} {before:.2%} → {after:.2%}")
        best = result.get("best_step")
        if best is not None and losses and best != len(losses):
            self.log_line(f"  kept the best evaluated state, step {best}")
        self.app.notify(f"{self.runner.title} done{where}", title="done")

    @on(HistoryView.CheckoutRequested)
    def _checkout(self, event: HistoryView.CheckoutRequested) -> None:
        self.checkout(event.node)

    @on(HistoryView.LabelRequested)
    def _label(self, event: HistoryView.LabelRequested) -> None:
        self.label(event.node)

    @on(HistoryView.CompareRequested)
    def _compare(self, event: HistoryView.CompareRequested) -> None:
        self.compare(event.a, event.b)

    # -- operations (also used by the command palette) -------------------------------------
    def checkout(self, node: int) -> bool:
        from rcc.session.ops import Checkout

        if self.view is not None and node == self.view.head:
            self.app.notify(f"node {node} is the current node already")
            return False
        return self.start(Checkout(node=node), f"check out node {node}")

    def label(self, node: int) -> None:
        from rcc_tui.screens.label_screen import LabelScreen

        if self.view is None:
            return
        record = next((n for n in self.view.nodes if n.id == node), None)
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
        self.app.push_screen(SearchScreen(self.view.directory, device=self.app.config.device))  # type: ignore[attr-defined]

    def export(self, format: str = "compressed") -> bool:
        from rcc.session.ops import Export

        if self.view is None:
            return False
        return self.start(Export(format=format, out=f"node-{self.view.head}-{format}"),
                          f"export node {self.view.head} ({format})")

    # -- actions ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        running = self._busy or self.runner.running
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
        if self.runner.cancel():
            self.set_status(f"cancelling {self.runner.title}… (stops at the next layer or batch)")
            self.log_line(f"cancelling {self.runner.title}…")
        else:
            self.app.notify("nothing is running")

    def action_apply_edit(self) -> None:
        self.action_show_tab("compress")
        self.query_one(LayerEditor).action_apply()

    def action_reset_edit(self) -> None:
        self.query_one(LayerEditor).action_reset()

    def action_evaluate(self, split: str | None = None) -> None:
        from rcc.session.ops import Evaluate

        if self.view is None:
            return
        split = split or (self.session.setting("test_split") if self.session else None) or "test"
        self.start(Evaluate(split=split), f"evaluate node {self.view.head} on {split}")

    def action_scan_sensitivity(self, rank: float | None = None, sparsity: float = 0.0) -> bool:
        """Scan the targets (all layers when none) of the current node; an analysis, so no op is recorded."""
        from rcc.errors import RccError
        from rcc_tui.sensitivity import DEFAULT_RANK, scan_job, scan_setting

        if self.session is None or self.view is None or self.view.head is None:
            self.app.notify("the session is not open yet", severity="warning")
            return False
        if self.runner.running:
            self.app.notify(f"{self.runner.title} is running; wait for it, or cancel it (x)", severity="warning")
            return False
        try:
            setting = scan_setting(DEFAULT_RANK if rank is None and not sparsity else rank, sparsity)
        except RccError as error:
            self.app.notify(str(error), severity="error")
            return False
        names = self.targets or tuple(layer.name for layer in self.view.layers)
        head = self.view.head
        title = f"sensitivity of {len(names)} layer{'s' if len(names) != 1 else ''} ({setting.describe()})"
        self.log_line(f"▶ {title} on node {head}")
        self.runner.run(title, scan_job(self.session, self.view.directory, head, names, setting))
        return True

    def action_select_pattern(self) -> None:
        self.query_one("#pattern").focus()

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
            ("Reset the targets' overrides", "remove per-layer plan overrides of the targets", self.action_reset_edit),
            ("Evaluate on the test split", "add test metrics to the current node (e)", self.action_evaluate),
            ("Scan sensitivity", "each target layer alone at 50% rank: how far predictions drift (v)",
             self.action_scan_sensitivity),
            ("Export compressed", "write the current node with factors and packed masks",
             lambda: self.export("compressed")),
            ("Export dense", "write the current node in the original architecture", lambda: self.export("dense")),
            ("Select layers by pattern", "glob, tower:…, kind:…, block:… (/)", self.action_select_pattern),
            ("Clear the layer selection", "the targets follow the cursor again (u)", self.action_clear_selection),
            ("Show the layer tree", "focus the tree (t)", self.action_focus_tree),
            ("Show the editor and run panel", "the Compress tab (1)", lambda: self.action_show_tab("compress")),
            ("Show the history graph", "the History tab (2)", lambda: self.action_show_tab("history")),
            ("Show the charts", "the Charts tab (3)", lambda: self.action_show_tab("charts")),
            ("Show the log", "focus the log pane (4)", self.action_focus_log),
            ("Search compression plans", "Optuna study: trials live, the Pareto front, apply a trial (s)",
             self.action_search),
            ("Train (recovery)", "distil the root (or the panel's teacher) into the current node (T)",
             self.action_train),
            ("Show the train panel", "the Train tab (5)", lambda: self.action_show_tab("train")),
        ]
        if self.view is not None:
            for node in reversed(self.view.nodes):
                metric = node.eval_metric
                about = f"{node.op_kind}" + (f" · {node.eval_split} {metric:.2%}" if metric is not None else "") + \
                        (f" · [{node.label}]" if node.label else "")
                if node.id != self.view.head:
                    items.append((f"Check out node {node.id}", about, lambda n=node.id: self.checkout(n)))
                    items.append((f"Compare node {node.id} with the current node", about,
                                  lambda n=node.id: self.compare(n, self.view.head)))
                items.append((f"Label node {node.id}", about, lambda n=node.id: self.label(n)))
        return items


def default_session_dir() -> str:
    """A new directory under the sessions home, named by the time."""
    import datetime as dt

    from rcc.cli.session_cmd import sessions_home

    home = sessions_home()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        candidate = home / (stamp if i == 0 else f"{stamp}-{i}")
        if not candidate.exists():
            return str(candidate)
    raise RuntimeError("no free session directory name")


def _session_name(directory: str) -> str:
    from pathlib import Path

    return Path(directory).name
