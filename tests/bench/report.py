"""Printing the benchmarks' tables: aligned columns, the first left-aligned, a rule under the
header."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

__all__ = ["format_table", "machine_facts", "print_table", "ratio"]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [
            str(cell).ljust(widths[i]) if i == 0 else str(cell).rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  " + "  ".join(cells).rstrip())
        if index == 0:
            lines.append("  " + "  ".join("-" * w for w in widths))
    return lines


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    print(f"\n{title}", flush=True)
    for line in format_table(header, rows):
        print(line, flush=True)


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "-"


def machine_facts() -> dict[str, Any]:
    """What a report needs to say about the machine it ran on."""
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg()[0],
    }
