"""Arguments and output shared by the commands: model/data/device options, tables, JSON."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from rcc.errors import RccError

MODEL_HELP = ("model spec (default: rcc-mini). Forms: rcc-mini, open_clip:NAME[@PRETRAINED_TAG_OR_FILE], "
              "open_clip:CONFIG.json[@WEIGHTS], hf:ID_OR_LOCAL_DIR, hf-blip:ID_OR_LOCAL_DIR")
DATA_HELP = ("dataset spec (default: digits). Forms: digits, imagefolder:DIR[?classnames=FILE&split=0.7,0.1,0.2"
             "&seed=0], cifar10:DIR[?val=0.1&seed=0], cifar100:DIR[?val=0.1&seed=0], coco-karpathy:JSON[?root=DIR], "
             "flickr30k-karpathy:JSON[?root=DIR], captions-csv:FILE[?root=DIR&split=0.7,0.1,0.2&seed=0]. Every kind "
             "has train (calibration, training), val (what compression checks) and test (reports)")


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="SPEC", help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")


def stdout() -> Console:
    # Piped output (files, CI logs, tests) is read by tools: never truncate names there.
    return Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)


def stderr() -> Console:
    return Console(file=sys.stderr)


def table(title: str, columns: list[str], rows: list[list[object]]) -> Table:
    out = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        out.add_column(column, justify="left" if i == 0 else "right", overflow="fold")
    for row in rows:
        out.add_row(*(format_value(value) for value in row))
    return out


def format_value(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    except OSError as exc:
        raise RccError(f"cannot write JSON to {path!r}: {exc.strerror or exc}") from exc
