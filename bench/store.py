"""Checkpoint store: checkout (rollback) time and disk use, on the OpenCLIP ViT-B-32 architecture.

    python -m bench.store [--nodes 6] [--layers 3] [--repeats 5]

Random weights (151M parameters). The root node stores the whole model; then each node
changes a few layers of the root (``--layers`` Linear layers of one block pruned to 50 % with
a mask, and one factorised to rank 64), as a compression op does. For every pair of sibling
nodes A → B, checkout loads only the tensors that differ (A's layers back to the root, B's
to B) and checks each blob's hash. Reference: ``safetensors.torch.load_file`` of a file
holding exactly those tensors (plain load; and load + copy into the model, the same work
a checkout does). Disk: bytes the store and database grew by per node vs the bytes of the
tensors that node changed. Goals: checkout ≤ 1.2× the plain load; disk ≤ 1.1× changed bytes.

A blob is hashed on its first read after it was written and trusted afterwards while its file
is unchanged (rcc.session.store): the table's checkout column is the median of the repeats
(verified blobs); "first" is each pair's first checkout, which hashes blobs not yet verified.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from bench.report import report  # noqa: E402
from rcc.compression.layers import factorise, set_mask  # noqa: E402
from rcc.models.registry import load_model  # noqa: E402
from rcc.session.graph import HistoryGraph, NewNode  # noqa: E402
from rcc.session.state import capture, manifest_of, restore  # noqa: E402
from rcc.session.store import TensorStore  # noqa: E402


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _change_layers(model, block: int, count: int, seed: int) -> None:
    """Prune ``count`` Linear layers of one block (both towers) to 50 % and factorise one more."""
    generator = torch.Generator().manual_seed(seed)
    layers = [layer for layer in model.layers()
              if layer.block == block and layer.rows is None and not layer.transposed]
    to_factorise = next(layer for layer in layers if layer.tower == "vision" and layer.kind == "mlp_in")
    for layer in [layer for layer in layers if layer is not to_factorise][:count]:
        set_mask(model.module, layer, torch.rand(layer.shape, generator=generator) > 0.5)
    out_f, in_f = to_factorise.shape
    factorise(model.module, to_factorise, torch.randn(out_f, 64, generator=generator) / 8,
              torch.randn(64, in_f, generator=generator) / 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=6)
    parser.add_argument("--layers", type=int, default=3, help="layers pruned per node (+1 factorised)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = load_model("open_clip:ViT-B-32", device="cpu")
    with tempfile.TemporaryDirectory(prefix="rcc-bench-store-") as tmp:
        root_dir = Path(tmp)
        store, graph = TensorStore(root_dir / "store"), HistoryGraph(root_dir / "session.db")
        start = time.perf_counter()
        root = capture(model.module, store)
        root_seconds = time.perf_counter() - start
        graph.record("load_model", {}, None, 0.0, new_node=NewNode(None, root.structure, {}, root.tensors, 0))
        base_bytes = _dir_bytes(root_dir)
        current = manifest_of(model.module)  # (structure, name → hash) of the live model
        root_tensors = {k: v[0] for k, v in root.tensors.items()}
        nodes, disk_rows = [], []
        for i in range(args.nodes):
            restore(model.module, current[1], current[0], root_tensors, root.structure, store, 1)
            before = _dir_bytes(root_dir)
            _change_layers(model, block=i % 12, count=args.layers, seed=i)
            node = capture(model.module, store)
            _, node_id = graph.record("run_stage", {}, 1, 0.0, new_node=NewNode(1, node.structure, {}, node.tensors, 0))
            changed = sum(size for name, (digest, size) in node.tensors.items()
                          if root.tensors.get(name, (None,))[0] != digest)
            grew = _dir_bytes(root_dir) - before
            disk_rows.append((node_id, changed, grew))
            nodes.append((node_id, node))
            current = (node.structure, {k: v[0] for k, v in node.tensors.items()})

        checkout_rows = []
        for (a_id, a), (b_id, b) in zip(nodes, nodes[1:] + nodes[:1]):
            a_tensors = {k: v[0] for k, v in a.tensors.items()}
            b_tensors = {k: v[0] for k, v in b.tensors.items()}
            differing = sorted(k for k, digest in b_tensors.items() if a_tensors.get(k) != digest)
            reference = root_dir / "reference.safetensors"
            times, plain, plain_copy = [], [], []
            for _ in range(args.repeats):
                restore(model.module, current[1], current[0], a_tensors, a.structure, store, a_id)
                t0 = time.perf_counter()
                loaded = restore(model.module, a_tensors, a.structure, b_tensors, b.structure, store, b_id)
                times.append(time.perf_counter() - t0)
                current = (b.structure, b_tensors)
                state = model.module.state_dict()
                save_file({k: state[k].contiguous() for k in differing
                           if k in state and k in b_tensors}, str(reference))
                t0 = time.perf_counter()
                tensors = load_file(str(reference))
                plain.append(time.perf_counter() - t0)
                with torch.no_grad():
                    for k, v in tensors.items():
                        state[k].copy_(v)
                plain_copy.append(time.perf_counter() - t0)
            checkout_rows.append((f"{a_id}→{b_id}", loaded, statistics.median(times), statistics.median(plain),
                                  statistics.median(plain_copy), times[0]))
        graph.close()

    rows = [[f"checkout {pair}", f"{loaded / 2**20:.1f} MiB", t * 1e3, first * 1e3, p * 1e3, pc * 1e3, t / p, t / pc,
             first / pc] for pair, loaded, t, p, pc, first in checkout_rows]
    rows += [[f"node {node_id} disk", f"{changed / 2**20:.2f} MiB changed", "", "", "", "", grew / changed, "", ""]
             for node_id, changed, grew in disk_rows]
    worst_checkout = max(t / p for _, _, t, p, _, _ in checkout_rows)
    worst_checkout_copy = max(t / pc for _, _, t, _, pc, _ in checkout_rows)
    worst_first_copy = max(first / pc for _, _, _, _, pc, first in checkout_rows)
    worst_disk = max(grew / changed for _, changed, grew in disk_rows)
    report("store", ["what", "bytes", "checkout ms", "first ms", "load_file ms", "load_file+copy ms", "× load_file",
                     "× load+copy", "first × load+copy"], rows,
           extra={"root_capture_seconds": root_seconds, "root_bytes": base_bytes,
                  "worst_checkout_vs_load_file": worst_checkout, "worst_checkout_vs_load_copy": worst_checkout_copy,
                  "worst_first_checkout_vs_load_copy": worst_first_copy,
                  "worst_disk_vs_changed": worst_disk, "goal_checkout": 1.2, "goal_disk": 1.1})
    print(f"root: {base_bytes / 2**20:.0f} MiB stored in {root_seconds:.1f} s; worst checkout {worst_checkout:.2f}× "
          f"load_file ({worst_checkout_copy:.2f}× load_file + copy; first checkout of a pair, hashing unverified "
          f"blobs: {worst_first_copy:.2f}×), goal ≤ 1.2×; worst disk {worst_disk:.3f}× changed bytes, goal ≤ 1.1×")


if __name__ == "__main__":
    main()
