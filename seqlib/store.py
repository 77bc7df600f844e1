"""The on-disk store (``format_spec.md``): content-addressed commits, a ref log, zarr payloads.

Layout::

    .seqlib/
      store.json                   StoreInfo; its format_version gates reading
      base/                        the embedded base pipeline (embedded bases only)
      objects/commits/<id>.json    Commit, id = sha256 of the file's bytes
      objects/payloads/<id>/       one immutable zarr v3 group per concept
      refs/heads/main/<seq>        the branch: entry N holds the id of the N-th commit

The branch tip advances by creating entry N+1 if it does not exist yet (``os.link``
refuses to overwrite), so two writers racing from the same tip cannot both win: the
loser gets a ConflictError instead of a silent merge of two mutually non-orthogonal
concepts. Everything a ref points to is written and fsynced before the ref itself.
This module imports numpy and zarr lazily and never imports torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from seqlib.errors import (
    ChecksumMismatch,
    ConflictError,
    SeqlibError,
    StoreExistsError,
    StoreNotFoundError,
)
from seqlib.format import (
    ArrayRecord,
    Commit,
    StoreInfo,
    canonical_json,
    check_format_version,
    sha256_hex,
)

if TYPE_CHECKING:
    import numpy as np

STORE_DIRNAME = ".seqlib"
BRANCH = "main"
_SEQ_WIDTH = 12


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_partial(path: Path, data: bytes) -> Path:
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` so readers see the old file or the new one, never half of it."""
    tmp = _write_partial(path, data)
    tmp.replace(path)
    _fsync_dir(path.parent)


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists; True if we created it.

    ``os.link`` is the compare-and-swap: it fails with FileExistsError when another
    writer got there first, and the file appears complete or not at all.
    """
    tmp = _write_partial(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)
    return True


def array_sha256(array: np.ndarray) -> str:
    import numpy as np

    return sha256_hex(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())


def check_tag_name(name: str) -> None:
    """A tag name:

    - is 1 to 64 characters of letters, digits, ``.``, ``_`` and ``-``,
    - does not start with ``.`` or ``-``,
    - is not all digits (those are version numbers) and is not ``main``.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise SeqlibError(f"tag {name!r} may contain only letters, digits, '.', '_' and '-' (1 to 64)")
    if name[0] in ".-":
        raise SeqlibError(f"tag {name!r} must not start with '.' or '-'")
    if name.isdigit() or name == BRANCH:
        raise SeqlibError(f"tag {name!r} would be confused with a version number or the branch")


