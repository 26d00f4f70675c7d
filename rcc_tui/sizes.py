"""How the app writes sizes and counts. Every size it shows is ``size/bytes``: what the compressed
export stores (kept values, masks packed 8 per byte, factors), never the dense tensors in memory.

- ``short_count``: three significant figures and a unit, for tight columns (``91.4M``, ``262K``).
- ``bytes_text``: the same with ``B`` (``91.4 MB``); ``exact_bytes``: every digit (``91,412,345 B``).
- ``change_text``: a change from a parent, absolute and relative (``−2.1M −9%``).
- ``distinct_labels``: tick labels with just enough digits that no two read the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

MINUS = "−"  # U+2212: a minus that lines up with the plus sign
UNITS = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def short_count(value: float | None, digits: int = 3) -> str:
    """``value`` in ``digits`` significant figures with K / M / G / T: 91.4M, 262K, 8.19K, 512; ``—`` for None."""
    if value is None:
        return "—"
    sign = MINUS if value < 0 else ""
    magnitude = abs(value)
    for scale, unit in UNITS:
        if magnitude >= scale * (1 - 0.5 * 10 ** -digits):  # 999.96K rounds up: say 1.00M
            scaled = magnitude / scale
            decimals = max(0, digits - len(str(int(round(scaled, 0)))))
            text = f"{scaled:.{decimals}f}"
            return f"{sign}{text}{unit}"
    return f"{sign}{magnitude:.0f}" if magnitude == int(magnitude) or magnitude >= 100 \
        else f"{sign}{magnitude:.{digits - 1}g}"


def bytes_text(value: float | None) -> str:
    """``91.4 MB``, ``262 KB``, ``512 B`` (decimal units, as the column headers say bytes)."""
    if value is None:
        return "—"
    short = short_count(value)
    return f"{short[:-1]} {short[-1]}B" if short[-1:].isalpha() else f"{short} B"


def exact_bytes(value: float | None) -> str:
    """``91,412,345 B``."""
    return "—" if value is None else f"{value:,.0f} B".replace("-", MINUS)


def percent_change(new: float, old: float) -> str:
    """``−9%`` (one decimal below 10 %: ``−0.4%``); empty when ``old`` is 0."""
    if not old:
        return ""
    relative = (new - old) / old * 100
    text = f"{relative:+.1f}%" if abs(relative) < 9.95 else f"{relative:+.0f}%"
    return text.replace("-", MINUS)


def change_text(new: float | None, old: float | None) -> str:
    """``−2.1M −9%`` from ``old`` to ``new``; ``±0`` when equal; empty when either is unknown."""
    if new is None or old is None:
        return ""
    if new == old:
        return "±0"
    delta = new - old
    absolute = ("+" if delta > 0 else "") + short_count(delta, digits=2)
    percent = percent_change(new, old)
    return f"{absolute} {percent}" if percent else absolute


def distinct_labels(values: Sequence[float], format: Callable[[float, int], str] = short_count,
                    digits: int = 3, most: int = 7) -> list[str]:
    """``format(v, d)`` for each value with the fewest digits ≥ ``digits`` (up to ``most``) that tell them apart.

    Equal values keep equal labels; only different values must read differently.
    """
    distinct_values = len(set(values))
    labels = [format(v, digits) for v in values]
    while len(set(labels)) < distinct_values and digits < most:
        digits += 1
        labels = [format(v, digits) for v in values]
    return labels
