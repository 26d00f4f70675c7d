"""A session without a model, for the app's widget, key and snapshot tests (``RccApp(session_factory=...)``).

``FakeSession`` has the surface the app uses (``rcc_tui.workbench_session.WorkbenchSession``):
ops, nodes, a plan, a view. Its layers are rcc-mini's inventory (the same names, towers, blocks,
kinds and shapes, written out here), its plan edits go through the engine's own plan code
(``rcc.services.edit_preview``, ``resolve_plan``), so a value the engine refuses is refused here
too. What it does not have is a model: a stage or cascade "compresses" by arithmetic — each
selected target stores ``(1 − sparsity)`` of its values plus its mask bits, as
``size_metrics`` counts — and its accuracy drops by ``sparsity / 10`` per layer. Every long op
reports the phases a real one does (calibration, layers, evaluate, saving), can be cancelled
between any two events, and can be held at a gate (a semaphore: each event takes one permit) so
that a test steps it event by event.

The app's real end-to-end tests (tests/test_tui_app.py) drive a real rcc-mini session.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from rcc.compression.plan import CompressionPlan, resolve_plan
from rcc.errors import Cancelled, RccError
from rcc.schema.layers import LayerInfo
from rcc.session import ops as O
from rcc.session.graph import NodeRecord
from rcc.session.progress import OpProgress
from rcc.session.session import OpOutcome
from rcc_tui.session_view import LayerState, SessionView

BYTES_PER_VALUE = 4


def rcc_mini_layers() -> tuple[LayerInfo, ...]:
    """rcc-mini's 62-layer inventory: 4 vision blocks (width 128), 6 MiniLM text blocks (384), two projections."""
    layers = []
    for block in range(4):
        base = f"visual.transformer.resblocks.{block}"
        fused = f"{base}.attn.in_proj_weight"
        for i, part in enumerate("qkv"):
            layers.append(LayerInfo(f"{base}.attn.in_proj.{part}", "vision", block, f"attn_{part}", (128, 128), fused,
                                    rows=(128 * i, 128 * (i + 1))))
        layers.append(LayerInfo(f"{base}.attn.out_proj", "vision", block, "attn_out", (128, 128),
                                f"{base}.attn.out_proj.weight"))
        layers.append(LayerInfo(f"{base}.mlp.c_fc", "vision", block, "mlp_in", (512, 128), f"{base}.mlp.c_fc.weight"))
        layers.append(LayerInfo(f"{base}.mlp.c_proj", "vision", block, "mlp_out", (128, 512),
                                f"{base}.mlp.c_proj.weight"))
    layers.append(LayerInfo("visual.proj", "vision", None, "projection", (128, 128), "visual.proj", transposed=True))
    for block in range(6):
        base = f"text.transformer.encoder.layer.{block}"
        for name, kind, shape in (("attention.self.query", "attn_q", (384, 384)),
                                  ("attention.self.key", "attn_k", (384, 384)),
                                  ("attention.self.value", "attn_v", (384, 384)),
                                  ("attention.output.dense", "attn_out", (384, 384)),
                                  ("intermediate.dense", "mlp_in", (1536, 384)),
                                  ("output.dense", "mlp_out", (384, 1536))):
            layers.append(LayerInfo(f"{base}.{name}", "text", block, kind, shape, f"{base}.{name}.weight"))
    layers.append(LayerInfo("text.proj", "text", None, "projection", (128, 384), "text.proj.weight"))
    return tuple(layers)


LAYERS = rcc_mini_layers()
ROOT_BYTES = 91_412_345  # about rcc-mini's 22.8M values in float32
ROOT_EVAL, ROOT_TEST = 0.9806, 0.9833
EVAL_SPLIT, TEST_SPLIT = "val", "test"  # digits' data roles: calibration reads train
EVAL_KEY = f"{EVAL_SPLIT}/primary"  # a node's eval metric, named by its split


