"""``seqlib verify``: recompute every promise of ``format_spec.md`` ("Invariants") at every version.

It reports damage instead of raising: a missing, truncated or forged file becomes one line in
``problems`` naming it, and the checks that do not need it still run. Numpy only, except the
optional base fingerprint (which loads the base).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from seqlib.capacity import free_dims
from seqlib.errors import SeqlibError
from seqlib.format import Crosstalk, Version, canonical_json, sha256_hex
from seqlib.methods import METHODS
from seqlib.rules import check_reserve, payload_problems, record_problems, version_problems

if TYPE_CHECKING:
    from seqlib.repo import Repository

ORTHOGONALITY_TOL = 1e-5


class Overlaps:
    """Max |cos| between the basis columns of every pair of payloads in the history, per layer,
    from one Gram matrix per layer over all of them (each payload once): checking a version is
    then a lookup. Per version Gram matrices would cost O(versions x N^2) products; a library
    that grew to 100 concepts has 100 versions."""

    def __init__(self, layers: list[str], bases: dict[str, dict[str, np.ndarray]]) -> None:
        self.index = {pid: i for i, pid in enumerate(bases)}
        n = len(bases)
        self.worst = np.zeros((n, n))
        self.layer = np.zeros((n, n), dtype=int)
        self.layers = layers
        for k, layer in enumerate(layers):
            cols = [bases[pid][layer].astype(np.float64) for pid in bases]
            if not cols:
                break
            starts = np.cumsum([0] + [c.shape[1] for c in cols[:-1]])
            K = np.concatenate([c / np.maximum(np.linalg.norm(c, axis=0, keepdims=True), 1e-30) for c in cols], 1)
            G = np.abs(K.T @ K)
            blocks = np.maximum.reduceat(np.maximum.reduceat(G, starts, axis=0), starts, axis=1)
            np.fill_diagonal(blocks, 0.0)  # a payload's own columns don't count
            better = blocks > self.worst
            self.worst[better], self.layer[better] = blocks[better], k

    def worst_pair(self, payloads: list[tuple[str, str]]) -> tuple[float, str, str, str]:
        """(max |cos|, concept, concept, layer) over the (name, payload id) pairs given."""
        if len(payloads) < 2:
            return 0.0, "", "", ""
        idx = np.array([self.index[pid] for _, pid in payloads])
        sub = self.worst[np.ix_(idx, idx)]
        sub[idx[:, None] == idx[None, :]] = 1.0  # one payload under two names: the same columns twice
        np.fill_diagonal(sub, 0.0)
        i, j = np.unravel_index(np.argmax(sub), sub.shape)
        return float(sub[i, j]), payloads[i][0], payloads[j][0], self.layers[self.layer[idx[i], idx[j]]]


def _read_branch(store, problems: list[str]) -> tuple[list[tuple[int, str]], dict[str, Version]]:
    """Every readable (version, commit id) and commit; invariants 3 (commit hashes) and 4 (chain)."""
    entries, commits, previous = [], {}, None
    expected = 1
    for version, key in store.entry_keys():
        for gap in range(expected, version):
            problems.append(f"version {gap}: {store.root}/{key.rsplit('/', 1)[0]}/{gap:012d} is missing")
        expected = version + 1
        try:
            commit_id = store.read_ref(key)
        except SeqlibError as e:
            problems.append(f"version {version}: {e}")
            previous = None
            continue
        entries.append((version, commit_id))
        previous_id, previous = previous, commit_id
        try:
            commit, raw = store.read_commit_bytes(commit_id)
        except SeqlibError as e:
            problems.append(f"version {version}: {e}")
            continue
        if sha256_hex(raw) != commit_id:
            problems.append(f"version {version}: commit {commit_id[:12]}'s bytes do not hash to its id (altered)")
        elif raw != commit.to_bytes():
            problems.append(f"version {version}: commit {commit_id[:12]} is not in the canonical JSON encoding")
        if commit.parent != previous_id:
            problems.append(f"version {version}: its parent is not version {version - 1}'s commit")
        try:  # its pages and records, each re-hashed once over the whole history
            commits[commit_id] = store.version_of(commit, verify=True)
        except SeqlibError as e:
            problems.append(f"version {version}: {e}")
    return entries, commits


def _crosstalk_of(store, commit: Version, record) -> Crosstalk:
    """A record's Crosstalk, re-hashed (version-1/2 commits hold it inline: already checked)."""
    if commit.format_version < 3:
        return store.crosstalk(record)
    return store.read_object("crosstalk", record.crosstalk, Crosstalk, verify=True)


