"""`init`, `add` and `import`: the verbs that create a library or a concept."""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path

import click

from seqlib import errors
from seqlib.cli._common import (
    DEVICE_HELP,
    NON_NEGATIVE,
    Finite,
    cli,
    console,
    err_console,
    open_library,
    warn,
    when_full_option,
)
from seqlib.cli.launch import launch
from seqlib.config import CHOICES, LAYER_SETS, TrainConfig
from seqlib.methods import METHODS


@cli.command("init", short_help="Create a library on a base model.")
@click.argument("location", required=False)
@click.option(
    "--base",
    default=None,
    metavar="PATH_OR_ID",
    help="A diffusers folder, a hub id (needs network or cache) or a .safetensors "
    "checkpoint. Default: embedded (the tiny SD-architecture base); embedded:lab is the wider lab base "
    "with SD1.5's proportions.",
)
@click.option(
    "--base-config",
    default=None,
    type=click.Path(exists=True, file_okay=False),
    help="Diffusers config folder for a single-file checkpoint (e.g. SD1.5's).",
)
@click.option("--rank", default=4, show_default=True, type=click.IntRange(1), help="Default rank r of each concept.")
@click.option(
    "--layers",
    type=click.Choice(list(LAYER_SETS)),
    default=None,
    help="Linear layers each concept adapts: the attention projections (the paper's set; default on a "
    "real base), those plus each transformer block's feed-forward (default on the tiny embedded base), or "
    "only the cross-attention keys and values (default on embedded:lab, where add then makes them "
    "token-local: concepts composed together render each exactly as alone).",
)
@click.option(
    "--reserve",
    "with_reserve",
    is_flag=True,
    help="Also reserve the directions every input shares, before any concept (as `seqlib reserve` does).",
)
@click.option("--device", default="auto", show_default=True, help="Device to load the base on: " + DEVICE_HELP)
@click.pass_context
def init_command(ctx: click.Context, location, base, base_config, rank, layers, with_reserve, device) -> None:
    """Create a library in folder LOCATION (default: --store, or the current folder) on a base model.

    Like `git init DIR`, the library is the folder LOCATION/.seqlib (LOCATION may exist, empty or
    not), so `seqlib init mylib && cd mylib && seqlib status` works; a LOCATION that itself ends in
    .seqlib is used as it is. Every command finds the nearest .seqlib in the current folder or its
    parents, or takes --store (either folder).

    LOCATION may also be an object-store URL (s3://bucket/prefix; credentials and
    endpoint from the AWS_* environment variables), shared by a team: concurrent adds are
    safe, the loser of a race gets a conflict.

    The library records the base's identity, the layers it adapts (--layers: every
    attention to_q/to_k/to_v/to_out.0 of the UNet, plus ff.net.0.proj/ff.net.2 with
    attention+ff; attn2.to_k/to_v only with cross-kv) and a fingerprint of their weights;
    concepts only ever load on that exact base.

    \b
    Examples:
      seqlib init                                  # ./.seqlib on the embedded default, offline
      seqlib init mylib                            # mylib/.seqlib
      seqlib init --base embedded:lab              # the wider lab base (SD1.5's proportions)
      seqlib init --base ./stable-diffusion-v1-5   # a local diffusers folder
      seqlib init --base v1-5.safetensors --base-config ./sd15-config
      seqlib init s3://team-bucket/concepts
    """
    from seqlib.api import Library

    path = location or ctx.obj["store"]
    with console.status("building the library (loading and fingerprinting the base)…"):
        lib = Library.init(path, base=base, base_config=base_config, rank=rank, device=device, layers=layers)
    if with_reserve:
        with console.status("measuring the base's inputs on generic pictures…"):
            lib.reserve(device=device)
    s = lib.status()
    console.print(
        f"Initialised [bold]{lib.root}[/] on {s.commit.library.base.kind} base "
        f"[cyan]{s.commit.library.base.source}[/]: {len(s.commit.library.layers)} adapted layers, "
        f"rank {rank}, room for {s.fits} concepts"
        + (f" ({sum(s.commit.library.reserved_dims)} dims reserved for no concept)." if with_reserve else ".")
    )


def _hyper_options(command):
    """One option per TrainConfig field declared with ``hyper`` (its help, flag and bounds live
    there, once); the default shown is TrainConfig's, the value passed None unless given."""
    for f in reversed([f for f in fields(TrainConfig) if "help" in f.metadata]):
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        if f.type == "bool":
            option = click.option(flag, f.name, is_flag=True, default=None, help=meta["help"])
        else:
            option = click.option(
                flag, f.name, type=_click_type(f), default=None, help=meta["help"], show_default=str(f.default)
            )
        command = option(command)
    return command


def _click_type(f):
    meta = f.metadata
    if f.name in CHOICES:
        return click.Choice(CHOICES[f.name])
    if f.type == "int":
        return click.IntRange(meta["low"], meta.get("high"))
    if f.type == "float":
        return Finite(min=meta["low"])
    return str


_METHOD_HELP = " ".join(f"{m.name}: {m.summary}." for m in METHODS.values())


