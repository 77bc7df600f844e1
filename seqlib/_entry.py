"""The ``seqlib`` console script: ``--version`` answers before the command line is imported
(as git does, in milliseconds); everything else goes to :func:`seqlib.cli.main`."""

from __future__ import annotations

import sys


def run() -> None:
    if sys.argv[1:] == ["--version"]:
        from seqlib._version import __version__

        print(f"seqlib, version {__version__}")
        sys.exit(0)
    from seqlib.cli import main

    sys.exit(main())