def _check_records(store, version: int, commit: Version, problems: list[str], seen: set) -> None:
    """What each concept record promises about itself (format_spec.md, ConceptRecord), once per
    record: versions share their unchanged records."""
    from seqlib.crosstalk import summarize

    layers = len(commit.library.layers)
    for c in commit.concepts:
        if id(c) in seen:
            continue
        seen.add(id(c))
        where = f"version {version}: concept {c.name}"
        if c.token != f"<{c.name}>":
            problems.append(f"{where}: token {c.token!r} is not <{c.name}>")
        method = c.training.method if c.training else None
        if c.frozen_columns is not None and (method is None or METHODS[method].basis != "frozen"):
            problems.append(f"{where}: frozen_columns on a {method or 'imported'} concept")
        if len(c.reserved) != layers:
            problems.append(f"{where}: reserved has {len(c.reserved)} entries for {layers} layers")
        problems += [f"{where}: {p}" for p in record_problems(c, commit)]
        try:
            values = _crosstalk_of(store, commit, c)
        except SeqlibError as e:
            problems.append(f"{where}: crosstalk: {e}")
            continue
        for value in (*values.crosstalk_from.values(), *values.crosstalk_onto.values()):
            if not np.isfinite(value) or value < 0:
                problems.append(f"{where}: crosstalk value {value} is not a finite non-negative number")
                break
        if [tuple(p) for p in c.crosstalk_worst] != summarize(c.name, values):
            problems.append(f"{where}: crosstalk_worst is not the worst pairs of its crosstalk")


def _check_version(
    verified: dict[str, dict], overlaps: Overlaps, version: int, commit: Version, problems: list[str]
) -> tuple[float, str, str, str]:
    """Invariants 1 (orthogonality, protect reservations) and 2 (capacity) of one version."""
    from seqlib import payload

    layers = commit.library.layers
    unchecked = [c.name for c in commit.concepts if c.payload not in verified]
    if unchecked:
        problems.append(f"version {version}: orthogonality not checked for {', '.join(unchecked)} (payload unreadable)")
    pairs = [(c.name, c.payload) for c in commit.concepts if c.orthogonal and c.payload in verified]
    value, a, b, layer = overlaps.worst_pair(pairs)
    if value > ORTHOGONALITY_TOL:
        problems.append(
            f"version {version}: concepts {a} and {b} are not orthogonal on {layer}: max |cos| = {value:.2e}"
        )
    # --protect k: the concept's B is orthogonal to the first k input directions of every earlier concept
    for k, c in enumerate(commit.concepts):
        if not c.protect or c.name in unchecked:
            continue
        B = payload.unpack_bases(layers, verified[c.payload])
        for earlier in commit.concepts[:k]:
            if earlier.name in unchecked:
                continue
            U = payload.unpack_summary(layers, verified[earlier.payload])
            for layer_name, (u, _) in U.items():
                overlap = float(np.abs(B[layer_name].astype(np.float64).T @ u[:, : c.protect]).max(initial=0.0))
                if overlap > 1e-4:
                    problems.append(
                        f"version {version}: concept {c.name} (protect {c.protect}) overlaps the input directions "
                        f"of {earlier.name} on {layer_name} ({overlap:.2e})"
                    )
                    break
    for c in commit.concepts:  # a basis that stays on an orthogonal matrix's columns is orthonormal
        fixed = c.training is not None and c.training.method in METHODS and not METHODS[c.training.method].moves_basis
        if c.frozen_columns is not None and fixed and c.name not in unchecked:
            for layer_name, B in payload.unpack_bases(layers, verified[c.payload]).items():
                B = B.astype(np.float64)
                if B.shape[1] and np.abs(B.T @ B - np.eye(B.shape[1])).max() > 1e-4:
                    problems.append(f"version {version}: frozen basis of {c.name} is not orthonormal on {layer_name}")
                    break
    for name, free in free_dims(commit).items():
        if free < 0:
            problems.append(f"version {version}: layer {name} is over capacity by {-free} dimensions")
    return value, a, b, layer