def find_store(start: Path | None = None) -> Path:
    """The nearest ``.seqlib`` in ``start`` or its parents, like git finds ``.git``."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / STORE_DIRNAME / "store.json").is_file():
            return folder / STORE_DIRNAME
    raise StoreNotFoundError(f"no seqlib library in {start} or its parents; create one with `seqlib init`")


class Store:
    """A seqlib store on the local filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        info_path = self.root / "store.json"
        if not info_path.is_file():
            raise StoreNotFoundError(f"{self.root} is not a seqlib store (no store.json)")
        data = json.loads(info_path.read_text())
        check_format_version(data, str(info_path))
        self.info = StoreInfo.model_validate(data)

    # ---- creation --------------------------------------------------------------

    @classmethod
    @contextmanager
    def create(cls, root: Path) -> Iterator[Store]:
        """Yield a store in a staging folder; it moves to ``root`` only if the block succeeds."""
        root = Path(root)
        if root.exists():
            raise StoreExistsError(f"{root} already exists; use it, or remove it to start over")
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = root.with_name(f"{root.name}.{uuid.uuid4().hex}.partial")
        staging.mkdir()
        try:
            for sub in ("objects/commits", "objects/payloads", f"refs/heads/{BRANCH}"):
                (staging / sub).mkdir(parents=True)
            atomic_write(staging / "store.json", canonical_json(StoreInfo().model_dump(mode="json")))
            yield cls(staging)
            staging.rename(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(root.parent)

    # ---- commits and refs ------------------------------------------------------

    @property
    def _branch_dir(self) -> Path:
        return self.root / "refs" / "heads" / BRANCH

    def _ref_entries(self) -> list[str]:
        return sorted(p.name for p in self._branch_dir.iterdir() if p.name.isdigit())

    def head_seq(self) -> int:
        entries = self._ref_entries()
        return int(entries[-1]) if entries else 0

    def head_id(self) -> str | None:
        entries = self._ref_entries()
        return (self._branch_dir / entries[-1]).read_text().strip() if entries else None

    def head(self) -> Commit:
        head = self.head_id()
        if head is None:
            raise SeqlibError(f"{self.root} has no commits; it was not initialised completely")
        return self.read_commit(head)

    def read_commit(self, commit_id: str, verify: bool = False) -> Commit:
        path = self.root / "objects" / "commits" / f"{commit_id}.json"
        raw = path.read_bytes()
        data = json.loads(raw)
        check_format_version(data, str(path))
        commit = Commit.model_validate(data)
        if verify and sha256_hex(raw) != commit_id:
            raise ChecksumMismatch(f"commit {commit_id[:12]}", commit_id, sha256_hex(raw))
        return commit

    def log(self) -> list[tuple[int, str, Commit]]:
        """(sequence number, id, commit), newest first."""
        out = []
        for entry in reversed(self._ref_entries()):
            commit_id = (self._branch_dir / entry).read_text().strip()
            out.append((int(entry), commit_id, self.read_commit(commit_id)))
        return out

    def commit(self, commit: Commit, expected_seq: int) -> str:
        """Write ``commit`` and advance the branch from ``expected_seq``; compare-and-swap.

        ``expected_seq`` is the tip the caller read before its work started (0 for the
        first commit). If anything landed since, nothing moves and ConflictError says so.
        """
        current = self.head_id() if expected_seq else None
        if commit.parent != current or self.head_seq() != expected_seq:
            raise ConflictError(
                "the library changed while this command ran (another seqlib wrote to it); "
                "nothing was committed — run the command again on the new state"
            )
        data = commit.to_bytes()
        commit_id = sha256_hex(data)
        path = self.root / "objects" / "commits" / f"{commit_id}.json"
        if not path.exists():
            atomic_write(path, data)
        ref = self._branch_dir / f"{expected_seq + 1:0{_SEQ_WIDTH}d}"
        if not create_exclusive(ref, (commit_id + "\n").encode()):
            raise ConflictError(
                "another seqlib committed to this library first; nothing was committed — "
                "run the command again on the new state"
            )
        return commit_id

    # ---- versions, tags, checkout ----------------------------------------------

    def entries(self) -> list[tuple[int, str]]:
        """(version, commit id) of every commit on the branch, oldest first."""
        return [(int(e), (self._branch_dir / e).read_text().strip()) for e in self._ref_entries()]

    @property
    def _tags_dir(self) -> Path:
        return self.root / "refs" / "tags"

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id."""
        if not self._tags_dir.is_dir():
            return {}
        return {p.name: p.read_text().strip() for p in sorted(self._tags_dir.iterdir()) if ".partial" not in p.name}

    def tag(self, name: str, commit_id: str) -> None:
        check_tag_name(name)
        self._tags_dir.mkdir(exist_ok=True)
        if not create_exclusive(self._tags_dir / name, (commit_id + "\n").encode()):
            raise SeqlibError(f"tag {name!r} already exists")

    def resolve(self, ref: str) -> tuple[int, str]:
        """(version, commit id) for a version number, a tag, ``main`` or a commit id prefix."""
        entries = self.entries()
        if ref == BRANCH:
            return entries[-1]
        if ref.isdigit():
            found = [e for e in entries if e[0] == int(ref)]
        elif ref in self.tags():
            found = [e for e in entries if e[1] == self.tags()[ref]]
        else:
            found = [e for e in entries if len(ref) >= 4 and e[1].startswith(ref)]
        if len(found) != 1:
            raise SeqlibError(f"no version, tag or commit {ref!r} (versions 1..{entries[-1][0]}; see `seqlib log`)")
        return found[0]

    def checked_out(self) -> str | None:
        """The ref a read-only checkout pins (``HEAD`` file), or None when on the branch tip."""
        head = self.root / "HEAD"
        return head.read_text().strip() if head.is_file() else None

    def set_checkout(self, ref: str | None) -> None:
        head = self.root / "HEAD"
        if ref is None or ref == BRANCH:
            head.unlink(missing_ok=True)
        else:
            atomic_write(head, (ref + "\n").encode())

    # ---- payloads --------------------------------------------------------------

    def payload_path(self, payload_id: str) -> Path:
        return self.root / "objects" / "payloads" / payload_id

    def write_payload(self, arrays: dict[str, np.ndarray], attrs: dict) -> tuple[str, list[ArrayRecord]]:
        """Write an immutable zarr v3 group, one single-chunk array per entry.

        The id is the sha256 over the arrays' checksums, so identical payloads share a
        folder. The group is built under a ``.partial`` name and renamed into place.
        """
        import zarr

        records = [
            ArrayRecord(name=name, shape=list(a.shape), dtype=str(a.dtype), sha256=array_sha256(a))
            for name, a in sorted(arrays.items())
        ]
        payload_id = sha256_hex(canonical_json({"arrays": [r.model_dump() for r in records]}))
        final = self.payload_path(payload_id)
        if final.exists():
            return payload_id, records
        staging = final.with_name(f"{payload_id}.{uuid.uuid4().hex}.partial")
        try:
            group = zarr.open_group(staging, mode="w-", zarr_format=3, attributes=attrs)
            for name, a in sorted(arrays.items()):
                # Single chunk per array; write_empty_chunks so all-zero factors exist on disk.
                z = group.create_array(
                    name,
                    shape=a.shape,
                    dtype=a.dtype,
                    chunks=a.shape,
                    config={"write_empty_chunks": True},
                )
                z[...] = a
            for dirpath, _, files in os.walk(staging):
                for f in files:
                    with open(os.path.join(dirpath, f), "rb+") as fh:
                        os.fsync(fh.fileno())
            staging.rename(final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return payload_id, records

    def read_payload(self, payload_id: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        import zarr

        # mode="r": zarr's default "a" would silently create a missing group.
        group = zarr.open_group(self.payload_path(payload_id), mode="r", zarr_format=3)
        keys = names if names is not None else sorted(group.array_keys())
        return {k: group[k][...] for k in keys}
