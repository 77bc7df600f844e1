"""`import`: adopt a foreign LoRA file as a concept, its basis moved into the free space.

Per layer, with ΔW = up·down the LoRA's residual and Q the space earlier concepts took,
B = the top-r right singular vectors of ΔW P⊥ and A = ΔW B: the rank-r residual A Bᵀ with B
in the free space closest to ΔW (Eckart–Young), computed on the factors
(``seqlib.subspace.fit_factors_in_free_space``), never on an n×m matrix.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from seqlib.adding import Warn, append, begin, crosstalk_with_earlier, earlier_concepts, plan_ranks, with_preview
from seqlib.crosstalk import record_fields
from seqlib.errors import ImportRejectedError
from seqlib.format import ConceptRecord, Crosstalk, ImportRecord, now_iso, token_for

if TYPE_CHECKING:
    from seqlib.repo import Repository


def import_lora(
    lib: Repository,
    name: str,
    path: str | Path,
    rank: int | None = None,
    init_word: str = "thing",
    max_error: float = 0.5,
    force: bool = False,
    device: str = "cpu",
    when_full: str = "refuse",
    warn: Warn = None,
    preview: bool = False,
) -> tuple[ConceptRecord, dict[str, float]]:
    """Adopt a foreign LoRA: project its basis onto the free space, refit its coefficients.

    Per layer, with ΔW the LoRA's residual and P⊥ the projector onto what earlier concepts
    left free, B = the top-r right singular vectors of ΔW P⊥ and A = ΔW B: the rank-r
    residual A Bᵀ with B in the free space closest to ΔW (Eckart–Young). Returns the record
    and the relative error ‖ΔW − A Bᵀ‖ / ‖ΔW‖ per layer (and "overall"); refuses (unless
    ``force``) above ``max_error``. ``when_full`` as for ``add``: a layer with fewer than r free
    dimensions refuses the import, keeps what is left (``shrink``) or is left out (``skip``),
    and what such a layer loses counts in the error. ``preview`` renders one (``add`` always
    does; on a big base on a CPU that costs minutes, so here it is asked for).
    """
    import hashlib

    from seqlib import payload
    from seqlib.export import concept_hash, from_lora_file, tensor_sha256
    from seqlib.tokens import initial_embedding

    commit = (tip := begin(lib, name)).version
    layers, r, path = commit.library.layers, rank or commit.library.rank, Path(path)
    data = path.read_bytes()
    file_sha256, file_tensors = hashlib.sha256(data).hexdigest(), tensor_sha256(data)
    fmt, factors = from_lora_file(path, {x.name: (x.out_features, x.in_features) for x in layers})
    _refuse_duplicate(lib, commit, path, (file_sha256, file_tensors), factors)
    _refuse_zero(path, factors)
    ranks = plan_ranks(commit, r, when_full, warn)
    A, B, errors = _fit(
        layers, factors, earlier_concepts(lib, commit, bases_only=True), ranks, lib.reserve_directions(commit)
    )
    if errors["overall"] > max_error and not force:
        raise ImportRejectedError(
            f"{path.name} fits the free space only with relative error {errors['overall']:.2f} "
            f"(> {max_error}); use a larger --rank, or --force to import anyway"
        )
    embedding = initial_embedding(*lib.load_text_side(commit, device), init_word)
    arrays = payload.pack(layers, A, B, embedding.cpu().numpy(), *payload.empty_summary(layers))
    payload_id, array_records = lib.store.write_payload(arrays, {"concept": name, "rank": r})
    none_measured = Crosstalk(**dict(zip(("crosstalk_from", "crosstalk_onto"), _crosstalk(lib, commit, A, B))))
    lib.store.keep(none_measured)
    concept = ConceptRecord(
        name=name,
        token=token_for(name),
        rank=r,
        ranks=None if all(k == r for k in ranks) else ranks,
        orthogonal=True,
        payload=payload_id,
        arrays=array_records,
        images=[],
        training=None,
        imported=ImportRecord(
            file=path.name,
            sha256=file_sha256,
            format=fmt,
            relative_error=round(errors["overall"], 6),
            tensor_sha256=file_tensors,
        ),
        reserved=[0] * len(layers),
        **record_fields(name, none_measured),
        initial_loss=None,  # imported: never trained here (not NaN, which JSON cannot hold)
        final_loss=None,
        train_seconds=0.0,
        created=now_iso(),
        tensor_sha256=concept_hash(layers, arrays),
    )
    if preview:
        concept = with_preview(lib, commit, concept, (A, B, embedding), device)
    append(lib, tip, concept, f"import {name} from {path.name}")
    return concept, errors


def _refuse_duplicate(lib: Repository, commit, path: Path, hashes: tuple[str, str], factors: dict) -> None:
    """Refuse a file whose tensors the library already holds: one imported before (same tensor
    bytes; a version-1 record: same file bytes) or a concept's own export (its identifier).
    Identical tensors only: a re-saved file with new metadata matches, a retrained one never."""
    import torch

    from seqlib.payload import basis_arrays

    file_sha256, file_tensors = hashes
    first = commit.library.layers[0].name
    lib.prefetch([c for c in commit.concepts if c.tensor_sha256 is None], basis_arrays(commit.library.layers))
    for concept in commit.concepts:
        same = concept.tensor_sha256 == file_tensors  # a concept's own export
        imported = concept.imported
        if imported is not None:  # the file imported before (a version-1 record: by its bytes)
            same |= imported.tensor_sha256 == file_tensors if imported.tensor_sha256 else imported.sha256 == file_sha256
        if not same and concept.tensor_sha256 is None and first in factors:
            # a version-1 record stores no identifier: hash only a concept whose first basis is the file's
            down, B = factors[first][1], lib.basis(concept, commit)[first]
            if down.shape == B.T.shape and torch.equal(down, B.T):
                same = lib.tensor_hash(concept, commit) == file_tensors
        if same:
            raise ImportRejectedError(
                f"{path.name}: its tensors are already in the library as concept {concept.name!r} "
                f"(tensor sha256 {file_tensors[:10]}); nothing imported"
            )


def _refuse_zero(path: Path, factors: dict) -> None:
    if not any(bool(up.any()) and bool(down.any()) for up, down in factors.values()):
        raise ImportRejectedError(f"{path.name} changes no weight (every LoRA tensor is zero); nothing to import")


def _crosstalk(lib: Repository, commit, A: dict, B: dict) -> tuple[dict, dict]:
    """An import records no inputs, so nothing measures crosstalk onto it (0); its residual's
    onto the earlier concepts' recorded inputs is computed as for a trained concept."""
    from seqlib import payload

    U, energies = payload.empty_summary(commit.library.layers)
    return crosstalk_with_earlier(lib, commit, SimpleNamespace(A=A, B=B, U=U, energies=energies))


