"""`reserve`: the library's room, spent once on the directions every input shares."""

from __future__ import annotations

import click

from seqlib.cli._common import DEVICE_HELP, cli, console, open_library


@cli.command("reserve", short_help="Keep the base's shared input directions out of every basis.")
@click.option(
    "--energy",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.5,
    show_default=True,
    help="Each layer reserves the fewest directions holding this share of the generic inputs' energy ...",
)
@click.option(
    "--max-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=1 / 16,
    show_default="0.0625",
    help="... or this fraction of the layer's width, if fewer (capacity is the price).",
)
@click.option("--images", "count", type=click.IntRange(1), default=64, show_default=True, help="Generic pictures.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.pass_context
def reserve_command(ctx, energy, max_fraction, count, device) -> None:
    """Reserve, on every adapted layer, the input directions the base gives every input.

    Orthogonal bases stop concept j's residual only on inputs inside its own basis; trained
    bases settle on the directions all inputs share (the base's generic response to any
    picture, the text states of "a photo of" and the padding), so one concept's residual fires
    on another's inputs. This measures the base's layer inputs on generic pictures and prompts
    and records the top directions in the library: no later concept's basis may use them, so
    what one concept learns acts less on the others. The sum stays a plain sum of weights and
    exports stay plain LoRAs; `status` counts the reserved dimensions as used.

    Only before the library's first orthogonal concept (earlier bases may lie on them).

    \b
    Examples:
      seqlib init mylib && cd mylib && seqlib reserve
      seqlib reserve --energy 0.7 --max-fraction 0.1
    """
    lib = open_library(ctx)
    with console.status("measuring the base's inputs on generic pictures…"):
        record = lib.reserve(energy=energy, max_fraction=max_fraction, count=count, device=device)
    s = lib.status()
    console.print(
        f"Reserved {sum(record.dims)} directions over {len(record.dims)} layers ({min(record.dims)}-"
        f"{max(record.dims)} per layer, holding {min(record.captured):.0%}-{max(record.captured):.0%} of the "
        f"generic inputs' energy); room for {s.fits} concepts."
    )
