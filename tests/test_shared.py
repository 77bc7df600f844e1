"""A library a team shares: the same protocol on a folder and on S3 (a local moto server)."""

from __future__ import annotations

import pytest

from seqlib.api import Library
from seqlib.cli import main


def test_init_add_compose_log_on_s3(s3, photos, tmp_path, capsys):
    url = s3()
    assert main(["init", url]) == 0
    assert main(["--store", url, "add", "mascot", str(photos / "mascot"), "--steps", "2", "-K", "1"]) == 0
    assert (
        main(["--store", url, "compose", "mascot", "-p", "a photo of <mascot>", "--steps", "2", "-o", str(tmp_path)])
        == 0
    )
    assert (tmp_path / "mascot-seed0.png").is_file()
    assert main(["--store", url, "log"]) == 0
    out = capsys.readouterr().out
    assert "add mascot" in out and "init: embedded base" in out
    assert Library.open(url).verify()["ok"]
    assert main(["init", url]) == 3  # an existing store is never overwritten


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_two_racing_adds_exactly_one_wins(where, s3, empty_store, photos, tmp_path, cli_processes):
    if where == "s3":
        store = s3()
        Library.init(store)
    else:
        import shutil

        store = str(tmp_path / ".seqlib")
        shutil.copytree(empty_store, store)
    # two real processes at once, one thread each (two processes spinning two OpenMP threads
    # apiece on a 2-core box can starve each other for minutes)
    adds = [
        (["--store", store, "add", name, str(photos / name), "--steps", "3", "-K", "1", "--hvp", "forward-diff"], 0)
        for name in ("emblem", "robot")
    ]
    results = [(r.returncode, r.stderr) for r in cli_processes(adds, threads=1)]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], results  # the loser: a store conflict, exit 3
    loser_err = next(err for code, err in results if code == 3)
    assert "nothing was committed" in loser_err and "Traceback" not in loser_err
    lib = Library.open(store)
    assert len(lib.head().concepts) == 1 and len(lib.log()) == 2
    assert lib.verify(check_base=False)["ok"]
    # the loser's payload is unreachable; gc removes it and nothing else
    removed = lib.store.gc(grace_seconds=0)
    # (the loser may also have written its commit, page, record and crosstalk objects before its
    # ref create failed, and its preview: all unreachable too)
    assert len([k for k in removed if k.startswith("objects/payloads/")]) == 1
    assert len([k for k in removed if k.startswith("objects/previews/")]) <= 1
    assert all(k.startswith("objects/") for k in removed)
    assert not lib.store.gc(grace_seconds=0, dry_run=True)
    assert lib.verify(check_base=False)["ok"]
