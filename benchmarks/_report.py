"""Shared by the benchmark scripts: print a markdown table and append it to a results file."""

from __future__ import annotations

from pathlib import Path


def emit(lines: list[str], out: Path | None) -> None:
    table = "\n".join(lines)
    print(table)
    if out:
        with open(out, "a") as f:
            f.write(table + "\n\n")
