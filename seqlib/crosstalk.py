"""Crosstalk as stored (``format_spec.md``, "Crosstalk"): pairs, summaries and the worst pairs
of a version, reading a concept's full Crosstalk object only when its summary cannot answer.

Pure functions over records; ``load`` is how a caller reads a record's Crosstalk (the store's
``crosstalk``). A pair is (source, target, value): the crosstalk of source onto target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # duck-typed: the models, or the plain views of seqlib.glance
    from seqlib.format import ConceptRecord, Crosstalk

SUMMARY = 5  # pairs kept in a record's crosstalk_worst
Pair = tuple[str, str, float]
Load = Callable[["ConceptRecord"], "Crosstalk"]


def pairs_of(name: str, crosstalk: Crosstalk) -> list[Pair]:
    """Every pair a concept's Crosstalk holds: with each concept before it, both ways."""
    return [(e, name, v) for e, v in crosstalk.crosstalk_from.items()] + [
        (name, e, v) for e, v in crosstalk.crosstalk_onto.items()
    ]


def summarize(name: str, crosstalk: Crosstalk) -> list[Pair]:
    """A record's ``crosstalk_worst``: its SUMMARY worst pairs, worst first (ties by names)."""
    return sorted(pairs_of(name, crosstalk), key=_worst_first)[:SUMMARY]


def record_fields(name: str, values: Crosstalk) -> dict:
    """A ConceptRecord's ``crosstalk`` and ``crosstalk_worst`` for its Crosstalk ``values``."""
    return {"crosstalk": values.id, "crosstalk_worst": summarize(name, values)}


def _worst_first(pair: Pair) -> tuple:
    return (-pair[2], pair[0], pair[1])


def all_pairs(concepts: list[ConceptRecord], load: Load) -> list[Pair]:
    """Every pair between concepts of a version (pairs naming removed concepts left out), worst first."""
    return _between(concepts, concepts, load)


def pairs_among(selected: list[ConceptRecord], load: Load) -> list[Pair]:
    """The pairs whose both ends are in ``selected`` (a composition), worst first."""
    return _between(selected, selected, load)


def pairs_with(concepts: list[ConceptRecord], name: str, load: Load) -> list[Pair]:
    """The pairs involving ``name``, worst first. A pair lives in the later concept's record, so
    only ``name`` and the concepts after it are read, and of the later ones only ``name``'s entries."""
    start = next(i for i, c in enumerate(concepts) if c.name == name)
    found = _between(concepts[start : start + 1], concepts, load)
    for c in concepts[start + 1 :]:
        values = load(c)
        if name in values.crosstalk_from:
            found.append((name, c.name, values.crosstalk_from[name]))
        if name in values.crosstalk_onto:
            found.append((c.name, name, values.crosstalk_onto[name]))
    return sorted(found, key=_worst_first)


def _between(readers: Iterable[ConceptRecord], concepts: list[ConceptRecord], load: Load) -> list[Pair]:
    names = {c.name for c in concepts}
    found = [p for c in readers for p in pairs_of(c.name, load(c)) if p[0] in names and p[1] in names]
    return sorted(found, key=_worst_first)


def worst_pairs(concepts: list[ConceptRecord], k: int, load: Load) -> list[Pair]:
    """The k worst pairs of a version, exactly, from the records' summaries.

    A summary is a record's SUMMARY worst pairs; its other pairs are no worse than its last one.
    So a record's full Crosstalk is read only when that last value could still enter the top k
    (a removed concept knocked entries out, or k > SUMMARY): usually none for ``status``.
    """
    names = {c.name for c in concepts}
    kept = {i: [p for p in c.crosstalk_worst if p[0] in names and p[1] in names] for i, c in enumerate(concepts)}
    unsure = [i for i, c in enumerate(concepts) if len(c.crosstalk_worst) == SUMMARY]
    for i in sorted(unsure, key=lambda i: -concepts[i].crosstalk_worst[-1][2]):
        known = sorted((p for pairs in kept.values() for p in pairs), key=_worst_first)
        if len(known) >= k and concepts[i].crosstalk_worst[-1][2] < known[k - 1][2]:
            break  # the rest are sorted: none of their hidden pairs can enter the top k
        kept[i] = [p for p in pairs_of(concepts[i].name, load(concepts[i])) if p[0] in names and p[1] in names]
    return sorted((p for pairs in kept.values() for p in pairs), key=_worst_first)[:k]
