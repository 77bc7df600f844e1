"""Export to and import from the LoRA formats the ecosystem loads (kohya / A1111, diffusers / PEFT).

A composition of concepts exports as **one** LoRA of rank Σr: on every layer the factors are
concatenated (``down = [B_1 … B_k]ᵀ``, ``up = [w_1 A_1 … w_k A_k]``) and alpha = Σr, so the
scale alpha/rank is 1 and ``up @ down`` is exactly the composed residual. Each format has one
pure function that accounts for every key.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from seqlib.errors import EnvironmentProblem, ImportRejectedError, UsageError
from seqlib.format import LORA_FORMATS

FORMATS = LORA_FORMATS


def stack_factors(
    concepts: list[tuple[dict[str, Tensor], dict[str, Tensor], float]],
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per layer: (up (n, Σr), down (Σr, m)) of the weighted sum of the given concepts."""
    layers = concepts[0][0].keys()
    return {
        name: (
            torch.cat([w * A[name].float() for A, _, w in concepts], dim=1).contiguous(),
            torch.cat([B[name].float().T for _, B, _ in concepts], dim=0).contiguous(),
        )
        for name in layers
    }


def kohya_key(name: str) -> str:
    return "lora_unet_" + name.replace(".", "_")


def to_kohya(factors: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    out = {}
    for name, (up, down) in factors.items():
        key = kohya_key(name)
        out[f"{key}.lora_down.weight"] = down
        out[f"{key}.lora_up.weight"] = up
        out[f"{key}.alpha"] = torch.tensor(float(down.shape[0]))
    return out


def to_diffusers(factors: dict[str, tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    out = {}
    for name, (up, down) in factors.items():
        out[f"unet.{name}.lora_A.weight"] = down
        out[f"unet.{name}.lora_B.weight"] = up
    return out


def _factors(
    path: Path, label: str, down: Tensor | None, up: Tensor | None, shape: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """(up, down) of one layer, as float, after checking what a hostile or broken file could get wrong."""
    if down is None or up is None:
        missing = "up (lora_up / lora_B)" if up is None else "down (lora_down / lora_A)"
        raise ImportRejectedError(f"{path}: layer {label} has no {missing} matrix")
    n, m = shape
    if down.dim() != 2 or up.dim() != 2:
        raise ImportRejectedError(
            f"{path}: layer {label}: expected 2-D matrices, got shapes {tuple(down.shape)} and {tuple(up.shape)}"
        )
    if up.shape[1] != down.shape[0]:
        raise ImportRejectedError(f"{path}: layer {label}: up has rank {up.shape[1]} but down has rank {down.shape[0]}")
    if down.shape[1] != m or up.shape[0] != n:
        raise ImportRejectedError(
            f"{path}: layer {label}: a {up.shape[0]} x {down.shape[1]} residual does not fit this base's "
            f"{n} x {m} layer (a LoRA for another model?)"
        )
    if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
        raise ImportRejectedError(f"{path}: layer {label} holds NaN or infinite values")
    return up.float(), down.float()


def from_lora_file(path: Path, shapes: dict[str, tuple[int, int]]) -> tuple[str, dict[str, tuple[Tensor, Tensor]]]:
    """Read a kohya or diffusers/PEFT LoRA: (format, {layer: (up, down)}) with ΔW = up @ down
    (n x k by k x m; kohya's alpha / k scale folded into up).

    ``shapes``: (out, in) features of every layer seqlib adapts. Every key must be accounted
    for; a LoRA touching layers seqlib does not adapt (the text encoder, convolutions) is
    refused rather than silently truncated, and every matrix is checked (shape, rank
    agreement, finite values) before anything is computed from it.
    """
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise ImportRejectedError(f"{path} is not a readable .safetensors LoRA: {e}") from None
    by_kohya = {kohya_key(n): n for n in shapes}
    deltas: dict[str, tuple[Tensor, Tensor]] = {}
    if any(k.startswith("lora_unet_") for k in state):
        fmt = "kohya"
        stems = {k.rsplit(".", 2)[0] for k in state if k.endswith((".lora_down.weight", ".lora_up.weight"))}
        for stem in sorted(stems):
            if stem not in by_kohya:
                raise ImportRejectedError(
                    f"{path}: {stem} is not a layer seqlib adapts (only UNet attention projections)"
                )
            name = by_kohya[stem]
            down, up = state.pop(f"{stem}.lora_down.weight", None), state.pop(f"{stem}.lora_up.weight", None)
            up, down = _factors(path, stem, down, up, shapes[name])
            alpha = state.pop(f"{stem}.alpha", torch.tensor(float(down.shape[0])))
            if alpha.numel() != 1 or not torch.isfinite(alpha).all():
                raise ImportRejectedError(f"{path}: {stem}.alpha must be one finite number")
            deltas[name] = ((float(alpha) / down.shape[0]) * up, down)
    elif any(".lora_A." in k or ".lora_B." in k for k in state):
        fmt = "diffusers"
        stems = {k.split(".lora_")[0] for k in state if ".lora_A." in k or ".lora_B." in k}
        for stem in sorted(stems):
            name = stem.removeprefix("unet.")
            if name not in shapes:
                raise ImportRejectedError(
                    f"{path}: {name} is not a layer seqlib adapts (only UNet attention projections)"
                )
            down, up = state.pop(f"{stem}.lora_A.weight", None), state.pop(f"{stem}.lora_B.weight", None)
            deltas[name] = _factors(path, name, down, up, shapes[name])  # scale 1: alpha is in the metadata
    else:
        raise ImportRejectedError(f"{path}: neither kohya (lora_unet_…) nor diffusers (…lora_A…) LoRA keys")
    if state:
        raise ImportRejectedError(f"{path}: keys seqlib cannot use: {', '.join(sorted(state)[:5])}")
    return fmt, deltas


def tensor_sha256(data: bytes) -> str:
    """sha256 of a safetensors file's tensor bytes, everything after its header: kohya's
    ``sshs_model_hash`` and Civitai's AutoV3. Editing metadata never changes it."""
    import hashlib

    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length :]).hexdigest()


def lora_hash(factors: dict[str, tuple[Tensor, Tensor]]) -> str:
    """The tensor hash of these factors' kohya file (a concept's identifier: the hash of what
    ``seqlib export NAME`` writes)."""
    from safetensors.torch import save

    return tensor_sha256(save(to_kohya(factors)))


def concept_hash(layers, arrays: dict) -> str:
    """A concept's identifier from its payload arrays: the tensor hash of its own kohya export
    at weight 1 (``ConceptRecord.tensor_sha256``)."""
    from seqlib import payload

    A = {k: torch.from_numpy(v) for k, v in payload.unpack_coeffs(layers, arrays).items()}
    B = {k: torch.from_numpy(v) for k, v in payload.unpack_bases(layers, arrays).items()}
    return lora_hash(stack_factors([(A, B, 1.0)]))


def export_library(lib, selection, out: str | Path, fmt: str = "kohya") -> list[Path]:
    """``Library.export``: one concept at weight 1 unless a weight is given (its tensors then hash
    to its identifier; its preferred weight goes into the metadata, for loading it at), a
    composition with each concept's preferred weight unless given."""
    from seqlib import payload
    from seqlib.selection import parse_selection, weights_for

    snapshot = lib.snapshot()  # one version for the tensors and the provenance
    commit = snapshot.version
    weights = parse_selection(selection)
    if len(weights) > 1:
        weights = weights_for(selection, commit)
    chosen = [(lib.concept(n, commit), w) for n, w in weights.items()]
    lib.prefetch([c for c, _ in chosen], payload.factor_arrays(commit.library.layers))
    loaded = [(lib.factors(c, commit), w) for c, w in chosen]
    stacked = stack_factors([(A, B, w) for (A, B, _), w in loaded])
    tokens = {c.token: f[2] for (c, _), (f, _) in zip(chosen, loaded)}
    meta = {"concepts": weights, **lib.provenance(snapshot)}
    extra: dict = {}
    if len(chosen) == 1:
        concept = chosen[0][0]
        if concept.notes:
            n = concept.notes
            extra = {"description": n.description, "trigger": n.trigger, "weight": n.weight}
        if concept.preview:
            extra["thumbnail"] = lib.store.read_preview(concept.preview)
    return write_export(Path(out), fmt, stacked, tokens, meta, **extra)


def write_export(
    path: Path,
    fmt: str,
    factors: dict[str, tuple[Tensor, Tensor]],
    tokens: dict[str, Tensor],
    meta: dict,
    description: str = "",
    trigger: str = "",
    weight: float = 1.0,
    thumbnail: bytes | None = None,
) -> list[Path]:
    """Write the LoRA, its A1111 sidecar and one textual-inversion file per token.

    ``description``, ``trigger`` (words beside the tokens) and the preferred ``weight`` to load
    it at go into the metadata (``modelspec.*``) and the sidecar; ``thumbnail`` (PNG bytes) as
    ``modelspec.thumbnail``, a data URI as the modelspec asks."""
    import base64

    from safetensors.torch import save

    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EnvironmentProblem(f"cannot create the folder {path.parent}: {e.strerror or e}") from None
    rank = next(iter(factors.values()))[1].shape[0]
    description = description or f"seqlib export of {', '.join(tokens)}"
    trigger = ", ".join(x for x in (" ".join(tokens), trigger) if x)
    # an embedded base is SD-shaped but not SD1.5: tools that filter by base must not offer it there
    embedded = meta.get("base_kind") == "embedded"
    header = {
        "format": "pt",
        "seqlib": json.dumps(meta, sort_keys=True),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank)),
        "ss_base_model_version": base_tag(meta["base"]) if embedded else "sd_v1",
        "ss_output_name": path.stem,
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": f"{meta['base']}/lora" if embedded else "stable-diffusion-v1/lora",
        "modelspec.implementation": "https://github.com/huggingface/diffusers",
        "modelspec.title": path.stem,
        "modelspec.trigger_phrase": trigger,
        "modelspec.description": description,
        "modelspec.usage_hint": f"<lora:{path.stem}:{weight:g}> {trigger}",
    }
    if thumbnail is not None:
        header["modelspec.thumbnail"] = "data:image/png;base64," + base64.b64encode(thumbnail).decode()
    if fmt == "kohya":
        tensors = to_kohya(factors)
    else:
        tensors = to_diffusers(factors)
        # diffusers keys the adapter config by component prefix, as its save_lora_weights does
        config = {"r": rank, "lora_alpha": rank, "target_modules": sorted(factors), "use_dora": False}
        header["lora_adapter_metadata"] = json.dumps({f"unet.{k}": v for k, v in config.items()}, sort_keys=True)
    digest = tensor_sha256(save(tensors))  # the data section does not depend on the header
    header |= {"sshs_model_hash": digest, "modelspec.hash_sha256": f"0x{digest}"}
    write_file(path, save(tensors, metadata=header))
    written = [path]
    written.append(_write_sidecar(path, description, trigger, weight, embedded))
    emb_dir = path.with_name(f"{path.stem}.embeddings")
    try:
        emb_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise EnvironmentProblem(f"cannot write {emb_dir}: {e.strerror or e}") from None
    for token, vector in tokens.items():
        emb = emb_dir / f"{token.strip('<>')}.safetensors"
        write_file(emb, save({"emb_params": vector.float().reshape(1, -1).contiguous()}, metadata={"token": token}))
        written.append(emb)
    return written


