"""Composition beyond one prompt: a row of tiles, each with its own concept and prompt.

The method's composition is the plain sum W0 + Σ w_i A_i B_iᵀ (``lora.summed_factors``), one
prompt for the whole image. A base must then lay the concepts out from that prompt alone;
the embedded 64-px base cannot ("<a> on the left and <b> on the right" gives one blended
object). A *row* instead denoises one wide latent as overlapping square tiles, tile i with
only concept i's residual and its own prompt, averaging the noise predictions where tiles
overlap (MultiDiffusion, Bar-Tal et al. 2023) so the tiles share one background. Every tile
is sampled at the base's own resolution, so each concept renders as it does alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from seqlib.lora import LiveResiduals, TokenPositions, named_layers

OVERLAP = 4  # tiles overlap by 1/OVERLAP of their side


@dataclass(frozen=True)
class Tile:
    """One square of the row: a prompt, and the residual factors active while it is denoised."""

    prompt: str
    factors: dict[str, tuple[Tensor, Tensor]]  # layer name -> (A scaled by the concept's weight, B)
    token_id: int | None = None  # set for a --kv-scope token concept: its K/V residual acts only there


def row_columns(tile: int, n: int) -> list[slice]:
    """Latent columns of ``n`` square tiles of side ``tile``, left to right, overlapping by
    ``tile // OVERLAP``: the row is ``tile + (n - 1) * (tile - tile // OVERLAP)`` wide."""
    stride = tile - tile // OVERLAP
    return [slice(i * stride, i * stride + tile) for i in range(n)]


@torch.no_grad()
def sample_row(
    pipe,
    tiles: list[Tile],
    size: int,
    steps: int,
    guidance: float,
    generator: torch.Generator,
    negative_prompt: str | None = None,
):
    """One PIL image ``size`` high made of ``len(tiles)`` overlapping ``size``-square tiles.

    Follows ``StableDiffusionPipeline.__call__`` step for step (same latents for the same
    generator, same guidance, same scheduler calls), so a one-tile row equals ``pipe(...)``
    with that tile's residual patched in.
    """
    unet, scheduler, device = pipe.unet, pipe.scheduler, pipe._execution_device
    factor = pipe.vae_scale_factor
    columns = row_columns(size // factor, len(tiles))
    width = columns[-1].stop * factor
    guided = guidance > 1
    positions = TokenPositions(pipe.text_encoder) if any(tile.token_id is not None for tile in tiles) else None
    states = []
    for tile in tiles:
        positive, negative = pipe.encode_prompt(tile.prompt, device, 1, guided, negative_prompt)
        states.append(torch.cat([negative, positive]) if guided else positive)
    scheduler.set_timesteps(steps, device=device)
    latents = pipe.prepare_latents(1, unet.config.in_channels, size, width, states[0].dtype, device, generator)
    extra = pipe.prepare_extra_step_kwargs(generator, 0.0)

    live = LiveResiduals(named_layers(unet, sorted(set().union(*(tile.factors for tile in tiles)))), positions)
    with live, pipe.progress_bar(total=len(scheduler.timesteps)) as bar:
        for t in scheduler.timesteps:
            noise = torch.zeros_like(latents)
            count = torch.zeros_like(latents)
            for tile, cols, state in zip(tiles, columns, states):
                live.factors, live.token_id = tile.factors, tile.token_id
                x = latents[..., cols]
                x = torch.cat([x, x]) if guided else x
                x = scheduler.scale_model_input(x, t)
                pred = unet(x, t, encoder_hidden_states=state, return_dict=False)[0]
                if guided:
                    uncond, text = pred.chunk(2)
                    pred = uncond + guidance * (text - uncond)
                noise[..., cols] += pred
                count[..., cols] += 1
            latents = scheduler.step(noise / count, t, latents, **extra, return_dict=False)[0]
            bar.update()
    if positions is not None:
        positions.remove()
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
    return pipe.image_processor.postprocess(image, output_type="pil", do_denormalize=[True])[0]
