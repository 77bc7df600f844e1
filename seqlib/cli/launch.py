"""`add --num-processes N`: the same command in N data-parallel processes on this machine."""

from __future__ import annotations

import os
import sys

# The command line as given (set by ``seqlib.cli.main``), to re-run it in each process.
ARGV: list[str] = []


def launch(n: int) -> int:
    """Run this same command in ``n`` data-parallel processes on this machine."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args, skip = [], False
    for a in ARGV:  # drop --num-processes N (or --num-processes=N)
        if skip:
            skip = False
        elif a == "--num-processes":
            skip = True
        elif not a.startswith("--num-processes="):
            args.append(a)
    procs = []
    for r in range(n):
        env = os.environ | {
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        # n processes share the cores: each spinning every core's worth of OpenMP threads
        # oversubscribes them (slower than one process); an explicit setting wins.
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
        quiet = subprocess.DEVNULL if r else None
        procs.append(subprocess.Popen([sys.executable, "-m", "seqlib", *args], env=env, stdout=quiet, stderr=quiet))
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)