def _check_crosstalk(
    store, verified: dict[str, dict], commit: Version, problems: list[str], seen: set, checked: set
) -> None:
    """Recompute each stored crosstalk value from the two concepts' factors and the target's
    stored input directions (format_spec.md, "Crosstalk"), each pair of payloads once. A record
    is checked in the first version that holds it: against the concepts its values were measured
    with (later versions share it, and a name may since belong to a re-added concept)."""
    from seqlib import payload
    from seqlib.activations import crosstalk, silent_layers

    layers = commit.library.layers
    names = commit.library.layer_names
    by_name = {c.name: c for c in commit.concepts}

    def factors(c):
        arrays = verified[c.payload]
        return payload.unpack_coeffs(layers, arrays), payload.unpack_bases(layers, arrays)

    for k, c in enumerate(commit.concepts):
        if id(c) in checked:
            continue
        checked.add(id(c))
        try:
            values = store.crosstalk(c)  # unreadable ones were reported by _check_records
        except SeqlibError:
            continue
        # first held here: one value each way per concept before it (an import by a seqlib before
        # format 4 recorded none)
        earlier = {e.name for e in commit.concepts[:k]}
        legacy_import = c.imported is not None and not values.crosstalk_from and not values.crosstalk_onto
        for way, keys in (("from", set(values.crosstalk_from)), ("onto", set(values.crosstalk_onto))):
            if keys != earlier and not legacy_import:
                missing, extra = sorted(earlier - keys), sorted(keys - earlier)
                problems.append(
                    f"concept {c.name}: crosstalk {way} lacks {missing or 'nothing'} and names {extra or 'no other'}"
                    " of the concepts before it"
                )
        for name, stored_from in values.crosstalk_from.items():
            e = by_name.get(name)
            if e is None:
                continue
            key = (c.payload, e.payload, stored_from, values.crosstalk_onto.get(name))
            if key in seen or not {c.payload, e.payload} <= verified.keys():
                continue
            seen.add(key)
            mine, theirs = factors(c), factors(e)
            quiet = {x.name: silent_layers(names, x.kv_scope) for x in (c, e)}
            recomputed = {
                "from": crosstalk(
                    names, theirs, mine, payload.unpack_summary(layers, verified[c.payload]), quiet[e.name]
                )[0],
                "onto": crosstalk(
                    names, mine, theirs, payload.unpack_summary(layers, verified[e.payload]), quiet[c.name]
                )[0],
            }
            stored = {"from": stored_from, "onto": values.crosstalk_onto.get(name, float("nan"))}
            for way in ("from", "onto"):
                if not abs(stored[way] - recomputed[way]) <= 1e-4 + 1e-3 * abs(recomputed[way]):
                    problems.append(
                        f"concept {c.name}: stored crosstalk {way} {name} is {stored[way]}, "
                        f"the factors give {recomputed[way]:.6f}"
                    )


