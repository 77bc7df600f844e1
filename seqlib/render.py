"""Composition: the selected concepts summed into the base's weights, and rendered.

The sum is the method's promise: W = W0 + Σ w_i A_i B_iᵀ, one matmul per layer
(``seqlib.lora.summed_factors``), patched into a standard diffusers pipeline. ``layout="row"``
instead gives each concept its own tile (``seqlib.row``). Torch-free at import time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from seqlib.choices import SCHEDULERS
from seqlib.crosstalk import pairs_among
from seqlib.errors import UsageError
from seqlib.format import Version, token_for
from seqlib.selection import (  # noqa: F401  (re-exported)
    MAX_WEIGHT,
    check_request,
    example_prompt,
    parse_selection,
    weights_for,
)

if TYPE_CHECKING:
    from seqlib.repo import Repository

# Crosstalk above this (another concept's residual energy on a concept's own inputs, relative
# to that concept's own residual) is flagged by `compose` and `status`. A judgement call on the
# embedded base, to be re-measured on a pretrained one.
CROSSTALK_WARN = 0.5


def make_scheduler(name: str, config):
    import diffusers

    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def with_tokens(lib: Repository, weights: dict[str, float], commit: Version, device: str, base: str | None):
    """The bare base with the selected concepts' tokens registered, and their (A, B, weight)."""
    from seqlib.payload import factor_arrays
    from seqlib.tokens import add_tokens

    chosen = [(lib.concept(n, commit), w) for n, w in weights.items()]
    lib.prefetch([c for c, _ in chosen], factor_arrays(commit.library.layers))
    pipe = lib.load_base(commit, device, base)
    loaded = [(c, lib.factors(c, commit), w) for c, w in chosen]
    add_tokens(pipe, {c.token: embedding for c, (_, _, embedding), _ in loaded})
    token_ids = [pipe.tokenizer.convert_tokens_to_ids(c.token) if c.kv_scope == "token" else None for c, _ in chosen]
    return pipe, [(A, B, w) for _, (A, B, _), w in loaded], token_ids


def pipeline(lib: Repository, selection, device: str = "cpu", base: str | None = None, commit: Version | None = None):
    """A standard diffusers StableDiffusionPipeline with the selected concepts applied.

    Composition is a plain sum: W = W0 + Σ w_i A_i B_iᵀ, patched into the weights. ``commit``:
    the version to take them from (default: the one the library reads now). The K/V residuals
    of ``--kv-scope token`` concepts instead run as hooks that add them at their token only.
    """
    commit = commit or lib.head()
    pipe, factors, token_ids = with_tokens(lib, weights_for(selection, commit), commit, device, base)
    apply_residuals(pipe, factors, token_ids)
    return pipe


def apply_residuals(pipe, factors: list, token_ids: list[int | None]) -> None:
    """(A, B, weight) per concept into ``pipe``: summed into the weights, except the K/V
    residuals of concepts with a ``token_id`` (``--kv-scope token``), hooked in at that token."""
    from seqlib.lora import TokenLocalPatch, WeightPatch, reads_text, summed_factors

    local = TokenLocalPatch(pipe.unet, pipe.text_encoder) if any(t is not None for t in token_ids) else None
    summed = []
    for (A, B, w), token_id in zip(factors, token_ids):
        if token_id is None:
            summed.append((A, B, w))
            continue
        local.add({n: (A[n], B[n]) for n in A if reads_text(n)}, token_id, w)
        summed.append(({n: a for n, a in A.items() if not reads_text(n)}, B, w))
    WeightPatch(pipe.unet).apply(summed_factors(summed))


PREVIEW_SIDE = 256  # pixels at most: what modelspec.thumbnail carries
PREVIEW_STEPS = 20


