"""One root for every error seqlib raises on purpose.

The CLI prints a ``SeqlibError`` as one line and exits non-zero; anything else is a bug
and keeps its traceback. Errors that mirror a built-in also inherit it, so plain-Python
callers can catch either (``except KeyError`` works for a missing concept).
"""

from __future__ import annotations


class SeqlibError(Exception):
    """Base class: a user-facing problem with a message that says what to do."""


class StoreNotFoundError(SeqlibError, FileNotFoundError):
    pass


class StoreExistsError(SeqlibError, FileExistsError):
    pass


class FormatVersionError(SeqlibError):
    def __init__(self, path: str, found: int, supported: int) -> None:
        self.found, self.supported = found, supported
        newer = "a newer seqlib; upgrade with `pip install -U seqlib`" if found > supported else "an older seqlib"
        super().__init__(f"{path} has format version {found}; this seqlib reads version {supported} ({newer})")


class ConceptNotFoundError(SeqlibError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ConceptExistsError(SeqlibError, ValueError):
    pass


class InvalidNameError(SeqlibError, ValueError):
    pass


class ConflictError(SeqlibError):
    """The branch moved while we worked: our commit's parent is no longer the tip."""


class CapacityError(SeqlibError):
    def __init__(self, layers: list[str], rank: int, free: dict[str, int]) -> None:
        self.layers, self.rank, self.free = layers, rank, free
        shown = ", ".join(f"{name} ({free[name]} free)" for name in layers[:3])
        more = f" and {len(layers) - 3} more" if len(layers) > 3 else ""
        super().__init__(
            f"no room for a rank-{rank} concept: {shown}{more} lack {rank} free dimensions; "
            "remove a concept or use a smaller --rank"
        )


class BaseMismatchError(SeqlibError):
    pass


class BaseLoadError(SeqlibError):
    pass


class DataError(SeqlibError, ValueError):
    pass


class TrainingDivergedError(SeqlibError):
    pass


class ChecksumMismatch(SeqlibError):
    def __init__(self, what: str, expected: str, got: str) -> None:
        self.expected, self.got = expected, got
        super().__init__(f"{what}: checksum mismatch (expected {expected[:12]}…, got {got[:12]}…)")


class ImportRejectedError(SeqlibError):
    pass
