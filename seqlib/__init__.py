"""seqlib: a package manager for personal concepts in text-to-image diffusion (SeqLoRA)."""

from seqlib._version import __version__
from seqlib.errors import SeqlibError

__all__ = ["Library", "SeqlibError", "__version__"]


def __getattr__(name: str):
    # `from seqlib import Library` works as always; `seqlib --version` does not pay for the
    # pydantic models behind it (~0.1 s)
    if name == "Library":
        from seqlib.api import Library

        return Library
    raise AttributeError(f"module 'seqlib' has no attribute {name!r}")
