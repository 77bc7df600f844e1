"""The read commands' fast path (``seqlib.glance``): the same answers as the full reader, without
pydantic, and the full reader wherever the store is not an ordinary one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from seqlib import canonical, glance
from seqlib.api import Library
from seqlib.cli import main
from seqlib.cli._common import COMMANDS, QUICK_EXIT, cli


def _outputs(store, capsys, commands) -> list[tuple[int, str, str, bool]]:
    """(exit code, stdout, stderr, answered by the fast path) of each command."""
    found = []
    for args in commands:
        code = main(["--store", str(store), *args])
        out, err = capsys.readouterr()
        found.append((code, out, err, bool(QUICK_EXIT)))
    return found


READS = [
    ["list"],
    ["list", "--json"],
    ["list", "--at", "2"],
    ["status"],
    ["status", "--json"],
    ["status", "--at", "3"],
    ["show", "emblem"],
    ["show", "robot", "--json"],
    ["show", "mascot", "--at", "2"],
    ["log"],
]


def test_every_read_command_answers_as_the_full_reader_does(store_copy, capsys, monkeypatch):
    lib = Library.open(store_copy)
    lib.annotate("emblem", description="a badge", trigger="shield", weight=0.7, tags=["logo", "flat"])
    lib.tag("v1", "2")
    opened = []
    real_open = glance.open
    monkeypatch.setattr(glance, "open", lambda *a: opened.append(a) or real_open(*a))
    fast = _outputs(store_copy, capsys, READS)
    assert len(opened) == len(READS)  # each command asked the fast reader ...

    def refuse(*_):
        raise glance.Unusual("the test")

    monkeypatch.setattr(glance, "open", refuse)  # ... and the full reader gives the very same bytes
    full = _outputs(store_copy, capsys, READS)
    for args, a, b in zip(READS, fast, full):
        assert a[:3] == b[:3], args
        assert a[0] == 0 and a[1], args
        assert a[3] and not b[3], args  # the fast path answered, without falling back
    assert "weight 0.7" in fast[0][1] and "[logo, flat]" in fast[0][1]
    assert "(v1)" in fast[-1][1]
    assert json.loads(fast[1][1])[1]["tags"] == ["logo", "flat"]


def test_the_fast_path_answers_from_plain_json_and_takes_no_pydantic(seqlora_store):
    code = (
        "import sys; from seqlib.cli import main; "
        + "".join(f"assert main(['--store', {str(seqlora_store)!r}, *{c!r}]) == 0; " for c in READS)
        + "assert 'pydantic' not in sys.modules, 'pydantic imported'; "
        + "assert 'seqlib.format' not in sys.modules"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    head = glance.open(seqlora_store).snapshot()
    assert head.seq == 4 and [c.name for c in head.version.concepts] == ["mascot", "emblem", "robot"]
    assert isinstance(head.version.concepts[0], glance.ConceptView)


def test_what_is_not_ordinary_goes_to_the_full_reader(store_copy, capsys):
    lib = Library.open(store_copy)
    lib.tag("first", "2")
    with pytest.raises(glance.Unusual):  # tags and id prefixes are the full reader's to resolve
        glance.open(store_copy, "first").snapshot()
    assert main(["--store", str(store_copy), "list", "--at", "first"]) == 0
    assert capsys.readouterr().out.count("<") == 1  # version 2 holds one concept
    assert main(["--store", str(store_copy), "show", "mascott"]) == 2  # the full reader's did-you-mean
    assert "did you mean" in capsys.readouterr().err
    lib.checkout("2")  # a pinned checkout: the full reader marks it
    with pytest.raises(glance.Unusual):
        glance.open(store_copy)
    assert main(["--store", str(store_copy), "log"]) == 0
    assert "(checked out)" in capsys.readouterr().out
    lib.checkout("main")
    record = next((store_copy / "objects" / "concepts").glob("*.json"))
    data = json.loads(record.read_text())
    record.write_text(json.dumps(data | {"rank": "four"}))  # damage the fast path must not print
    with pytest.raises(glance.Unusual):  # found when the record's fields are first read
        glance.open(store_copy).status()
    assert main(["--store", str(store_copy), "status"]) == 3
    assert "damaged" in capsys.readouterr().err


def test_each_command_is_loaded_from_the_module_the_table_names():
    registered = {name: cmd.callback.__module__ for name, cmd in cli.commands.items()}
    cli.list_commands(None)  # imports every module in the table
    registered = {name: cmd.callback.__module__ for name, cmd in cli.commands.items()}
    table = {name: f"seqlib.cli.{module}" for module, names in COMMANDS.items() for name in names}
    assert registered == table


def test_a_commit_header_is_read_from_its_canonical_bytes(seqlora_store):
    commits = sorted((seqlora_store / "objects" / "commits").glob("*.json"))
    assert len(commits) == 4
    for path in commits:
        raw = path.read_bytes()
        full = json.loads(raw)
        keys = ("format_version", "message", "pages", "parent", "timestamp")
        assert canonical.header(raw, keys) == {k: full[k] for k in keys}
    with pytest.raises(ValueError):  # not canonical (one line): the full parse takes it
        canonical.header(json.dumps(full).encode(), keys)


def test_a_crosstalk_value_is_found_in_the_bytes_as_the_parse_finds_it(seqlora_store):
    files = sorted((seqlora_store / "objects" / "crosstalk").glob("*.json"))
    assert sum(bool(json.loads(f.read_bytes())["crosstalk_from"]) for f in files) == 2  # emblem's, robot's
    for path in files:
        raw, full = path.read_bytes(), json.loads(path.read_bytes())
        for key in ("crosstalk_from", "crosstalk_onto"):
            found = canonical.CrosstalkMap(raw, key)
            assert dict(found.items()) == full[key] and len(found) == len(full[key])
            for name, value in full[key].items():
                assert name in found and found[name] == value
            assert "nobody" not in found and "mascot-2" not in found


def test_a_record_parses_its_long_lists_only_when_they_are_read(seqlora_store):
    head = glance.open(seqlora_store).snapshot().version
    for record in head.concepts:
        path = seqlora_store / "objects" / "concepts"
        full = json.loads(
            next(p for p in path.glob("*.json") if json.loads(p.read_bytes())["name"] == record.name).read_bytes()
        )
        assert "arrays" not in record and "reserved" not in record  # cut before the parse ...
        assert record.arrays == full["arrays"] and record.reserved == full["reserved"]  # ... read when asked
        assert record.loss_curve == full["loss_curve"] and len(record.arrays) > 10
        assert record.model_dump() == full
    raw = b'{\n  "a": 1,\n  "b": [\n    2\n  ],\n  "c": 3\n}\n'
    assert json.loads(canonical.without(raw, ["b"])) == {"a": 1, "c": 3}
    with pytest.raises(ValueError):  # the last key cut leaves a trailing comma: not JSON, so the full reader
        json.loads(canonical.without(raw, ["c"]))


def test_a_list_of_zeros_is_read_without_parsing_and_anything_else_parsed():
    assert canonical._value(b"[\n    0,\n    0,\n    0\n  ]", ids=False) == [0, 0, 0]
    assert canonical._value(b"[\n    0,\n    10\n  ]", ids=False) == [0, 10]  # 10 holds a 0 and a 1
    assert canonical._value(b"[]", ids=False) == [] and canonical._value(b'"a b"', ids=False) == "a b"
