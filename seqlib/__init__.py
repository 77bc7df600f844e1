"""seqlib: a package manager for personal concepts in text-to-image diffusion (SeqLoRA)."""

from seqlib._version import __version__
from seqlib.api import Library
from seqlib.errors import SeqlibError

__all__ = ["Library", "SeqlibError", "__version__"]
