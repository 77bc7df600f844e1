"""``seqlib``: the command line. Parses arguments, calls the Python API (:mod:`seqlib.api`;
the read commands first :mod:`seqlib.glance`) and prints through click (rich for progress bars,
spinners and the verbs that write); one module per group of verbs, imported when one of its commands runs, and ``main``
here, the one boundary where every error becomes one line and an exit code.

Nothing here imports torch, pydantic or rich at module level: ``seqlib list`` answers in a few
times ``python -c pass`` (RESULTS, "The command-line floor, second pass").
"""

from __future__ import annotations

import os
import sys

import click

from seqlib import errors
from seqlib._version import __version__
from seqlib.cli._common import cli, err_console
from seqlib.cli.launch import ARGV
from seqlib.errors import SeqlibError

__all__ = ["add_command", "cli", "main"]


def __getattr__(name: str):
    if name == "add_command":  # the commands' modules load when a command runs (cli._common.COMMANDS)
        from seqlib.cli.create import add_command

        return add_command
    raise AttributeError(f"module 'seqlib.cli' has no attribute {name!r}")


def _traceback() -> None:
    import traceback  # only on a failure: every command would pay ~4 ms for it

    traceback.print_exc()


def _debugging(argv: list[str]) -> bool:
    return os.environ.get("SEQLIB_DEBUG", "") not in ("", "0") or "--debug" in argv


def _fail(message: str, code: int) -> int:
    click.echo(f"Error: {message}", err=True)
    return code


def main(argv: list[str] | None = None) -> int:
    """The one boundary: every error becomes one line and an exit code (``seqlib.errors``)."""
    ARGV[:] = list(argv if argv is not None else sys.argv[1:])
    debug = _debugging(ARGV)
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
            _traceback()
        return _fail(str(e), e.exit_code)
    except (OSError, MemoryError) as e:  # the machine: permissions, disk, network
        if debug:
            _traceback()
        if isinstance(e, MemoryError):
            return _fail("out of memory; try a smaller --batch-size, --size or -n", errors.ENVIRONMENT)
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        return _fail(f"{e.strerror or e}{where}", errors.ENVIRONMENT)
    except Exception:
        _traceback()
        return _fail(
            f"this is a bug in seqlib {__version__}, not something you did; please report it on the project's "
            "issue tracker with the command and the traceback above",
            errors.BUG,
        )
    return code if isinstance(code, int) else 0


def _main() -> None:
    sys.exit(main())