def preview_png(
    lib: Repository, commit: Version, token: str, factors, device: str = "cpu", kv_scope: str = "all"
) -> bytes:
    """A concept alone on the bare base: "a photo of <name>", seed 0, at the base's resolution
    (at most 256 px), as PNG bytes. ``factors``: its (A by layer, B by layer, embedding)."""
    import io

    import torch
    from PIL.PngImagePlugin import PngInfo

    from seqlib.tokens import add_tokens

    A, B, embedding = factors
    pipe = lib.load_base(commit, device)
    add_tokens(pipe, {token: torch.as_tensor(embedding)})
    token_id = pipe.tokenizer.convert_tokens_to_ids(token) if kv_scope == "token" else None
    apply_residuals(pipe, [(A, B, 1.0)], [token_id])
    size = commit.library.base.resolution
    prompt = f"a photo of {token}"
    image = pipe(
        prompt, num_inference_steps=PREVIEW_STEPS, height=size, width=size, generator=torch.Generator().manual_seed(0)
    ).images[0]
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    info = PngInfo()
    info.add_text("parameters", f"{prompt}\nSteps: {PREVIEW_STEPS}, Seed: 0, seqlib preview")
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def preview(lib: Repository, name: str, out: str | Path | None = None, save: bool = False, device: str = "cpu"):
    """Render concept ``name``'s preview (of the version read: ``--at`` works) into ``out``, and
    with ``save`` record it as the concept's preview in a new commit. Returns the PNG bytes."""
    from seqlib.notes import set_preview

    commit = lib.head()
    concept = lib.concept(name, commit)
    png = preview_png(lib, commit, concept.token, lib.factors(concept, commit), device, concept.kv_scope)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(png)
    if save:
        set_preview(lib, name, png)
    return png


def compose(
    lib: Repository,
    selection,
    prompt: str | None = None,
    out: str | Path = "out",
    seed: int = 0,
    num_images: int = 1,
    steps: int = 20,
    guidance: float = 7.5,
    negative_prompt: str | None = None,
    size: int | None = None,
    device: str = "cpu",
    base: str | None = None,
    warn: Callable[[str], None] | None = None,
    scheduler: str | None = None,
    grid: bool = False,
    layout: str = "sum",
) -> list[Path]:
    """Render the selected concepts together; returns the PNG paths written.

    ``selection``: ``"mydog=0.8,cat"`` (a concept without a weight gets its preferred one), or
    ``"@name"``: the recipe ``name``, replayed exactly (its concepts, weights, prompt and
    sampling settings; the arguments after ``prompt`` other than ``out``, ``device``, ``base``,
    ``warn`` and ``grid`` are then ignored).
    ``layout="sum"``: one image from one prompt with every residual summed into the weights.
    ``layout="row"``: a row of square tiles, one per concept in selection order, tile i
    denoised with only concept i's residual and the i-th of the ``" | "``-separated prompts
    (``seqlib.row``). Every PNG carries its generation parameters in text chunks
    (``seqlib`` as JSON, and ``parameters`` in the AUTOMATIC1111 style). ``grid`` adds a
    contact sheet. ``warn`` receives a message for each selected pair whose recorded
    crosstalk is high (sum only: a row never adds two residuals).
    """
    from seqlib.base import pick_device

    commit = (snapshot := lib.snapshot()).version  # one version for the pixels and the provenance
    recipe = None
    if isinstance(selection, str) and selection.startswith("@"):
        from seqlib.notes import recipe as find_recipe

        recipe = selection[1:]
        r = find_recipe(commit, recipe)
        selection, prompt, seed, num_images, steps = r.weights, r.prompt, r.seed, r.num_images, r.steps
        guidance, negative_prompt, size = r.guidance, r.negative_prompt, r.size
        scheduler, layout = r.scheduler, r.layout
    if prompt is None:
        raise UsageError("a prompt is needed (or a recipe: `compose @name`)")
    weights = weights_for(selection, commit)
    for name in weights:
        lib.concept(name, commit)
    size = size or commit.library.base.resolution
    tile_prompts = check_request(prompt, weights, commit, layout, size, guidance)
    for message in _bleed_warnings(lib, weights, commit) if warn and tile_prompts is None else []:
        warn(message)
    pick_device(device)
    sampling = (steps, guidance, size, negative_prompt)
    pipe, render = _renderer(lib, weights, commit, prompt, tile_prompts, sampling, device, base)
    tokens, limit = len(pipe.tokenizer(prompt).input_ids), pipe.tokenizer.model_max_length
    if warn and tokens > limit:
        warn(f"the prompt is {tokens} tokens; the text encoder reads the first {limit}, the rest is ignored")
    if scheduler is not None:
        pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = {
        "prompt": prompt,
        "layout": layout,
        "negative_prompt": negative_prompt,
        "steps": steps,
        "guidance": guidance,
        "size": size,
        "scheduler": type(pipe.scheduler).__name__,
        "concepts": weights,
        "lora_hashes": {n: lib.tensor_hash(lib.concept(n, commit), commit) for n in weights},
        "recipe": recipe,
        **lib.provenance(snapshot),
    }
    paths = _render_all(render, params, seed, num_images, out, f"@{recipe}" if recipe else "+".join(weights), grid)
    if recipe and not lib.read_only:  # the recipe's last render, for `seqlib report`
        lib.store.save_render(recipe, _thumbnail_png(paths[0]))
    return paths


