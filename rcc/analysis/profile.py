"""Where a cascade run spends time and memory: per stage attempt and per layer.

A measured profile wraps ``run_cascade``'s three hooks: the layer progress callback (called
as each layer starts), the evaluator (its start and end), and ``on_attempt`` (an attempt's
end). Between them, with t the clock at each event:
  layer i of an attempt   = t(next layer starts, or the evaluation starts) − t(layer i starts)
  stage setup             = t(first layer starts) − t(attempt starts)   (spectra, rank allocation)
  evaluation              = t(evaluation ends) − t(evaluation starts)
  setup of the run        = t(dense evaluation starts) − t(run starts)  (calibration statistics)
Memory is the resident set size read at every event (``/proc/self/statm``; so peaks are sampled
at layer granularity) plus the process's true peak (``getrusage`` ru_maxrss), and on CUDA the
allocator's peak per attempt. ``tracemalloc`` is not used: it sees only Python's allocator,
not torch's tensor memory, and slows the run down.

A recorded profile reads a session's ``run_cascade`` / ``run_stage`` op result instead: per
attempt times and sizes, as recorded; no per-layer times or memory.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from rcc.analysis.errors import AnalysisError
from rcc.compression.calibration import CalibrationData
from rcc.compression.cascade import CALIBRATION_PHASE, Attempt, CascadeConfig, CascadeResult, Evaluator, run_cascade
from rcc.compression.plan import CompressionPlan
from rcc.eval.encode import CancelCheck
from rcc.models.adapter import VLModel


@dataclass(frozen=True)
class LayerTiming:
    layer: str
    seconds: float
    rss_bytes: int  # resident set size when the layer started


@dataclass(frozen=True)
class AttemptProfile:
    stage: str
    step: int
    attempt: int
    fraction: float
    accepted: bool
    seconds: float  # the whole attempt: setup + layers + evaluation
    setup_seconds: float | None
    evaluate_seconds: float | None
    layers: tuple[LayerTiming, ...] = ()
    peak_rss_bytes: int | None = None  # sampled at layer boundaries
    peak_cuda_bytes: int | None = None


@dataclass(frozen=True)
class RunProfile:
    """Per attempt (and layer) times and memory of one run; ``source`` says how they were obtained."""

    source: str  # "measured" or "recorded op <seq>"
    total_seconds: float
    setup_seconds: float | None  # calibration statistics and the dense evaluation's start
    attempts: tuple[AttemptProfile, ...]
    peak_rss_bytes: int | None = None  # the process's peak (ru_maxrss) at the end of the run
    stage_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)

    def slowest_layers(self, count: int = 10) -> list[tuple[str, str, float]]:
        """(stage, layer, seconds) of the ``count`` slowest layer steps."""
        rows = [(a.stage, t.layer, t.seconds) for a in self.attempts for t in a.layers]
        return sorted(rows, key=lambda row: row[2], reverse=True)[:count]


def profile_from_dict(data: dict) -> RunProfile:
    """Read back ``RunProfile.as_dict()``; anything malformed raises AnalysisError."""
    try:
        attempts = tuple(AttemptProfile(**{**a, "layers": tuple(LayerTiming(**t) for t in a.get("layers", ()))})
                         for a in data["attempts"])
        return RunProfile(**{**data, "attempts": attempts, "stage_seconds": dict(data.get("stage_seconds", {}))})
    except (KeyError, TypeError, ValueError) as error:
        raise AnalysisError(f"profile data is malformed ({type(error).__name__}: {error})") from None


def current_rss() -> int:
    """Resident set size of this process in bytes (0 where /proc is not available)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss() -> int:
    """The process's peak resident set size in bytes (ru_maxrss: KiB on Linux, bytes on macOS)."""
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(value if sys.platform == "darwin" else value * 1024)


def _stage_totals(attempts) -> dict[str, float]:
    totals: dict[str, float] = {}
    for attempt in attempts:
        totals[attempt.stage] = totals.get(attempt.stage, 0.0) + attempt.seconds
    return totals


