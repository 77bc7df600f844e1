"""The command-line floor: how long read commands take against `python -c pass`, in one run.

Medians of ``--repeat`` runs each, as a user starts them (fresh processes). Prints the seconds
and the ratio to `python -c pass`; issue 26 asks `--version` within 3x and the read commands
within 5x of it.

    python benchmarks/cli_floor.py --store build/history/1000/.seqlib    # a library to read
    python benchmarks/cli_floor.py --store quickstart/.seqlib --repeat 7
    python benchmarks/cli_floor.py --store build/history/.seqlib --against /tmp/old   # a checkout of
        # another commit (git worktree add /tmp/old REV): both timed as the console script runs, interleaved
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEUTRAL = tempfile.gettempdir()


def seconds(cmd: list[str], repeat: int, env: dict | None = None) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        # cwd: a folder with no seqlib in it (`python -c` puts the working folder first on sys.path)
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=env, cwd=NEUTRAL)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a library to read")
    parser.add_argument("--concept", default=None, help="for `show` (default: the library's first)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--against", default=None, help="another checkout's folder, timed beside this one")
    args = parser.parse_args()
    args.store = str(Path(args.store).resolve())
    seqlib = shutil.which("seqlib") or sys.exit("seqlib is not on PATH: pip install -e . first")
    if args.concept is None:
        from seqlib.api import Library

        concepts = Library.open(args.store).head().concepts
        args.concept = concepts[0].name if concepts else None
    # The floor is sampled beside every command's runs (one `python -c pass` before each): on a
    # shared machine a floor measured once, up front, moved the ratios by a fifth between runs.
    passes: list[float] = []
    rows = []
    commands = [["--version"], ["status"], ["list"], ["log"]] + ([["show", args.concept]] if args.concept else [])
    other = os.environ | {"PYTHONPATH": args.against} if args.against else None
    for command in commands:
        full = [seqlib, *command] if command == ["--version"] else [seqlib, "--store", args.store, *command]
        if other is not None:
            full = [sys.executable, "-c", "from seqlib._entry import run; run()", *full[1:]]  # the console script
        here = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parent.parent)} if other else None
        runs = []
        for _ in range(args.repeat):
            passes.append(seconds([sys.executable, "-c", "pass"], 1))
            runs.append((seconds(full, 1, here), seconds(full, 1, other) if other else None))
        rows.append((f"seqlib {' '.join(command)}", *(statistics.median(x) if x[0] else None for x in zip(*runs))))
    floor = statistics.median(passes)
    rows.insert(0, ("python -c pass", floor, floor))
    extra = f" | {args.against}: s | x python -c pass" if other else ""
    print(f"| command | median s ({args.repeat} runs) | x python -c pass{extra} |")
    print("|---|---:|---:|" + ("---:|---:|" if other else ""))
    for name, value, against in rows:
        tail = f" | {against:.3f} | {against / floor:.1f}" if other else ""
        print(f"| `{name}` | {value:.3f} | {value / floor:.1f}{tail} |")


if __name__ == "__main__":
    main()
