"""``seqlib verify``: recompute every promise of ``format_spec.md`` ("Invariants").

Numpy only, except the optional base fingerprint (which loads the base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from seqlib.errors import SeqlibError
from seqlib.format import free_dims

if TYPE_CHECKING:
    from seqlib.api import Library

ORTHOGONALITY_TOL = 1e-5


def worst_overlap(bases: list[tuple[str, dict[str, np.ndarray]]]) -> tuple[float, str, str, str]:
    """(max |cos| between columns of two different concepts' bases, concept, concept, layer)."""
    worst = (0.0, "", "", "")
    if len(bases) < 2:
        return worst
    for layer in bases[0][1]:
        cols, owner = [], []
        for name, B in bases:
            b = B[layer].astype(np.float64)
            cols.append(b / np.maximum(np.linalg.norm(b, axis=0, keepdims=True), 1e-30))
            owner += [name] * b.shape[1]
        G = np.abs(np.concatenate(cols, axis=1).T @ np.concatenate(cols, axis=1))  # (N r, N r)
        owner_arr = np.array(owner)
        G[owner_arr[:, None] == owner_arr[None, :]] = 0.0  # a concept's own columns don't count
        i, j = np.unravel_index(np.argmax(G), G.shape)
        if G[i, j] > worst[0]:
            worst = (float(G[i, j]), owner[i], owner[j], layer)
    return worst


def verify_library(lib: Library, check_base: bool = True) -> dict:
    store = lib.store
    problems: list[str] = []

    # 1) commit files hash to their ids; entry N's parent is entry N-1's commit
    entries = store.entries()
    previous, commits = None, {}
    for version, commit_id in entries:
        try:
            commit = commits[commit_id] = store.read_commit(commit_id, verify=True)
        except (SeqlibError, OSError, ValueError) as e:
            problems.append(f"version {version}: commit {commit_id[:12]} is unreadable or altered: {e}")
            previous = commit_id
            continue
        if commit.parent != previous:
            problems.append(f"version {version}: its parent is not version {version - 1}'s commit")
        previous = commit_id
    for tag, commit_id in store.tags().items():
        if commit_id not in commits:
            problems.append(f"tag {tag} points to {commit_id[:12]}, which is not on the branch")

    # 2) every array of every concept of every version matches its checksum (each payload once)
    checked: set[str] = set()
    for commit in commits.values():
        for concept in commit.concepts:
            if concept.payload in checked:
                continue
            checked.add(concept.payload)
            try:
                lib.payload_arrays(concept)
            except SeqlibError as e:
                problems.append(f"concept {concept.name} (payload {concept.payload[:12]}): {e}")

    # 3) the version being read: pairwise orthogonality and capacity arithmetic
    version, _ = lib.version()
    head = lib.head()
    from seqlib import payload

    bases = []
    for c in head.concepts:
        if c.orthogonal and c.payload in lib._arrays:
            bases.append((c.name, payload.unpack_bases(head.library.layers, lib._arrays[c.payload])))
    value, a, b, layer = worst_overlap(bases)
    if value > ORTHOGONALITY_TOL:
        problems.append(f"concepts {a} and {b} are not orthogonal on {layer}: max |cos| = {value:.2e}")
    for name, free in free_dims(head).items():
        if free < 0:
            problems.append(f"layer {name} is over capacity by {-free} dimensions")

    # 4) the base is the one the library was built on
    if check_base:
        try:
            lib._load_base(head, "cpu", None)
        except SeqlibError as e:
            problems.append(f"base: {e}")

    return {
        "ok": not problems,
        "problems": problems,
        "version": version,
        "commits": len(entries),
        "payloads_checked": len(checked),
        "concepts": len(head.concepts),
        "worst_orthogonality": {"max_abs_cos": value, "pair": [a, b] if a else [], "layer": layer},
        "base_checked": check_base,
    }
