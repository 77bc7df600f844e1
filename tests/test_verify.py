"""`seqlib verify` against forged stores whose hashes are all kept consistent.

A forger rewrites a commit, re-hashes it and every later commit (their parents change), and
moves the ref entries: checksums and the chain look fine, so only the format's invariants,
recomputed at every version, can catch it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
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


def _robot(**changes) -> Callable[[dict], None]:
    """Set (or with None for a nested path, clear) fields of robot's record; ``training__x``
    reaches into the training record."""

    def edit(data: dict) -> None:
        robot = concept(data, "robot")
        for key, value in changes.items():
            target, *rest = key.split("__")
            if rest:
                robot[target][rest[0]] = value
            else:
                robot[key] = value

    return edit


def _each(key: str, value_of: Callable[[list], list]) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        robot = concept(data, "robot")
        robot[key] = value_of(robot[key] if robot[key] is not None else [4] * len(data["library"]["layers"]))

    return edit


def _crosstalk_key_dropped(data: dict) -> None:
    from seqlib.crosstalk import summarize
    from seqlib.format import Crosstalk

    robot = concept(data, "robot")
    del robot["crosstalk_from"]["mascot"]
    values = Crosstalk(crosstalk_from=robot["crosstalk_from"], crosstalk_onto=robot["crosstalk_onto"])
    robot["crosstalk_worst"] = [list(p) for p in summarize("robot", values)]  # re-derived: only the key rule breaks


def _duplicate_name(data: dict) -> None:
    emblem = concept(data, "emblem")
    emblem["name"], emblem["token"] = "mascot", "<mascot>"


def _recipe(name: str, **changes) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        data["recipes"][name] = {
            "concepts": [["mascot", 1.0]], "prompt": "a photo of <mascot>", "negative_prompt": None, "seed": 0,
            "num_images": 1, "steps": 10, "guidance": 4.0, "size": None, "scheduler": None, "layout": "sum",
            "created": "2026-12-01T10:00:00+00:00",
        } | changes  # fmt: skip

    return edit


def _forged_reserve(**changes) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        layers = len(data["library"]["layers"])
        data["library"]["reserve"] = {
            "payload": concept(data, "mascot")["payload"], "arrays": concept(data, "mascot")["arrays"],
            "dims": [1] * layers, "captured": [0.5] * layers, "energy": 0.5, "max_fraction": 0.0625,
            "inputs": "forged", "created": "2026-12-01T10:00:00+00:00",
        } | changes  # fmt: skip

    return edit


def _shared_columns(data: dict) -> None:
    for name in ("emblem", "robot"):
        c = concept(data, name)
        c["training"]["method"], c["frozen_columns"] = "frozen-basis", [0, 1, 2, 3]


def _as_imported(data: dict) -> None:
    robot = concept(data, "robot")
    robot["training"], robot["images"], robot["initial_loss"], robot["final_loss"] = None, [], None, None
    robot["imported"] = {
        "file": "robot.safetensors", "sha256": "0" * 64, "format": "kohya", "relative_error": 0.0,
        "tensor_sha256": "1" * 64,
    }  # fmt: skip


UTC_LATER = "2026-12-01T12:00:00+02:00"
CASES |= {
    "frozen_columns null on a frozen-basis concept": (4, _robot(training__method="frozen-basis"), "frozen_columns"),
    "frozen_columns repeated": (
        4,
        _robot(training__method="frozen-basis", frozen_columns=[0, 0, 1, 2]),
        "4 distinct frozen_columns",
    ),
    "frozen_columns too few": (4, _robot(training__method="frozen-basis", frozen_columns=[8, 9]), "distinct frozen"),
    "reserved without protect": (4, _each("reserved", lambda r: [1] * len(r)), "without --protect"),
    "reserved negative": (
        4,
        lambda d: (_robot(training__protect=1)(d), _each("reserved", lambda r: [-1] * len(r))(d)),
        "negative reserved",
    ),
    "tensor_sha256 null": (4, _robot(tensor_sha256=None), "tensor_sha256 is missing"),
    "crosstalk key missing": (4, _crosstalk_key_dropped, "crosstalk from lacks ['mascot']"),
    "rank disagrees with the payload": (4, _robot(rank=3), "does not hold rank"),
    "ranks disagree with the zero columns": (4, _each("ranks", lambda r: [*r[:-1], 3]), "then zeros"),
    "ranks of the wrong length": (4, _robot(ranks=[4]), "ranks must be"),
    "ranks above the rank": (4, _each("ranks", lambda r: [5] * len(r)), "ranks must be"),
    "orthogonal flag cleared": (4, _robot(orthogonal=False), "orthogonal is False for a seqlora"),
    "orthogonal flag set on plain LoRA": (4, _robot(training__method="lora"), "orthogonal is True for a lora"),
    "commit timestamp not in UTC": (4, lambda d: d.update(timestamp=UTC_LATER), "is not in UTC"),
    "record created not in UTC": (4, _robot(created=UTC_LATER), "is not in UTC"),
    "recipe with a bad name": (4, _recipe("Beach Day!"), "recipe name"),
    "recipe created not in UTC": (4, _recipe("beach", created=UTC_LATER), "is not in UTC"),
    "image path with a folder": (
        4,
        lambda d: concept(d, "robot")["images"][0].update(file="../../etc/x.png"),
        "not a bare file name",
    ),  # fmt: skip
    "image path empty": (4, lambda d: concept(d, "robot")["images"][0].update(file=""), "not a bare file name"),
    "duplicated concept name": (4, _duplicate_name, "concept name mascot appears 2 times"),
    "neither trained nor imported": (4, _robot(training=None), "neither trained nor imported"),
    "dtype label in the record": (
        4,
        lambda d: concept(d, "robot")["arrays"][0].update(dtype="float16"),
        "recorded as float16",
    ),
    "reserve whose payload is not its arrays": (
        4,
        _forged_reserve(payload="0" * 64),
        "reserve: payload id",
    ),
    "reserve with dims for too few layers": (4, _forged_reserve(dims=[1]), "entries for"),
    "reserve over its max_fraction": (4, _forged_reserve(max_fraction=0.0), "outside its bounds"),
    "reserve that is a concept's basis": (4, _forged_reserve(), "reserve: "),
    "concept name against the rule": (4, _robot(name="Robot", token="<Robot>"), "must start with a lower-case"),
    "two frozen-basis concepts on the same columns": (4, _shared_columns, "share columns of the shared basis"),
    "image path '..'": (4, lambda d: concept(d, "robot")["images"][0].update(file=".."), "not a bare file name"),
    "a trained basis passed off as imported": (4, _as_imported, "imported basis is not orthonormal"),
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


def _payload_folder(store: Path, name: str = "robot") -> Path:
    head = _expand(
        store, _read(store, "commits", sorted((store / "refs" / "heads" / "main").iterdir())[-1].read_text().strip())
    )
    return store / "objects" / "payloads" / concept(head, name)["payload"]


def _stray_array(store: Path) -> None:
    folder = _payload_folder(store)
    shutil.copytree(folder / "embedding", folder / "X_m1")


def _rechunked(store: Path) -> None:
    """B_m64 rewritten in several chunks: the same decoded values (checksums hold)."""
    import zarr

    group = zarr.open_group(str(_payload_folder(store)), mode="r+")
    data = group["B_m64"][...]
    del group["B_m64"]
    group.create_array("B_m64", shape=data.shape, dtype=data.dtype, chunks=(1, *data.shape[1:]))[...] = data


def _retyped(store: Path) -> None:
    """B_m64 stored as float64 with the same values: the checksum of the decoded bytes changes, so
    the forger re-records it (and re-hashes the payload id, the record, the chain)."""
    import zarr

    from seqlib.store import array_sha256

    folder = _payload_folder(store)
    group = zarr.open_group(str(folder), mode="r+")
    data = group["B_m64"][...].astype("float64")
    del group["B_m64"]
    group.create_array("B_m64", shape=data.shape, dtype=data.dtype, chunks=data.shape)[...] = data

    def edit(d: dict) -> None:
        robot = concept(d, "robot")
        record = next(a for a in robot["arrays"] if a["name"] == "B_m64")
        record["sha256"] = array_sha256(data)  # the dtype label stays float32: the lie
        robot["payload"] = hashlib.sha256(_canonical({"arrays": robot["arrays"]}).encode()).hexdigest()
        shutil.copytree(folder, folder.parent / robot["payload"])

    forge(store, 4, edit)


def _reshaped_label(store: Path) -> None:
    """The record says B_m64 is (…, 5) while the array is (…, 4); the forger re-hashes the payload
    id (a copy of the folder under the new id) and the chain."""
    folder = _payload_folder(store)

    def edit(d: dict) -> None:
        robot = concept(d, "robot")
        record = next(a for a in robot["arrays"] if a["name"] == "B_m64")
        record["shape"] = [*record["shape"][:-1], 5]
        robot["payload"] = hashlib.sha256(_canonical({"arrays": robot["arrays"]}).encode()).hexdigest()
        shutil.copytree(folder, folder.parent / robot["payload"])

    forge(store, 4, edit)


PAYLOAD_CASES = {
    "array shape mislabelled": (_reshaped_label, "recorded float32"),
    "stray array in a payload": (_stray_array, "arrays the record does not list: X_m1"),
    "array in several chunks": (_rechunked, "not as one chunk"),
    "array dtype mislabelled": (_retyped, "is float64"),
}


@pytest.mark.parametrize("case", list(PAYLOAD_CASES))
def test_verify_catches_forged_payloads(store_copy, capsys, case):
    damage, expected = PAYLOAD_CASES[case]
    damage(store_copy)
    code = main(["--store", str(store_copy), "verify", "--skip-base", "--json"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    problems = json.loads(out)["problems"]
    assert code == 3 and any(expected in p for p in problems), problems
