"""Shared by the benchmark scripts: ``--set`` parsing, and printing a markdown table."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path


def parse_settings(pairs: list[str]) -> dict:
    """``["steps=30", "protect=4"]`` -> TrainConfig keyword arguments, typed as its fields."""
    from seqlib.config import TrainConfig

    types = {f.name: f.type for f in fields(TrainConfig)}
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise SystemExit(f"unknown setting {key!r}")
        convert = {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true")}
        out[key] = convert.get(types[key], str)(value)
    return out


def emit(lines: list[str], out: Path | None) -> None:
    table = "\n".join(lines)
    print(table)
    if out:
        with open(out, "a") as f:
            f.write(table + "\n\n")