@dataclass
class FakeSession:
    """An in-memory session; ``gate`` (when set) holds every long op before each event until a test releases it."""

    directory: Path
    layers: tuple[LayerInfo, ...] = LAYERS
    nodes: list[NodeRecord] = field(default_factory=list)
    head: int | None = None
    plan: CompressionPlan = field(default_factory=CompressionPlan)
    state: dict[str, LayerState] = field(default_factory=dict)
    applied: list[O.Op] = field(default_factory=list)
    events: list[OpProgress] = field(default_factory=list)  # every progress event reported
    gate: threading.Semaphore | None = None
    step_seconds: float = 0.0  # a pause per progress event (a run a test can watch)
    closed: bool = False
    engine = None  # no live model: use cases that need one (scans) refuse

    def __post_init__(self) -> None:
        if not self.nodes:
            self.nodes = [NodeRecord(1, None, 1, "load_model", 1.0, 22_853_086, "load rcc-mini on digits",
                                     metrics={EVAL_KEY: ROOT_EVAL, "size/params": 22_853_086,
                                              "size/bytes": ROOT_BYTES}, eval_split=EVAL_SPLIT)]
            self.head = 1
        self._states = {node.id: {} for node in self.nodes}  # node → layer states

    # -- what the app reads --
    def view(self, layers: tuple | None = None, with_state: bool = True, previous: SessionView | None = None
             ) -> SessionView:
        state = {layer.name: self.state.get(layer.name) or LayerState("dense", 0.0, None, layer.params,
                                                                      layer.params * BYTES_PER_VALUE,
                                                                      layer.params * BYTES_PER_VALUE)
                 for layer in self.layers}
        return SessionView(directory=str(self.directory), model="rcc-mini", data="digits", eval_split=EVAL_SPLIT,
                           head=self.head, nodes=tuple(self.nodes), plan=self.plan, layers=self.layers,
                           state=state, ops=len(self.applied), test_split=TEST_SPLIT)

    def close(self) -> None:
        self.closed = True

    # -- ops --
    def apply(self, op: O.Op, progress=None, cancel=None) -> OpOutcome:
        handler = getattr(self, f"_{op.kind}", None)
        if handler is None:
            raise RccError(f"the fake session cannot apply {op.kind!r}")
        before = self.head
        started = time.perf_counter()
        new_node, metrics, result, unchanged = handler(op, progress or (lambda event: None), cancel or (lambda: False))
        self.applied.append(op)
        return OpOutcome(seq=len(self.applied) + 1, op=op, node_before=before, node_after=self.head,
                         new_node=new_node, seconds=time.perf_counter() - started, metrics=metrics, result=result,
                         unchanged=unchanged)

    def _tick(self, progress, cancel, event: OpProgress) -> None:
        if self.gate is not None:
            while not self.gate.acquire(timeout=0.01):
                if cancel():
                    raise Cancelled("cancelled by the user")
        if cancel():
            raise Cancelled("cancelled by the user")
        progress(event)
        self.events.append(event)
        if self.step_seconds:
            time.sleep(self.step_seconds)

    def _edit_layers(self, op: O.EditLayers, progress, cancel):
        from rcc.compression.plan_edits import edited_plan

        plan = edited_plan(self.plan, op.layers, op.settings, op.reset, op.budget)
        resolve_plan(plan, self.layers)
        self.plan = plan
        return None, {}, {}, False

    def _compress(self, op: O.Op, layers: tuple[str, ...], progress, cancel, evaluated_attempts: bool):
        resolved = resolve_plan(self.plan, self.layers)
        targets = [layer for layer in self.layers if (not layers or layer.name in layers)
                   and resolved[layer.name].selected]
        for done in range(0, 5):
            self._tick(progress, cancel, OpProgress(op.kind, "calibration", done, 4, "images"))
        parent = self._node(self.head)
        state = dict(self.state)
        for i, layer in enumerate(targets):
            self._tick(progress, cancel, OpProgress(op.kind, "dare", i + 1, len(targets), layer.name))
            sparsity = resolved[layer.name].sparsity
            kept = round(layer.params * (1 - sparsity))
            state[layer.name] = LayerState("masked", sparsity, None, kept,
                                           kept * BYTES_PER_VALUE + (layer.params + 7) // 8,
                                           layer.params * BYTES_PER_VALUE)
        saved_bytes = sum((self.state.get(t.name).stored_bytes if t.name in self.state else t.params * 4)
                          - state[t.name].stored_bytes for t in targets)
        metric = parent.metrics[EVAL_KEY] - sum(resolved[t.name].sparsity for t in targets) / 10
        if evaluated_attempts and targets:
            self._tick(progress, cancel, OpProgress(op.kind, "dare", detail="step 1 attempt 1", metric=metric,
                                                    accepted=True,
                                                    stored_bytes=parent.metrics["size/bytes"] - saved_bytes))
        for done in range(0, 4):
            self._tick(progress, cancel, OpProgress(op.kind, "evaluate", done * 120, 360, "images"))
        self._tick(progress, cancel, OpProgress(op.kind, "saving", 1, 1, "tensors"))
        if state == self.state:
            return None, {EVAL_KEY: parent.metrics[EVAL_KEY]}, {"unchanged": True}, True
        self.state = state
        values = parent.metrics["size/params"] - sum(t.params - state[t.name].stored for t in targets)
        return self._new_node(op.kind, {EVAL_KEY: round(metric, 4), "size/params": values,
                                        "size/bytes": parent.metrics["size/bytes"] - saved_bytes},
                              f"{op.kind}: {len(targets)} layers")

    def _run_stage(self, op: O.RunStage, progress, cancel):
        resolved = resolve_plan(self.plan, self.layers)
        if not any(resolved[name].selected for name in (op.layers or [layer.name for layer in self.layers])):
            raise RccError(f"stage {op.stage!r} changed no layer: the plan gives no selected layer a sparsity > 0")
        return self._compress(op, op.layers, progress, cancel, evaluated_attempts=False)

    def _run_cascade(self, op: O.RunCascade, progress, cancel):
        return self._compress(op, op.layers, progress, cancel, evaluated_attempts=True)

    def _train(self, op: O.Train, progress, cancel):
        parent = self._node(self.head)
        for step in range(1, op.steps + 1):
            self._tick(progress, cancel, OpProgress(op.kind, "train", step, op.steps, loss=1.0 / step))
            if op.eval_every and step % op.eval_every == 0:
                self._tick(progress, cancel, OpProgress(op.kind, "train", step, op.steps,
                                                        metric=parent.metrics[EVAL_KEY] + step / 1e4))
        return self._new_node(op.kind, {**parent.metrics, EVAL_KEY: parent.metrics[EVAL_KEY] + 0.001},
                              f"train {op.steps} steps")

    def _checkout(self, op: O.Checkout, progress, cancel):
        self._node(op.node)
        self._tick(progress, cancel, OpProgress(op.kind, "checkout", 1, 1, f"blobs of node {op.node}"))
        self.head = op.node
        self.state = dict(self._states.get(op.node, {}))
        return None, {}, {"bytes_loaded": 0}, False

    def _label(self, op: O.Label, progress, cancel):
        node = self._node(op.node)
        self.nodes = [replace(n, label=op.label, note=op.note) if n.id == node.id else n for n in self.nodes]
        return None, {}, {}, False

    def _evaluate(self, op: O.Evaluate, progress, cancel):
        if op.split not in ("train", EVAL_SPLIT, TEST_SPLIT):
            raise RccError(f"unknown split '{op.split}' for dataset 'digits'; allowed: train, val, test")
        for done in range(0, 4):
            self._tick(progress, cancel, OpProgress(op.kind, "evaluate", done * 120, 360, "images"))
        node = self._node(self.head)
        metrics = {f"{op.split}/primary": ROOT_TEST - (ROOT_EVAL - node.metrics[EVAL_KEY])}
        self.nodes = [replace(n, metrics={**n.metrics, **metrics}) if n.id == node.id else n for n in self.nodes]
        return None, metrics, {}, False

    def _export(self, op: O.Export, progress, cancel):
        out = self.directory / "exports" / op.out
        return None, {}, {"node": op.node or self.head, "out": str(out), "total_bytes": 1, "dense_bytes": 1}, False

    # -- helpers --
    def _node(self, node: int | None) -> NodeRecord:
        found = next((n for n in self.nodes if n.id == node), None)
        if found is None:
            raise RccError(f"node {node} does not exist; allowed: 1 to {len(self.nodes)}")
        return found

    def _new_node(self, kind: str, metrics: dict, summary: str):
        node = NodeRecord(len(self.nodes) + 1, self.head, len(self.applied) + 2, kind, time.time(),
                          int(metrics.get("size/params", 0)), summary, metrics=metrics, eval_split=EVAL_SPLIT)
        self.nodes.append(node)
        self.head = node.id
        self._states[node.id] = dict(self.state)
        return node.id, metrics, {}, False