class _Recorder:
    """Collects the hook events of one run and turns each attempt's events into an AttemptProfile."""

    def __init__(self, cuda: bool):
        self.cuda = cuda
        self.start = time.perf_counter()
        self.boundary = self.start  # when the current attempt (or the setup) began
        self.ticks: list[tuple[float, str, int]] = []  # (time, layer, rss)
        self.eval_span: tuple[float, float] | None = None
        self.setup_seconds: float | None = None
        self.attempts: list[AttemptProfile] = []
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def progress(self, stage: str, i: int, total: int, name: str) -> None:
        if stage == CALIBRATION_PHASE:  # batches of the calibration pass: setup, not a layer's work
            return
        self.ticks.append((time.perf_counter(), name, current_rss()))

    def wrap(self, evaluate: Evaluator) -> Evaluator:
        def timed(model: VLModel) -> float:
            began = time.perf_counter()
            value = evaluate(model)
            ended = time.perf_counter()
            if self.setup_seconds is None:  # the first call is the dense evaluation, before any attempt
                self.setup_seconds = began - self.start
                self.boundary = ended
            else:
                self.eval_span = (began, ended)
            return value

        return timed

    def on_attempt(self, attempt: Attempt) -> None:
        now = time.perf_counter()
        eval_span = self.eval_span
        end_of_work = eval_span[0] if eval_span else now
        layers = []
        for i, (began, name, rss) in enumerate(self.ticks):
            ended = self.ticks[i + 1][0] if i + 1 < len(self.ticks) else end_of_work
            layers.append(LayerTiming(name, ended - began, rss))
        samples = [rss for _, _, rss in self.ticks] + [current_rss()]
        self.attempts.append(AttemptProfile(
            stage=attempt.stage, step=attempt.step, attempt=attempt.attempt, fraction=attempt.fraction,
            accepted=attempt.accepted, seconds=attempt.seconds,
            setup_seconds=(self.ticks[0][0] - self.boundary) if self.ticks else None,
            evaluate_seconds=(eval_span[1] - eval_span[0]) if eval_span else None,
            layers=tuple(layers), peak_rss_bytes=max(samples) or None,
            peak_cuda_bytes=int(torch.cuda.max_memory_allocated()) if self.cuda else None))
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.ticks, self.eval_span, self.boundary = [], None, now


def profile_cascade(
    model: VLModel, plan: CompressionPlan, evaluate: Evaluator, calibration: CalibrationData,
    preserved: CalibrationData | None = None, config: CascadeConfig = CascadeConfig(),
    cancel: CancelCheck | None = None, base: VLModel | None = None,
) -> tuple[CascadeResult, RunProfile]:
    """Run the cascade (compressing ``model`` in place, as ``run_cascade`` does) and profile it."""
    recorder = _Recorder(cuda=model.device.type == "cuda")
    result = run_cascade(model, plan, recorder.wrap(evaluate), calibration, preserved, config,
                         progress=recorder.progress, cancel=cancel, on_attempt=recorder.on_attempt, base=base)
    attempts = tuple(recorder.attempts)
    return result, RunProfile(source="measured", total_seconds=time.perf_counter() - recorder.start,
                              setup_seconds=recorder.setup_seconds, attempts=attempts, peak_rss_bytes=peak_rss(),
                              stage_seconds=_stage_totals(attempts))


def profile_from_result(result: dict, source: str) -> RunProfile:
    """A profile from a recorded ``run_cascade`` result (``CascadeResult.as_dict()``) or ``run_stage`` result."""
    if "attempts" in result:
        try:
            attempts = tuple(AttemptProfile(
                stage=a["stage"], step=int(a["step"]), attempt=int(a["attempt"]), fraction=float(a["fraction"]),
                accepted=bool(a["accepted"]), seconds=float(a["seconds"]), setup_seconds=None,
                evaluate_seconds=None) for a in result["attempts"])
        except (KeyError, TypeError, ValueError) as error:
            raise AnalysisError(f"{source}: the recorded attempts are malformed ({error})") from None
        return RunProfile(source=source, total_seconds=float(result.get("seconds", 0.0)), setup_seconds=None,
                          attempts=attempts, stage_seconds=_stage_totals(attempts))
    if "seconds" in result:
        return RunProfile(source=source, total_seconds=float(result["seconds"]), setup_seconds=None, attempts=())
    raise AnalysisError(f"{source} has no timings; allowed: a run_cascade, run_stage or train op")


def profile_session_op(session_dir, seq: int | None = None) -> RunProfile:
    """The profile of a session's op ``seq`` (default: its last run_cascade / run_stage op), as recorded."""
    from rcc.session.session import Session

    with Session.open(session_dir, read_only=True) as session:
        ops = session.ops()
    timed = [op for op in ops if op.kind in ("run_cascade", "run_stage", "train")]
    if seq is None:
        if not timed:
            raise AnalysisError(f"session {str(session_dir)!r} has no run_cascade, run_stage or train op to profile")
        record = timed[-1]
    else:
        found = [op for op in ops if op.seq == seq]
        if not found:
            raise AnalysisError(f"op {seq} is not in session {str(session_dir)!r}; allowed: 1..{len(ops)}")
        record = found[0]
    profile = profile_from_result(record.result, f"recorded op {record.seq} ({record.kind})")
    # The op's own wall time covers evaluation and saving too; keep the larger of the two.
    return RunProfile(source=profile.source, total_seconds=max(profile.total_seconds, record.seconds),
                      setup_seconds=None, attempts=profile.attempts, stage_seconds=profile.stage_seconds)
