"""``seqlib``: the command line. Parses arguments, calls :mod:`seqlib.api`, renders with rich.

Nothing here imports torch at module level: ``seqlib status`` and ``seqlib log`` stay instant.
"""

from __future__ import annotations

import json
import math
import os
import sys
import traceback
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from seqlib import __version__, errors
from seqlib.config import LAYER_SETS, default
from seqlib.errors import SeqlibError
from seqlib.format import LORA_FORMATS
from seqlib.methods import METHODS

console = Console()
err_console = Console(stderr=True)


_at_option = click.option(
    "--at", default=None, metavar="VERSION|TAG", help="Read this version instead of the current one."
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}")


class Finite(click.FloatRange):
    """A float that is finite (no nan or inf) and inside the optional bounds."""

    name = "finite number"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(number, param, ctx)


POSITIVE = Finite(min=0, min_open=True)
NON_NEGATIVE = Finite(min=0)
# torch seeds are 64-bit; image k uses seed + k, so leave room above.
SEED = click.IntRange(0, 2**63 - 1)
DEVICE_HELP = "auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps."


def _library(ctx: click.Context, at: str | None = None):
    from seqlib.api import Library

    return Library.open(ctx.obj.get("store"), at=at)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--store",
    envvar="SEQLIB_STORE",
    default=None,
    metavar="PATH|URL",
    help="The library: a folder (default: ./.seqlib, or the nearest one in a parent folder, like git) "
    "or an object-store URL such as s3://bucket/prefix. Also $SEQLIB_STORE.",
)
@click.option(
    "--debug",
    is_flag=True,
    help="Print the full traceback of any error (also $SEQLIB_DEBUG=1). Errors otherwise print one line.",
)
@click.version_option(__version__, prog_name="seqlib")
@click.pass_context
def cli(ctx: click.Context, store: str | None, debug: bool) -> None:
    """A package manager for personal concepts in text-to-image diffusion.

    Each concept (your dog, your mug, a style) is a LoRA whose basis is kept exactly
    orthogonal to every earlier concept's (SeqLoRA), so any subset composes by a plain
    sum without bleeding into each other. Capacity is finite: a layer of width m holds
    floor(m/r) rank-r concepts; `seqlib status` shows what is left.

    \b
    Quick start (embedded tiny base, CPU, no downloads; what README's images show):
      seqlib init
      seqlib add mascot examples/mascot --context base
      seqlib add robot examples/robot --context base
      seqlib compose mascot --prompt "a photo of <mascot>" -n 4 --grid --out out/mascot
      seqlib compose mascot,robot --layout row --prompt "a photo of <mascot> | a photo of <robot>" --out out/pair
      seqlib status
      seqlib log

    Errors print one line and exit 2 (a bad argument), 3 (unusable data or a damaged store) or
    4 (the machine: permissions, network, device); --debug shows the traceback.
    """
    ctx.ensure_object(dict)["store"] = store


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
    "real base and embedded:lab), those plus each transformer block's feed-forward (default on the tiny "
    "embedded base), or only "
    "the cross-attention keys and values (least bleed between concepts, least capacity to draw).",
)
@click.option("--device", default="auto", show_default=True, help="Device to load the base on: " + DEVICE_HELP)
@click.pass_context
def init_command(ctx: click.Context, location, base, base_config, rank, layers, device) -> None:
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
    s = lib.status()
    console.print(
        f"Initialised [bold]{lib.root}[/] on {s.commit.library.base.kind} base "
        f"[cyan]{s.commit.library.base.source}[/]: {len(s.commit.library.layers)} adapted layers, "
        f"rank {rank}, room for {s.fits} concepts."
    )