def _fit(layers, factors: dict, earlier: list, ranks: list[int], reserve: dict | None = None):
    """(A, B, relative error per layer and "overall") of the rank-r fit in each free space,
    r per layer from ``ranks`` (0: the layer is left out)."""
    import numpy as np
    import torch

    from seqlib.subspace import fit_factors_in_free_space, random_basis
    from seqlib.train import taken_space

    gen = torch.Generator().manual_seed(0)
    A, B, errors, num, den = {}, {}, {}, 0.0, 0.0
    for layer, r in zip(layers, ranks):
        Q, _ = taken_space(layer.name, layer.in_features, earlier, 0, reserve)
        up, down = factors.get(layer.name, (None, None))
        if up is None or not torch.any(up) or not torch.any(down):  # untouched: zero residual, free basis
            B[layer.name] = random_basis(layer.in_features, r, Q, gen).float().numpy()
            A[layer.name] = np.zeros((layer.out_features, r), np.float32)
            continue
        a, b, relative, norm2 = fit_factors_in_free_space(up, down, Q, r, gen)
        errors[layer.name] = relative
        num, den = num + relative**2 * norm2, den + norm2
        A[layer.name], B[layer.name] = a.float().numpy(), b.float().numpy()
    errors["overall"] = (num / den) ** 0.5 if den else 0.0
    return A, B, errors
