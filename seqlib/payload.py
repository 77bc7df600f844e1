"""A concept's tensors <-> the arrays of its payload group (``format_spec.md``, "Payload").

Factors are stacked by width into a few single-chunk arrays rather than one array per
layer: a concept is then ~7 files instead of hundreds, and reading every basis of 100
concepts (what the projector needs) is a few hundred small reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seqlib.format import LayerRecord, ReserveRecord, Version

if TYPE_CHECKING:
    import numpy as np


def basis_array(m: int) -> str:
    return f"B_m{m}"


def coeff_array(n: int) -> str:
    return f"A_n{n}"


EMBEDDING_ARRAY = "embedding"


def directions_array(m: int) -> str:
    return f"U_m{m}"


def energies_array(m: int) -> str:
    return f"S_m{m}"


def _groups(layers: list[LayerRecord], key: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for layer in layers:
        out.setdefault(getattr(layer, key), []).append(layer.name)
    return out


def pack(
    layers: list[LayerRecord],
    A: dict[str, np.ndarray],
    B: dict[str, np.ndarray],
    embedding: np.ndarray,
    U: dict[str, np.ndarray],
    energies: dict[str, np.ndarray],
) -> dict[str, np.ndarray]:
    """``B_m{m}``: (layers of in-width m, m, r); ``A_n{n}``: (layers of out-width n, n, r),
    each in the order of the library's layer list; ``embedding``: (d,); the input summary
    ``U_m{m}``: (layers, m, k) principal directions and ``S_m{m}``: (layers, k) energies."""
    import numpy as np

    r = max(b.shape[1] for b in B.values())

    def pad(x: np.ndarray) -> np.ndarray:  # layers trained at a smaller rank get zero columns
        return np.pad(x, ((0, 0), (0, r - x.shape[1])))

    arrays = {}
    for m, names in _groups(layers, "in_features").items():
        arrays[basis_array(m)] = np.stack([pad(B[name]) for name in names]).astype(np.float32)
        arrays[directions_array(m)] = np.stack([U[name] for name in names]).astype(np.float32)
        arrays[energies_array(m)] = np.stack([energies[name] for name in names]).astype(np.float32)
    arrays |= {
        coeff_array(n): np.stack([pad(A[name]) for name in names]).astype(np.float32)
        for n, names in _groups(layers, "out_features").items()
    }
    arrays[EMBEDDING_ARRAY] = np.asarray(embedding, dtype=np.float32)
    return arrays


def unpack_bases(layers: list[LayerRecord], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        name: arrays[basis_array(m)][i]
        for m, names in _groups(layers, "in_features").items()
        for i, name in enumerate(names)
    }


def unpack_coeffs(layers: list[LayerRecord], arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        name: arrays[coeff_array(n)][i]
        for n, names in _groups(layers, "out_features").items()
        for i, name in enumerate(names)
    }


def unpack_summary(
    layers: list[LayerRecord], arrays: dict[str, np.ndarray]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per layer: (principal input directions (m, k), their energies (k,))."""
    return {
        name: (arrays[directions_array(m)][i], arrays[energies_array(m)][i])
        for m, names in _groups(layers, "in_features").items()
        for i, name in enumerate(names)
    }


def empty_summary(layers: list[LayerRecord], k: int = 8) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Zero input summaries (directions (m, k), energies (k,)) for a concept never trained
    here (imported): it records no inputs, so it measures no crosstalk and protects nothing."""
    import numpy as np

    return (
        {layer.name: np.zeros((layer.in_features, k), np.float32) for layer in layers},
        {layer.name: np.zeros(k, np.float32) for layer in layers},
    )


def digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over every array's name and bytes, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(arrays):
        h.update(name.encode())
        h.update(arrays[name].tobytes())
    return h.hexdigest()


def factor_arrays(layers: list[LayerRecord]) -> list[str]:
    """What composing a concept reads: its A and B stacks and its embedding (not the input
    summaries, the larger part of a payload)."""
    return [*basis_arrays(layers), *(coeff_array(n) for n in _groups(layers, "out_features")), EMBEDDING_ARRAY]


def basis_arrays(layers: list[LayerRecord]) -> list[str]:
    return [basis_array(m) for m in _groups(layers, "in_features")]


# The shared reserve's arrays (seqlib.reserve measures it; format_spec.md, "The shared reserve")


def reserve_array(m: int) -> str:
    return f"R_m{m}"


def pack_reserve(layers: list[LayerRecord], U: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``R_m<m>``: (layers of width m, m, the most dims any of them reserves), zero-padded."""
    import numpy as np

    groups: dict[int, list[str]] = {}
    for layer in layers:
        groups.setdefault(layer.in_features, []).append(layer.name)
    out = {}
    for m, names in groups.items():
        k = max(U[n].shape[1] for n in names)
        out[reserve_array(m)] = np.stack([np.pad(U[n], ((0, 0), (0, k - U[n].shape[1]))) for n in names])
    return {k: v.astype(np.float32) for k, v in out.items()}


def unpack_reserve(
    layers: list[LayerRecord], record: ReserveRecord, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per layer the reserved directions (m, dims), from the payload arrays."""
    seen: dict[int, int] = {}
    out = {}
    for layer, dims in zip(layers, record.dims):
        i = seen.get(layer.in_features, 0)
        seen[layer.in_features] = i + 1
        out[layer.name] = arrays[reserve_array(layer.in_features)][i][:, :dims]
    return out


def read_directions(store, commit: Version) -> dict | None:
    """The shared reserve of ``commit`` per layer, (m, dims) float64 torch tensors, each array
    checked against its record; None without one."""
    import torch

    from seqlib.errors import ChecksumMismatch, StoreDamagedError
    from seqlib.objects import array_sha256

    record = commit.library.reserve
    if record is None:
        return None
    where = f"{store.root}/objects/payloads/{record.payload}"
    try:
        arrays = store.read_payload(record.payload)
    except Exception as e:  # missing or unreadable files: zarr raises many kinds
        raise StoreDamagedError(where, f"the shared reserve is unreadable: {e}") from None
    for array in record.arrays:
        got = array_sha256(arrays[array.name]) if array.name in arrays else "missing"
        if got != array.sha256:
            raise ChecksumMismatch(f"{where}/{array.name} (the shared reserve)", array.sha256, got)
    try:
        U = unpack_reserve(commit.library.layers, record, arrays)
    except (KeyError, IndexError):
        raise StoreDamagedError(where, "its arrays are not the shared reserve's R_m<m> stacks") from None
    return {k: torch.from_numpy(v).double() for k, v in U.items()}
