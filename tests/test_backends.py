"""The store-backend contract: every backend (a folder, S3 through a local moto server, memory)
passes the same tests, so the store protocol above them holds on each."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from seqlib.backends import Backend, LocalBackend, MemoryBackend, ObjectBackend, open_backend
from seqlib.store import Store


@pytest.fixture(params=["folder", "s3", "memory"])
def location(request, tmp_path) -> str:
    if request.param == "folder":
        return str(tmp_path / "store")
    if request.param == "s3":
        return request.getfixturevalue("s3")()
    return f"memory://{uuid.uuid4().hex}"


def test_open_backend_picks_by_location(location):
    kinds = {"s3": ObjectBackend, "memory": MemoryBackend}
    expected = next((k for prefix, k in kinds.items() if location.startswith(prefix)), LocalBackend)
    assert isinstance(open_backend(location), expected)


def test_read_write_overwrite_exists_delete(location):
    b: Backend = open_backend(location)
    with pytest.raises(FileNotFoundError):
        b.read("a/missing.json")
    assert not b.exists("a/x.json")
    b.write("a/x.json", b"one")
    b.write("a/x.json", b"two")  # an atomic overwrite
    assert b.read("a/x.json") == b"two" and b.exists("a/x.json")
    b.write("a/sub/y", b"y" * 10)
    assert b.size("a") == 13 and b.keys("a") == ["a/sub/y", "a/x.json"]
    b.delete("a/sub")  # a whole sub-tree
    assert b.keys("a") == ["a/x.json"]
    b.delete("a/x.json")
    assert not b.exists("a/x.json")


def test_create_is_a_compare_and_swap(location):
    b = open_backend(location)
    assert b.create("refs/1", b"first") is True
    assert b.create("refs/1", b"second") is False
    assert b.read("refs/1") == b"first"
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def race(i: int) -> None:
        barrier.wait()
        results.append(b.create("refs/2", f"writer {i}".encode()))

    threads = [threading.Thread(target=race, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 1 and b.read("refs/2").startswith(b"writer ")


def test_list_is_one_level_with_the_newest_time_below_each_name(location):
    b = open_backend(location)
    b.write("p/old/x", b"1")
    time.sleep(1.1)  # S3 and some file systems keep whole seconds
    b.write("p/new/x", b"2")
    b.write("p/file", b"3")
    listed = b.list("p")
    assert set(listed) == {"old", "new", "file"}
    assert listed["new"] > listed["old"]
    assert b.list("nothing-here") == {}


def test_zarr_payloads_and_tree_transfer(location, tmp_path):
    store_root = location if "://" in location else str(tmp_path / "s")
    with Store.create(store_root) as store:
        arrays = {"B_m8": np.arange(32, dtype=np.float32).reshape(1, 8, 4), "embedding": np.ones(3, np.float32)}
        payload_id, records = store.write_payload(arrays, {"concept": "x", "rank": 4})
        assert store.write_payload(arrays, {"concept": "x", "rank": 4})[0] == payload_id  # content-addressed
        back = store.read_payload(payload_id)
        np.testing.assert_array_equal(back["B_m8"], arrays["B_m8"])
        assert store.payload_size(payload_id) > 0 and [r.name for r in records] == ["B_m8", "embedding"]
    b = open_backend(store_root)
    folder = tmp_path / "tree"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "f.bin").write_bytes(b"\x00\x01")
    b.upload_tree(folder, "base")
    b.download_tree("base", tmp_path / "copy")
    assert (tmp_path / "copy" / "sub" / "f.bin").read_bytes() == b"\x00\x01"


def test_a_library_lives_in_memory(photos):
    from seqlib.api import Library
    from seqlib.config import TrainConfig

    from .conftest import FAST

    url = f"memory://{uuid.uuid4().hex}"
    lib = Library.init(url)
    lib.add("mascot", photos / "mascot", config=TrainConfig(**FAST))
    again = Library.open(url)  # the same process sees the same store
    assert [c.name for c in again.head().concepts] == ["mascot"]
    assert again.verify()["ok"]
    assert again.store.gc(grace_seconds=0) == []  # nothing unreachable
