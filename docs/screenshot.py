"""Draw the README's screenshot: the workbench on the rcc-mini demo, as Textual renders it (SVG).

    python docs/screenshot.py [--out docs/screenshot.svg]

A fresh rcc-mini session in a temporary directory, driven through the app itself: a
sensitivity scan of the vision tower at 10 % rank (the tree's colours), one edit + DARE stage on the vision
MLPs (a second node in the history), then the tree expanded on block 0. About a minute on 2 CPU
cores, no network. The app runs in its deterministic mode (no clock times or full paths).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIZE = (120, 36)
BLOCK0 = "visual.transformer.resblocks.0.mlp.c_fc"


async def _until(pilot, condition, what: str, timeout: float = 600.0) -> None:
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out waiting for {what}")
        await pilot.pause(0.1)


async def draw(out: Path) -> None:
    from rcc.session import ops as O
    from rcc_tui.app import RccApp

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RCC_DATA_HOME"] = str(Path(tmp) / "data-home")  # its blobs leave with it, none in the real home
        app = RccApp(session_dir=str(Path(tmp) / "demo"), new=True, device="cpu")
        app.deterministic = True
        async with app.run_test(size=SIZE) as pilot:
            main = app.main
            await _until(pilot, lambda: main.view is not None and not app.jobs.busy, "the session")
            tree = main.query_one("#layer-tree")
            tree.select_pattern("tower:vision")
            await pilot.pause()
            main.action_scan_sensitivity(rank=0.1)  # a deep cut: the layers' drifts spread out
            await asyncio.wait_for(app.jobs.wait(), 900)
            await _until(pilot, lambda: main.sensitivity is not None, "the tree's colours")
            mlps = tuple(layer.name for layer in main.view.layers
                         if layer.tower == "vision" and ".mlp." in layer.name)
            main.start(O.EditLayers(layers=mlps, settings={"sparsity": 0.5, "method": "wanda"}))
            await asyncio.wait_for(app.jobs.wait(), 300)
            main.start(O.RunStage(stage="dare", layers=mlps), "dare on the vision MLPs")
            await asyncio.wait_for(app.jobs.wait(), 600)
            await pilot.pause(0.5)
            tree.action_clear_selection()
            node = tree.expand_path(BLOCK0)
            await pilot.pause()  # the expanded rows exist before the cursor can move onto one
            if node is not None:
                tree.move_to(node)
            tree.focus()
            await pilot.pause(0.5)
            out.parent.mkdir(parents=True, exist_ok=True)
            app.save_screenshot(filename=out.name, path=str(out.parent))
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).with_name("screenshot.svg")))
    args = parser.parse_args()
    asyncio.run(draw(Path(args.out)))


if __name__ == "__main__":
    main()
