"""`seqlib verify` against forged stores whose hashes are all kept consistent.

A forger rewrites a commit, re-hashes it and every later commit (their parents change), and
moves the ref entries: checksums and the chain look fine, so only the format's invariants,
recomputed at every version, can catch it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from seqlib.cli import main


def _write(store: Path, kind: str, data: dict, encode=None) -> str:
    raw = (encode or _canonical)(data).encode()
    object_id = hashlib.sha256(raw).hexdigest()
    (store / "objects" / kind).mkdir(parents=True, exist_ok=True)
    (store / "objects" / kind / f"{object_id}.json").write_bytes(raw)
    return object_id


def _canonical(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _read(store: Path, kind: str, object_id: str) -> dict:
    return json.loads((store / "objects" / kind / f"{object_id}.json").read_text())


def _expand(store: Path, data: dict) -> dict:
    """A version-3 commit with its records (and their crosstalk) inline, as version 2 held them."""
    if "pages" in data:
        ids = [r for p in data.pop("pages") for r in _read(store, "pages", p)["concepts"]]
        data["concepts"] = [_read(store, "concepts", r) for r in ids]
        for c in data["concepts"]:
            values = _read(store, "crosstalk", c["crosstalk"])
            c["crosstalk_from"], c["crosstalk_onto"] = values["crosstalk_from"], values["crosstalk_onto"]
    return data


def _store_commit(store: Path, data: dict, encode) -> str:
    """Write a commit in the layout of its format_version: records as objects from version 3 on."""
    if data["format_version"] >= 3:
        ids = []
        for c in data.pop("concepts"):
            values = {
                "format_version": 3,
                "crosstalk_from": c.pop("crosstalk_from"),
                "crosstalk_onto": c.pop("crosstalk_onto"),
            }
            c["crosstalk"] = _write(store, "crosstalk", values)
            ids.append(_write(store, "concepts", c))
        data["pages"] = [_write(store, "pages", {"format_version": 3, "concepts": ids})] if ids else []
    else:
        for c in data["concepts"]:
            for key in ("format_version", "crosstalk", "crosstalk_worst"):
                c.pop(key, None)
    return _write(store, "commits", data, encode)


def forge(store: Path, version: int, edit: Callable[[dict], None], encode=None) -> None:
    """Apply ``edit`` to the state of ``version`` (records inline) and re-chain every later commit."""
    entries = sorted((store / "refs" / "heads" / "main").iterdir())
    parent = None if version == 1 else entries[version - 2].read_text().strip()
    for k, entry in enumerate(entries[version - 1 :], start=version):
        data = _expand(store, _read(store, "commits", entry.read_text().strip()))
        if k == version:
            edit(data)
        data["parent"] = parent
        parent = _store_commit(store, data, encode)
        entry.write_text(parent + "\n")


def concept(data: dict, name: str) -> dict:
    return next(c for c in data["concepts"] if c["name"] == name)


def _same_payload(data: dict) -> None:  # emblem's record now points at mascot's (valid) arrays
    mascot, emblem = concept(data, "mascot"), concept(data, "emblem")
    emblem["payload"], emblem["arrays"] = mascot["payload"], mascot["arrays"]


def _set(name: str, key: str, value) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        concept(data, name)[key] = value

    return edit


def _protect(data: dict) -> None:
    concept(data, "robot")["training"]["protect"] = 8


def _crosstalk(data: dict) -> None:
    robot = concept(data, "robot")
    robot["crosstalk_from"]["mascot"] = robot["crosstalk_from"]["mascot"] * 3 + 0.5


def _payload_id(data: dict) -> None:
    concept(data, "robot")["payload"] = "0" * 64


CASES = {
    "non-orthogonal pair in an older version": (3, _same_payload, "emblem are not orthogonal"),
    "broken --protect reservation": (4, _protect, "protect 8) overlaps the input directions"),
    "edited crosstalk value": (4, _crosstalk, "stored crosstalk from mascot"),
    "token other than <name>": (4, _set("robot", "token", "<robbie>"), "is not <robot>"),
    "frozen_columns on a seqlora concept": (4, _set("robot", "frozen_columns", [0, 1, 2, 3]), "frozen_columns on a"),
    "payload id not its arrays' hash": (4, _payload_id, "is not its arrays' hash"),
    "unknown key": (4, _set("robot", "surprise", 1), "Extra inputs are not permitted"),
    "identifier not its tensors' hash": (4, _set("robot", "tensor_sha256", "ab" * 32), "not the hash of its tensors"),
    "version-2 field in a version-1 commit": (
        4,
        lambda d: d.update(format_version=1),
        "version-1 commit cannot hold tensor_sha256",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_verify_catches_forgeries_at_any_version(store_copy, capsys, case):
    version, edit, expected = CASES[case]
    forge(store_copy, version, edit)
    code = main(["--store", str(store_copy), "verify", "--skip-base", "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    problems = json.loads(out)["problems"]
    assert code == 3 and any(expected in p for p in problems), problems


def test_verify_flags_non_canonical_bytes(store_copy, capsys):
    forge(store_copy, 4, lambda d: None, encode=lambda d: json.dumps(d, indent=4, sort_keys=True) + "\n")
    assert main(["--store", str(store_copy), "status"]) == 0  # readable, so every reader still works
    capsys.readouterr()
    assert main(["--store", str(store_copy), "verify", "--skip-base", "--json"]) == 3
    assert any("canonical JSON" in p for p in json.loads(capsys.readouterr().out)["problems"])


def test_verify_names_an_altered_record_and_a_missing_page(store_copy, capsys):
    head = _read(
        store_copy, "commits", sorted((store_copy / "refs" / "heads" / "main").iterdir())[-1].read_text().strip()
    )
    page = head["pages"][0]
    ids = [r for p in head["pages"] for r in _read(store_copy, "pages", p)["concepts"]]
    record = store_copy / "objects" / "concepts" / f"{ids[1]}.json"
    record.write_text(record.read_text().replace('"rank": 4', '"rank": 2', 1))
    assert main(["--store", str(store_copy), "verify", "--skip-base", "--json"]) == 3
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any(record.name in p and "checksum mismatch" in p for p in problems), problems
    (store_copy / "objects" / "pages" / f"{page}.json").unlink()
    assert main(["--store", str(store_copy), "verify", "--skip-base", "--json"]) == 3
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any(f"pages/{page}.json is damaged (missing)" in p for p in problems), problems


def test_an_untouched_store_verifies(seqlora_store, capsys):
    assert main(["--store", str(seqlora_store), "verify", "--skip-base"]) == 0
    assert "ok" in capsys.readouterr().out
