"""Run the seqlib CLI, SIGKILLing itself at the K-th write step (SEQLIB_KILL_AT).

Write steps are the primitives every store write goes through: writing a temporary file,
renaming or linking it into place, and fsync. With SEQLIB_KILL_AT=0 it runs to the end
and prints how many steps there were, so a test can aim at points spread over the run.
"""

import atexit
import os
import pathlib
import signal
import sys

import seqlib.backends as backends

KILL_AT = int(os.environ.get("SEQLIB_KILL_AT", "0"))
steps = 0


def step() -> None:
    global steps
    steps += 1
    if steps == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def around(fn):
    def wrapper(*args, **kwargs):
        step()
        result = fn(*args, **kwargs)
        step()
        return result

    return wrapper


backends._write_partial = around(backends._write_partial)
os.link = around(os.link)
os.fsync = around(os.fsync)
pathlib.Path.rename = around(pathlib.Path.rename)
pathlib.Path.replace = around(pathlib.Path.replace)
atexit.register(lambda: print(f"write-steps={steps}", file=sys.stderr))

from seqlib.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
