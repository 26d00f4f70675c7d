"""The search screen: run an Optuna study on the session's head node, watch its trials live, apply one.

The search is a background job of the app's job runner (``app.jobs``): it calls the engine's
use cases (``rcc.services.search.plan_study`` / ``run_study``), exactly as ``rcc-tui search``
does. It only reads the session (a read-only open: SQLite in WAL mode and content-addressed
blobs written by rename, so an op the main screen commits meanwhile is simply not seen; the
search starts from the head committed when it starts), so it runs while the main screen holds
the session. Its progress (one event per finished trial) arrives as the runner's messages; the
table and the chart are read back from the study's storage in short background jobs
(``list_trials``), so they show RUNNING trials and every trial's current front mark.

Stop, leaving the screen and quitting the app cancel the job through the runner: the search
stops between layers or batches (a trial cut short is recorded FAIL by Optuna) and the app's
shutdown waits for it, so nothing keeps running after the app exits.

Applying a trial is one job of the main screen (``MainScreen.apply_trial``): the checkout of
the node the study searched from when the head has moved, then the op ``apply_trial``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Input, Label, Select, Static

from rcc_tui.sizes import short_count
from rcc_tui.widgets.trial_chart import TrialChart
from rcc_tui.workers import BACKGROUND, Job, JobContext, JobFailed, JobFinished, JobProgressed

if TYPE_CHECKING:
    from rcc.search.study import StudySettings
    from rcc.search.trials import StudyInfo, TrialRow

DEFAULT_STUDY = "app"
DEFAULT_TRIALS = 20  # as `rcc-tui search` without --trials
MAX_TRIALS = 10_000
REREAD = 2.0  # seconds between two reads of the storage while a trial runs (to show it RUNNING)
COLUMNS = (("trial", "trial"), ("state", "state"), ("size", "size"), ("of dense", "kept"),
           ("accuracy", "accuracy"), ("front", "front"), ("note", "note"))
FRONT_MARK = "◆"


@dataclass(frozen=True)
class SearchRequest:
    """What the form asks for, checked."""

    study: str
    trials: int
    mode: str  # pareto | min-size
    level: str  # global | group | layer


def parse_request(study: str, trials: str, mode: Any, level: Any) -> SearchRequest:
    """The form's fields as a request; a bad value raises RccError naming it and what is allowed."""
    from rcc.errors import RccError
    from rcc.search.objective import MODES
    from rcc.search.space import LEVELS

    name = study.strip()
    if not name or len(name) > 512:
        raise RccError(f"study name {study!r} is invalid; allowed: 1 to 512 characters, e.g. {DEFAULT_STUDY!r}")
    try:
        count = int(trials.strip())
    except ValueError:
        count = None
    if count is None or not 1 <= count <= MAX_TRIALS:
        raise RccError(f"trials {trials!r} is invalid; allowed: an integer from 1 to {MAX_TRIALS}")
    if mode not in MODES:
        raise RccError(f"objective {mode!r} is unknown; allowed: {', '.join(MODES)}")
    if level not in LEVELS:
        raise RccError(f"search level {level!r} is unknown; allowed: {', '.join(LEVELS)}")
    return SearchRequest(study=name, trials=count, mode=mode, level=level)


# -- the jobs -----------------------------------------------------------------------------------

def search_job(session_dir: str, request: SearchRequest, base: StudySettings | None, device: str) -> Job:
    """Create or join the study and run it, as ``rcc-tui search`` does (the form's objective and level)."""

    def work(context: JobContext):
        from rcc.search.study import Limits
        from rcc.services.search import plan_study, run_study

        def adjust(settings):
            return replace(settings, objective=replace(settings.objective, mode=request.mode),
                           space=replace(settings.space, level=request.level))

        start = plan_study(session_dir, request.study, adjust=adjust, base=base)
        return run_study(session_dir, start, Limits(trials=request.trials), device=device,
                         progress=context.progress, cancel=context.cancelled)

    return Job(f"search {request.study}", work, lane=BACKGROUND, kind="search")


