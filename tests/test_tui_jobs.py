"""The app's job runner (rcc_tui.workers): one way to run background work, one progress path, one cancel path.

Each test runs the runner in a bare Textual app with made-up jobs; no engine is involved.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from textual.app import App

from rcc.errors import Cancelled
from rcc.session.progress import OpProgress
from rcc_tui.workers import BACKGROUND, Job, JobFailed, JobFinished, JobProgressed, JobRunner, JobStarted

pytestmark = pytest.mark.asyncio


class Sink(App):
    """An app whose runner delivers every message to the app itself."""

    def __init__(self) -> None:
        super().__init__()
        self.got: list = []

    def on_mount(self) -> None:
        self.jobs = JobRunner(self)
        self.jobs.subscribe(self)

    def on_job_started(self, message) -> None:
        self.got.append(message)

    def on_job_progressed(self, message) -> None:
        self.got.append(message)

    def on_job_finished(self, message) -> None:
        self.got.append(message)

    def on_job_failed(self, message) -> None:
        self.got.append(message)


async def test_progress_is_coalesced_but_chart_points_and_the_end_always_arrive_in_order():
    def work(context):
        for i in range(3000):  # a fast stage: far more events than a screen can show
            context.progress(OpProgress(op="run_cascade", phase="dare", done=i + 1, total=3000, detail=f"layer {i}"))
            if i % 500 == 0:
                context.progress(OpProgress(op="run_cascade", phase="dare", metric=i / 3000, params=i))
            if i % 1000 == 999:
                time.sleep(0.15)  # let the timer deliver a few ticks
        return "done"

    app = Sink()
    async with app.run_test() as pilot:
        job = app.jobs.start(Job("a fast job", work))
        await asyncio.wait_for(app.jobs.wait(job), 30)
        await pilot.pause()
        assert not app.jobs.busy
    assert isinstance(app.got[0], JobStarted) and isinstance(app.got[-1], JobFinished)
    assert app.got[-1].result == "done" and app.got[-1].job is job and not job.running
    progress = [m.event for m in app.got if isinstance(m, JobProgressed)]
    assert [p.metric for p in progress if p.metric is not None] == [i / 3000 for i in range(0, 3000, 500)]
    layer = [p.done for p in progress if p.metric is None]
    assert 1 <= len(layer) < 100 and layer == sorted(layer)  # coalesced, never out of order


async def test_a_cancelled_job_ends_as_a_cancelled_failure_and_an_error_as_a_failure_with_its_reason():
    def long(context):
        for _ in range(1000):
            if context.cancelled():
                raise Cancelled("cancelled between layers")
            time.sleep(0.01)
        raise AssertionError("never cancelled")

    def broken(context):
        raise ValueError("a bug")

    app = Sink()
    async with app.run_test() as pilot:
        job = app.jobs.start(Job("a long job", long))
        await pilot.pause(0.1)
        assert app.jobs.session_job is job and app.jobs.cancel() and job.cancelling
        await asyncio.wait_for(app.jobs.wait(), 30)
        app.jobs.start(Job("a broken job", broken))
        await asyncio.wait_for(app.jobs.wait(), 30)
        await pilot.pause()
        assert not app.jobs.cancel()  # nothing runs: nothing to cancel
    cancelled, failed = [m for m in app.got if isinstance(m, JobFailed)]
    assert cancelled.cancelled and cancelled.message == "a long job cancelled; the session is as it was before"
    assert not cancelled.trace
    assert not failed.cancelled and failed.message == "a broken job failed: ValueError: a bug"
    assert "ValueError" in failed.trace


async def test_one_job_holds_the_session_while_read_only_jobs_run_beside_it():
    release = threading.Event()

    def held(context):
        release.wait(10)
        return "op"

    app = Sink()
    async with app.run_test() as pilot:
        op = app.jobs.start(Job("an op", held))
        with pytest.raises(RuntimeError, match="an op is still running"):
            app.jobs.start(Job("a second op", held))
        read = app.jobs.start(Job("a read", lambda context: "listing", lane=BACKGROUND, kind="read"))
        await asyncio.wait_for(app.jobs.wait(read), 10)  # the read ends while the op still holds the session
        assert op.running and app.jobs.session_job is op and app.jobs.running(BACKGROUND) == []
        release.set()
        await asyncio.wait_for(app.jobs.wait(), 10)
        await pilot.pause()
    finished = [m.result for m in app.got if isinstance(m, JobFinished)]
    assert finished == ["listing", "op"]


async def test_closing_the_runner_cancels_and_releases_what_a_job_still_returns():
    released, after = [], []
    started = threading.Event()

    def opening(context):
        started.set()
        time.sleep(0.3)  # not cancellable: it finishes after the runner was closed
        return "a session"

    app = Sink()
    async with app.run_test() as pilot:
        app.jobs.start(Job("open", opening, kind="open", discard=released.append))
        while not started.is_set():  # the worker thread starts from the event loop: wait without blocking it
            await pilot.pause(0.01)
        app.jobs.close(then=lambda: after.append("closed"))
        assert after == []  # a job still runs: what comes after waits for it
        for _ in range(100):
            if after:
                break
            await pilot.pause(0.05)
    assert released == ["a session"] and after == ["closed"]  # released, never delivered
    assert not any(isinstance(m, JobFinished) for m in app.got)


async def test_loss_events_are_never_dropped_and_arrive_batched_in_order():
    steps = 1000

    def work(context):
        progress = context.progress
        progress(OpProgress(op="train", phase="teacher", detail="node 1"))
        for step in range(1, steps + 1):  # a fast run: far more steps than a screen can draw one by one
            progress(OpProgress(op="train", phase="train", done=step, total=steps, loss=1.0 / step))
            if step % 250 == 0:
                progress(OpProgress(op="train", phase="train", done=step, total=steps, metric=step / steps))
            if step % 400 == 0:
                time.sleep(0.15)  # let the timer deliver a few ticks
        progress(OpProgress(op="evaluate", phase="evaluate"))
        return "trained"

    app = Sink()
    async with app.run_test() as pilot:
        app.jobs.start(Job("a fast training job", work))
        await asyncio.wait_for(app.jobs.wait(), 30)
        await pilot.pause()
    messages = [m for m in app.got if isinstance(m, JobProgressed)]
    events = [event for m in messages for event in m.events]
    assert [e.done for e in events if e.loss is not None] == list(range(1, steps + 1))
    assert [e.loss for e in events if e.loss is not None] == [1.0 / s for s in range(1, steps + 1)]
    # Each accuracy point comes right after the loss of the step it evaluated.
    order = [(e.done, "metric" if e.metric is not None else "loss") for e in events
             if e.loss is not None or e.metric is not None]
    for step in (250, 500, 750, 1000):
        assert order[order.index((step, "loss")) + 1] == (step, "metric")
    batches = [m for m in messages if m.event.loss is not None]
    assert len(batches) < 50  # one message per run of steps within a tick, not one per step
    assert all(m.event is m.events[-1] for m in messages)
    assert isinstance(app.got[-1], JobFinished) and app.got[-1].result == "trained"
