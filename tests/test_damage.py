"""A damaged store: every file kind of format_spec.md, each damage, every read command.

Each command either works (when it does not need the damaged file) or prints one line and
exits 2-4; `verify` names the damaged file and exits 3; a failing command writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from seqlib.api import Library
from seqlib.cli import main


def _commit_file(store: Path, version: int) -> Path:
    entry = sorted((store / "refs" / "heads" / "main").iterdir())[version - 1]
    return store / "objects" / "commits" / f"{entry.read_text().strip()}.json"


def _object(store: Path, kind: str, object_id: str) -> Path:
    return store / "objects" / kind / f"{object_id}.json"


def _page_file(store: Path) -> Path:
    return _object(store, "pages", json.loads(_commit_file(store, 4).read_text())["pages"][-1])


def _record_file(store: Path, name: str = "robot") -> Path:
    records = [_object(store, "concepts", r) for r in json.loads(_page_file(store).read_text())["concepts"]]
    return next(p for p in records if json.loads(p.read_text())["name"] == name)


def _crosstalk_file(store: Path) -> Path:
    return _object(store, "crosstalk", json.loads(_record_file(store).read_text())["crosstalk"])


def _payload_file(store: Path, what: str) -> Path:
    payload = json.loads(_record_file(store).read_text())["payload"]
    folder = store / "objects" / "payloads" / payload
    if what == "metadata":
        return folder / "B_m64" / "zarr.json"
    return next(p for p in (folder / "B_m64" / "c").rglob("*") if p.is_file())


# file kind -> (path of the damaged file, what verify's report must contain to name it)
KINDS = {
    "store.json": lambda s: s / "store.json",
    "newest commit": lambda s: _commit_file(s, 4),
    "older commit": lambda s: _commit_file(s, 2),
    "newest ref entry": lambda s: sorted((s / "refs" / "heads" / "main").iterdir())[-1],
    "older ref entry": lambda s: sorted((s / "refs" / "heads" / "main").iterdir())[1],
    "tag": lambda s: s / "refs" / "tags" / "v1",
    "HEAD": lambda s: s / "HEAD",
    "page": _page_file,
    "concept record": _record_file,
    "crosstalk": _crosstalk_file,
    "payload array": lambda s: _payload_file(s, "array"),
    "payload metadata": lambda s: _payload_file(s, "metadata"),
}
DAMAGES = {
    "empty": lambda p: p.write_bytes(b""),
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: max(1, len(p.read_bytes()) // 2)]),
    "garbage": lambda p: p.write_bytes(b"\x00\xff{garbage\x9c not json"),
    "missing": lambda p: p.unlink(),
}
READ_COMMANDS = (["status"], ["status", "--json"], ["log"], ["list", "--json"], ["show", "robot"])


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _run(store: Path, capsys, *args: str) -> tuple[int, str, str]:
    code = main(["--store", str(store), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_or_works(code: int, err: str, what: str) -> None:
    assert "Traceback" not in err, what
    if code:
        assert code in (2, 3), (what, code, err)
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("Error: "), (what, err)


@pytest.fixture(scope="module")
def tagged_store(tmp_path_factory, seqlora_store) -> Path:
    """The three-concept store with a tag on version 2; the base folder is left out (no command
    here loads the base)."""
    path = tmp_path_factory.mktemp("damage") / ".seqlib"
    shutil.copytree(seqlora_store, path, ignore=shutil.ignore_patterns("base"))
    assert main(["--store", str(path), "tag", "v1", "2"]) == 0
    return path


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_command_works_or_says_one_line(tagged_store, tmp_path, capsys, kind, damage):
    store = tmp_path / ".seqlib"
    shutil.copytree(tagged_store, store)
    if kind == "HEAD":
        assert main(["--store", str(store), "checkout", "3"]) == 0
    target = KINDS[kind](store)
    DAMAGES[damage](target)
    capsys.readouterr()
    before = _digest(store)

    for args in READ_COMMANDS:
        code, _, err = _run(store, capsys, *args)
        _one_line_or_works(code, err, f"{kind}/{damage}: {args}")
        assert _digest(store) == before, f"{kind}/{damage}: {args} wrote to the store"

    code, out, err = _run(store, capsys, "verify", "--skip-base", "--json")
    assert "Traceback" not in err
    if damage == "missing" and kind in ("tag", "HEAD", "newest ref entry"):
        assert code == 0  # no tag, no checkout, or the last add never landed: all valid stores
    else:
        assert code == 3, (kind, damage, out, err)
        report = err if kind == "store.json" else " ".join(json.loads(out)["problems"])
        named = "robot" if kind.startswith("payload") else target.name
        assert named in report, (kind, damage, report)
    assert _digest(store) == before

    code, _, err = _run(store, capsys, "rm", "mascot")  # a write: all or nothing
    _one_line_or_works(code, err, f"{kind}/{damage}: rm")
    if code:
        assert _digest(store) == before


def test_a_damaged_checkpoint_refuses_resume_in_one_line(store_copy, photos, capsys):
    scratch = store_copy / "scratch"
    scratch.mkdir(exist_ok=True)
    (scratch / "newone.json").write_bytes(b"{truncated")
    (scratch / "newone.safetensors").write_bytes(b"\x00" * 10)
    before = _digest(store_copy)
    code, _, err = _run(store_copy, capsys, "add", "newone", str(photos / "robot"), "--resume", "--steps", "1")
    _one_line_or_works(code, err, "scratch")
    assert code == 3 and "checkpoint" in err
    assert _digest(store_copy) == before


def test_library_api_raises_typed_errors_naming_the_file(store_copy):
    from seqlib.errors import StoreDamagedError

    _commit_file(store_copy, 4).write_text("{}")
    with pytest.raises(StoreDamagedError, match=r"objects/commits/.*\.json is damaged"):
        Library.open(store_copy).status()


def test_damage_messages_name_the_file_and_the_way_out(tagged_store, seqlora_store, tmp_path, capsys):
    """The outside battery's misleading messages (issue 27), each one line naming what to do."""
    store = tmp_path / "a" / ".seqlib"
    shutil.copytree(tagged_store, store)
    (store / "refs" / "heads" / "main" / f"{2:012d}").unlink()  # a version silently skipped before
    code, _, err = _run(store, capsys, "log")
    _one_line_or_works(code, err, "ref entry")
    assert code == 3 and f"{2:012d}" in err and "verify" in err

    store = tmp_path / "b" / ".seqlib"
    shutil.copytree(tagged_store, store)
    (store / "HEAD").write_text("deadbeef" * 8 + "\n")  # a pin the user never typed
    code, _, err = _run(store, capsys, "status")
    _one_line_or_works(code, err, "HEAD")
    assert code == 3 and "HEAD" in err and "seqlib checkout main" in err

    store = tmp_path / "c" / ".seqlib"
    shutil.copytree(tagged_store, store)
    (store / "store.json").unlink()
    code, _, err = _run(tmp_path / "c", capsys, "status")
    assert code == 3 and "store.json" in err and "backup" in err and "create one with" not in err

    store = tmp_path / "d" / ".seqlib"
    shutil.copytree(seqlora_store, store)
    shutil.rmtree(store / "base")
    before = _digest(store)
    code, _, err = _run(store, capsys, "compose", "mascot", "-p", "a photo of <mascot>", "-o", str(tmp_path / "o"))
    assert code == 4 and "Traceback" not in err and "cp -r" in err and _digest(store) == before

    store = tmp_path / "e" / ".seqlib"
    shutil.copytree(seqlora_store, store)
    _payload_file(store, "array").unlink()
    code, _, err = _run(store, capsys, "compose", "robot", "-p", "a photo of <robot>", "-o", str(tmp_path / "o"))
    _one_line_or_works(code, err, "payload chunk")
    assert code == 3 and "objects/payloads/" in err and "B_m64" in err and "seqlib verify" in err
