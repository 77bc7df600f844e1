"""One root for every error seqlib raises on purpose, in four classes with their exit codes.

The CLI prints a ``SeqlibError`` as one line (what, which file or argument, what to do) and
exits with its class's code; anything else is a bug and says so. Errors that mirror a built-in
also inherit it, so plain-Python callers can catch either (``except KeyError`` works for a
missing concept).

| exit | class | meaning |
|---|---|---|
| 2 | UsageError | an argument, name or selection that cannot work (click's own usage errors too) |
| 3 | DataError, StoreError | the images, LoRA file or store at hand are unusable, damaged or in conflict |
| 4 | EnvironmentProblem | the machine: permissions, disk, network, a missing device or base |
| 70 | (a bug) | anything else; the traceback is printed with where to report it |
| 130 | (interrupted) | Ctrl-C; nothing was committed |
"""

from __future__ import annotations

USAGE, DATA, ENVIRONMENT, BUG, INTERRUPTED = 2, 3, 4, 70, 130


class SeqlibError(Exception):
    """Base class: a user-facing problem with a message that says what to do."""

    exit_code = 1


class UsageError(SeqlibError, ValueError):
    """An argument, name or selection that cannot work."""

    exit_code = USAGE


class StoreError(SeqlibError):
    """The store is missing, damaged, of another version, or changed under us."""

    exit_code = DATA


class EnvironmentProblem(SeqlibError, OSError):
    """The machine: a folder that cannot be written, no network, a device that is absent."""

    exit_code = ENVIRONMENT


class StoreNotFoundError(StoreError, FileNotFoundError):
    pass


class StoreExistsError(StoreError, FileExistsError):
    pass


class StoreDamagedError(StoreError):
    """A store file is missing, truncated or not what the format says; ``path`` names it."""

    def __init__(self, path: str, what: str, advice: str = "run `seqlib verify` to see every problem") -> None:
        self.path = path
        super().__init__(f"{path} is damaged ({what}); {advice}")


class LostStoreInfo(StoreDamagedError):
    """A library whose ``store.json`` is gone while its objects and refs are there."""

    def __init__(self, root) -> None:
        super().__init__(
            f"{root}/store.json",
            "missing, while the library's objects and refs are there",
            "restore it from a backup (`seqlib init` refuses the folder: a library is in it)",
        )


class FormatVersionError(StoreError):
    def __init__(self, path: str, found: int, supported: tuple[int, ...]) -> None:
        self.found, self.supported = found, supported
        newer = "a newer seqlib; upgrade with `pip install -U seqlib`" if found > max(supported) else "an older seqlib"
        *rest, last = map(str, supported)
        versions = f"{', '.join(rest)} and {last}" if rest else last
        super().__init__(f"{path} has format version {found}; this seqlib reads versions {versions} ({newer})")


class ConceptNotFoundError(UsageError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class ConceptExistsError(UsageError):
    pass


class InvalidNameError(UsageError):
    pass


class ConflictError(StoreError):
    """The branch moved while we worked: our commit's parent is no longer the tip."""


class CapacityError(StoreError):
    def __init__(self, layers: list[str], rank: int, free: dict[str, int]) -> None:
        self.layers, self.rank, self.free = layers, rank, free
        shown = ", ".join(f"{name} ({free[name]} free)" for name in layers[:3])
        more = f" and {len(layers) - 3} more" if len(layers) > 3 else ""
        # A smaller rank helps only where some room is left.
        advice = "use a smaller --rank or " if any(free[name] > 0 for name in layers) else ""
        super().__init__(
            f"no room for a rank-{rank} concept: {shown}{more} lack {rank} free dimensions; "
            f"{advice}remove a concept (`seqlib rm`), or pass --when-full skip to leave full layers out"
        )


class BaseMismatchError(StoreError):
    pass


class BaseLoadError(EnvironmentProblem):
    pass


class DeviceError(EnvironmentProblem):
    pass


class DataError(SeqlibError, ValueError):
    """Images, a LoRA file or other user data that cannot be used."""

    exit_code = DATA


class TrainingDivergedError(DataError):
    pass


class ChecksumMismatch(StoreError):
    def __init__(self, what: str, expected: str, got: str) -> None:
        self.expected, self.got = expected, got
        found = "missing" if got == "missing" else f"checksum mismatch (expected {expected[:12]}…, got {got[:12]}…)"
        super().__init__(f"{what}: {found}; run `seqlib verify` to see every problem")


class ImportRejectedError(DataError):
    pass


def object_store_reason(e: Exception) -> str:
    """What went wrong, in the user's words and with the way out, instead of the provider's
    chain of causes (instance-metadata URLs, "resolve_deny", retry counts)."""
    text = str(e).lower()
    if any(w in text for w in ("credential", "metadata", "169.254", "unauthor", "forbidden", "403", "401", "denied")):
        return "no access: the credentials are missing or refused (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    if any(w in text for w in ("dns", "resolve", "connect", "timed out", "timeout", "unreachable", "refused")):
        return "cannot reach the endpoint (check the network and AWS_ENDPOINT_URL)"
    if "bucket" in text and ("not" in text or "no such" in text):
        return "the bucket does not exist or is not visible with these credentials"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{first[:200]} (check the network, AWS_ENDPOINT_URL and the credentials)"