def _hyper(flag: str, field: str, type, help: str):
    """A training flag whose default (shown in --help) comes from TrainConfig."""
    return click.option(flag, field, type=type, default=None, help=help, show_default=str(default(field)))


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
@_hyper("--steps", "steps", click.IntRange(1), "Training rounds, a fresh batch each.")
@_hyper(
    "--optimizer",
    "optimizer",
    click.Choice(["adam", "sgd"]),
    "adam: every step (and the tentative inner step, with the cross-Hessian along it) preconditioned by "
    "Adam's diagonal. sgd: the paper's plain gradient steps, clipped by --max-grad-norm; use α≈3 there.",
)
@_hyper(
    "--context",
    "context",
    click.Choice(["library", "base"]),
    "What the concept is learned on top of: the library's earlier concepts (the paper's continual setting: best "
    "when you render them together), or the bare base (best when you render concepts alone or in small subsets). "
    "Bases stay orthogonal either way.",
)
@_hyper("--alpha", "alpha", POSITIVE, "α: step size of A, and of the inner step in the reduced gradient.")
@_hyper("--beta", "beta", POSITIVE, "β: step size of B.")
@_hyper("-K", "K", click.IntRange(1), "K: bilevel iterations per round (paper: 3).")
@_hyper("--s-b", "S_B", click.IntRange(1), "S_B: local B iterations per bilevel iteration (paper: 2).")
@_hyper("--s-a", "S_A", click.IntRange(1), "S_A: local A iterations per bilevel iteration (paper: 2).")
@_hyper(
    "--eps",
    "eps",
    NON_NEGATIVE,
    "ε of the paper's regularised projector (recorded; seqlib projects with its exact ε→0 form I − QQᵀ).",
)
@_hyper("--lr-embed", "lr_embed", POSITIVE, "Step size of the learned token embedding.")
@_hyper("--max-grad-norm", "max_grad_norm", NON_NEGATIVE, "sgd: clip each step's gradient norm (0: unclipped).")
@_hyper(
    "--hvp",
    "hvp",
    click.Choice(["auto", "autograd", "finite-diff"]),
    "Cross-Hessian by double backward (exact, math attention), or by a central difference of ∇_B L "
    "(no double backward: fused attention, memory near a LoRA step). auto: finite-diff on a GPU or for "
    "a UNet over 100M parameters, autograd otherwise.",
)
@_hyper("--batch-size", "batch_size", click.IntRange(1), "Images per round.")
@_hyper("--seed", "seed", SEED, "Seed of the basis init, the batches and the noise.")
@_hyper("--prompt-template", "prompt_template", str, "Training prompt; {token} becomes <NAME>.")
@_hyper(
    "--basis-init",
    "basis_init",
    click.Choice(["random", "activation"]),
    "Start B random in the free space, or as the top principal directions of the concept's layer inputs there.",
)
@_hyper(
    "--protect",
    "protect",
    click.IntRange(0),
    "Also keep B orthogonal to the top-k input directions of every earlier concept (costs capacity).",
)
@_hyper(
    "--activation-k",
    "activation_k",
    click.IntRange(1),
    "Principal input directions recorded per layer (crosstalk diagnostics; the most --protect can use).",
)
@_hyper(
    "--precision",
    "precision",
    click.Choice(["fp32", "fp16", "bf16"]),
    "dtype of the frozen base (fp16 on GPUs only); the LoRA factors are always trained in fp32.",
)
@_hyper("--resolution", "resolution", click.IntRange(8), "Training resolution in pixels (default: the base's).")
@_hyper("--crop", "crop", click.Choice(["center", "random"]), "Square crop of each photo: centre, or random 80-100%.")
@_hyper("--aug-copies", "aug_copies", click.IntRange(1), "Augmented views encoded per photo with --crop random/--flip.")
@click.option("--flip", is_flag=True, default=None, help="Random horizontal flips (off: many concepts are asymmetric).")
@click.option(
    "--gradient-checkpointing",
    "gradient_checkpointing",
    is_flag=True,
    default=None,
    help="Recompute UNet activations in backward: less memory, slower.",
)
@click.option(
    "--when-full",
    type=click.Choice(["shrink", "skip", "refuse"]),
    default="shrink",
    show_default=True,
    help="A layer with fewer than r free dimensions: train it at the rank left (shrink), leave it "
    "unadapted for this concept (skip), or refuse the add.",
)
@click.option("--resume", is_flag=True, help="Continue an interrupted add of NAME (same images and settings).")
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
    ctx, name, images, init_word, rank, method, when_full, resume, num_processes, message, device, **hyper
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
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from seqlib.config import TrainConfig

    if num_processes > 1 and "WORLD_SIZE" not in os.environ:
        ctx.exit(_launch(num_processes))
    lib = _library(ctx)
    overrides = {k: v for k, v in hyper.items() if v is not None}
    overrides.setdefault("resolution", lib.head().library.base.resolution)
    config = TrainConfig(method=method, init_word=init_word, **overrides)  # a UsageError if they conflict
    columns = (
        TextColumn(f"learning <{name}>"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("train loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    # The bar appears with the first finished round: before it, the base loads and the images are
    # checked, and an error there should print its one line without an empty bar above it.
    bar = Progress(*columns, console=err_console, transient=False)
    waiting = err_console.status("loading the base and checking the images…")  # transient: leaves no line
    task = None

    def progress(step: int, total: int, loss: float) -> None:
        nonlocal task
        if task is None:
            waiting.stop()
            bar.start()
            task = bar.add_task("train", total=total, loss="…")
        bar.update(task, completed=step, loss=f"{loss:.4f}")

    try:
        waiting.start()
        concept = lib.add(
            name,
            images,
            config=config,
            rank=rank,
            message=message,
            progress=progress,
            device=device,
            warn=_warn,
            when_full=when_full,
            resume=resume,
        )
    except KeyboardInterrupt:
        bar.stop()
        err_console.print("interrupted: nothing was committed, the library is unchanged")
        if lib.interrupted(name):
            err_console.print("to continue where it stopped, run the same command with --resume")
        ctx.exit(errors.INTERRUPTED)
    finally:
        waiting.stop()
        bar.stop()
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


@cli.command("compose", short_help="Render any subset of concepts together.")
@click.argument("concepts")
@click.option("--prompt", "-p", required=True, help='Mention the concepts by token, e.g. "a photo of <mydog>".')
@click.option("--negative-prompt", default=None)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Image k uses seed + k.")
@click.option("--num-images", "-n", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--steps", type=click.IntRange(1, 1000), default=20, show_default=True, help="Sampling steps.")
@click.option("--guidance", type=Finite(0, 100), default=7.5, show_default=True, help="Classifier-free guidance scale.")
@click.option(
    "--size",
    type=click.IntRange(8, 4096),
    default=None,
    help="Image (row: tile) side, px (default: the base's); a multiple of the base's latent grid (64 px: 16).",
)
@click.option("--out", "-o", default="out", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--scheduler",
    type=click.Choice(["ddim", "pndm", "euler", "euler-a", "dpm++", "ddpm"]),
    default=None,
    help="Sampler (default: the base's own).",
)
@click.option("--grid", is_flag=True, help="Also write a contact sheet of all images.")
@click.option(
    "--layout",
    type=click.Choice(["sum", "row"]),
    default="sum",
    show_default=True,
    help="sum: one image, one prompt, all residuals summed. row: one square tile per concept, left to right; "
    "give one prompt per tile, separated by '|'.",
)
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@_at_option
@click.pass_context
def compose_command(
    ctx,
    concepts,
    prompt,
    negative_prompt,
    seed,
    num_images,
    steps,
    guidance,
    size,
    out,
    scheduler,
    grid,
    layout,
    device,
    at,
) -> None:
    """Render CONCEPTS (comma-separated, optional weights: mydog=0.8,cat) in one image.

    The residuals are summed into the base weights (no fusion step) and the concept
    tokens are registered; a fixed --seed gives identical images. Each PNG records its
    prompt, seed, concepts with weights, library version and base in its text chunks.

    --layout row is for bases that cannot place several concepts from one prompt (the
    embedded one): the image becomes a row of overlapping square tiles, tile i denoised
    with only concept i's residual and the i-th prompt, sharing one background.

    \b
    Examples:
      seqlib compose mydog,cat --prompt "a photo of <mydog> and <cat> on a beach" --seed 0 --out out/
      seqlib compose mascot,robot --layout row --prompt "a photo of <mascot> | a photo of <robot>"
    """
    lib = _library(ctx, at)
    with console.status("rendering…"):
        paths = lib.compose(
            concepts,
            prompt,
            out=out,
            seed=seed,
            num_images=num_images,
            steps=steps,
            guidance=guidance,
            negative_prompt=negative_prompt,
            size=size,
            device=device,
            warn=_warn,
            scheduler=scheduler,
            grid=grid,
            layout=layout,
        )
    for p in paths:
        console.print(f"wrote {p}")


@cli.command("status", short_help="Concepts and the capacity left on every layer.")
@_json_option
@_at_option
@click.pass_context
def status_command(ctx, as_json: bool, at: str | None) -> None:
    """Show the base, the concepts, per-width capacity used/free, and the bottleneck layer.

    A layer of width m holds floor(m/r) orthogonal rank-r concepts; the narrowest layers
    fill first, and the library is full when any layer is.
    """
    s = _library(ctx, at).status()
    if as_json:
        click.echo(json.dumps(s.to_json(), indent=2, sort_keys=True))
        return
    lib = s.commit.library
    console.print(f"[bold]base[/]      {lib.base.kind}: {lib.base.source} (fingerprint {lib.base.fingerprint[:12]})")
    console.print(f"[bold]version[/]   {s.version} ({s.commit_id[:12]})   [bold]rank[/] {lib.rank}")
    concepts = Table(title=_count(len(s.commit.concepts), "concept"), title_justify="left")
    for col in ("name", "token", "method", "rank", "images", "loss start → end", "added"):
        concepts.add_column(col)
    for c in s.commit.concepts:
        method = c.method + ("" if c.orthogonal else " [yellow](not orthogonal)[/]")
        concepts.add_row(
            c.name,
            c.token,
            method,
            str(c.rank),
            str(len(c.images)),
            "imported" if c.final_loss is None else f"{c.initial_loss:.4f} → {c.final_loss:.4f}",
            c.created[:16].replace("T", " "),
        )
    console.print(concepts)
    widths = Table(title="capacity by input width m", title_justify="left")
    for col in ("width m", "layers", f"capacity ⌊m/{lib.rank}⌋", "dims used", "dims free", "fits"):
        widths.add_column(col, justify="right")
    for g in s.groups:
        widths.add_row(
            str(g.in_features), str(g.layers), str(g.capacity), str(g.used), str(g.free), str(g.free // lib.rank)
        )
    console.print(widths)
    console.print(f"[bold]bottleneck[/] {s.bottleneck} ({s.bottleneck_free} dims free)")
    loose = [c.token for c in s.commit.concepts if not c.orthogonal]
    if loose and len(s.commit.concepts) > 1:
        _warn(
            f"{', '.join(loose)} trained without projection (plain LoRA): composing them with other concepts "
            "mixes subspaces (no orthogonality guarantee)"
        )
    if s.worst_pairs:
        shown = ", ".join(f"<{a}> on <{b}> {x:.3g}" for a, b, x in s.worst_pairs[:3])
        console.print(f"[bold]worst crosstalk[/] {shown}  (see `seqlib show NAME`)")
    colour = "green" if s.fits > 0 else "red"
    console.print(f"[{colour}]{s.fits} more rank-{lib.rank} concepts fit[/]")
    by = s.fits_by_policy
    if by["shrink"] != by["refuse"] or by["skip"] != by["refuse"]:
        console.print(f"  with --when-full shrink: {by['shrink']}, skip: {by['skip']} (some layers at a smaller rank)")


@cli.command("show", short_help="Everything recorded about one concept.")
@click.argument("name")
@_json_option
@_at_option
@click.pass_context
def show_command(ctx, name: str, as_json: bool, at: str | None) -> None:
    """Token, method, rank, images with hashes, hyper-parameters, losses, size on disk, and
    the concepts that interfere most with NAME.

    Crosstalk of A onto B: the energy of A's residual on B's recorded layer inputs, relative
    to B's own residual there (0 = A is invisible to B; 1 = as strong as B itself).
    """
    info = _library(ctx, at).show(name)
    if as_json:
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    c = info["concept"]
    t = c["training"] or {}
    method = t.get("method", "imported")
    console.print(f"[bold]{c['token']}[/]  {method}, rank {c['rank']}, added {c['created']}")
    if c.get("imported"):
        imp = c["imported"]
        console.print(f"imported from {imp['file']} ({imp['format']}), relative error {imp['relative_error']:.3f}")
    loss = "" if c["final_loss"] is None else f"loss {c['initial_loss']:.4f} → {c['final_loss']:.4f}   "
    console.print(
        f"{loss}trained {c['train_seconds']:.0f}s   {info['size_bytes'] / 1024:.0f} KiB on disk   "
        f"payload {c['payload'][:12]}"
    )
    if t:
        console.print("hyper-parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(t.items())))
    if any(c["reserved"]):
        console.print(f"--protect reserved up to {max(c['reserved'])} extra dims per layer")
    console.print(f"{len(c['images'])} images:")
    for im in c["images"]:
        console.print(f"  {im['file']}  sha256 {im['sha256'][:16]}…")
    for title, rows, key in (
        ("interfered with by", info["interfered_by"], "source"),
        ("interferes with", info["interferes_with"], "target"),
    ):
        if rows:
            console.print(f"{title}: " + ", ".join(f"<{r[key]}> {r['crosstalk']:.3g}" for r in rows[:5]))


@cli.command("log", short_help="History of the library, newest first.")
@_json_option
@click.pass_context
def log_command(ctx, as_json: bool) -> None:
    """One entry per change (init, add, …), newest first, with its version number."""
    lib = _library(ctx)
    entries = lib.log()
    tags: dict[str, list[str]] = {}
    for tag, commit_id in lib.tags().items():
        tags.setdefault(commit_id, []).append(tag)
    pinned = lib.version()[1] if lib.checked_out() else None
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "tags": tags.get(cid, []),
                        "version": v,
                        "commit": cid,
                        "parent": c.parent,
                        "message": c.message,
                        "timestamp": c.timestamp,
                        "concepts": [x.name for x in c.concepts],
                    }
                    for v, cid, c in entries
                ],
                indent=2,
                sort_keys=True,
            )
        )
        return
    for version, commit_id, commit in entries:
        labels = "".join(f" [green]({t})[/]" for t in tags.get(commit_id, []))
        labels += " [magenta](checked out)[/]" if commit_id == pinned else ""
        console.print(f"[yellow]version {version}[/]{labels} [dim]{commit_id[:12]}[/]  {commit.timestamp}")
        console.print(f"    {commit.message}   [dim]({_count(len(commit.concepts), 'concept')})[/]")


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
@_at_option
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
    for path in _library(ctx, at).export(concepts, out, fmt):
        console.print(f"wrote {path}")


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
@click.option("--device", default="auto", show_default=True, help=DEVICE_HELP)
@click.pass_context
def import_command(ctx, name, lora, rank, init_word, max_error, force, per_layer, device) -> None:
    """Adopt LORA (kohya or diffusers .safetensors) as concept NAME.

    Its basis is projected onto the space earlier concepts left free and its coefficients
    refit by least squares, so it composes with the library like any other concept. The
    relative residual error per layer and overall says what the projection cost.
    """
    concept, errors = _library(ctx).import_lora(
        name, lora, rank=rank, init_word=init_word, max_error=max_error, force=force, device=device
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


@cli.command("gc", short_help="Delete data no version reaches.")
@click.option(
    "--grace",
    type=NON_NEGATIVE,
    default=3600,
    show_default=True,
    help="Keep anything younger than this many seconds (an add may be writing it now).",
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted.")
@click.pass_context
def gc_command(ctx, grace: float, dry_run: bool) -> None:
    """Delete payloads and commits that no version or tag reaches (left by failed or
    conflicting adds) and leftovers of interrupted writes. History is never touched."""
    removed = _library(ctx).gc(grace_seconds=grace, dry_run=dry_run)
    for key in removed:
        console.print(("would remove " if dry_run else "removed ") + key)
    console.print(f"{len(removed)} unreachable objects {'found' if dry_run else 'removed'}")


@cli.command("list", short_help="The concepts, one line each.")
@_json_option
@_at_option
@click.pass_context
def list_command(ctx, as_json: bool, at: str | None) -> None:
    """The concepts of the current version (or --at), in training order."""
    concepts = _library(ctx, at).head().concepts
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "name": c.name,
                        "token": c.token,
                        "method": c.method,
                        "rank": c.rank,
                        "orthogonal": c.orthogonal,
                        "images": len(c.images),
                        "final_loss": c.final_loss,
                        "created": c.created,
                    }
                    for c in concepts
                ],
                indent=2,
                sort_keys=True,
            )
        )
        return
    for c in concepts:
        console.print(f"{c.token:<20} {c.method:<12} rank {c.rank}  {len(c.images)} images  {c.created}")
    if not concepts:
        console.print("no concepts yet; add one with `seqlib add NAME FOLDER`")