def base_tag(base_id: str) -> str:
    """``ss_base_model_version`` of an export from an embedded base: its id, prefixed once with
    ``seqlib_`` so tools filtering by base never offer it beside SD1.5 checkpoints."""
    return base_id.replace("-", "_") if base_id.startswith("seqlib") else f"seqlib_{base_id}"


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as the user's other files (mode from the umask), whole or not
    at all: a read-only folder or a full disk is one line, and no half file is left behind."""
    import os

    tmp = path.with_name(f".{path.name}.partial")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise EnvironmentProblem(f"cannot write {path}: {e.strerror or e}") from None


def _write_sidecar(path: Path, description: str, trigger: str, weight: float, embedded: bool = False) -> Path:
    """A1111's `<file>.json` beside the LoRA: what its LoRA page shows and pre-fills. An embedded
    base's export says "Unknown", as its metadata does not say SD1.5 (A1111 then offers it under
    every base instead of hiding it or claiming SD1)."""
    sidecar = path.with_suffix(".json")
    info = {
        "description": description,
        "sd version": "Unknown" if embedded else "SD1",
        "activation text": trigger,
        "preferred weight": weight,
        "notes": "Load the textual-inversion files beside it for the concept tokens.",
    }
    write_file(sidecar, (json.dumps(info, indent=2, sort_keys=True) + "\n").encode())
    return sidecar
