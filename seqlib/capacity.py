"""Capacity: the sole owner of used / free / fits (format_spec.md, "Capacity").

A layer of input width m holds floor(m / r) rank-r concepts. The library's shared reserve
(``seqlib.reserve``) takes its directions; every orthogonal concept takes its rank plus what
``--protect`` reserved on each layer; plain-LoRA concepts take nothing.
``status`` groups the layers by width, names the bottleneck and counts what still fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat
from operator import add
from typing import TYPE_CHECKING

from seqlib.choices import WHEN_FULL
from seqlib.errors import CapacityError

if TYPE_CHECKING:  # duck-typed: the models, or the plain views of seqlib.glance
    from seqlib.format import Version


def capacity(in_features: int, rank: int) -> int:
    """How many rank-r concepts one layer of width m holds: floor(m / r)."""
    return in_features // rank


def used_dims(commit: Version) -> dict[str, int]:
    """Dimensions taken on each layer: the shared reserve, the orthogonal concepts' bases and
    what --protect reserved."""
    used, uniform = list(commit.library.reserved_dims), 0
    for concept in commit.concepts:  # lists added in C (map), not a dict per layer: `status` at 1,000 concepts
        if not concept.orthogonal:
            continue
        if concept.ranks is None and not any(concept.reserved) and len(concept.reserved) == len(used):
            uniform += concept.rank  # the same on every layer: added once at the end
            continue
        ranks = concept.ranks or repeat(concept.rank)
        added = list(map(add, map(add, used, ranks), concept.reserved))
        used = added + used[len(added) :]  # a short record: verify names it
    return {name: u + uniform for name, u in zip(commit.library.layer_names, used)}


def free_dims(commit: Version, used: dict[str, int] | None = None) -> dict[str, int]:
    used = used_dims(commit) if used is None else used
    return {layer.name: layer.in_features - used[layer.name] for layer in commit.library.layers}


def concepts_that_fit(commit: Version, rank: int | None = None, policy: str = "refuse") -> int:
    """How many more rank-r concepts fit under a --when-full policy.

    refuse: every layer needs r free dimensions, so the bottleneck layer decides.
    shrink: a nearly full layer takes what is left (at least 1), so until any layer is full.
    skip: a full layer is left out, so until no layer has r free dimensions.
    """
    return fits(list(free_dims(commit).values()), rank or commit.library.rank, policy)


def fits(free: list[int], r: int, policy: str) -> int:
    """``concepts_that_fit`` from the free dimensions of every layer."""
    if policy == "refuse":
        return min(f // r for f in free)
    if policy == "skip":
        return max(f // r for f in free)
    count = 0
    while min(free) >= 1:
        free = [f - min(r, f) for f in free]
        count += 1
    return count


def layer_ranks(commit: Version, rank: int, policy: str) -> tuple[list[int], list[str]]:
    """Per-layer ranks for a new concept under a --when-full policy, and the layers that
    get less than ``rank`` (empty when every layer has room)."""
    free = free_dims(commit)
    names = commit.library.layer_names
    short = [n for n in names if free[n] < rank]
    if not short:
        return [rank] * len(names), []
    if policy == "shrink" and all(free[n] >= 1 for n in names):
        return [min(rank, free[n]) for n in names], short
    if policy == "skip" and len(short) < len(names):
        return [rank if free[n] >= rank else 0 for n in names], short
    raise CapacityError(short, rank, free)


@dataclass(frozen=True)
class WidthGroup:
    """Layers of one input width m: they share capacity arithmetic."""

    in_features: int
    layers: int
    capacity: int  # floor(m / r) concepts
    used: int  # basis dimensions taken (the same on every layer of the library)
    free: int


@dataclass(frozen=True)
class Status:
    commit_id: str
    version: int
    commit: Version
    groups: list[WidthGroup]
    bottleneck: str  # the layer with the fewest free dimensions
    bottleneck_free: int
    fits: int  # more concepts at the library's rank
    fits_by_policy: dict[str, int]  # the same under each --when-full policy
    worst_pairs: list[tuple[str, str, float]]  # (source, target, crosstalk), worst first

    def to_json(self) -> dict:
        lib = self.commit.library
        return {
            "version": self.version,
            "commit": self.commit_id,
            "base": lib.base.model_dump(mode="json"),
            "rank": lib.rank,
            "concepts": [
                {
                    "name": c.name,
                    "token": c.token,
                    "rank": c.rank,
                    "method": c.method,
                    "orthogonal": c.orthogonal,
                    "final_loss": c.final_loss,
                    "created": c.created,
                }
                for c in self.commit.concepts
            ],
            "widths": [g.__dict__ for g in self.groups],
            "reserve": lib.reserve.model_dump(mode="json") if lib.reserve else None,
            "bottleneck": {"layer": self.bottleneck, "free": self.bottleneck_free},
            "fits": self.fits,
            "fits_by_policy": self.fits_by_policy,
            "worst_pairs": [{"source": a, "target": b, "crosstalk": x} for a, b, x in self.worst_pairs],
        }


def status(commit: Version, version: int, commit_id: str, worst_pairs: list) -> Status:
    """Capacity per width, the bottleneck layer, what fits; ``worst_pairs``: the worst crosstalk."""
    r = commit.library.rank
    used = used_dims(commit)  # one pass over the concepts: at 1,000 of them, each pass costs
    free = free_dims(commit, used)
    groups: dict[int, list[str]] = {}
    for layer in commit.library.layers:
        groups.setdefault(layer.in_features, []).append(layer.name)
    widths = [
        WidthGroup(
            in_features=m,
            layers=len(names),
            capacity=capacity(m, r),
            used=max(used[n] for n in names),
            free=min(free[n] for n in names),
        )
        for m, names in sorted(groups.items())
    ]
    bottleneck = min(commit.library.layers, key=lambda layer: (free[layer.name], layer.in_features))
    return Status(
        commit_id=commit_id,
        version=version,
        commit=commit,
        groups=widths,
        bottleneck=bottleneck.name,
        bottleneck_free=free[bottleneck.name],
        fits=fits(list(free.values()), r, "refuse"),
        fits_by_policy={p: fits(list(free.values()), r, p) for p in WHEN_FULL},
        worst_pairs=worst_pairs,
    )
