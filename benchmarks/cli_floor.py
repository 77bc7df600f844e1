"""The command-line floor: how long read commands take against `python -c pass`, in one run.

Medians of ``--repeat`` runs each, as a user starts them (fresh processes). Prints the seconds
and the ratio to `python -c pass`; issue 26 asks `--version` within 3x and the read commands
within 5x of it.

    python benchmarks/cli_floor.py --store build/history/1000/.seqlib    # a library to read
    python benchmarks/cli_floor.py --store quickstart/.seqlib --repeat 7
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time


def seconds(cmd: list[str], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True, help="a library to read")
    parser.add_argument("--concept", default=None, help="for `show` (default: the library's first)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    seqlib = shutil.which("seqlib") or sys.exit("seqlib is not on PATH: pip install -e . first")
    if args.concept is None:
        from seqlib.api import Library

        concepts = Library.open(args.store).head().concepts
        args.concept = concepts[0].name if concepts else None
    floor = seconds([sys.executable, "-c", "pass"], args.repeat)
    rows = [("python -c pass", floor)]
    commands = [["--version"], ["status"], ["list"], ["log"]] + ([["show", args.concept]] if args.concept else [])
    for command in commands:
        full = [seqlib, *command] if command == ["--version"] else [seqlib, "--store", args.store, *command]
        rows.append((f"seqlib {' '.join(command)}", seconds(full, args.repeat)))
    print(f"| command | median s ({args.repeat} runs) | x python -c pass |")
    print("|---|---:|---:|")
    for name, value in rows:
        print(f"| `{name}` | {value:.3f} | {value / floor:.1f} |")


if __name__ == "__main__":
    main()
