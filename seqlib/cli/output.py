"""`compose` and `export`: images and LoRA files out of the library."""

from __future__ import annotations

import click

from seqlib.choices import (
    LAYOUTS,
    LORA_FORMATS,
    SCHEDULERS,
)
from seqlib.cli._common import (
    DEVICE_HELP,
    SEED,
    Finite,
    at_option,
    cli,
    console,
    open_library,
    warn,
)
from seqlib.errors import UsageError
from seqlib.selection import example_prompt, parse_selection

SAMPLING = [  # compose's settings; `recipe save` records the same ones
    click.option("--prompt", "-p", default=None, help='Mention the concepts by token, e.g. "a photo of <mydog>".'),
    click.option("--negative-prompt", default=None),
    click.option("--seed", type=SEED, default=0, show_default=True, help="Image k uses seed + k."),
    click.option("--num-images", "-n", type=click.IntRange(1, 256), default=1, show_default=True),
    click.option("--steps", type=click.IntRange(1, 1000), default=20, show_default=True, help="Sampling steps."),
    click.option("--guidance", type=Finite(0, 100), default=7.5, show_default=True, help="Classifier-free guidance."),
    click.option(
        "--size",
        type=click.IntRange(8, 4096),
        default=None,
        help="Image (row: tile) side, px (default: the base's); a multiple of 8, at least 32.",
    ),
    click.option(
        "--scheduler",
        type=click.Choice(list(SCHEDULERS)),
        default=None,
        help="Sampler (default: the base's own).",
    ),
    click.option(
        "--layout",
        type=click.Choice(LAYOUTS),
        default="sum",
        show_default=True,
        help="sum: one image, one prompt, all residuals summed. row: one square tile per concept, left to right; "
        "give one prompt per tile, separated by '|'.",
    ),
]


def sampling_options(command):
    for option in reversed(SAMPLING):
        command = option(command)
    return command


@cli.command("compose", short_help="Render any subset of concepts, or a recipe.")
@click.argument("concepts")
@sampling_options
@click.option("--out", "-o", default="out", show_default=True, type=click.Path(file_okay=False))
@click.option("--grid", is_flag=True, help="Also write a contact sheet of all images.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@at_option
@click.pass_context
def compose_command(ctx, concepts, out, grid, device, at, **sampling) -> None:
    """Render CONCEPTS (comma-separated, optional weights: mydog=0.8,cat) in one image, or
    replay the recipe @NAME exactly (`seqlib recipe save`).

    The residuals are summed into the base weights (no fusion step) and the concept
    tokens are registered; a fixed --seed gives identical images. A concept without a weight
    gets its preferred weight (`seqlib annotate --weight`, else 1). Each PNG records its
    prompt, seed, concepts with weights, their hashes, the recipe, library version and base
    in its text chunks (A1111's `parameters` among them).

    --layout row is for bases that cannot place several concepts from one prompt (the
    embedded one): the image becomes a row of overlapping square tiles, tile i denoised
    with only concept i's residual and the i-th prompt, sharing one background.

    \b
    Examples:
      seqlib compose mydog,cat --prompt "a photo of <mydog> and <cat> on a beach" --seed 0 --out out/
      seqlib compose mascot,robot --layout row --prompt "a photo of <mascot> | a photo of <robot>"
      seqlib compose @beach-day --out out/
    """
    if concepts.startswith("@"):
        given = [f"--{k.replace('_', '-')}" for k in sampling if ctx.get_parameter_source(k).name != "DEFAULT"]
        if given:
            raise UsageError(f"a recipe replays its own settings; drop {', '.join(given)} (or save a new recipe)")
    elif sampling["prompt"] is None:
        raise UsageError(f"--prompt is needed, e.g. --prompt {example_prompt(concepts)!r} (or compose a recipe: @NAME)")
    lib = open_library(ctx, at)
    with console.status("rendering…"):
        paths = lib.compose(concepts, out=out, device=device, warn=warn, grid=grid, **sampling)
    for p in paths:
        console.print(f"wrote {p}")


@cli.command("preview", short_help="Render a concept alone: 'a photo of <NAME>', seed 0.")
@click.argument("name")
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False), help="PNG to write [NAME-preview.png].")
@click.option("--save", is_flag=True, help="Also make it NAME's stored preview (a new commit).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@at_option
@click.pass_context
def preview_command(ctx, name: str, out: str | None, save: bool, device: str, at: str | None) -> None:
    """Render NAME alone on the bare base, as `add` does for its stored preview: "a photo of
    <NAME>", seed 0, 20 steps, at most 256 px. --at renders it as an older version had it.

    \b
    Examples:
      seqlib preview mydog                  # mydog-preview.png
      seqlib preview mydog --at 3 -o old.png
      seqlib preview imported --save        # give an imported concept its stored preview
    """
    if save and at is not None:
        raise UsageError("--save changes the current version; drop --at")
    out = out or f"{name}-preview.png"
    with console.status("rendering…"):
        open_library(ctx, at).preview(name, out, save=save, device=device)
    console.print(f"wrote {out}" + (f"; stored as <{name}>'s preview" if save else ""))


@cli.command("export", short_help="Write concepts as one LoRA for diffusers, A1111 or ComfyUI.")
@click.argument("concepts")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="The .safetensors file to write.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(LORA_FORMATS),
    default="kohya",
    show_default=True,
    help="kohya: AUTOMATIC1111/ComfyUI/kohya keys. diffusers: pipe.load_lora_weights / PEFT keys.",
)
@at_option
@click.pass_context
def export_command(ctx, concepts: str, out: str, fmt: str, at: str | None) -> None:
    """Export CONCEPTS (comma-separated, optional weights) as ONE LoRA of rank Σr.

    The factors are concatenated and alpha = Σr, so loading the file at weight 1 gives
    exactly `seqlib compose`'s weights. Beside it: an A1111 sidecar `<file>.json` with the
    activation text, and `<file>.embeddings/<name>.safetensors` textual-inversion files for
    the concept tokens (diffusers: `pipe.load_textual_inversion(path, token="<name>")`).

    \b
    Examples:
      seqlib export mydog -o mydog.safetensors
      seqlib export mydog,cat=0.8 -o pets.safetensors --format diffusers
    """
    lib = open_library(ctx, at)
    paths = lib.export(concepts, out, fmt)
    for path in paths:
        console.print(f"wrote {path}")
    local = [n for n in parse_selection(concepts) if lib.concept(n).kv_scope == "token"]
    if local:
        warn(
            f"{', '.join(local)} learned with --kv-scope token: a LoRA file cannot mask by token, so other tools apply "
            "its cross-attention key/value residual at every position (seqlib compose applies it at its token only)"
        )
