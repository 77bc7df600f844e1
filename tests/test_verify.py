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


def forge(store: Path, version: int, edit: Callable[[dict], None], encode=None) -> None:
    """Apply ``edit`` to the commit of ``version`` and re-chain every later commit."""
    encode = encode or (lambda d: json.dumps(d, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    commits = store / "objects" / "commits"
    entries = sorted((store / "refs" / "heads" / "main").iterdir())
    parent = None if version == 1 else entries[version - 2].read_text().strip()
    for k, entry in enumerate(entries[version - 1 :], start=version):
        data = json.loads((commits / f"{entry.read_text().strip()}.json").read_text())
        if k == version:
            edit(data)
        data["parent"] = parent
        raw = encode(data).encode()
        parent = hashlib.sha256(raw).hexdigest()
        (commits / f"{parent}.json").write_bytes(raw)
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


def test_an_untouched_store_verifies(seqlora_store, capsys):
    assert main(["--store", str(seqlora_store), "verify", "--skip-base"]) == 0
    assert "ok" in capsys.readouterr().out
