"""The on-disk store (``format_spec.md``): content-addressed commits, a ref log, zarr payloads.

Layout::

    .seqlib/
      store.json                   StoreInfo; its format_version gates reading
      base/                        the embedded base pipeline (embedded bases only)
      objects/commits/<id>.json    Commit, id = sha256 of the file's bytes; it lists pages
      objects/pages/<id>.json      Page: record ids of consecutive concepts
      objects/concepts/<id>.json   ConceptRecord, shared by every version holding it unchanged
      objects/crosstalk/<id>.json  Crosstalk: a concept's values with the concepts before it
      objects/payloads/<id>/       one immutable zarr v3 group per concept
      objects/previews/<id>.png    a concept's preview image, id = sha256 of the file's bytes
      refs/heads/main/<seq>        the branch: entry N holds the id of the N-th commit

The branch tip advances by creating entry N+1 if it does not exist yet (``os.link``
refuses to overwrite), so two writers racing from the same tip cannot both win: the
loser gets a ConflictError instead of a silent merge of two mutually non-orthogonal
concepts. Everything a ref points to is written and fsynced before the ref itself.
The bytes live in a :mod:`seqlib.backends` backend: a local folder, or an object store
(``s3://bucket/prefix``) where the create-if-absent is a conditional put. This module imports
numpy, zarr and obstore lazily and never imports torch.
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

from pydantic import ValidationError

from seqlib.backends import (
    Backend,
    LocalBackend,
    _fsync_dir,
    atomic_write,
    is_url,
    open_backend,
)
from seqlib.errors import (
    ChecksumMismatch,
    ConflictError,
    InvalidNameError,
    LostStoreInfo,
    StoreDamagedError,
    StoreExistsError,
    StoreNotFoundError,
    UsageError,
)
from seqlib.format import (
    READABLE_VERSIONS,
    Commit,
    ConceptRecord,
    Page,
    StoreInfo,
    Version,
    canonical_json,
    check_format_version,
    paginate,
    sha256_hex,
)
from seqlib.format_legacy import CommitV2
from seqlib.glance import BRANCH_PREFIX, Snapshot
from seqlib.objects import Objects, array_sha256  # noqa: F401  (array_sha256: part of this module's API)

BRANCH = "main"
_SEQ_WIDTH = 12
_COMMIT_ID = re.compile(r"[0-9a-f]{64}")


def check_tag_name(name: str) -> None:
    """A tag name:

    - is 1 to 64 characters of letters, digits, ``.``, ``_`` and ``-``,
    - does not start with ``.`` or ``-``,
    - is not all digits (those are version numbers) and is not ``main``.
    """
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
        raise InvalidNameError(f"tag {name!r} may contain only letters, digits, '.', '_' and '-' (1 to 64)")
    if name[0] in ".-":
        raise InvalidNameError(f"tag {name!r} must not start with '.' or '-'")
    if name.isdigit() or name == BRANCH:
        raise InvalidNameError(f"tag {name!r} would be confused with a version number or the branch")


class Store(Objects):
    """A seqlib store in a local folder or at an object-store URL."""

    def __init__(self, root: str | Path, _creating: bool = False) -> None:
        self.backend: Backend = open_backend(root)
        self.root = root if is_url(root) else Path(root)
        self._init_objects()
        if _creating:
            self.info = StoreInfo()
            return
        try:
            raw = self.backend.read("store.json")
        except FileNotFoundError:
            if self.backend.list("refs/heads/main") or self.backend.exists("HEAD"):
                raise LostStoreInfo(root) from None
            raise StoreNotFoundError(f"{root} is not a seqlib store (no store.json)") from None
        self.info = self._parse(raw, "store.json", StoreInfo)

    def _where(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _parse(self, raw: bytes, key: str, model):
        """A JSON file of the format as ``model`` (a callable of the file's format_version for
        commits); any damage becomes one StoreDamagedError."""
        if isinstance(model, type) and "format_version" in model.model_fields:
            try:  # the fast path (pydantic parses the bytes itself): a store reads thousands of records
                found = model.model_validate_json(raw)
                if found.format_version in READABLE_VERSIONS:
                    return found
            except ValidationError:
                pass  # the slow path below names the damage, the version gate first
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            at = e.start if isinstance(e, UnicodeDecodeError) else e.pos
            what = "empty" if not raw.strip() else f"not valid JSON at byte {at}"
            raise StoreDamagedError(self._where(key), what) from None
        if not isinstance(data, dict):
            raise StoreDamagedError(self._where(key), "not a JSON object")
        check_format_version(data, self._where(key))
        if not isinstance(model, type):
            model = model(data["format_version"])
        try:
            return model.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "top level"
            raise StoreDamagedError(self._where(key), f"{field}: {first['msg']}") from None

    def read_ref(self, key: str) -> str:
        """The commit id a ref file (branch entry, tag, HEAD) holds ("<64 hex>\n"); anything else
        is damage (StoreDamagedError)."""
        try:
            text = self.backend.read(key).decode("ascii").strip()
        except FileNotFoundError:
            raise StoreDamagedError(self._where(key), "missing") from None
        except UnicodeDecodeError:
            text = "<binary>"
        if not _COMMIT_ID.fullmatch(text):
            raise StoreDamagedError(self._where(key), "not a commit id" if text else "empty")
        return text

    @property
    def is_local(self) -> bool:
        return isinstance(self.backend, LocalBackend)

    # ---- creation --------------------------------------------------------------

    @classmethod
    @contextmanager
    def create(cls, root: str | Path) -> Iterator[Store]:
        """Yield a store to fill; readers see it only once the block has succeeded.

        Locally the store is built in a staging folder renamed into place; on an object
        store, ``store.json`` (which makes the prefix a store) is written last.
        """
        info = canonical_json(StoreInfo().model_dump(mode="json"))
        if is_url(root):
            store = cls(root, _creating=True)
            if store.backend.exists("store.json"):
                raise StoreExistsError(f"{root} is already a seqlib store")
            yield store
            store.backend.write("store.json", info)
            return
        root = Path(root)
        if root.exists():
            raise StoreExistsError(f"{root} already exists; use it, or remove it to start over")
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = root.with_name(f"{root.name}.{uuid.uuid4().hex}.partial")
        staging.mkdir()
        try:
            for sub in ("objects/commits", "objects/payloads", f"refs/heads/{BRANCH}"):
                (staging / sub).mkdir(parents=True)
            atomic_write(staging / "store.json", info)
            yield cls(staging)
            staging.rename(root)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _fsync_dir(root.parent)

    # ---- commits and refs ------------------------------------------------------

    _BRANCH_PREFIX = BRANCH_PREFIX

    def _ref_entries(self) -> list[str]:
        return sorted(n for n in self.backend.list(self._BRANCH_PREFIX) if n.isdigit())

    def _entry(self, name: str) -> str:
        return self.read_ref(f"{self._BRANCH_PREFIX}/{name}")

    def tip(self) -> tuple[int, str | None]:
        """(sequence number, commit id) of the branch tip, from one listing of the ref log (two
        reads could straddle an add landing between them)."""
        entries = self._ref_entries()
        return (int(entries[-1]), self._entry(entries[-1])) if entries else (0, None)

    def head(self) -> Version:
        return self.snapshot().version

    def snapshot(self, ref: str | None = None) -> Snapshot:
        """The branch tip (or version ``ref``) read once: its number, id and version together."""
        seq, commit_id = self.resolve(ref) if ref is not None else self.tip()
        if commit_id is None:
            raise StoreDamagedError(self._where(self._BRANCH_PREFIX), "no commits: it was not initialised completely")
        return Snapshot(seq, commit_id, self.read_version(commit_id))

    def entry_keys(self) -> list[tuple[int, str]]:
        """(version, key of its ref entry), oldest first, without reading the entries."""
        return [(int(e), f"{self._BRANCH_PREFIX}/{e}") for e in self._ref_entries()]

    def read_commit_bytes(self, commit_id: str) -> tuple[Commit | CommitV2, bytes]:
        """A commit file as written (a version-1/2 one whole) and its exact bytes (``verify``
        re-hashes them)."""
        key = f"objects/commits/{commit_id}.json"
        try:
            raw = self.backend.read(key)
        except FileNotFoundError:
            raise StoreDamagedError(self._where(key), "missing") from None
        return self._parse(raw, key, lambda v: CommitV2 if v < 3 else Commit), raw

    def read_version(self, commit_id: str, verify: bool = False) -> Version:
        """A version: the commit with its records; ``verify``: every file re-hashed on the way."""
        commit, raw = self.read_commit_bytes(commit_id)
        if verify and sha256_hex(raw) != commit_id:
            raise ChecksumMismatch(f"commit {commit_id[:12]}", commit_id, sha256_hex(raw))
        return self.version_of(commit, verify)

    def version_of(self, commit: Commit | CommitV2, verify: bool = False) -> Version:
        """The version a commit already read holds: its pages and records resolved (``verify``:
        each re-hashed); a version-1/2 commit's records upgraded in memory."""
        if isinstance(commit, CommitV2):
            version, values = commit.upgrade()
            for obj in values:
                self.keep(obj)
            return version
        ids = [rid for pid in commit.pages for rid in self.read_object("pages", pid, Page, verify).concepts]
        fields = commit.model_dump(exclude={"pages"})
        fields["library"], fields["recipes"] = commit.library, commit.recipes
        return Version(**fields, concepts=[self.read_object("concepts", rid, ConceptRecord, verify) for rid in ids])

    def log(self) -> list[tuple[int, str, Version]]:
        """(sequence number, id, version), newest first."""
        return [(seq, cid, self.read_version(cid)) for seq, cid in reversed(self.entries())]

    def commit(self, version: Version, expected_seq: int) -> str:
        """Write ``version`` and advance the branch from ``expected_seq``; compare-and-swap.

        ``expected_seq`` is the tip the caller read before its work started (0 for the
        first commit). If anything landed since, nothing moves and ConflictError says so.
        Objects go first (crosstalk, records, pages, the commit), so a ref never points at
        anything missing; those the store holds already are not written again.
        """
        seq, current = self.tip()
        if version.parent != current or seq != expected_seq:
            raise ConflictError(
                "the library changed while this command ran (another seqlib wrote to it); "
                "nothing was committed — run the command again on the new state"
            )
        record_ids = []
        for record in version.concepts:
            record_ids.append(record.id)
            if record_ids[-1] not in self._on_disk:  # a record on disk was written after its crosstalk
                self._write_object("crosstalk", self._objects.get(record.crosstalk) or self.crosstalk(record))
                self._write_object("concepts", record)
        pages = [self._write_object("pages", Page(concepts=ids)) for ids in paginate(record_ids)]
        fields = version.model_dump(exclude={"concepts", "format_version", "seqlib_version"})
        fields["library"], fields["recipes"] = version.library, version.recipes
        data = Commit(**fields, pages=pages).to_bytes()
        commit_id = sha256_hex(data)
        key = f"objects/commits/{commit_id}.json"
        if not self.backend.exists(key):
            self.backend.write(key, data)
        if not self.backend.create(
            f"{self._BRANCH_PREFIX}/{expected_seq + 1:0{_SEQ_WIDTH}d}", (commit_id + "\n").encode()
        ):
            raise ConflictError(
                "another seqlib committed to this library first; nothing was committed — "
                "run the command again on the new state"
            )
        return commit_id

    # ---- versions, tags, checkout ----------------------------------------------

    def entries(self) -> list[tuple[int, str]]:
        """(version, commit id) of every commit on the branch, oldest first; a missing entry is
        damage (the history would read as if a version never existed)."""
        found = [(int(e), self._entry(e)) for e in self._ref_entries()]
        for expected, (version, _) in enumerate(found, start=1):
            if version != expected:
                raise StoreDamagedError(self._where(f"{self._BRANCH_PREFIX}/{expected:0{_SEQ_WIDTH}d}"), "missing")
        return found

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id."""
        names = sorted(n for n in self.backend.list("refs/tags") if ".partial" not in n)
        return {n: self.read_ref(f"refs/tags/{n}") for n in names}

    def tag(self, name: str, commit_id: str) -> None:
        check_tag_name(name)
        if not self.backend.create(f"refs/tags/{name}", (commit_id + "\n").encode()):
            raise UsageError(f"tag {name!r} already exists")

    def resolve(self, ref: str) -> tuple[int, str]:
        """(version, commit id) for a version number, a tag, ``main`` or a commit id prefix."""
        entries = self.entries()
        tags = self.tags()
        if ref == BRANCH:
            return entries[-1]
        if ref.isdigit():
            found = [e for e in entries if e[0] == int(ref)]
        elif ref in tags:
            found = [e for e in entries if e[1] == tags[ref]]
        else:
            found = [e for e in entries if len(ref) >= 4 and e[1].startswith(ref)]
        if len(found) != 1:
            raise UsageError(f"no version, tag or commit {ref!r} (versions 1..{entries[-1][0]}; see `seqlib log`)")
        return found[0]

    def checked_out(self) -> str | None:
        """The commit a read-only checkout pins (``HEAD``), or None when on the branch tip."""
        if not self.backend.exists("HEAD"):
            return None
        pinned = self.read_ref("HEAD")
        if pinned not in {cid for _, cid in self.entries()}:
            raise StoreDamagedError(
                self._where("HEAD"),
                f"it pins commit {pinned[:12]}…, which is not on the branch",
                "`seqlib checkout main` reads the tip again; `seqlib verify` checks the rest",
            )
        return pinned

    def set_checkout(self, ref: str | None) -> None:
        if ref is None or ref == BRANCH:
            self.backend.delete("HEAD")
        else:
            self.backend.write("HEAD", (ref + "\n").encode())

    # ---- the embedded base -----------------------------------------------------

    def local_base_dir(self) -> Path:
        """A local folder holding the store's ``base/`` (downloaded once for object stores)."""
        if self.is_local:
            return Path(self.root) / "base"
        cache = Path(os.environ.get("SEQLIB_CACHE", Path.home() / ".cache" / "seqlib"))
        # keyed by the store's URL and creation time: a store re-created at the same URL gets a fresh copy
        folder = cache / "bases" / sha256_hex(f"{self.backend.url} {self.info.created}".encode())[:16]
        if not (folder / "model_index.json").is_file():
            staging = folder.with_name(f"{folder.name}.{uuid.uuid4().hex}.partial")
            self.backend.download_tree("base", staging)
            shutil.rmtree(folder, ignore_errors=True)
            staging.rename(folder)
        return folder

    def upload_base(self, folder: Path) -> None:
        if not self.is_local:
            self.backend.upload_tree(folder, "base")

    # ---- garbage collection ----------------------------------------------------

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> list[str]:
        """Delete what no version or tag reaches (``seqlib.collect``); returns the keys removed."""
        from seqlib.collect import collect

        return collect(self, grace_seconds, dry_run)
