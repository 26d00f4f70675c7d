"""Every CUDA path of rcc, once, in under five minutes on one GPU: pass / fail per check with timings.

    python -m bench.gpu_check [--device cuda:0] [--skip-app]

Checks (each runs even when an earlier one failed; exit status 1 if any failed):
  session     a session on --device: plan (text tower int8, vision 50 % Wanda), a cascade with the
              quant stage (torchao int8 kernels in its evaluations), checkout away and back
              (bit-identical outputs), recovery training in fp16 with a grad scaler, bf16 training
  cascade     the OpenCLIP ViT-B-32 architecture (random weights) on the GPU: vision MLP inputs 2:4
              (+ AlphaEdit correction), MLP outputs low rank (auto, budget 0.5) + correction,
              attention q/k/v/out int8 (GPTQ), evaluated by cosine to dense on a fixed batch
  precision   that model's fp16 and bf16 evaluation (autocast) against fp32, and its fp16 / bf16
              inference copies with the 2:4 layers as semi-structured sparse weights
  app         the Textual app's worker on the device through Pilot: open a session, edit a layer, run a stage
  onnx-cuda   onnxruntime's CUDA provider on the ONNX export, if onnxruntime-gpu is installed
On a machine without CUDA it prints "no CUDA" and exits 0. Results: bench/results/gpu_check.json.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.report import RESULTS_DIR, machine  # noqa: E402

TEXTS = ("a photo of a cat", "two dogs playing on the grass", "a red car parked on the street",
         "a small bird on a branch", "a handwritten digit seven", "an aeroplane in the sky")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _on(actual: torch.device, wanted: str) -> bool:
    """Whether ``actual`` is the device asked for (``cuda`` means any index)."""
    wanted = torch.device(wanted)
    return actual.type == wanted.type and wanted.index in (None, actual.index)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float().cpu(), b.float().cpu()).min())


def check_session(device: str, work: Path) -> str:
    """A session on the GPU: cascade with quant, checkout away and back, fp16 and bf16 training."""
    from rcc.compression.plan import CompressionPlan, Rule, plan_to_dict
    from rcc.compression.quantized_layers import QuantizedLinear
    from rcc.session import ops as O
    from rcc.session.session import Session

    plan = CompressionPlan(rules=(Rule(tower="text", settings={"bits": 8}),
                                  Rule(tower="vision", kind="mlp_in", settings={"sparsity": 0.5, "method": "wanda"})))
    with Session.create(work / "session", model="rcc-mini", data="digits", device=device) as session:
        assert _on(session.model.device, device), session.model.device
        session.apply(O.SetPlan(plan=plan_to_dict(plan)))
        cascade = session.apply(O.RunCascade(threshold=0.0, calib_per_class=4))
        layer = session.model.module.text.transformer.encoder.layer[0].attention.self.query
        assert isinstance(layer, QuantizedLinear) and _on(layer.weight.device, device), type(layer)
        tokens = session.model.tokenize(list(TEXTS))
        with torch.inference_mode():
            before = session.model.encode_text(tokens)
        node = session.head
        session.apply(O.Checkout(node=1))
        session.apply(O.Checkout(node=node))
        with torch.inference_mode():
            after = session.model.encode_text(tokens)
        assert torch.equal(before, after), "checkout away and back changed the int8 model's outputs"
        fp16 = session.apply(O.Train(steps=4, batch_size=16, lr=1e-4, warmup_steps=1, precision="fp16"))
        bf16 = session.apply(O.Train(steps=2, batch_size=16, lr=1e-4, warmup_steps=1, precision="bf16"))
        losses = fp16.result["losses"] + bf16.result["losses"]
        assert all(loss == loss and abs(loss) < 1e4 for loss in losses), losses  # finite: the scaler did its job
        key = session.eval_key  # val/primary: the eval split's top-1
        metric = cascade.metrics[key]
        return (f"cascade {key} {metric:.3f} (dense {session.nodes()[0].metrics[key]:.3f}), "
                f"fp16 losses {fp16.result['losses'][0]:.3f}→{fp16.result['losses'][-1]:.3f}, bf16 ok")


def _vit_b32(device: str):
    from rcc.models.registry import load_model

    torch.manual_seed(0)
    return load_model("open_clip:ViT-B-32", device=device)


def _random_images(count: int, size: int = 224, seed: int = 0):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def check_cascade(device: str, state: dict) -> str:
    """ViT-B-32 on the GPU: 2:4 + low rank + correction + int8 in one cascade."""
    from rcc.compression.calibration import CalibrationData
    from rcc.compression.cascade import CascadeConfig, run_cascade
    from rcc.compression.plan import CompressionPlan, Rule
    from rcc.compression.quantized_layers import QuantizedLinear

    model = _vit_b32(device)
    dense = copy.deepcopy(model)
    pixels = model.preprocess_batch(_random_images(16, seed=1)).to(device)
    with torch.inference_mode():
        reference = dense.encode_image(pixels)

    def evaluate(candidate) -> float:  # cosine to dense on a fixed batch: a real GPU evaluation
        with torch.inference_mode():
            return float(torch.nn.functional.cosine_similarity(candidate.encode_image(pixels), reference).mean())

    plan = CompressionPlan(
        rules=(Rule(tower="vision", kind="mlp_in", settings={"sparsity": 0.5, "pattern": "2:4", "correction": True}),
               Rule(tower="vision", kind="mlp_out", settings={"rank": "auto", "correction": True}),
               Rule(tower="vision", kind="attn_q", settings={"bits": 8}),
               Rule(tower="vision", kind="attn_k", settings={"bits": 8}),
               Rule(tower="vision", kind="attn_v", settings={"bits": 8}),
               Rule(tower="vision", kind="attn_out", settings={"bits": 8})),
        budget=0.5)
    calibration = CalibrationData(images=_random_images(32, seed=2), texts=TEXTS)
    result = run_cascade(model, plan, evaluate, calibration, config=CascadeConfig(threshold=0.0))
    _sync()
    stages = {a.stage: a.changed for a in result.attempts}
    assert stages["dare"] == 12 and stages["nullu"] > 0 and stages["quant"] == 48, stages
    attention = model.module.visual.transformer.resblocks[0].attn
    assert isinstance(attention.in_proj["q"], QuantizedLinear)
    assert _on(attention.in_proj["q"].weight.device, device)
    state.update(model=model, dense=dense, pixels=pixels, reference=reference)
    return (f"{result.removed_fraction:.0%} of the selected parameters removed, cosine to dense "
            f"{result.final_metric:.4f}, stages {stages}")


def check_precision(device: str, state: dict) -> str:
    """fp16 / bf16 evaluation (autocast) and the half inference copies with 2:4 sparse kernels."""
    from torch.sparse import SparseSemiStructuredTensor

    from rcc.compression.semi_structured import inference_copy
    from rcc.eval.encode import encode_images

    if "model" not in state:
        raise RuntimeError("needs the cascade check's model (it failed)")
    model, pixels = state["model"], state["pixels"]
    images = _random_images(32, seed=3)
    fp32 = encode_images(model, images, batch_size=16)
    parts = []
    for precision in ("fp16", "bf16"):
        began = time.perf_counter()
        autocast = encode_images(model, images, batch_size=16, precision=precision)
        _sync()
        cosine = _cosine(fp32, autocast)
        assert cosine > 0.98, (precision, cosine)
        half, paths = inference_copy(model, precision)
        sparse = sum(isinstance(half.module.get_submodule(p).weight, SparseSemiStructuredTensor) for p in paths)
        expected = 12 if torch.device(device).type == "cuda" else 0  # no sparse kernels on CPU (dry run)
        assert sparse == expected, f"{precision}: {sparse} of 12 2:4 layers run semi-structured"
        with torch.inference_mode():
            out = half.encode_image(pixels.to(half.dtype))
            _sync()
            timed = time.perf_counter()
            for _ in range(3):
                half.encode_image(pixels.to(half.dtype))
            _sync()
            per_batch = (time.perf_counter() - timed) / 3
            reference = model.encode_image(pixels)
        copy_cosine = _cosine(reference, out)
        assert copy_cosine > 0.98, (precision, copy_cosine)
        parts.append(f"{precision}: autocast cos {cosine:.4f}, 2:4 copy cos {copy_cosine:.4f} "
                     f"({per_batch * 1e3:.1f} ms/batch of 16, {time.perf_counter() - began:.1f}s)")
        del half
    return "; ".join(parts)


def check_app(device: str, work: Path) -> str:
    """The app's worker on the GPU through Pilot: open a new session, set a layer's sparsity, run the stage."""
    from rcc_tui.app import RccApp

    layer = "visual.transformer.resblocks.0.mlp.c_fc"

    async def drive() -> str:
        app = RccApp(session_dir=str(work / "app-session"), new=True, device=device)
        async with app.run_test(size=(120, 40)) as pilot:
            main, jobs = app.main, app.jobs  # the app's one JobRunner
            await _wait(pilot, lambda: main.view is not None and not jobs.busy, 240)
            assert _on(app.session.model.device, device), app.session.model.device
            await pilot.press("escape", "slash", *layer, "enter")
            await pilot.pause()
            field = main.query_one("#sparsity")
            field.focus()
            field.value = ""
            await pilot.press(*"0.5", "enter")
            await asyncio.wait_for(jobs.wait(), 120)
            main.query_one("#layer-tree").focus()
            await pilot.press("r")
            await asyncio.sleep(0.2)
            await asyncio.wait_for(jobs.wait(), 240)
            await pilot.pause()
            kinds = [record.kind for record in app.session.ops()]
            assert kinds[-1] == "run_stage", kinds
            state = main.view.state[layer]
            assert abs(state.sparsity - 0.5) < 1e-6, state
            return f"ops {kinds}, {layer} at {state.sparsity:.0%} on {app.session.model.device}"

    return asyncio.run(drive())


async def _wait(pilot, condition: Callable[[], bool], timeout: float) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError("the app did not become ready")
        await pilot.pause(0.05)


def check_onnx_cuda(device: str, work: Path) -> str:
    """onnxruntime's CUDA provider on the ONNX export of an int8 rcc-mini (skipped without onnxruntime-gpu)."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "SKIP: onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    from rcc.exports import export_model
    from rcc.models.registry import load_model

    model = load_model("rcc-mini", device="cpu")
    report = export_model(model, "onnx", work / "onnx")
    tokens = model.tokenize(list(TEXTS))
    feeds = {key: value.numpy() for key, value in tokens.items()}
    results = {}
    for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
        session = ort.InferenceSession(str(report.directory / "text_encoder.onnx"), providers=[provider])
        assert session.get_providers()[0] == provider, session.get_providers()
        results[provider] = torch.from_numpy(session.run(None, feeds)[0])
    cosine = _cosine(results["CPUExecutionProvider"], results["CUDAExecutionProvider"])
    assert cosine > 0.999, cosine
    return f"text encoder on CUDAExecutionProvider vs CPU: lowest cosine {cosine:.6f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0",
                        help="cuda:N; 'cpu' runs the same checks on the CPU (a slow dry run of this script)")
    parser.add_argument("--skip-app", action="store_true", help="leave out the Pilot check (no Textual)")
    parser.add_argument("--only", default="", help="comma list of checks to run (default: all)")
    args = parser.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        print("no CUDA: nothing to check on this machine (the CUDA paths are guarded; CPU tests cover the rest)")
        return 0
    from rcc.compression.int8_kernels import torchao_available

    name = "CPU dry run" if args.device == "cpu" else torch.cuda.get_device_name(args.device)
    kernels = "torchao" if torchao_available() else "simulated (pip install 'rcc-tui[cuda]' for torchao's kernels)"
    print(f"{name}, torch {torch.__version__}, int8 on CUDA: {kernels}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="rcc-gpu-check-"))
    state: dict = {}
    checks: list[tuple[str, Callable[[], str]]] = [
        ("session", lambda: check_session(args.device, work)),
        ("cascade", lambda: check_cascade(args.device, state)),
        ("precision", lambda: check_precision(args.device, state)),
        ("app", lambda: check_app(args.device, work)),
        ("onnx-cuda", lambda: check_onnx_cuda(args.device, work)),
    ]
    if args.skip_app:
        checks = [c for c in checks if c[0] != "app"]
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        checks = [c for c in checks if c[0] in wanted]
    rows, failed = [], 0
    total = time.perf_counter()
    for name, run in checks:
        began = time.perf_counter()
        try:
            detail = run()
            verdict = "SKIP" if detail.startswith("SKIP") else "PASS"
        except Exception as exc:  # noqa: BLE001 - every check runs; a failure is reported, not raised
            detail = f"{type(exc).__name__}: {exc}"
            verdict = "FAIL"
            failed += 1
            traceback.print_exc()
        seconds = time.perf_counter() - began
        rows.append({"check": name, "result": verdict, "seconds": round(seconds, 1), "detail": detail})
        print(f"{verdict:4s} {name:10s} {seconds:6.1f}s  {detail}", flush=True)
    print(f"{len(rows) - failed} of {len(rows)} checks passed in {time.perf_counter() - total:.0f}s")
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / "gpu_check.json").write_text(json.dumps({"machine": machine(), "checks": rows}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
