"""Run seqlib CLI commands in child processes that SIGKILL themselves at the K-th write step.

Write steps are the primitives every store write goes through: writing a temporary file,
renaming or linking it into place, and fsync. With kill_at=0 a run goes to the end and
reports how many steps there were, so a test can aim at points spread over the run.

Importing diffusers costs ~12 s, so this is a small fork server: it imports the CLI and the
libraries once, then reads one JSON request per line on stdin, ``{"runs": [run, ...]}`` with
``run = {"argv": [...], "kill_at": K, "stdout": PATH, "stderr": PATH, "env": {...}, "threads": T}``,
forks one child per run (all at once, so runs can race), waits for them and answers one JSON line
``{"returncodes": [...], "write_steps": [...]}`` (a killed child's code is -9, as
``subprocess`` reports it). A forked child is a real process: SIGKILL gives it no chance to
clean up, exactly as a power cut or the OOM killer would.
"""

import json
import os
import pathlib
import signal
import sys

import seqlib.backends as backends

KILL_AT = 0
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

import diffusers  # noqa: E402
import torch  # noqa: E402  (imported before forking; no thread pool starts until first use)

from seqlib import adding, adopt, render  # noqa: E402, F401
from seqlib.cli import main  # noqa: E402

diffusers.StableDiffusionPipeline  # noqa: B018  (resolve the lazy import once, in the parent)


def child(run: dict, report: int) -> None:
    global KILL_AT, steps
    KILL_AT, steps = run["kill_at"], 0
    os.environ.clear()
    os.environ.update(run["env"])
    torch.set_num_threads(run.get("threads") or torch.get_num_threads())
    for fd, path in ((1, run["stdout"]), (2, run["stderr"])):  # never into the answers on stdout
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.stdout, sys.stderr = os.fdopen(1, "w", buffering=1), os.fdopen(2, "w", buffering=1)
    code = 1
    try:
        code = main(run["argv"])
    finally:
        os.write(report, json.dumps(steps).encode())
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def serve() -> None:
    for line in sys.stdin:
        runs = json.loads(line)["runs"]
        children = []
        for run in runs:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                child(run, write)
            os.close(write)
            children.append((pid, read))
        codes, counted = [], []
        for pid, read in children:
            _, status = os.waitpid(pid, 0)
            codes.append(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
            with os.fdopen(read) as pipe:
                text = pipe.read()
            counted.append(int(text) if text else None)
        print(json.dumps({"returncodes": codes, "write_steps": counted}), flush=True)


if __name__ == "__main__":
    serve()