@cli.command("rm", short_help="Remove a concept (earlier versions keep it).")
@click.argument("name")
@click.option("-m", "--message", default=None, help="Note recorded in the commit.")
@click.pass_context
def rm_command(ctx, name: str, message: str | None) -> None:
    """Remove NAME from the library in a new commit; its subspace returns to free capacity.

    Concepts added after NAME stay valid: they were trained orthogonal to it. The earlier
    versions still hold NAME (`seqlib revert VERSION` brings it back).

    \b
    Example:
      seqlib rm mydog
    """
    lib = _library(ctx)
    lib.rm(name, message)
    console.print(f"Removed <{name}>; {lib.status().fits} more concepts fit now.")


@cli.command("tag", short_help="Name a version.")
@click.argument("name")
@click.argument("version", required=False)
@click.pass_context
def tag_command(ctx, name: str, version: str | None) -> None:
    """Give VERSION (default: the current one) the tag NAME; tags never move.

    \b
    Examples:
      seqlib tag portfolio-v1
      seqlib tag before-styles 3
    """
    v, commit_id = _library(ctx).tag(name, version)
    console.print(f"Tagged version {v} ({commit_id[:12]}) as {name}")


@cli.command("checkout", short_help="Pin a read-only version (or `main` to go back).")
@click.argument("version")
@click.pass_context
def checkout_command(ctx, version: str) -> None:
    """Read VERSION|TAG in compose, status, show and list until `seqlib checkout main`.

    While a version is checked out, add/rm/revert are refused: history is only ever appended.
    """
    pinned = _library(ctx).checkout(version)
    console.print("Back on the current version." if pinned is None else f"Checked out version {pinned[0]} (read-only).")


