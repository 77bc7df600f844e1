"""The rules of format_spec.md that need one record, one payload or one version at a time
(invariants 7 and 8): each check returns the broken rules as phrases for ``seqlib verify``.
Numpy only."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import numpy as np

from seqlib.errors import SeqlibError
from seqlib.format import Version, canonical_json, sha256_hex
from seqlib.methods import METHODS

if TYPE_CHECKING:
    from seqlib.repo import Repository


def _utc(timestamp: str) -> bool:
    return timestamp.endswith(("+00:00", "Z"))


def record_problems(c, commit: Version) -> list[str]:
    """What one concept record promises about itself that needs no tensors (format_spec.md,
    ConceptRecord and TrainingRecord): each broken rule, as a phrase."""
    from seqlib.errors import InvalidNameError
    from seqlib.format import check_concept_name

    found, layers = [], len(commit.library.layers)
    try:
        check_concept_name(c.name)
    except InvalidNameError as e:
        found.append(str(e))
    method = METHODS.get(c.training.method) if c.training else None
    if c.training is None and c.imported is None:
        found.append("neither trained nor imported")
    projects = method.projects if method else True  # imported concepts are fitted in the free space
    if c.orthogonal != projects:
        found.append(f"orthogonal is {c.orthogonal} for a {c.method} concept")
    if method is not None and method.basis == "frozen":
        if c.frozen_columns is None or len(c.frozen_columns) != c.rank or len(set(c.frozen_columns)) != c.rank:
            found.append(f"a frozen-basis concept needs {c.rank} distinct frozen_columns, not {c.frozen_columns}")
    if any(x < 0 for x in c.reserved) or (c.protect == 0 and any(c.reserved)):
        found.append(f"reserved {c.reserved} without --protect" if c.protect == 0 else "a negative reserved")
    if c.ranks is not None and (len(c.ranks) != layers or any(not 0 <= k <= c.rank for k in c.ranks)):
        found.append(f"ranks must be {layers} values between 0 and its rank {c.rank}")
    for array in c.arrays:
        if array.dtype != "float32":
            found.append(f"array {array.name} is recorded as {array.dtype}, not float32")
        held = max(c.ranks) if c.ranks else c.rank  # a payload is as wide as its widest layer
        if array.name.startswith(("A_n", "B_m")) and (len(array.shape) != 3 or array.shape[-1] != held):
            found.append(f"array {array.name} {array.shape} does not hold rank {held} (rank {c.rank}, ranks {c.ranks})")
    for image in c.images:
        if not image.file or "/" in image.file or "\\" in image.file or image.file in (".", ".."):
            found.append(f"image {image.file!r} is not a bare file name")
    if not _utc(c.created):
        found.append(f"created {c.created} is not in UTC")
    if commit.format_version >= 3 and not c.tensor_sha256:
        found.append("tensor_sha256 is missing (every record from format 3 on carries it)")
    return found


def version_problems(version: int, commit: Version) -> list[str]:
    """Rules of one version as a whole: names unique, frozen columns not shared, recipes named
    by the rule, a UTC timestamp."""
    from seqlib.errors import InvalidNameError
    from seqlib.format import check_concept_name

    found, names = [], [c.name for c in commit.concepts]
    for name in sorted({n for n in names if names.count(n) > 1}):
        found.append(f"version {version}: concept name {name} appears {names.count(name)} times")
    columns = [col for c in commit.concepts for col in (c.frozen_columns or [])]
    if len(columns) != len(set(columns)):
        found.append(f"version {version}: two frozen-basis concepts share columns of the shared basis")
    for name, recipe in commit.recipes.items():
        try:
            check_concept_name(name, "recipe")
        except InvalidNameError as e:
            found.append(f"version {version}: {e}")
        if not _utc(recipe.created):
            found.append(f"version {version}: recipe {name}'s created {recipe.created} is not in UTC")
    if not _utc(commit.timestamp):
        found.append(f"version {version}: timestamp {commit.timestamp} is not in UTC")
    return found


def payload_problems(store, concept, commit: Version, arrays: dict) -> list[str]:
    """A payload as format_spec.md lays it out: exactly the recorded arrays, each one chunk of the
    recorded dtype and shape; zero columns exactly after each layer's rank; an imported basis
    orthonormal."""
    from seqlib import payload

    found = []
    for record in concept.arrays:
        a = arrays[record.name]
        if a.dtype.name != record.dtype or list(a.shape) != record.shape:
            found.append(
                f"array {record.name} is {a.dtype.name} {list(a.shape)}, recorded {record.dtype} {record.shape}"
            )
        try:
            meta = json.loads(store.backend.read(f"objects/payloads/{concept.payload}/{record.name}/zarr.json"))
            chunks = meta["chunk_grid"]["configuration"]["chunk_shape"]
        except Exception:  # noqa: BLE001  (unreadable metadata was reported when the array was read)
            continue
        if list(chunks) != list(a.shape):
            found.append(f"array {record.name} is stored in chunks of {chunks}, not as one chunk")
    stray = sorted(set(store.backend.list(f"objects/payloads/{concept.payload}")) - {r.name for r in concept.arrays})
    stray = [name for name in stray if name != "zarr.json" and ".partial" not in name]
    if stray:
        found.append(f"arrays the record does not list: {', '.join(stray)}")
    layers = commit.library.layers
    try:
        A, B = payload.unpack_coeffs(layers, arrays), payload.unpack_bases(layers, arrays)
    except (KeyError, IndexError):
        return [*found, "its arrays do not cover the library's layers"]
    ranks = concept.ranks or [concept.rank] * len(layers)
    for layer, k in zip(layers, ranks):
        b, a = B[layer.name].astype(np.float64), A[layer.name]
        if b[:, k:].any() or a[:, k:].any() or (k and not np.linalg.norm(b[:, :k], axis=0).all()):
            found.append(f"on {layer.name} its columns are not rank {k} then zeros (ranks)")
            break
        if concept.imported is not None and k and np.abs(b[:, :k].T @ b[:, :k] - np.eye(k)).max() > 1e-4:
            found.append(f"its imported basis is not orthonormal on {layer.name}")
            break
    return found


def check_reserve(lib: Repository, version: int, commit: Version, verified: dict, problems: list[str], read: dict):
    """The shared reserve (format 4): its payload, one entry per layer, orthonormal directions no
    more than max_fraction of the width, and every orthogonal concept's basis outside it."""
    from seqlib import payload

    record, layers = commit.library.reserve, commit.library.layers
    if record is None:
        return
    where = f"version {version}: reserve"
    if len(record.dims) != len(layers) or len(record.captured) != len(layers):
        problems.append(
            f"{where}: dims/captured have {len(record.dims)}/{len(record.captured)} entries for {len(layers)} layers"
        )
        return
    for layer, dims, share in zip(layers, record.dims, record.captured):
        if dims > int(record.max_fraction * layer.in_features) or dims < 0 or not 0 <= share <= 1 + 1e-6:
            problems.append(f"{where}: {layer.name} reserves {dims} dims (captured {share}), outside its bounds")
            break
    if record.payload not in read:
        if sha256_hex(canonical_json({"arrays": [r.model_dump() for r in record.arrays]})) != record.payload:
            problems.append(f"{where}: payload id {record.payload[:12]} is not its arrays' hash")
        try:
            read[record.payload] = {k: v.numpy() for k, v in lib.reserve_directions(commit).items()}
        except SeqlibError as e:
            problems.append(f"{where}: {e}")
            read[record.payload] = None
    R = read[record.payload]
    if R is None:
        return
    for layer, dims in zip(layers, record.dims):
        u = R[layer.name].astype(np.float64)
        if u.shape != (layer.in_features, dims):
            problems.append(f"{where}: {layer.name} holds {u.shape[1]} directions, dims says {dims}")
        elif dims and np.abs(u.T @ u - np.eye(dims)).max() > 1e-4:
            problems.append(f"{where}: the directions of {layer.name} are not orthonormal")
    for c in commit.concepts:
        if not c.orthogonal or c.payload not in verified:
            continue
        for name, B in payload.unpack_bases(layers, verified[c.payload]).items():
            B = B.astype(np.float64)
            B = B / np.maximum(np.linalg.norm(B, axis=0, keepdims=True), 1e-30)
            overlap = float(np.abs(B.T @ R[name]).max(initial=0.0)) if R[name].shape[0] == B.shape[0] else 0.0
            if overlap > 1e-4:
                problems.append(f"{where}: concept {c.name}'s basis uses reserved directions on {name} ({overlap:.2e})")
                break