def _check_payloads(lib: Repository, commits: dict[str, Version], problems: list[str]) -> tuple[set, dict]:
    """Invariants 3 and 6 for every payload of the history (each read once): (ids checked,
    payload id -> arrays that match their checksums)."""
    from seqlib.export import concept_hash

    checked: set[str] = set()
    verified: dict[str, dict] = {}  # payload id -> arrays that match their checksums
    every = {c.payload: c for commit in commits.values() for c in commit.concepts}
    try:
        lib.prefetch(list(every.values()))  # in parallel; any damage is reported one by one below
    except SeqlibError:
        pass
    for commit in commits.values():
        for concept in commit.concepts:
            if concept.payload in checked:
                continue
            checked.add(concept.payload)
            expected = sha256_hex(canonical_json({"arrays": [r.model_dump() for r in concept.arrays]}))
            if expected != concept.payload:
                problems.append(f"concept {concept.name}: payload id {concept.payload[:12]} is not its arrays' hash")
            try:
                verified[concept.payload] = lib.payload_arrays(concept)
            except SeqlibError as e:
                problems.append(f"concept {concept.name} (payload {concept.payload[:12]}): {e}")
                continue
            problems += [
                f"concept {concept.name} (payload {concept.payload[:12]}): {p}"
                for p in payload_problems(lib.store, concept, commit, verified[concept.payload])
            ]
            # invariant 6: a recorded identifier is the tensor hash of the concept's own export
            if concept.tensor_sha256 and concept_hash(commit.library.layers, verified[concept.payload]) != (
                concept.tensor_sha256
            ):
                problems.append(f"concept {concept.name}: tensor_sha256 is not the hash of its tensors")
            if concept.preview:
                try:
                    lib.store.read_preview(concept.preview)
                except SeqlibError as e:
                    problems.append(f"concept {concept.name}: preview: {e}")

    return checked, verified


def verify_library(lib: Repository, check_base: bool = True) -> dict:
    from seqlib import payload

    store = lib.store
    problems: list[str] = []
    entries, commits = _read_branch(store, problems)
    try:
        tags = store.tags()
    except SeqlibError as e:
        problems.append(str(e))
        tags = {}
    for tag, commit_id in tags.items():
        if commit_id not in commits:
            problems.append(f"tag {tag} points to {commit_id[:12]}, which is not on the branch")

    checked, verified = _check_payloads(lib, commits, problems)

    seen_records: set = set()
    for version, commit_id in entries:
        if commit_id in commits:
            _check_records(store, version, commits[commit_id], problems, seen_records)
            problems += version_problems(version, commits[commit_id])
    worst = (0.0, "", "", "")
    read_version, read_id = entries[-1] if entries else (0, "")
    try:
        read_version, read_id = lib.version()
    except SeqlibError as e:
        problems.append(str(e))
    seen: set = set()
    checked: set = set()  # records (shared across versions) whose crosstalk was recomputed
    reserves: dict = {}  # reserve payload id -> its directions (None: unreadable), read once
    layers = next(iter(commits.values())).library.layers if commits else []
    overlaps = Overlaps([x.name for x in layers], {pid: payload.unpack_bases(layers, a) for pid, a in verified.items()})
    for version, commit_id in entries:
        if commit_id in commits:
            _check_crosstalk(store, verified, commits[commit_id], problems, seen, checked)
            result = _check_version(verified, overlaps, version, commits[commit_id], problems)
            check_reserve(lib, version, commits[commit_id], verified, problems, reserves)
            if commit_id == read_id:
                worst = result

    # the base is the one the library was built on
    head = commits.get(read_id)
    if check_base and head is not None:
        try:
            lib.load_base(head, "cpu", None)
        except SeqlibError as e:
            problems.append(f"base: {e}")

    value, a, b, layer = worst
    return {
        "ok": not problems,
        "problems": list(dict.fromkeys(problems)),
        "version": read_version,
        "commits": len(entries),
        "payloads_checked": len(checked),
        "concepts": len(head.concepts) if head is not None else 0,
        "worst_orthogonality": {"max_abs_cos": value, "pair": [a, b] if a else [], "layer": layer},
        "base_checked": check_base and head is not None,
    }
