from seqlib.cli import _main

_main()