@cli.command("revert", short_help="Restore an old version in a new commit.")
@click.argument("version")
@click.option("-m", "--message", default=None, help="Note recorded in the commit.")
@click.pass_context
def revert_command(ctx, version: str, message: str | None) -> None:
    """Make a new commit whose concepts are exactly those of VERSION|TAG (nothing is deleted)."""
    commit = _library(ctx).revert(version, message)
    console.print(f"{commit.message}: {_count(len(commit.concepts), 'concept')}")


@cli.command("verify", short_help="Check every promise of the store format.")
@_json_option
@click.option("--skip-base", is_flag=True, help="Do not load the base to check its fingerprint.")
@click.pass_context
def verify_command(ctx, as_json: bool, skip_base: bool) -> None:
    """Recompute commit hashes, the history chain, every array checksum, pairwise orthogonality
    on every layer, the capacity arithmetic and the base fingerprint. Exit 1 on any violation."""
    report = _library(ctx).verify(check_base=not skip_base)
    if as_json:
        click.echo(json.dumps(report, indent=2, sort_keys=True))
    else:
        worst = report["worst_orthogonality"]
        pair = " and ".join(worst["pair"]) or "no pair"
        console.print(
            f"{report['commits']} commits, {report['payloads_checked']} payloads, {report['concepts']} concepts; "
            f"worst overlap {worst['max_abs_cos']:.1e} ({pair}{' on ' + worst['layer'] if worst['layer'] else ''})"
        )
        for problem in report["problems"]:
            err_console.print(f"[red]problem:[/] {problem}")
        console.print("[green]ok[/]" if report["ok"] else f"[red]{len(report['problems'])} problems[/]")
    if not report["ok"]:
        ctx.exit(errors.DATA)