@dataclass(frozen=True)
class TrialListing:
    """A study as read back from its storage (empty with ``error`` when there is none yet)."""

    study: str
    rows: list
    info: StudyInfo | None
    error: str | None = None


# -- the screen ---------------------------------------------------------------------------------

class SearchScreen(Screen[None]):
    """A study of the session in ``session_dir``: form, trials table, size-vs-accuracy chart, status."""

    DEFAULT_CSS = """
    SearchScreen #search-form {
        height: auto;
        padding: 0 1;
    }
    SearchScreen .search-row {
        height: auto;
    }
    SearchScreen #search-form Label {
        padding: 0 1 0 0;
    }
    SearchScreen #search-study {
        width: 16;
        margin-right: 1;
    }
    SearchScreen #search-trials {
        width: 8;
        margin-right: 1;
    }
    SearchScreen #search-form Select {
        width: 14;
        margin-right: 1;
    }
    SearchScreen #search-form Button {
        margin-right: 1;
        min-width: 8;
    }
    SearchScreen #search-main {
        height: 1fr;
    }
    SearchScreen #search-table {
        width: 1fr;
        height: 1fr;
    }
    SearchScreen #search-chart {
        width: 1fr;
        height: 1fr;
    }
    SearchScreen #search-status {
        height: 1;
        padding: 0 1;
        color: $text-muted;
        text-wrap: nowrap;
        text-overflow: ellipsis;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close", id="search.close"),
        Binding("s", "start", "Start", id="search.start"),
        Binding("x", "stop", "Stop", id="search.stop"),
        Binding("a", "apply", "Apply trial", id="search.apply"),
    ]

    def __init__(self, session_dir: str, study: str = DEFAULT_STUDY, *, device: str = "auto",
                 settings: StudySettings | None = None, eval_split: str = "", name: str | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(name=name, id=id, classes=classes)
        self.session_dir = str(session_dir)
        self.eval_split = eval_split  # the session's eval split: what every trial's accuracy is measured on
        self.initial_study = study
        self.device = device
        self.base_settings = settings  # a new study's settings before the form's choices (None: the CLI's)
        self.rows: list[TrialRow] = []  # the trials of ``self.listed``, as last read
        self.info: StudyInfo | None = None
        self.listed: str | None = None  # the study the table shows
        self.job: Job | None = None  # the running search
        self.request: SearchRequest | None = None  # what it was started with
        self._reading = False
        self._read_again: str | None = None  # a read asked for while another ran: done when that one lands
        self._last_read = 0.0
        self._storage = None  # an opened storage for listings, reused (one connection pool)
        self._reads: set[Job] = set()  # listing jobs on the way
        self._outcome: str | None = None  # how the last search of the listed study ended (kept in the status)

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from rcc.search.objective import MODES
        from rcc.search.space import LEVELS
        from rcc.search.study import StudySettings

        defaults = self.base_settings or StudySettings()
        with Vertical(id="search-body"):
            # Fields and buttons on two rows: one row of both is cut off at 80 columns.
            with Vertical(id="search-form"):
                with Horizontal(classes="search-row"):
                    yield Label("study")
                    yield Input(self.initial_study, id="search-study", compact=True)
                    yield Label("trials")
                    yield Input(str(DEFAULT_TRIALS), id="search-trials", compact=True)
                    yield Select([(m, m) for m in MODES], value=defaults.objective.mode, allow_blank=False,
                                 id="search-objective", compact=True)
                    yield Select([(level, level) for level in LEVELS], value=defaults.space.level,
                                 allow_blank=False, id="search-space", compact=True)
                with Horizontal(classes="search-row"):
                    yield Button("Start", id="search-start", variant="primary", compact=True)
                    yield Button("Stop", id="search-stop", variant="error", compact=True, disabled=True)
                    yield Button("Apply trial", id="search-apply", compact=True)
            with Horizontal(id="search-main"):
                yield DataTable(id="search-table", cursor_type="row", zebra_stripes=True)
                yield TrialChart(id="search-chart")
            yield Static("reading the study…", id="search-status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#search-table", DataTable)
        for label, key in COLUMNS:
            justify = "right" if key in ("trial", "size", "kept", "accuracy") else "left"
            if key == "accuracy":  # headed by the split it is measured on
                label = f"{self.eval_split} {label}".strip()
            table.add_column(Text(label, justify=justify), key=key)
        table.focus()
        self.app.jobs.subscribe(self)  # type: ignore[attr-defined]
        # While a trial runs, the table is read again now and then to show it RUNNING (a display
        # refresh: the search's own end arrives as the runner's message).
        self.set_interval(REREAD, self._reread_while_running, name="search-reread")
        self._read(self.initial_study)  # an existing study is listed; nothing starts

    def on_unmount(self) -> None:
        if self.job is not None:  # leaving the screen (or the app) stops the search
            self.app.jobs.cancel(self.job)  # type: ignore[attr-defined]

    @property
    def reading(self) -> bool:
        """The study is being read back (or a read is queued): the table may change."""
        return self._reading or self._read_again is not None

    # -- form ------------------------------------------------------------------------------
    def _study_field(self) -> str:
        return self.query_one("#search-study", Input).value.strip()

    def _set_running(self, running: bool) -> None:
        for selector in ("#search-study", "#search-trials", "#search-objective", "#search-space", "#search-start"):
            self.query_one(selector).disabled = running
        self.query_one("#search-stop", Button).disabled = not running
        self.refresh_bindings()

    def set_status(self, text: str) -> None:
        self.query_one("#search-status", Static).update(text)

    @on(Input.Changed, "#search-study")
    def _study_changed(self, event: Input.Changed) -> None:
        if self.job is None and event.value.strip() and event.value.strip() != self.listed:
            self._read(event.value.strip())

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#search-start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#search-stop")
    def _stop_pressed(self) -> None:
        self.action_stop()

    @on(Button.Pressed, "#search-apply")
    def _apply_pressed(self) -> None:
        self.action_apply()

    # -- actions ---------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return None if self.job is not None else True
        if action == "stop":
            return True if self.job is not None else None
        return True

    def action_start(self) -> None:
        from rcc.errors import RccError

        if self.job is not None:
            self.app.notify("a search is running; stop it first (x)", severity="warning")
            return
        try:
            request = parse_request(self.query_one("#search-study", Input).value,
                                    self.query_one("#search-trials", Input).value,
                                    self.query_one("#search-objective", Select).value,
                                    self.query_one("#search-space", Select).value)
        except RccError as error:
            self.app.notify(str(error), title="search", severity="error")
            self.set_status(f"not started: {error}")
            return
        if request.study != self.listed:
            self._show_rows(request.study, [], None, read=False)  # a new name: an empty table
        self.request = request
        self._outcome = None
        self._set_running(True)
        self.set_status(f"study {request.study!r}: loading the model at the head node and its dense accuracy…")
        jobs = self.app.jobs  # type: ignore[attr-defined]
        self.job = jobs.start(search_job(self.session_dir, request, self.base_settings, self.device))
        self._set_running(True)

    def action_stop(self) -> None:
        if self.job is None or self.request is None:
            self.app.notify("no search is running")
            return
        self.app.jobs.cancel(self.job)  # type: ignore[attr-defined]
        self.set_status(f"stopping study {self.request.study!r} (at the next layer or batch)…")

    def action_apply(self) -> None:
        row = self.selected_row()
        if row is None or self.listed is None:
            self.app.notify("no trial is selected; allowed: a COMPLETE trial from the table", severity="warning")
            return
        if row.state != "COMPLETE":
            self.app.notify(f"trial {row.number} is {row.state}; allowed: a COMPLETE trial", severity="warning")
            return
        if self.app.main.apply_trial(self.listed, row.number):  # type: ignore[attr-defined]
            self.app.notify(f"applying trial {row.number} of {self.listed}: it becomes a node of the history graph",
                            title="search")

    def action_close(self) -> None:
        if self.job is not None and self.request is not None:
            self.app.jobs.cancel(self.job)  # type: ignore[attr-defined]
            self.app.notify(f"search {self.request.study!r} stopped: leaving the search screen stops it",
                            title="search")
        self.dismiss(None)

    def selected_row(self) -> TrialRow | None:
        table = self.query_one("#search-table", DataTable)
        if not table.row_count:
            return None
        from textual.coordinate import Coordinate

        key = table.coordinate_to_cell_key(Coordinate(table.cursor_row, 0)).row_key.value
        return next((row for row in self.rows if str(row.number) == key), None)

    # -- the runner's messages ---------------------------------------------------------------
    def on_job_progressed(self, message: JobProgressed) -> None:
        if message.job is not self.job:
            return
        event = message.event  # a trial finished: say so, and read the table again
        total = f" of {event.total}" if event.total else ""
        row = event.row
        self.set_status(f"trial {event.done}{total} (#{row.number} {row.state.lower()}) · {event.best} · x stops")
        if self.request is not None:
            self._read(self.request.study)

    def on_job_finished(self, message: JobFinished) -> None:
        if isinstance(message.result, TrialListing) and message.job.kind == "read" and message.job in self._reads:
            self._reads.discard(message.job)
            listing = message.result
            self._show_rows(listing.study, listing.rows, listing.info, listing.error)
        elif message.job is self.job:
            self._finish(message.job, report=message.result)

    def on_job_failed(self, message: JobFailed) -> None:
        if message.job in self._reads:
            self._reads.discard(message.job)
            self._reading = False
        elif message.job is self.job:
            self._finish(message.job, error=message.error)

    def _reread_while_running(self) -> None:
        if self.job is not None and self.request is not None and time.monotonic() - self._last_read > REREAD:
            self._read(self.request.study)

    def _finish(self, job: Job, report=None, error: BaseException | None = None) -> None:
        from rcc.errors import Cancelled
        from rcc.search.study import best_text
        from rcc_tui.workers import describe_error

        request = self.request
        self.job, self.request = None, None
        self._set_running(False)
        if request is None:
            return
        name = request.study
        self._read(name)
        seconds = job.seconds
        if report is not None:
            # A stop that arrived as the last trial ended stops between trials: still a stop to the user.
            stopped = job.cancel_requested
            self._outcome = f"{report.ran} trials run in {seconds:.0f} s" + (" (stopped)" if stopped else "")
            self.set_status(f"study {name!r}: {self._outcome}; "
                            f"{best_text(list(report.rows), report.settings.objective.mode)}")
            if stopped:
                self.app.notify(f"search {name!r} stopped after {report.ran} trials in {seconds:.0f} s",
                                title="search", severity="warning")
            else:
                self.app.notify(f"search {name!r} done: {report.ran} trials in {seconds:.0f} s", title="search")
        elif isinstance(error, Cancelled):
            self._outcome = f"stopped after {seconds:.0f} s"
            self.set_status(f"study {name!r}: {self._outcome}")
            self.app.notify(f"search {name!r} stopped", title="search", severity="warning")
        else:
            text = describe_error(error)
            self._outcome = text
            self.set_status(f"study {name!r}: {text}")
            self.app.notify(text, title="search", severity="error", timeout=8)

    # -- reading the study back (a short background job) ------------------------------------
    def _read(self, study: str) -> None:
        if self._reading:  # one read at a time; this one follows when the running one lands
            self._read_again = study
            return
        self._reading = True
        jobs = self.app.jobs  # type: ignore[attr-defined]
        self._reads.add(jobs.start(Job(f"read study {study}", lambda context: self._list(study), lane=BACKGROUND,
                                       kind="read")))

    def _list(self, study: str) -> TrialListing:
        """Worker thread: the study's trials and settings (an empty listing with the reason when there is none)."""
        from rcc.errors import RccError
        from rcc.search.storage import open_storage, resolve_url
        from rcc.search.trials import list_trials, study_info

        try:
            if self._storage is None:
                self._storage = open_storage(resolve_url(None, self.session_dir), create=False)
            return TrialListing(study, list_trials(self._storage, study), study_info(self._storage, study))
        except RccError as exc:  # no search.db yet, or no such study: an empty table
            return TrialListing(study, [], None, str(exc))

    def _show_rows(self, study: str, rows: list[TrialRow], info: StudyInfo | None, error: str | None = None,
                   *, read: bool = True) -> None:
        if read:
            self._reading = False
            self._last_read = time.monotonic()
        if not self.is_attached:
            return
        if read and self._read_again is not None:  # it may have started before the last trial finished
            again, self._read_again = self._read_again, None
            self._read(again)
        wanted = self.request.study if self.request is not None else self._study_field()
        if study != wanted:  # the name changed while this was read
            if self.job is None and wanted:
                self._read(wanted)
            return
        table = self.query_one("#search-table", DataTable)
        if study != self.listed:
            table.clear()
            self.listed = study
            if self.job is None:
                self._outcome = None
        self.rows, self.info = rows, info
        dense = info.dense_size.get(f"size/{info.size_measure}") if info is not None else None
        for row in rows:
            cells = self._cells(row, dense)
            key = str(row.number)
            if key in table.rows:
                for (_, column), value in zip(COLUMNS, cells, strict=True):
                    table.update_cell(key, column, value)
            else:
                table.add_row(*cells, key=key)
        reference = None
        if info is not None and dense is not None and info.dense_accuracy is not None:
            reference = (float(dense), info.dense_accuracy)
        self.query_one(TrialChart).show(rows, reference, info.size_measure if info is not None else "params")
        if self.job is None:
            if info is not None:
                self._show_settings(info)
            if error is not None:
                missing = "not in" in error or "does not exist" in error
                self.set_status(f"study {study!r}: {self._outcome}" if self._outcome else
                                f"no study {study!r} in this session yet: Start (s) runs one" if missing else error)
            elif read:
                self.set_status(self._summary(study, rows, info, self._outcome))

    def _show_settings(self, info: StudyInfo) -> None:
        """The form shows what the listed study was created with (joining it needs the same)."""
        level = info.settings.get("space", {}).get("level")
        for selector, value in (("#search-objective", info.mode), ("#search-space", level)):
            select = self.query_one(selector, Select)
            if value is not None and value != select.value:
                select.value = value

    @staticmethod
    def _summary(study: str, rows: list[TrialRow], info: StudyInfo | None, outcome: str | None = None) -> str:
        counts = {state: sum(r.state == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL")}
        front = sum(r.on_front for r in rows)
        dense = ("" if info is None or info.dense_accuracy is None
                 else f" · dense accuracy {info.dense_accuracy:.4f} on {info.eval_split}")
        ended = f"{outcome}; " if outcome else ""
        return (f"study {study!r}: {ended}{len(rows)} trials ({counts['COMPLETE']} complete, "
                f"{counts['PRUNED']} pruned, "
                f"{counts['FAIL']} failed), {front} on the front{dense} · a applies the selected trial")

    @staticmethod
    def _cells(row: TrialRow, dense: float | None) -> tuple:
        size = "–" if row.size is None else short_count(row.size)
        kept = "–" if row.size is None or not dense else f"{row.size / dense:.1%}"
        accuracy = "–" if row.accuracy is None else f"{row.accuracy:.4f}"
        return (Text(str(row.number), justify="right"), row.state, Text(size, justify="right"),
                Text(kept, justify="right"), Text(accuracy, justify="right"),
                FRONT_MARK if row.on_front else "", Text(row.note))  # Text: a note is data, never markup
