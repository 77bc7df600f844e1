"""seqlib: a package manager for personal concepts in text-to-image diffusion (SeqLoRA)."""

__version__ = "0.1.0"

from seqlib.api import Library  # noqa: E402
from seqlib.errors import SeqlibError  # noqa: E402

__all__ = ["Library", "SeqlibError", "__version__"]