_ARGV: list[str] = []


def _launch(n: int) -> int:
    """Run this same command in ``n`` data-parallel processes on this machine."""
    import socket
    import subprocess

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args, skip = [], False
    for a in _ARGV:  # drop --num-processes N (or --num-processes=N)
        if skip:
            skip = False
        elif a == "--num-processes":
            skip = True
        elif not a.startswith("--num-processes="):
            args.append(a)
    procs = []
    for r in range(n):
        env = os.environ | {
            "RANK": str(r),
            "LOCAL_RANK": str(r),
            "WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        quiet = subprocess.DEVNULL if r else None
        procs.append(subprocess.Popen([sys.executable, "-m", "seqlib", *args], env=env, stdout=quiet, stderr=quiet))
    codes = [p.wait() for p in procs]
    return max(codes, key=abs)


def _debugging(argv: list[str]) -> bool:
    return os.environ.get("SEQLIB_DEBUG", "") not in ("", "0") or "--debug" in argv


def _fail(message: str, code: int) -> int:
    click.echo(f"Error: {message}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """The one boundary: every error becomes one line and an exit code (``seqlib.errors``)."""
    _ARGV[:] = list(argv if argv is not None else sys.argv[1:])
    debug = _debugging(_ARGV)
    try:
        # Without standalone mode click *returns* the code of ctx.exit(code) instead of raising.
        code = cli.main(args=argv, prog_name="seqlib", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted: nothing was committed")
        return errors.INTERRUPTED
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except SeqlibError as e:
        if debug:
            traceback.print_exc()
        return _fail(str(e), e.exit_code)
    except (OSError, MemoryError) as e:  # the machine: permissions, disk, network
        if debug:
            traceback.print_exc()
        if isinstance(e, MemoryError):
            return _fail("out of memory; try a smaller --batch-size, --size or -n", errors.ENVIRONMENT)
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        return _fail(f"{e.strerror or e}{where}", errors.ENVIRONMENT)
    except Exception:
        traceback.print_exc()
        return _fail(
            f"this is a bug in seqlib {__version__}, not something you did; please report it on the project's "
            "issue tracker with the command and the traceback above",
            errors.BUG,
        )
    return code if isinstance(code, int) else 0


def _main() -> None:
    sys.exit(main())
