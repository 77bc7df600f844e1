"""Shared fixtures: one embedded-base library with three concepts, trained once per session."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (-n N) the workers share the cores: give each its share of OpenMP threads
# before torch is imported (a worker spinning every core's threads oversubscribes the machine).
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    os.environ.setdefault(
        "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    )

from seqlib.api import Library  # noqa: E402
from seqlib.config import TrainConfig  # noqa: E402
from seqlib.heldout import examples, write_photos  # noqa: E402

NAMES = ["mascot", "emblem", "robot"]
# forward-diff: 4 passes per iteration instead of autograd's 6 (tests/test_method.py checks both agree)
FAST = dict(steps=4, K=2, S_B=1, S_A=1, hvp="forward-diff")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    write_photos(folder, {n: examples()[n] for n in NAMES}, count=4)
    return folder


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """A freshly initialised library; copy it before changing it."""
    path = tmp_path_factory.mktemp("empty") / ".seqlib"
    Library.init(path)
    return path


def _trained(tmp_path_factory, empty_store: Path, photos: Path, method: str) -> Path:
    path = tmp_path_factory.mktemp(method) / ".seqlib"
    shutil.copytree(empty_store, path)
    lib = Library.open(path)
    for i, name in enumerate(NAMES):
        lib.add(name, photos / name, config=TrainConfig(method=method, seed=i, **FAST), preview=False)
    return path


@pytest.fixture(scope="session")
def seqlora_store(tmp_path_factory, empty_store, photos) -> Path:
    """Three concepts trained with SeqLoRA (read-only: copy before changing)."""
    return _trained(tmp_path_factory, empty_store, photos, "seqlora")


@pytest.fixture(scope="session")
def lora_store(tmp_path_factory, empty_store, photos) -> Path:
    """The same three concepts trained as plain LoRA, without projection."""
    return _trained(tmp_path_factory, empty_store, photos, "lora")


@pytest.fixture
def store_copy(tmp_path, seqlora_store) -> Path:
    path = tmp_path / ".seqlib"
    shutil.copytree(seqlora_store, path)
    return path


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A moto S3 server on 127.0.0.1, started and stopped here; yields a fresh-bucket factory."""
    moto_server = pytest.importorskip("moto.server")
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ALLOW_HTTP": "true",
        "SEQLIB_CACHE": str(tmp_path_factory.mktemp("cache")),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])

    def bucket() -> str:
        name = f"lib-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=name)
        return f"s3://{name}/team"

    yield bucket
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@dataclass
class Ran:
    """One CLI run in a child process: its exit code (-9: killed), output and write steps."""

    returncode: int
    stdout: str
    stderr: str
    write_steps: int | None


@pytest.fixture(scope="session")
def cli_processes(tmp_path_factory):
    """Run CLI commands in real child processes, several at once if asked (``tests/crashy.py``:
    a fork server that pays the ~12 s diffusers import once per session, not once per run).

    ``run([(argv, kill_at), ...], threads=None)`` -> one ``Ran`` per command.
    """
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("crashy.py"))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    logs = tmp_path_factory.mktemp("cli-stderr")

    def run(commands: list[tuple[list[str], int]], threads: int | None = None) -> list[Ran]:
        runs = [
            {"argv": argv, "kill_at": kill_at, "env": dict(os.environ), "threads": threads}
            | {stream: str(logs / f"{uuid.uuid4().hex}.{stream}") for stream in ("stdout", "stderr")}
            for argv, kill_at in commands
        ]
        server.stdin.write(json.dumps({"runs": runs}) + "\n")
        server.stdin.flush()
        line = server.stdout.readline()
        assert line, "the CLI fork server died (see the captured stderr)"
        answer = json.loads(line)
        return [
            Ran(code, Path(r["stdout"]).read_text(), Path(r["stderr"]).read_text(), steps)
            for code, r, steps in zip(answer["returncodes"], runs, answer["write_steps"])
        ]

    yield run
    server.stdin.close()
    server.wait(timeout=60)


# The quick tier (`python -m pytest -q -m "not slow"`): the pure and store tests, for everyday
# work. Slow: anything that trains a concept (the shared trained libraries, or the modules whose
# tests train or pretrain themselves) or runs real processes.
TRAINED_FIXTURES = {"seqlora_store", "lora_store", "store_copy", "tagged_store", "reserved_store"}
SLOW_MODULES = {
    "test_method", "test_methods", "test_trainer_options", "test_reliability", "test_world_base", "test_pretrain",
    "test_interference", "test_compose", "test_export", "test_identity", "test_gpu_check", "test_lab", "test_cli",
    "test_hostile", "test_damage", "test_reserve", "test_format_v2_features", "test_history",
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if TRAINED_FIXTURES & set(item.fixturenames) or module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