@cli.command("add", short_help="Learn a new concept from a folder of images.")
@click.argument("name")
@click.argument("images", type=click.Path(exists=True))
@click.option("--init-word", default="thing", show_default=True, help="Word whose embedding starts <NAME>'s.")
@click.option("--rank", type=click.IntRange(1), default=None, help="Rank r (default: the library's).")
@click.option(
    "--method",
    type=click.Choice(list(METHODS)),
    default="seqlora",
    show_default=True,
    help=_METHOD_HELP,
)
@_hyper_options
@when_full_option("shrink", "train it at the rank left", "add")
@click.option("--resume", is_flag=True, help="Continue an interrupted add of NAME (same images and settings).")
@click.option(
    "--preview/--no-preview",
    default=True,
    show_default=True,
    help='Render "a photo of <NAME>" (seed 0, the concept alone) into the store with it.',
)
@click.option(
    "--num-processes",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="Data-parallel processes (one per GPU; gloo on CPU). `accelerate launch -m seqlib add …` works too.",
)
@click.option("-m", "--message", default=None, help="Note recorded in the commit.")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.pass_context
def add_command(
    ctx, name, images, init_word, rank, method, when_full, resume, preview, num_processes, message, device, **hyper
) -> None:
    """Learn concept NAME (token <NAME>) from the images in IMAGES and commit it.

    The concept trains on top of every concept already in the library, with its basis
    B projected after every step onto what earlier concepts left free; A starts at zero.
    Nothing is written unless training completes: Ctrl-C or an error leaves the library
    exactly as it was.

    \b
    Examples:
      seqlib add mydog ./photos/dog --init-word dog
      seqlib add style ./paintings --steps 90 --alpha 2e-3 --beta 2e-3
    """

    if num_processes > 1 and "WORLD_SIZE" not in os.environ:
        ctx.exit(launch(num_processes))
    lib = open_library(ctx)
    overrides = {k: v for k, v in hyper.items() if v is not None}
    overrides.setdefault("resolution", lib.head().library.base.resolution)
    config = TrainConfig(method=method, init_word=init_word, **overrides)  # a UsageError if they conflict
    progress = _TrainingProgress(name)
    try:
        progress.start()
        concept = lib.add(
            name,
            images,
            config=config,
            rank=rank,
            message=message,
            progress=progress,
            device=device,
            warn=warn,
            when_full=when_full,
            resume=resume,
            preview=preview,
        )
    except KeyboardInterrupt:
        progress.stop()
        err_console.print("interrupted: nothing was committed, the library is unchanged")
        if lib.interrupted(name):
            err_console.print("to continue where it stopped, run the same command with --resume")
        ctx.exit(errors.INTERRUPTED)
    finally:
        progress.stop()
    change = 100 * (1 - concept.final_loss / concept.initial_loss)
    verdict = f"{change:.1f}% lower" if change >= 0 else f"{-change:.1f}% higher"
    console.print(
        f"Added [bold]{concept.token}[/] ({len(concept.images)} images, rank {concept.rank}, {method}): "
        f"evaluation loss {concept.initial_loss:.4f} → {concept.final_loss:.4f} ({verdict}) "
        f"in {concept.train_seconds:.0f}s"
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        console.print(f"data parallel: factors identical across {world} processes (payload {concept.payload[:12]})")


class _TrainingProgress:
    """A spinner while the base loads and the images are checked, then a bar with the train
    loss and an ETA from the first finished round on (an error before it prints its one line
    without an empty bar above it)."""

    def __init__(self, name: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (
            TextColumn(f"learning <{name}>"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("train loss {task.fields[loss]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
        )
        self.bar = Progress(*columns, console=err_console.rich, transient=False)
        self.waiting = err_console.status("loading the base and checking the images…")  # transient: leaves no line
        self.task = None

    def start(self) -> None:
        self.waiting.start()

    def __call__(self, step: int, total: int, loss: float) -> None:
        if self.task is None:
            self.waiting.stop()
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, loss="…")
        self.bar.update(self.task, completed=step, loss=f"{loss:.4f}")

    def stop(self) -> None:
        self.waiting.stop()
        if self.task is not None:  # a bar never started would still print an empty line
            self.bar.stop()


@cli.command("import", short_help="Adopt a foreign LoRA into the library.")
@click.argument("name")
@click.argument("lora", type=click.Path(exists=True, dir_okay=False))
@click.option("--rank", type=click.IntRange(1), default=None, help="Rank kept (default: the library's).")
@click.option("--init-word", default="thing", show_default=True, help="Word whose embedding <NAME> gets.")
@click.option(
    "--max-error",
    type=NON_NEGATIVE,
    default=0.5,
    show_default=True,
    help="Refuse when the relative residual error of the refit exceeds this.",
)
@click.option("--force", is_flag=True, help="Import even above --max-error.")
@click.option("--per-layer", is_flag=True, help="Print the relative error of every layer.")
@when_full_option("refuse", "fit it at the rank left", "import")
@click.option("--preview", is_flag=True, help="Also render a preview (minutes for a big base on a CPU).")
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.pass_context
def import_command(ctx, name, lora, rank, init_word, max_error, force, per_layer, when_full, preview, device) -> None:
    """Adopt LORA (kohya or diffusers .safetensors) as concept NAME.

    Its basis is projected onto the space earlier concepts left free and its coefficients
    refit by least squares, so it composes with the library like any other concept. The
    relative residual error per layer and overall says what the projection cost (a layer
    skipped or shrunk by --when-full counts what it lost).
    """
    concept, errors = open_library(ctx).import_lora(
        name, lora, rank, init_word, max_error, force, device, when_full, warn, preview
    )
    worst = max((k for k in errors if k != "overall"), key=errors.get, default=None)
    console.print(
        f"Imported {concept.token} from {Path(lora).name} ({concept.imported.format}), rank {concept.rank}: "
        f"relative error {errors['overall']:.3f} overall" + (f", worst {errors[worst]:.3f} on {worst}" if worst else "")
    )
    if per_layer:
        for layer, value in errors.items():
            if layer != "overall":
                console.print(f"  {value:.4f}  {layer}")
