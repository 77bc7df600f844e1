"""``seqlib gc``: what no version or tag reaches, and leftovers of interrupted writes, deleted once
older than a grace period (a concurrent add may be writing them right now)."""

from __future__ import annotations

import time

from seqlib.format import Commit, Page


def collect(store, grace_seconds: float = 3600.0, dry_run: bool = False) -> list[str]:
    """Delete objects (commits, pages, records, crosstalk, payloads, previews) that no version
    or tag reaches, and leftovers of interrupted writes, once older than ``grace_seconds`` (a
    concurrent add may be writing them right now). Returns the keys removed (or that would be)."""
    reachable_commits = {cid for _, cid in store.entries()} | set(store.tags().values())
    keep: dict[str, set[str]] = {kind: set() for kind in ("payloads", "previews", "pages", "concepts", "crosstalk")}
    for cid in reachable_commits:
        commit, _ = store.read_commit_bytes(cid)
        if isinstance(commit, Commit):
            keep["pages"] |= {f"{p}.json" for p in commit.pages}
            for pid in commit.pages:
                keep["concepts"] |= {f"{r}.json" for r in store.read_object("pages", pid, Page).concepts}
        version = store.version_of(commit)
        if version.library.reserve:
            keep["payloads"].add(version.library.reserve.payload)
        for c in version.concepts:
            keep["payloads"].add(c.payload)
            if c.preview:
                keep["previews"].add(f"{c.preview}.png")
            if isinstance(commit, Commit):
                keep["crosstalk"].add(f"{c.crosstalk}.json")
    now, removed = time.time(), []
    keep["commits"] = {f"{c}.json" for c in reachable_commits}
    for kind, kept in keep.items():
        prefix = f"objects/{kind}"
        for name, modified in store.backend.list(prefix).items():
            if name not in kept and now - modified >= grace_seconds:
                removed.append(f"{prefix}/{name}")
    for folder in (store._BRANCH_PREFIX, "refs/tags"):
        for name, modified in store.backend.list(folder).items():
            if ".partial" in name and now - modified >= grace_seconds:
                removed.append(f"{folder}/{name}")
    if not dry_run:
        for key in removed:
            store.backend.delete(key)
    return removed
