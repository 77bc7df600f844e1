"""The on-disk format: commits, the compare-and-swap ref, payloads, the version gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seqlib.api import Library
from seqlib.backends import create_exclusive
from seqlib.errors import ConflictError, FormatVersionError, StoreExistsError
from seqlib.format import Page, Version, sha256_hex
from seqlib.history import history
from seqlib.store import Store, array_sha256


def test_commit_id_is_the_sha256_of_its_file(seqlora_store):
    store = Store(seqlora_store)
    for _, commit_id, _ in store.log():
        raw = (seqlora_store / "objects" / "commits" / f"{commit_id}.json").read_bytes()
        assert sha256_hex(raw) == commit_id
        store.read_version(commit_id, verify=True)


def test_log_is_a_parent_chain_newest_first(seqlora_store):
    entries = Store(seqlora_store).log()
    assert [v for v, _, _ in entries] == [4, 3, 2, 1]
    assert [c.message for _, _, c in entries] == ["add robot", "add emblem", "add mascot", entries[-1][2].message]
    for (_, _, newer), (_, older_id, _) in zip(entries, entries[1:]):
        assert newer.parent == older_id
    assert entries[-1][2].parent is None


def test_history_says_what_log_says_without_reading_records(seqlora_store, tmp_path):
    """`seqlib log`'s fast path (commit headers and pages only) matches the versions read whole,
    on this store and on a format-1 one (whole-state commits, read through the legacy model)."""
    old = tmp_path / ".seqlib"
    shutil.copytree(Path(__file__).parent / "fixtures" / "v1-store", old)
    for root in (seqlora_store, old):
        whole = [(v, cid, c.parent, c.message, c.timestamp, len(c.concepts)) for v, cid, c in Store(root).log()]
        fresh = Store(root)
        assert [tuple(e) for e in history(fresh)] == whole
        if root == seqlora_store:  # format 3: no concept record read, only pages
            assert fresh._objects and {type(o) for o in fresh._objects.values()} == {Page}


def test_stale_writer_gets_a_conflict_and_the_branch_does_not_move(store_copy):
    store = Store(store_copy)
    seq, head = store.tip()[0], store.head()
    stale = Version(parent=head.parent, message="racing", library=head.library, concepts=head.concepts[:-1])
    with pytest.raises(ConflictError):
        store.commit(stale, expected_seq=seq - 1)
    assert store.tip()[0] == seq
    assert store.head() == head


def test_create_exclusive_is_create_if_absent(tmp_path):
    target = tmp_path / "000001"
    assert create_exclusive(target, b"a\n")
    assert not create_exclusive(target, b"b\n")
    assert target.read_bytes() == b"a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["000001"]  # no partial files left


def test_payload_round_trip_with_checksums_and_zero_arrays(store_copy):
    store = Store(store_copy)
    arrays = {"B_m4": np.arange(24, dtype=np.float32).reshape(2, 4, 3), "A_n5": np.zeros((2, 5, 3), np.float32)}
    payload_id, records = store.write_payload(arrays, {"concept": "x"})
    back = store.read_payload(payload_id)
    for name, a in arrays.items():
        np.testing.assert_array_equal(back[name], a)
    assert {r.name: r.sha256 for r in records} == {k: array_sha256(v) for k, v in arrays.items()}
    # all-zero chunks are written too (zarr skips them by default)
    assert any((store.payload_path(payload_id) / "A_n5" / "c").rglob("*"))
    assert not list(store.payload_path(payload_id).parent.glob("*.partial"))


def test_stored_arrays_match_the_checksums_in_the_commit(seqlora_store):
    store = Store(seqlora_store)
    for concept in store.head().concepts:
        arrays = store.read_payload(concept.payload)
        for record in concept.arrays:
            assert array_sha256(arrays[record.name]) == record.sha256
            assert list(arrays[record.name].shape) == record.shape


def test_a_newer_format_version_is_refused(store_copy):
    info = json.loads((store_copy / "store.json").read_text())
    (store_copy / "store.json").write_text(json.dumps(info | {"format_version": 99}))
    with pytest.raises(FormatVersionError, match="format version 99"):
        Library.open(store_copy)


def test_init_refuses_an_existing_store(store_copy):
    with pytest.raises(StoreExistsError):
        Library.init(store_copy)


def test_payload_layout_is_a_few_files_per_concept(seqlora_store):
    concept = Store(seqlora_store).head().concepts[0]
    files = [p for p in (seqlora_store / "objects" / "payloads" / concept.payload).rglob("*") if p.is_file()]
    # group + one metadata and one chunk file per array: per width a basis, directions and
    # energies; per output width the coefficients; the embedding
    assert len(files) == 1 + 2 * len(concept.arrays)
    layers = Store(seqlora_store).head().library.layers
    ins, outs = {layer.in_features for layer in layers}, {layer.out_features for layer in layers}
    assert ins >= {64, 128, 256} and outs >= {64, 128, 512}  # attention and feed-forward widths
    assert sorted(r.name for r in concept.arrays) == sorted(
        [f"{kind}_m{m}" for m in ins for kind in "BSU"] + [f"A_n{n}" for n in outs] + ["embedding"]
    )


def test_an_add_that_raced_another_add_conflicts_instead_of_merging(store_copy, photos):
    """The loser of two concurrent adds trained against a stale state: it must not land."""
    from seqlib.config import TrainConfig

    from .conftest import FAST

    slow, fast = Library.open(store_copy), Library.open(store_copy)
    landed = []

    def meanwhile(step: int, total: int, loss: float) -> None:
        if not landed:  # another process commits while this add is still training
            landed.append(fast.add("rival", photos / "robot", config=TrainConfig(**FAST)))

    with pytest.raises(ConflictError):
        slow.add("loser", photos / "emblem", config=TrainConfig(**FAST), progress=meanwhile)
    head = Library.open(store_copy).head()
    assert [c.name for c in head.concepts][-1] == "rival"
    assert head.concept("loser") is None


def test_a_base_without_its_tokenizer_is_refused(empty_store, tmp_path):
    from seqlib.base import load_pipeline
    from seqlib.errors import BaseLoadError

    shutil.copytree(empty_store / "base", tmp_path / "sd")
    shutil.rmtree(tmp_path / "sd" / "tokenizer")
    with pytest.raises(BaseLoadError, match="tokenizer"):
        load_pipeline("diffusers", str(tmp_path / "sd"), None, None)
