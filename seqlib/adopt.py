"""`import`: adopt a foreign LoRA file as a concept, its basis moved into the free space.

Per layer, with ΔW = up·down the LoRA's residual and Q the space earlier concepts took,
B = the top-r right singular vectors of ΔW P⊥ and A = ΔW B: the rank-r residual A Bᵀ with B
in the free space closest to ΔW (Eckart–Young), computed on the factors
(``seqlib.subspace.fit_factors_in_free_space``), never on an n×m matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from seqlib.adding import append, begin, earlier_concepts
from seqlib.capacity import layer_ranks
from seqlib.errors import ImportRejectedError
from seqlib.format import ConceptRecord, ImportRecord, now_iso, token_for

if TYPE_CHECKING:
    from seqlib.api import Library


def import_lora(
    lib: Library,
    name: str,
    path: str | Path,
    rank: int | None = None,
    init_word: str = "thing",
    max_error: float = 0.5,
    force: bool = False,
    device: str = "cpu",
) -> tuple[ConceptRecord, dict[str, float]]:
    """Adopt a foreign LoRA: project its basis onto the free space, refit its coefficients.

    Per layer, with ΔW the LoRA's residual and P⊥ the projector onto what earlier concepts
    left free, B = the top-r right singular vectors of ΔW P⊥ and A = ΔW B: the rank-r
    residual A Bᵀ with B in the free space closest to ΔW (Eckart–Young). Returns the record
    and the relative error ‖ΔW − A Bᵀ‖ / ‖ΔW‖ per layer (and "overall"); refuses (unless
    ``force``) above ``max_error``.
    """
    import hashlib

    from seqlib import payload
    from seqlib.export import from_lora_file
    from seqlib.tokens import init_token

    seq, parent_id, commit = begin(lib, name)
    layers, r, path = commit.library.layers, rank or commit.library.rank, Path(path)
    fmt, factors = from_lora_file(path, {x.name: (x.out_features, x.in_features) for x in layers})
    layer_ranks(commit, r, "refuse")  # every layer needs r free dimensions, or CapacityError names them
    A, B, errors = _fit(layers, factors, earlier_concepts(lib, commit), r)
    if errors["overall"] > max_error and not force:
        raise ImportRejectedError(
            f"{path.name} fits the free space only with relative error {errors['overall']:.2f} "
            f"(> {max_error}); use a larger --rank, or --force to import anyway"
        )
    pipe = lib.load_base(commit, device, None)
    embedding, hook = init_token(pipe, token_for(name), init_word)
    hook.remove()
    arrays = payload.pack(layers, A, B, embedding.cpu().numpy(), *payload.empty_summary(layers))
    payload_id, array_records = lib.store.write_payload(arrays, {"concept": name, "rank": r})
    concept = ConceptRecord(
        name=name,
        token=token_for(name),
        rank=r,
        orthogonal=True,
        payload=payload_id,
        arrays=array_records,
        images=[],
        training=None,
        imported=ImportRecord(
            file=path.name,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            format=fmt,
            relative_error=round(errors["overall"], 6),
        ),
        reserved=[0] * len(layers),
        crosstalk_from={},
        crosstalk_onto={},
        initial_loss=None,  # imported: never trained here (not NaN, which JSON cannot hold)
        final_loss=None,
        train_seconds=0.0,
        created=now_iso(),
    )
    append(lib, seq, parent_id, commit, concept, f"import {name} from {path.name}")
    return concept, errors


def _fit(layers, factors: dict, earlier: list, r: int):
    """(A, B, relative error per layer and "overall") of the rank-r fit in each free space."""
    import numpy as np
    import torch

    from seqlib.subspace import fit_factors_in_free_space, random_basis
    from seqlib.train import taken_space

    gen = torch.Generator().manual_seed(0)
    A, B, errors, num, den = {}, {}, {}, 0.0, 0.0
    for layer in layers:
        Q, _ = taken_space(layer.name, layer.in_features, earlier, 0)
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
