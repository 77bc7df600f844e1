"""What every command shares: the ``seqlib`` group and its global options, the consoles,
option types (finite floats, seeds) and opening the library."""

from __future__ import annotations

import gc
import importlib
import math

import click

from seqlib._version import __version__
from seqlib.choices import WHEN_FULL


class LazyConsole:
    """rich's ``Console``, imported on the first print: ``list`` and ``log`` print through click and
    never pay rich's import (~0.05 s of a command that should answer in a few tenths)."""

    def __init__(self, **options) -> None:
        self._options, self._console = options, None

    @property
    def rich(self):
        """The real ``Console``, for rich objects that take one (``Progress(console=...)``)."""
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return self._console

    def __getattr__(self, name: str):
        return getattr(self.rich, name)


console = LazyConsole()
err_console = LazyConsole(stderr=True)


at_option = click.option(
    "--at", default=None, metavar="VERSION|TAG", help="Read this version instead of the current one."
)
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def warn(message: str) -> None:
    click.echo(f"{click.style('warning:', fg='yellow')} {message}", err=True)


def table(title: str, header: list[str], rows: list[list[str]], right: bool = False) -> str:
    """A titled table of plain aligned columns (as git and docker print them): greppable, no box
    drawing to wrap on a narrow terminal, and no rich import."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    pad = str.rjust if right else str.ljust

    def line(cells: list[str]) -> str:
        return "  ".join(pad(cell, w) for cell, w in zip(cells, widths)).rstrip()

    return "\n".join([click.style(title, bold=True), click.style(line(header), dim=True), *map(line, rows)])


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


def open_library(ctx: click.Context, at: str | None = None):
    from seqlib.api import Library

    return Library.open(ctx.obj.get("store"), at=at)


def ask(ctx: click.Context, at: str | None, question):
    """``question(library)`` answered from the store read as plain JSON (``seqlib.glance``: no
    pydantic import, so a read command answers in a few times ``python -c pass``), or by the full
    reader where the store is not an ordinary one (it validates, and names any damage). A value of
    the wrong shape deep in a record surfaces as a TypeError or the like: the full reader too."""
    from seqlib import glance

    QUICK_EXIT.clear()
    gc.disable()  # reading 1,000 records makes ~10^5 objects and no cycle: the collector's passes are waste
    try:
        answer = question(glance.open(ctx.obj.get("store"), at))
        QUICK_EXIT.append(True)  # the console script may end without tearing those objects down
        return answer
    except (glance.Unusual, KeyError, TypeError, ValueError, AttributeError, IndexError):
        return question(open_library(ctx, at))
    finally:
        gc.freeze()  # re-enabled, it would first traverse all of them once: the cost it was off to save
        gc.enable()


# Set when a read command answered from the fast path: nothing is left to clean up (no file,
# thread or temporary), so the console script ends with os._exit (~15 ms of teardown at 1,000 concepts).
QUICK_EXIT: list[bool] = []


# Which module of seqlib.cli defines each command: a command's module is imported when it runs
# (click's "lazily loading subcommands"), so `seqlib list` does not import what `add` and
# `compose` need (pydantic's models among them). tests/test_cli.py checks this table is complete.
COMMANDS = {
    "reading": ("status", "show", "log", "list", "report", "verify"),
    "create": ("init", "add", "import"),
    "history": ("gc", "rm", "tag", "checkout", "revert"),
    "notes": ("annotate", "recipe"),
    "output": ("compose", "preview", "export"),
    "room": ("reserve",),
}


class LazyGroup(click.Group):
    def get_command(self, ctx: click.Context, name: str):
        module = next((m for m, names in COMMANDS.items() if name in names), None)
        if module is not None and name not in self.commands:
            importlib.import_module(f"seqlib.cli.{module}")
        return super().get_command(ctx, name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in COMMANDS:
            importlib.import_module(f"seqlib.cli.{module}")
        return super().list_commands(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    orthogonal to every earlier concept's (SeqLoRA), so any subset composes by a plain sum
    of weights, with no fusion step. Orthogonal bases do not stop one concept's residual from
    acting on another's inputs: `status` and `show` measure that crosstalk, and `compose`
    warns when a selected pair has much of it (on the tiny default base, summed concepts
    still override each other; `--layout row` keeps them apart). Capacity is finite: a layer
    of width m holds floor(m/r) rank-r concepts; `seqlib status` shows what is left.

    \b
    Quick start (embedded tiny base, CPU, no downloads; what README's images show):
      seqlib init
      seqlib add mascot examples/mascot
      seqlib add robot examples/robot
      seqlib compose mascot --prompt "a photo of <mascot>" -n 4 --grid --out out/mascot
      seqlib compose mascot,robot --layout row --prompt "a photo of <mascot> | a photo of <robot>" --out out/pair
      seqlib status
      seqlib log

    Errors print one line and exit 2 (a bad argument), 3 (unusable data or a damaged store) or
    4 (the machine: permissions, network, device); --debug shows the traceback.
    """
    ctx.ensure_object(dict)["store"] = store


def when_full_option(default: str, shrink: str, verb: str):
    return click.option(
        "--when-full",
        type=click.Choice(WHEN_FULL),
        default=default,
        show_default=True,
        help=f"A layer with fewer than r free dimensions: {shrink} (shrink), leave it "
        f"unadapted for this concept (skip), or refuse the {verb}.",
    )
