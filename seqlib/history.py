"""What ``seqlib log`` shows, read from the commits' headers and their pages alone: no concept
record and no library config is validated (a history of 1,000 versions repeats the same
128-layer config 1,000 times; resolving every version whole took seconds). Torch-free."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from seqlib.format import READABLE_VERSIONS, Page
from seqlib.format_legacy import CommitV2
from seqlib.glance import LogEntry
from seqlib.store import Store


class CommitHeader(BaseModel):
    """The fields of a commit file (format 3 on) that ``log`` shows; ``format.Commit`` is what
    the file is checked against, here the rest is ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    format_version: int
    parent: str | None
    message: str
    timestamp: str
    pages: list[str]


def _header(store: Store, commit_id: str) -> CommitHeader | None:
    try:
        header = CommitHeader.model_validate_json(store.backend.read(f"objects/commits/{commit_id}.json"))
    except (FileNotFoundError, ValidationError):
        return None
    return header if header.format_version >= 3 and header.format_version in READABLE_VERSIONS else None


def history(store: Store) -> list[LogEntry]:
    """Every version on the branch, newest first, as ``log`` prints it."""
    out = []
    for seq, commit_id in reversed(store.entries()):
        commit = _header(store, commit_id)
        if commit is None:  # a version-1/2 commit, or damage the full read names
            commit, _ = store.read_commit_bytes(commit_id)
        if isinstance(commit, CommitV2):
            count = len(commit.concepts)
        else:
            count = sum(len(store.read_object("pages", pid, Page).concepts) for pid in commit.pages)
        out.append(LogEntry(seq, commit_id, commit.parent, commit.message, commit.timestamp, count))
    return out
