"""Real English sentences with no download: first sentences of Python standard-library docstrings.

Used to calibrate text towers and to measure text-embedding fidelity. Sentences are split
into a ``calib`` and an ``eval`` half by a hash of their text, so the two never overlap.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import re
from functools import lru_cache

from rcc.errors import DataError

# Fixed, sorted list: the corpus only changes when the Python version rewrites a docstring.
_MODULES = (
    "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "enum", "fractions", "functools", "glob", "gzip", "hashlib", "heapq",
    "html", "http.client", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox",
    "math", "mimetypes", "os", "pathlib", "pickletools", "pprint", "queue", "random", "re", "sched", "secrets",
    "shlex", "shutil", "smtplib", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile",
    "tempfile", "textwrap", "threading", "time", "tokenize", "typing", "unittest", "urllib.parse",
    "uuid", "warnings", "wave", "weakref", "zipfile", "zoneinfo",
)
SPLITS = ("calib", "eval")
_SENTENCE = re.compile(r"^(.+?[.!?])(\s|$)", re.S)


def _first_sentence(doc: str) -> str | None:
    text = " ".join(doc.split())
    match = _SENTENCE.match(text)
    if not match:
        return None
    sentence = match.group(1)
    words = sentence.split()
    if not 6 <= len(words) <= 30 or not sentence[0].isupper() or not sentence.isascii():
        return None
    if any(ch in sentence for ch in "<>{}|`=*\\") or "(" in words[0]:
        return None  # signatures, markup and code fragments are not English prose
    return sentence


@lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj)):
                continue
            sentence = _first_sentence(inspect.getdoc(obj) or "")
            if sentence:
                seen.setdefault(sentence, None)
    return tuple(seen)


def docstring_sentences(split: str, limit: int | None = None) -> list[str]:
    """Sentences of one split (``calib`` or ``eval``), in a fixed order, at most ``limit``."""
    if split not in SPLITS:
        raise DataError(f"unknown text corpus split {split!r}; allowed: {', '.join(SPLITS)}")
    chosen = [s for s in _all_sentences()
              if ("eval" if hashlib.blake2b(s.encode(), digest_size=1).digest()[0] % 2 else "calib") == split]
    return chosen[:limit] if limit is not None else chosen