def _thumbnail_png(path: Path) -> bytes:
    import io

    from PIL import Image

    image = Image.open(path)
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _render_all(render, params: dict, seed: int, num_images: int, out: Path, stem: str, grid: bool) -> list[Path]:
    """Image k from seed + k, each PNG with its parameters; a contact sheet if ``grid``."""
    import torch

    paths, images = [], []
    for k in range(num_images):
        image = render(torch.Generator(device="cpu").manual_seed(seed + k))
        path = out / f"{stem}-seed{seed + k}.png"
        image.save(path, pnginfo=_png_text(params | {"seed": seed + k}))
        paths.append(path)
        images.append(image)
    if grid:
        paths.append(_contact_sheet(images, out / f"{stem}-seed{seed}-grid.png"))
    return paths


def _renderer(lib: Repository, weights, commit: Version, prompt: str, tile_prompts, sampling, device, base):
    """(pipeline, generator -> image): the summed residuals, or one tile per concept."""
    from seqlib.row import Tile, sample_row

    steps, guidance, size, negative_prompt = sampling
    if tile_prompts is None:
        pipe = pipeline(lib, weights, device, base, commit)

        def render(generator):
            return pipe(
                prompt,
                negative_prompt=negative_prompt,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=size,
                width=size,
                generator=generator,
            ).images[0]

        return pipe, render
    pipe, factors, token_ids = with_tokens(lib, weights, commit, device, base)
    at = pipe.unet.device
    tiles = [
        Tile(tile_prompt, {n: ((w * A[n]).to(at), B[n].to(at)) for n in A}, token_id)
        for tile_prompt, (A, B, w), token_id in zip(tile_prompts, factors, token_ids)
    ]
    return pipe, lambda generator: sample_row(pipe, tiles, size, steps, guidance, generator, negative_prompt)


def _bleed_warnings(lib: Repository, weights: dict[str, float], commit: Version) -> list[str]:
    """What may bleed in a summed composition: unprojected concepts, and high recorded crosstalk."""
    messages = []
    loose = [n for n in weights if not commit.concept(n).orthogonal]
    if loose and len(weights) > 1:
        messages.append(
            f"{', '.join(token_for(n) for n in loose)} trained without projection (plain LoRA): "
            "composed with others it shares their subspaces and may bleed into them"
        )
    for a, b, x in pairs_among([commit.concept(n) for n in weights], lib.store.crosstalk):
        if x > CROSSTALK_WARN:
            messages.append(
                f"<{a}> interferes with <{b}> (crosstalk {x:.2f} > {CROSSTALK_WARN}): "
                f"<{b}> may not look like itself in this composition"
            )
    return messages


def _png_text(params: dict):
    """The PNG text chunks: ``seqlib`` (JSON) and ``parameters`` (AUTOMATIC1111's style)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("seqlib", json.dumps(params, sort_keys=True))
    info.add_text("parameters", _a1111_parameters(params))
    return info


def _a1111_parameters(p: dict) -> str:
    concepts = ", ".join(f"{n}:{w:g}" for n, w in p["concepts"].items())
    # A1111's form, which Civitai-style tools read to link the resources: name and 10 hex digits
    lora_hashes = ", ".join(f"{n}: {h[:10]}" for n, h in p["lora_hashes"].items())
    lines = [p["prompt"]]
    if p["negative_prompt"]:
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    lines.append(
        f"Steps: {p['steps']}, Sampler: {p['scheduler']}, CFG scale: {p['guidance']}, Seed: {p['seed']}, "
        f"Size: {p['size']}x{p['size']}, Model hash: {p['base_fingerprint'][:10]}, "
        f'Lora hashes: "{lora_hashes}", seqlib concepts: {concepts}, seqlib version: {p["store_version"]}'
        + (f", seqlib recipe: {p['recipe']}" if p.get("recipe") else "")
    )
    return "\n".join(lines)


def _contact_sheet(images: list, path: Path) -> Path:
    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    sheet.save(path)
    return path
