"""Git-like verbs: list, rm, tag, log with tags, checkout, revert, --at, verify."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seqlib.api import Library
from seqlib.cli import main

from .conftest import NAMES


def cli(store: Path, *args: str, capsys) -> tuple[int, str, str]:
    code = main(["--store", str(store), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_list_in_training_order(seqlora_store, capsys):
    code, out, _ = cli(seqlora_store, "list", "--json", capsys=capsys)
    assert code == 0
    assert [c["name"] for c in json.loads(out)] == NAMES


def test_rm_frees_capacity_and_keeps_history(store_copy, capsys):
    before = Library.open(store_copy).status()
    code, out, _ = cli(store_copy, "rm", "emblem", capsys=capsys)
    assert code == 0 and "Removed <emblem>" in out
    after = Library.open(store_copy).status()
    assert [c.name for c in after.commit.concepts] == ["mascot", "robot"]
    assert after.bottleneck_free == before.bottleneck_free + 4
    assert after.fits == before.fits + 1
    # the version before still holds it
    code, out, _ = cli(store_copy, "show", "emblem", "--at", str(before.version), "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["concept"]["name"] == "emblem"
    code, _, err = cli(store_copy, "show", "emblem", capsys=capsys)
    assert code == 2 and "no concept named 'emblem'" in err
    # what remains is still pairwise orthogonal
    assert Library.open(store_copy).verify(check_base=False)["ok"]


def test_tags_name_versions_and_never_move(store_copy, capsys):
    assert cli(store_copy, "tag", "three", "3", capsys=capsys)[0] == 0
    assert cli(store_copy, "tag", "latest", capsys=capsys)[0] == 0
    code, _, err = cli(store_copy, "tag", "three", capsys=capsys)
    assert code == 2 and "already exists" in err
    for bad in ("12", "main", "-x", "a/b"):
        assert cli(store_copy, "tag", "--", bad, capsys=capsys)[0] == 2
    code, out, _ = cli(store_copy, "log", "--json", capsys=capsys)
    by_version = {e["version"]: e["tags"] for e in json.loads(out)}
    assert by_version[3] == ["three"] and by_version[4] == ["latest"]
    code, out, _ = cli(store_copy, "list", "--at", "three", "--json", capsys=capsys)
    assert [c["name"] for c in json.loads(out)] == NAMES[:2]


def test_checkout_is_read_only_until_main(store_copy, photos, capsys):
    assert cli(store_copy, "checkout", "2", capsys=capsys)[0] == 0
    code, out, _ = cli(store_copy, "status", "--json", capsys=capsys)
    assert json.loads(out)["version"] == 2 and len(json.loads(out)["concepts"]) == 1
    for args in (["rm", "mascot"], ["add", "newone", str(photos / "robot")], ["revert", "1"]):
        code, _, err = cli(store_copy, *args, capsys=capsys)
        assert code == 2 and "checked out read-only" in err
    assert "(checked out)" in cli(store_copy, "log", capsys=capsys)[1]
    assert cli(store_copy, "checkout", "main", capsys=capsys)[0] == 0
    assert json.loads(cli(store_copy, "status", "--json", capsys=capsys)[1])["version"] == 4


def test_revert_restores_an_old_state_as_a_new_commit(store_copy, capsys):
    assert cli(store_copy, "rm", "mascot", capsys=capsys)[0] == 0
    assert cli(store_copy, "revert", "3", capsys=capsys)[0] == 0
    lib = Library.open(store_copy)
    assert [c.name for c in lib.head().concepts] == NAMES[:2]
    assert lib.log()[0][2].message == "revert to version 3"
    assert lib.head().concepts == lib.store.read_version(lib.store.resolve("3")[1]).concepts


def test_unknown_versions_are_one_line_errors(seqlora_store, capsys):
    code, _, err = cli(seqlora_store, "status", "--at", "99", capsys=capsys)
    assert code == 2 and "no version, tag or commit '99'" in err


def test_verify_passes_on_a_sound_store(seqlora_store, capsys):
    code, out, _ = cli(seqlora_store, "verify", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 0 and report["ok"] and report["base_checked"]
    assert report["commits"] == 4 and report["payloads_checked"] == 3
    assert report["worst_orthogonality"]["max_abs_cos"] < 1e-5


def _chunk(store: Path, concept: str, array: str) -> Path:
    record = Library.open(store).head().concept(concept)
    return next(p for p in (store / "objects" / "payloads" / record.payload / array / "c").rglob("*") if p.is_file())


def test_a_corrupted_array_is_caught_by_verify_and_by_any_read(store_copy, tmp_path, capsys):
    chunk = _chunk(store_copy, "emblem", "A_n64")
    data = bytearray(chunk.read_bytes())
    data[100] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, _, err = cli(store_copy, "verify", "--skip-base", capsys=capsys)
    assert code == 3 and "concept emblem" in err and "A_n64" in err
    code, _, err = cli(
        store_copy, "compose", "emblem", "-p", "<emblem>", "--steps", "1", "-o", str(tmp_path), capsys=capsys
    )
    assert code == 3 and "checksum mismatch" in err and "Traceback" not in err


def test_a_truncated_array_and_an_altered_commit_are_reported(store_copy, capsys):
    _chunk(store_copy, "robot", "B_m64").write_bytes(b"")
    commit_id = Library.open(store_copy).store.entries()[1][1]
    path = store_copy / "objects" / "commits" / f"{commit_id}.json"
    path.write_text(path.read_text().replace('"add mascot"', '"add mascot (edited)"'))
    code, out, _ = cli(store_copy, "verify", "--skip-base", "--json", capsys=capsys)
    problems = json.loads(out)["problems"]
    assert code == 3
    assert any("concept robot" in p for p in problems)
    assert any(p.startswith("version 2: commit") for p in problems)


@pytest.mark.parametrize("verb", ["status", "list", "log", "verify"])
def test_read_commands_emit_json(seqlora_store, capsys, verb):
    args = [verb, "--json"] + (["--skip-base"] if verb == "verify" else [])
    code, out, _ = cli(seqlora_store, *args, capsys=capsys)
    assert code == 0
    json.loads(out)
