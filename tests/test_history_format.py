"""Format 3's history: pages of content-addressed records, crosstalk by reference, and the worst
pairs read from the records' summaries (``format_spec.md``, "Commit", "Page", "Crosstalk")."""

from __future__ import annotations

import json
import random

import pytest

from seqlib import crosstalk
from seqlib.errors import FormatVersionError
from seqlib.format import PAGE_MAX, Crosstalk, Version, paginate
from seqlib.store import Store


def _ids(n: int, rng: random.Random) -> list[str]:
    return [f"{rng.getrandbits(256):064x}" for _ in range(n)]


def test_pages_split_where_the_ids_say_so_appends_touch_the_last_page_removals_one():
    rng = random.Random(0)
    ids = _ids(700, rng)
    pages = paginate(ids)
    assert [i for p in pages for i in p] == ids and max(map(len, pages)) <= PAGE_MAX and len(pages) > 3
    grown = paginate([*ids, *_ids(1, rng)])
    assert grown[:-1] == pages[:-1] or grown[:-2] == pages[:-1]  # the last page grew, or a new one began
    for k in rng.sample(range(700), 20):
        shrunk = paginate(ids[:k] + ids[k + 1 :])
        changed = [p for p in shrunk if p not in pages]
        assert len(changed) == 1 and len(shrunk) >= len(pages) - 1  # one page rewritten (or two merged)


def _record_with(record, name: str, values: Crosstalk):
    return record.model_copy(update={"name": name, "token": f"<{name}>", **crosstalk.record_fields(name, values)})


@pytest.mark.parametrize("seed", range(5))
def test_worst_pairs_from_summaries_equal_the_full_sort_after_removals(seqlora_store, seed):
    rng = random.Random(seed)
    template = Store(seqlora_store).head().concepts[0]
    values, records = {}, []
    for k in range(40):
        names = [r.name for r in records]
        v = Crosstalk(
            crosstalk_from={e: round(rng.random(), 3) for e in names},
            crosstalk_onto={e: round(rng.random(), 3) for e in names},
        )
        records.append(_record_with(template, f"c{k}", v))
        values[f"c{k}"] = v
    kept = [r for r in records if rng.random() > 0.3]  # removed concepts stay in later records' values
    loaded = []

    def load(record):
        loaded.append(record.name)
        return values[record.name]

    for k in (1, 5, 50):
        assert crosstalk.worst_pairs(kept, k, load) == crosstalk.all_pairs(kept, lambda r: values[r.name])[:k]
    assert len(set(loaded)) < len(kept)  # the summaries answered for most records


def test_a_commit_writes_one_page_one_record_and_its_crosstalk_whatever_the_library_size(store_copy):
    store = Store(store_copy)
    template = store.head().concepts[0]
    folder = store_copy / "objects"
    commit_sizes = []
    for k in range(100):
        head = store.head()
        values = Crosstalk(crosstalk_from={c.name: 0.1 for c in head.concepts}, crosstalk_onto={})
        store.keep(values)
        before = {p.relative_to(folder) for p in folder.rglob("*.json")}
        version = Version(parent=store.tip()[1], message=f"add c{k}", library=head.library, recipes=head.recipes,
                          concepts=[*head.concepts, _record_with(template, f"c{k}", values)])  # fmt: skip
        commit_id = store.commit(version, store.tip()[0])
        new = {p.relative_to(folder) for p in folder.rglob("*.json")} - before
        assert sorted(p.parts[0] for p in new) == ["commits", "concepts", "crosstalk", "pages"]
        commit_sizes.append((folder / "commits" / f"{commit_id}.json").stat().st_size)
    # a few more page ids (one per ~64 records, ~72 bytes each), not 100 more records
    assert commit_sizes[-1] - commit_sizes[0] < 12 * 72
    assert [c.name for c in store.head().concepts][-3:] == ["c97", "c98", "c99"]
    again = Store(store_copy).head()  # read back cold, from the files alone
    assert again.concepts == store.head().concepts and again.recipes == store.head().recipes


def test_a_record_of_a_newer_format_is_refused_by_its_version(store_copy):
    store = Store(store_copy)
    page = json.loads((store_copy / "objects" / "pages").glob("*.json").__next__().read_text())
    record = store_copy / "objects" / "concepts" / f"{page['concepts'][0]}.json"
    record.write_text(json.dumps(json.loads(record.read_text()) | {"format_version": 5, "new_field": 1}))
    with pytest.raises(FormatVersionError, match="format version 5"):
        Store(store_copy).read_object("concepts", page["concepts"][0], type(store.head().concepts[0]))
