"""The bridge between the app and the engine: session work in one thread worker at a time.

Every blocking call (opening a session, applying an op) runs in a Textual thread worker. The
worker never touches a widget: it leaves events in a queue that a timer on the main thread
drains every ``PROGRESS_INTERVAL`` seconds and turns into messages. Layer progress is
coalesced (only the newest event of a tick is delivered), so a fast stage cannot flood the
UI; events that carry a ``metric`` or a ``loss`` (chart points) and the start / end of an op
are never dropped, and always arrive in order. Consecutive loss events of one tick arrive as
one ``OpProgressed`` (``events`` holds them all), so a fast training run costs one message
and one chart redraw per tick, not one per step.

After an op the worker also reads what the screen shows (nodes, plan, layer inventory and
per-layer state) into a ``SessionView``, so the main thread never reads the live model while
another op may be changing it.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from textual.message import Message

if TYPE_CHECKING:
    from textual.message_pump import MessagePump
    from textual.timer import Timer

    from rcc.compression.plan import CompressionPlan
    from rcc.models.inventory import LayerInfo
    from rcc.session.graph import NodeRecord
    from rcc.session.ops import Op
    from rcc.session.progress import OpProgress
    from rcc.session.session import OpOutcome, Session

PROGRESS_INTERVAL = 0.1  # seconds between two deliveries of coalesced progress
WORKER_GROUP = "session"


@dataclass(frozen=True)
class LayerState:
    """A layer as the live model holds it now."""

    form: str  # dense, masked or factorised
    sparsity: float  # fraction of pruned entries (of the ``down`` factor when factorised)
    rank: int | None  # the factorisation's rank, None when not factorised
    stored: int  # numbers the layer stores now
    bits: int | None = None  # 8 when the layer holds int8 values, None for float weights


@dataclass(frozen=True)
class SessionView:
    """Everything the screen shows about a session, read in the worker after an op."""

    directory: str
    model: str
    data: str
    eval_split: str
    head: int | None
    nodes: tuple[NodeRecord, ...]
    plan: CompressionPlan
    layers: tuple[LayerInfo, ...]
    state: dict[str, LayerState] = field(default_factory=dict)
    ops: int = 0

    @property
    def head_node(self) -> NodeRecord | None:
        return next((node for node in self.nodes if node.id == self.head), None)


def read_layer_state(session: Session, layers) -> dict[str, LayerState]:
    """Form, sparsity, rank and stored numbers of every layer, from the live model."""
    from rcc.compression.layers import (
        layer_bits,
        layer_form,
        layer_module,
        layer_sparsity,
        stored_parameters,
    )

    module = session.model.module
    state = {}
    for layer in layers:
        try:
            child = layer_module(module, layer)
            form = layer_form(module, layer)
            state[layer.name] = LayerState(
                form=form, sparsity=layer_sparsity(module, layer),
                rank=child.rank if form == "factorised" else None,
                stored=stored_parameters(module, layer), bits=layer_bits(module, layer))
        except Exception:  # noqa: BLE001  (a layer in a form the readers do not know: show it as dense)
            state[layer.name] = LayerState("dense", 0.0, None, layer.params)
    return state


def read_view(session: Session, layers: tuple | None = None, with_state: bool = True,
              previous: SessionView | None = None) -> SessionView:
    """A ``SessionView`` of ``session``; call it only where no op can run at the same time."""
    if layers is None:
        layers = tuple(session.model.layers()) if session.workspace is not None else ()
    if with_state or previous is None:
        state = read_layer_state(session, layers) if session.workspace is not None else {}
    else:
        state = previous.state
    return SessionView(
        directory=str(session.directory), model=session.setting("model") or "", data=session.setting("data") or "",
        eval_split=session.setting("eval_split") or "", head=session.head, nodes=tuple(session.nodes()),
        plan=session.plan, layers=tuple(layers), state=state, ops=len(session.ops()))


# -- messages (posted on the main thread, in order) -------------------------------------------

class OpStarted(Message):
    """Work began in the worker: ``op`` is None while a session is being opened."""

    def __init__(self, op: Op | None, title: str) -> None:
        super().__init__()
        self.op = op
        self.title = title


class OpProgressed(Message):
    """Progress of the running op: ``progress`` is the newest event, ``events`` every event carried.

    ``events`` has more than one event only for a batch of training steps (each with a ``loss``).
    """

    def __init__(self, op: Op | None, progress: OpProgress, events: tuple[OpProgress, ...] = ()) -> None:
        super().__init__()
        self.op = op
        self.progress = progress
        self.events = events or (progress,)


class OpFinished(Message):
    """The op was applied and recorded; ``view`` is the session as it is now."""

    def __init__(self, op: Op | None, outcome: OpOutcome | None, view: SessionView) -> None:
        super().__init__()
        self.op = op
        self.outcome = outcome
        self.view = view


class OpFailed(Message):
    """The op raised (or was cancelled); the session is as before it."""

    def __init__(self, op: Op | None, title: str, error: BaseException, cancelled: bool, trace: str = "") -> None:
        super().__init__()
        self.op = op
        self.title = title
        self.error = error
        self.cancelled = cancelled
        self.trace = trace  # the traceback of an unexpected (non-RccError) failure

    @property
    def message(self) -> str:
        from rcc.errors import RccError

        if self.cancelled:
            return f"{self.title} cancelled; the session is as it was before"
        if isinstance(self.error, RccError):
            return str(self.error)
        return f"{self.title} failed: {type(self.error).__name__}: {self.error}"


class SessionOpened(Message):
    """A session was created or opened in the worker; the screen owns it from now on."""

    def __init__(self, session: Session, view: SessionView) -> None:
        super().__init__()
        self.session = session
        self.view = view


# -- the runner -------------------------------------------------------------------------------

class OpRunner:
    """Runs session work in one thread worker at a time and delivers its messages to ``target``."""

    def __init__(self, target: MessagePump) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._queue: deque[Message] = deque()  # messages that must all arrive, in order
        self._latest: Message | None = None  # the newest layer progress, not yet delivered
        self._cancel = threading.Event()
        self._done = threading.Event()
        self._done.set()
        self._timer: Timer | None = None
        self.title = ""
        self.op: Op | None = None
        self._close_after: Session | None = None
        self._abandoned = False  # the screen is gone: whatever the work returns is closed, not shown

    # -- state seen from the main thread --
    @property
    def running(self) -> bool:
        """Work is running in the worker thread."""
        return not self._done.is_set()

    @property
    def busy(self) -> bool:
        """Work is running, or its last messages are not delivered yet."""
        with self._lock:
            pending = bool(self._queue) or self._latest is not None
        return self.running or pending

    @property
    def cancelling(self) -> bool:
        return self.running and self._cancel.is_set()

    def cancel(self) -> bool:
        """Ask the running work to stop at its next check (between layers or batches)."""
        if not self.running:
            return False
        self._cancel.set()
        return True

    async def wait(self, poll: float = 0.02, deliver: bool = True) -> None:
        """Until the worker thread has returned and its messages are delivered (or dropped)."""
        import asyncio

        while self.busy:
            if not self.running:
                if deliver:
                    self._flush()
                else:
                    self.drop()
            await asyncio.sleep(poll)

    def drop(self) -> None:
        """Forget undelivered messages (the screen is going away) and stop the timer.

        A session opened for a screen that no longer wants it is closed here (its lock released).
        """
        with self._lock:
            dropped = list(self._queue)
            self._queue.clear()
            self._latest = None
        for message in dropped:
            if isinstance(message, SessionOpened):
                message.session.close()
        if self._timer is not None:
            self._timer.pause()

    def close_when_done(self, session: Session | None) -> None:
        """The screen is gone: cancel, and close ``session`` (and any session the work opens) when it returns."""
        self._close_after = session
        self._abandoned = True
        self._cancel.set()
        if not self.running:
            self._close_pending()

    def _close_pending(self) -> None:
        with self._lock:
            session, self._close_after = self._close_after, None
            dropped = [m for m in self._queue if isinstance(m, SessionOpened)]
            self._queue.clear()
            self._latest = None
        for item in [session, *(m.session for m in dropped)]:
            if item is not None:
                item.close()

    # -- starting work (main thread) --
    def open(self, title: str, open_session: Callable[[Callable, Callable], Session]):
        """Create or open a session in the worker: ``open_session(progress, cancel) -> Session``."""

        def job(progress, cancel):
            session = open_session(progress, cancel)
            try:
                view = read_view(session)
            except BaseException:
                session.close()
                raise
            return SessionOpened(session, view)

        return self._start(None, title, job)

    def apply(self, session: Session, op: Op, title: str | None = None, previous: SessionView | None = None):
        """Apply ``op`` to ``session`` in the worker; the model is re-read only if the op can change it."""
        from rcc.session import ops as O

        reads_model = op.changes_model or isinstance(op, O.Checkout)

        def job(progress, cancel):
            outcome = session.apply(op, progress=progress, cancel=cancel)
            layers = previous.layers if previous is not None and not reads_model else None
            view = read_view(session, layers=layers, with_state=reads_model, previous=previous)
            return OpFinished(op, outcome, view)

        return self._start(op, title or op.kind.replace("_", " "), job)

    def run(self, title: str, job: Callable[[Callable, Callable], Message], op: Op | None = None):
        """Run ``job(progress, cancel) -> Message`` in the worker; its result message is delivered last."""
        return self._start(op, title, job)

    def _start(self, op: Op | None, title: str, job: Callable[[Callable, Callable], Message]):
        if self.running:
            raise RuntimeError(f"{self.title} is still running")
        if self._timer is None:
            self._timer = self.target.set_interval(PROGRESS_INTERVAL, self._flush, name="op-progress", pause=True)
        self._cancel.clear()
        self._done.clear()
        self.title, self.op = title, op
        self._push(OpStarted(op, title))
        self._timer.resume()

        def work() -> None:
            try:
                try:
                    message = job(self._progress(op), self._cancel.is_set)
                except BaseException as error:  # noqa: BLE001  (the session is as before; say why, never raise)
                    from rcc.errors import Cancelled, RccError

                    cancelled = isinstance(error, Cancelled)
                    trace = "" if isinstance(error, RccError) else traceback.format_exc()
                    message = OpFailed(op, title, error, cancelled, trace)
                with self._lock:
                    self._latest = None  # progress of finished work is stale
                self._push(message)
            finally:
                self._done.set()
                if self._abandoned:
                    self._close_pending()

        return self.target.run_worker(work, name=title, group=WORKER_GROUP, thread=True, exclusive=True,
                                      exit_on_error=False)

    # -- worker thread side --
    def _progress(self, op: Op | None):
        def report(event: OpProgress) -> None:
            message = OpProgressed(op, event)
            with self._lock:
                if event.metric is not None or event.loss is not None:  # a chart point: keep it,
                    # after the layer progress that came before it
                    if self._latest is not None:
                        self._queue.append(self._latest)
                        self._latest = None
                    self._queue.append(message)
                else:
                    self._latest = message

        return report

    def _push(self, message: Message) -> None:
        with self._lock:
            self._queue.append(message)

    # -- main thread side --
    def _flush(self) -> None:
        with self._lock:
            messages = list(self._queue)
            self._queue.clear()
            if self._latest is not None:
                messages.append(self._latest)
                self._latest = None
            idle = not messages and not self.running
        messages = batch_losses(messages)
        for message in messages:
            self.target.post_message(message)
        if idle and self._timer is not None:
            self._timer.pause()

    def deliver_now(self) -> None:
        """Deliver whatever is pending at once (used when the app shuts down)."""
        self._flush()


def _is_loss_step(message: Message) -> bool:
    return (isinstance(message, OpProgressed) and message.progress.loss is not None
            and message.progress.metric is None)


def batch_losses(messages: list[Message]) -> list[Message]:
    """``messages`` with each run of consecutive loss-only progress merged into one message, in order."""
    out: list[Message] = []
    run: list[OpProgressed] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append(run[0])
        elif run:
            events = tuple(event for message in run for event in message.events)
            out.append(OpProgressed(run[-1].op, events[-1], events))
        run.clear()

    for message in messages:
        if _is_loss_step(message):
            run.append(message)  # type: ignore[arg-type]
        else:
            close_run()
            out.append(message)
    close_run()
    return out


def describe_error(error: Any) -> str:
    """One line for a log or notification."""
    from rcc.errors import RccError

    return str(error) if isinstance(error, RccError) else f"{type(error).__name__}: {error}"