def fake_factory(session: FakeSession):
    """A session factory for ``RccApp`` that hands the app ``session``."""
    return lambda progress, cancel: session


def fake_app(tmp_path: Path, session: FakeSession | None = None, **kwargs):
    """An ``RccApp`` on a fake session (a new one in ``tmp_path`` unless given); returns (app, session)."""
    from rcc_tui.app import RccApp

    session = session or FakeSession(tmp_path / "session")
    return RccApp(session_factory=fake_factory(session), device="cpu", **kwargs), session


def branched(directory: Path) -> FakeSession:
    """A fake session with five nodes and a branch: root → 2 → 3 (“dare-50”), root → 4 → 5 (the head, with a
    test metric)."""
    session = FakeSession(directory)
    root = session.nodes[0]

    def child(node_id: int, parent: int, kind: str, eval_: float, stored: int, label: str = "",
              test: float | None = None) -> NodeRecord:
        metrics = {EVAL_KEY: eval_, "size/params": stored // 4, "size/bytes": stored}
        if test is not None:
            metrics[f"{TEST_SPLIT}/primary"] = test
        return NodeRecord(node_id, parent, node_id, kind, 1.0 + node_id, stored // 4, f"{kind} on 2 layers",
                          label=label, metrics=metrics, eval_split=EVAL_SPLIT)

    session.nodes = [root, child(2, 1, "run_stage", 0.9722, 89_300_000),
                     child(3, 2, "run_cascade", 0.9667, 85_100_000, label="dare-50"),
                     child(4, 1, "apply_trial", 0.9750, 90_900_000),
                     child(5, 4, "train", 0.9778, 90_900_000, label="recovered", test=0.9750)]
    session.head = 5
    session._states = {node.id: {} for node in session.nodes}
    return session
