"""The ``seqlib`` console script: ``--version`` answers before the command line is imported
(as git does, in milliseconds); everything else goes to :func:`seqlib.cli.main`."""

from __future__ import annotations

import os
import sys


def run() -> None:
    if sys.argv[1:] == ["--version"]:
        from seqlib._version import __version__

        print(f"seqlib, version {__version__}")
        sys.exit(0)
    from seqlib.cli import main
    from seqlib.cli._common import QUICK_EXIT

    code = main()
    if QUICK_EXIT:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except BrokenPipeError:  # `seqlib list | head`
            pass
        os._exit(code)
    sys.exit(code)
