"""Two nodes side by side: their metrics, and what differs layer by layer.

Reads only the history graph (structures and the name → hash manifests), never a tensor, so
it is cheap and needs no model. A layer is a module path: state-dict names are grouped by the
module that holds them (``a.b.weight``, ``a.b.bias``, ``a.b.weight_mask`` → ``a.b``; a
factorised ``a.b.up`` / ``a.b.down`` → ``a.b``); a tensor that is not a module's weight, bias,
factor or mask (a bare parameter such as OpenCLIP's ``visual.proj``) is a layer of its own,
with its ``_mask`` buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

from rcc.data.roles import EVAL_SPLIT, TEST_SPLIT
from rcc.session.graph import HistoryGraph, NodeRecord
from rcc.session.metric_keys import metric_key

# Leaves that belong to the module holding them; any other leaf names a layer of its own.
MODULE_LEAVES = frozenset({"weight", "bias", "up", "down", "in_proj_weight", "in_proj_bias",
                           "weight_mask", "up_mask", "down_mask",
                           "weight_scale", "up_scale", "down_scale", "input_scale"})  # int8 layers' scales
FACTOR_MASKS = ("up_mask", "down_mask")
# Metrics shown first, in this order (the eval split's, then test's); the rest follow alphabetically.
METRIC_ORDER = (metric_key(EVAL_SPLIT), metric_key(TEST_SPLIT), "size/params", "size/total", "size/bytes")


@dataclass(frozen=True)
class MetricDiff:
    """One metric of both nodes; ``difference`` = b − a when both have it."""

    key: str
    a: float | None
    b: float | None

    @property
    def difference(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass(frozen=True)
class LayerForm:
    """What one node holds at a layer: ``dense``, ``masked`` (mask shape), ``factorised``
    (rank r, factors maybe masked), ``split`` (fused q/k/v split into three layers) or ``absent``;
    ``bits`` 8 when its values are int8."""

    kind: str
    rank: int | None = None
    mask_shape: tuple[int, ...] | None = None
    masked_factors: bool = False
    bits: int | None = None
    shape: tuple[int, int] | None = None  # narrowed by structured pruning: (out, in) now …
    dense_shape: tuple[int, int] | None = None  # … and before

    def describe(self) -> str:
        return self._form() + (f", {_shape_text(self.shape)} of {_shape_text(self.dense_shape)}"
                               if self.shape is not None and self.dense_shape is not None else "")

    def _form(self) -> str:
        int8 = f" int{self.bits}" if self.bits else ""
        if self.kind == "masked" and self.mask_shape:
            return f"masked {'×'.join(map(str, self.mask_shape))}{int8}"
        if self.kind == "factorised":
            return f"rank {self.rank}" + (" masked" if self.masked_factors else "") + int8
        if self.kind == "dense" and int8:
            return int8.strip()
        if self.kind == "split":
            return "split q/k/v"
        if self.kind == "absent":
            return "—"
        return self.kind


def _shape_text(shape: tuple[int, int]) -> str:
    return "×".join(map(str, shape))


@dataclass(frozen=True)
class LayerDiff:
    """A layer whose tensors differ between the nodes; ``changed`` lists the differing leaves
    (hash differs, or present in one node only); ``bytes_a`` / ``bytes_b`` are their sizes in
    the store (what a checkout reads); ``stored_a`` / ``stored_b`` what the compressed export
    writes for the whole layer (kept values, masks packed 8 per byte), None without a store."""

    path: str
    a: LayerForm
    b: LayerForm
    changed: tuple[str, ...]
    bytes_a: int
    bytes_b: int
    stored_a: int | None = None
    stored_b: int | None = None

    @property
    def form_changed(self) -> bool:
        return self.a != self.b


@dataclass(frozen=True)
class NodeComparison:
    """Nodes ``a`` and ``b``: records, metrics side by side, per-layer differences and totals."""

    a: int
    b: int
    node_a: NodeRecord
    node_b: NodeRecord
    common_ancestor: int | None
    metrics: tuple[MetricDiff, ...]
    layers: tuple[LayerDiff, ...]
    tensors_changed: int  # state-dict names whose hash differs or that only one node has
    bytes_a: int  # bytes of a's differing tensors
    bytes_b: int  # bytes of b's differing tensors

    @property
    def bytes_changed(self) -> int:
        """Bytes a checkout from a to b reads from the store (b's differing tensors)."""
        return self.bytes_b


def layer_of(name: str) -> str:
    """The layer a state-dict name belongs to: its module path, or itself for a bare tensor."""
    holder, _, leaf = name.rpartition(".")
    if leaf in MODULE_LEAVES:
        return holder or leaf
    if leaf.endswith("_mask"):  # the mask of a bare parameter: ``visual.proj_mask`` → ``visual.proj``
        return f"{holder}.{leaf[:-len('_mask')]}" if holder else leaf[:-len("_mask")]
    return name


def layer_form(path: str, structure: dict, names: set[str]) -> LayerForm:
    """What a node with ``structure`` and state-dict ``names`` (this layer's) holds at ``path``."""
    if path in structure.get("split", []):
        return LayerForm("split")
    factorised = structure.get("factorised", {})
    masks = structure.get("masks", {})
    bits = structure.get("quantized", {}).get(path, {}).get("bits")
    resized = structure.get("resized", {}).get(path)
    shapes = {} if resized is None else {"shape": tuple(resized["shape"]), "dense_shape": tuple(resized["dense"])}
    if path in factorised:
        return LayerForm("factorised", rank=int(factorised[path]),
                         masked_factors=any(f"{path}.{m}" in masks for m in FACTOR_MASKS), bits=bits, **shapes)
    for mask in (f"{path}.weight_mask", f"{path}_mask"):
        if mask in masks:
            return LayerForm("masked", mask_shape=tuple(int(s) for s in masks[mask]), bits=bits, **shapes)
    return LayerForm("dense" if names else "absent", bits=bits, **shapes)


def _metric_sort_key(key: str) -> tuple[int, str]:
    return (METRIC_ORDER.index(key), "") if key in METRIC_ORDER else (len(METRIC_ORDER), key)


def _common_ancestor(records: dict[int, NodeRecord], a: int, b: int) -> int | None:
    seen = set()
    node: int | None = a
    while node is not None and node not in seen:
        seen.add(node)
        node = records[node].parent if node in records else None
    node = b
    while node is not None:
        if node in seen:
            return node
        node = records[node].parent if node in records else None
    return None


def export_bytes(names: set[str], tensors: dict[str, tuple[str, int]], store) -> int:
    """Bytes the compressed export writes for these state-dict entries of one layer.

    A tensor ``X`` with a keep-mask ``X_mask`` stores its kept entries and the mask packed 8 per
    byte (its mask blob is read to count them); the mask buffer itself is not stored apart.
    """
    total = 0
    for name in names:
        if name.endswith("_mask") and name[: -len("_mask")] in names:
            continue
        digest, size = tensors[name]
        mask = f"{name}_mask"
        if mask not in names:
            total += size
            continue
        keep = store.get(tensors[mask][0])
        numel = max(keep.numel(), 1)
        total += size * int(keep.sum()) // numel + (keep.numel() + 7) // 8
    return total


def compare_nodes(graph: HistoryGraph, a: int, b: int, store=None) -> NodeComparison:
    """Metrics (every key of either node, b − a) and the layers whose tensors differ.

    With the session's ``store`` the layers' export sizes are counted too (reading their masks).
    """
    node_a, node_b = graph.node(a), graph.node(b)  # raise RccError for an unknown node
    records = {record.id: record for record in graph.nodes()}
    metrics = tuple(MetricDiff(key, node_a.metrics.get(key), node_b.metrics.get(key))
                    for key in sorted(set(node_a.metrics) | set(node_b.metrics), key=_metric_sort_key))
    state_a, state_b = graph.state(a), graph.state(b)
    hashes = graph.node_hashes([a, b])
    tensors_a, tensors_b = hashes[a], hashes[b]
    differing = sorted(name for name in set(tensors_a) | set(tensors_b)
                       if tensors_a.get(name, (None,))[0] != tensors_b.get(name, (None,))[0])
    by_layer: dict[str, list[str]] = {}
    for name in differing:
        by_layer.setdefault(layer_of(name), []).append(name)
    names_a: dict[str, set[str]] = {}
    names_b: dict[str, set[str]] = {}
    for name in tensors_a:
        names_a.setdefault(layer_of(name), set()).add(name)
    for name in tensors_b:
        names_b.setdefault(layer_of(name), set()).add(name)
    layers = []
    for path, names in sorted(by_layer.items()):
        prefix = len(path) + 1
        changed = tuple(name[prefix:] if name.startswith(path + ".") else name.rpartition(".")[2]
                        for name in names)
        layers.append(LayerDiff(
            path=path,
            a=layer_form(path, state_a.structure, names_a.get(path, set())),
            b=layer_form(path, state_b.structure, names_b.get(path, set())),
            changed=changed,
            bytes_a=sum(tensors_a[name][1] for name in names if name in tensors_a),
            bytes_b=sum(tensors_b[name][1] for name in names if name in tensors_b),
            stored_a=None if store is None else export_bytes(names_a.get(path, set()), tensors_a, store),
            stored_b=None if store is None else export_bytes(names_b.get(path, set()), tensors_b, store),
        ))
    return NodeComparison(
        a=a, b=b, node_a=node_a, node_b=node_b, common_ancestor=_common_ancestor(records, a, b),
        metrics=metrics, layers=tuple(layers), tensors_changed=len(differing),
        bytes_a=sum(layer.bytes_a for layer in layers), bytes_b=sum(layer.bytes_b for layer in layers))
