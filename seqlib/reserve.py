"""The shared reserve (format 4): input directions every concept's inputs share, kept for nobody.

Orthogonal bases (Bᵢᵀ Bⱼ = 0) silence concept j only on inputs inside span(Bⱼ). Trained bases
settle on the few directions the base gives *every* input (its generic response to any picture;
for cross-attention keys and values the text states of "a photo of", the start token and the
padding), so residual j fires on concept i's inputs although the bases are orthogonal (RESULTS,
"The capacity probe"). ``seqlib reserve`` measures, per adapted layer, the uncentred second
moment Σ = E[x xᵀ] of the base's inputs on generic pictures and prompts, keeps the fewest top
eigenvectors holding ``energy`` of its trace (at most ``max_fraction`` of the layer's width), and
records them in the library; every later basis is trained (and every import fitted) in the
complement of the reserve and of the earlier bases. The sum stays a plain sum of weights, and
exports stay plain LoRAs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seqlib.errors import UsageError
from seqlib.format import ReserveRecord, Version, now_iso
from seqlib.payload import pack_reserve

if TYPE_CHECKING:
    from torch import Tensor

    from seqlib.repo import Repository

DEFAULT_ENERGY = 0.5
DEFAULT_MAX_FRACTION = 1 / 16  # 4 of 64, 16 of 256, 20 of SD1.5's 320 dimensions at most
DEFAULT_COUNT = 64  # generic pictures (each at every timestep below)
TIMESTEPS = (50, 250, 500, 750, 950)
# Words filling the prompt template's token slot: generic nouns, so the template's own text
# states (shared by every concept's prompt) dominate what is measured.
FILLERS = ("thing", "object", "toy", "mug", "dog", "cat", "person", "house")


def directions_holding(sigma: Tensor, energy: float, max_dims: int) -> tuple[Tensor, float]:
    """The fewest top eigenvectors of a PSD Σ (m x m) whose eigenvalues hold ``energy`` of its
    trace, at most ``max_dims`` of them; and the share of the trace they hold."""
    import torch

    m = sigma.shape[0]
    vals, vecs = torch.linalg.eigh(sigma.double())
    order = torch.argsort(vals, descending=True)
    vals, vecs = vals[order].clamp_min(0.0), vecs[:, order]
    total = float(vals.sum())
    if total <= 0 or max_dims <= 0:
        return torch.zeros(m, 0, dtype=torch.float64), 0.0
    share = torch.cumsum(vals, 0) / total
    k = min(int((share < energy - 1e-12).sum()) + 1, max_dims, m)
    return vecs[:, :k].contiguous(), float(share[k - 1])


def generic_inputs(base_source: str, count: int, template: str, resolution: int):
    """(images as a (count, 3, H, W) tensor in [-1, 1], prompts): the lab world's (or the tiny
    world's) scenes the pretraining never drew, every fourth one caption-free clutter; half the
    prompts the scenes' captions, half the prompt template with a generic noun."""
    import torch
    from PIL import Image

    from seqlib import world, world_lab
    from seqlib.data import pil_to_tensor
    from seqlib.embedded import EMBEDDED_BASE_ID

    drawn = world if base_source == EMBEDDED_BASE_ID else world_lab  # the richer world for any other base
    images, prompts = [], []
    for k in range(count):
        scene = drawn.scene(20_000_000 + k)  # above every index pretraining draws from
        image = world.clutter(30_000_000 + k) if k % 4 == 3 else drawn.render(scene)
        images.append(pil_to_tensor(image.resize((resolution, resolution), Image.Resampling.BICUBIC)))
        prompts.append(scene.caption if k % 2 == 0 else template.format(token=FILLERS[(k // 2) % len(FILLERS)]))
    return torch.stack(images), prompts


def generic_moments(pipe, layer_names: list[str], images: Tensor, prompts: list[str], seed: int = 0, chunk: int = 16):
    """Σ of every adapted layer's inputs with the base alone, on ``images`` noised at each of
    TIMESTEPS and their ``prompts`` (``seqlib.activations.SecondMoments``)."""
    import torch

    from seqlib.activations import SecondMoments
    from seqlib.lora import named_layers

    unet, vae = pipe.unet, pipe.vae
    recorder = SecondMoments(named_layers(unet, layer_names))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad(), recorder.recording():
        for start in range(0, images.shape[0], chunk):
            x = images[start : start + chunk].to(vae.device, vae.dtype)
            latents = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
            ids = pipe.tokenizer(
                prompts[start : start + chunk],
                padding="max_length",
                max_length=pipe.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(unet.device)
            states = pipe.text_encoder(ids)[0].to(unet.dtype)
            for t in TIMESTEPS:
                noise = torch.randn(latents.shape, generator=g).to(latents.device, latents.dtype)
                step = torch.full((latents.shape[0],), t, device=unet.device)
                unet(pipe.scheduler.add_noise(latents, noise, step), step, states)
    return recorder


def reserve(
    lib: Repository,
    energy: float = DEFAULT_ENERGY,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    count: int = DEFAULT_COUNT,
    device: str = "cpu",
    template: str = "a photo of {token}",
) -> ReserveRecord:
    """Measure and commit the library's shared reserve. Only before its first orthogonal
    concept: bases trained earlier may lie on the directions it reserves."""
    if not 0 < energy <= 1:
        raise UsageError(f"--energy must be in (0, 1], not {energy}")
    if not 0 <= max_fraction < 1:
        raise UsageError(f"--max-fraction must be in [0, 1), not {max_fraction}")
    if count < 1:
        raise UsageError(f"--images must be at least 1, not {count}")
    tip = lib.writable_tip()
    commit = tip.version
    check_can_reserve(commit)
    pipe = lib.load_base(commit, device)
    lib_cfg = commit.library
    images, prompts = generic_inputs(lib_cfg.base.source, count, template, lib_cfg.base.resolution)
    moments = generic_moments(pipe, lib_cfg.layer_names, images, prompts)
    U, dims, captured = {}, [], []
    for layer in lib_cfg.layers:
        budget = int(max_fraction * layer.in_features)
        # room for at least one concept at the library's rank stays on every layer
        budget = min(budget, layer.in_features - lib_cfg.rank)
        u, share = directions_holding(moments.moment(layer.name), energy, budget)
        U[layer.name] = u.float().numpy()
        dims.append(u.shape[1])
        captured.append(round(share, 6))
    arrays = pack_reserve(lib_cfg.layers, U)
    payload_id, records = lib.store.write_payload(arrays, {"reserve": True})
    record = ReserveRecord(
        payload=payload_id,
        arrays=records,
        dims=dims,
        captured=captured,
        energy=energy,
        max_fraction=max_fraction,
        inputs=f"{count} generic pictures x timesteps {list(TIMESTEPS)}; prompts: captions and {template!r}",
        created=now_iso(),
    )
    library = lib_cfg.model_copy(update={"reserve": record})
    message = f"reserve: {sum(dims)} directions over {len(dims)} layers (energy {energy}, max {max_fraction:.3g} m)"
    lib.commit_state(tip, message, library=library)
    return record


def check_can_reserve(commit: Version) -> None:
    if commit.library.reserve is not None:
        raise UsageError("this library already has a shared reserve (see `seqlib status`)")
    taken = [c.name for c in commit.concepts if c.orthogonal]
    if taken:
        raise UsageError(
            f"the reserve must come before the first orthogonal concept ({taken[0]} is one): bases trained "
            "earlier may lie on the directions it would reserve; start a new library (`seqlib init`, then "
            "`seqlib reserve`)"
        )
