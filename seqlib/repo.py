"""The repository: a library's store as the verbs see it. Opening and creating a library,
reading a version (``snapshot``), a concept's records and tensors, committing a new state, the
history verbs (rm, revert, tag, checkout). It imports no verb: ``seqlib.adding``, ``render``,
``adopt``, ``notes``, ``reserve``, ``verify`` and ``report`` take a ``Repository``, and
``seqlib.api.Library`` binds them as methods (dulwich's split of ``repo`` and ``porcelain``).
Module-level imports stay torch-free so ``status`` and ``log`` answer instantly.
"""

from __future__ import annotations

from pathlib import Path

from seqlib import capacity
from seqlib.backends import is_url
from seqlib.config import LAYER_SETS, default_layer_set
from seqlib.errors import LostStoreInfo, StoreDamagedError, UsageError
from seqlib.format import ConceptRecord, LibraryConfig, Version
from seqlib.glance import STORE_DIRNAME, LogEntry, Reading, Snapshot, find_store
from seqlib.history import history
from seqlib.selection import unknown_concept
from seqlib.store import Store


class Repository(Reading):
    """A versioned library of concepts on one base, stored in a ``.seqlib`` folder: what the
    verbs read and commit through (``seqlib.api.Library`` binds the verbs on top)."""

    def __init__(self, store: Store, at: str | None = None) -> None:
        self.store = store
        self.at = at  # a version, tag or commit to read instead of the branch tip
        self._arrays: dict[str, dict] = {}  # payload id -> arrays; payloads are immutable

    @staticmethod
    def _resolve(path: str | Path | None) -> str | Path:
        if path is None:
            return find_store()
        if is_url(path):
            return str(path)
        p = Path(path)
        if (p / "store.json").is_file():
            return p
        if (p / STORE_DIRNAME / "store.json").is_file():
            return p / STORE_DIRNAME
        for folder in (p, p / STORE_DIRNAME):
            if (folder / "refs").is_dir() and (folder / "objects").is_dir():  # a store that lost store.json
                raise LostStoreInfo(folder)
        return find_store(p) if p.is_dir() else p

    @classmethod
    def open(cls, path: str | Path | None = None, at: str | None = None):
        lib = cls(Store(cls._resolve(path)), at=at)
        if at is not None:
            lib.store.resolve(at)  # fail early on an unknown version
        return lib

    @classmethod
    def init(
        cls,
        path: str | Path | None = None,
        base: str | None = None,
        base_config: str | None = None,
        rank: int = 4,
        device: str = "cpu",
        layers: str | None = None,
    ):
        """Create a library at ``path``/.seqlib (a path ending in .seqlib, or a URL, is used as
        it is; default: the current folder); ``base=None`` is the embedded default (no download).

        ``layers``: which linear layers concepts adapt (``seqlib.config.LAYER_SETS``); default:
        ``seqlib.config.default_layer_set`` of the base's kind.
        """
        from seqlib import base as bases

        root = (str(path) if is_url(path) else Path(path)) if path is not None else Path.cwd()
        if not is_url(root) and root.name != STORE_DIRNAME:  # like `git init DIR`: the library is DIR/.seqlib
            root = root / STORE_DIRNAME
        if rank < 1:
            raise UsageError("--rank must be at least 1")
        kind, source = bases.classify(base, base_config)
        layers = layers or default_layer_set(kind, source)
        if layers not in LAYER_SETS:
            raise UsageError(f"--layers must be one of {', '.join(LAYER_SETS)}, not {layers!r}")
        config_dir = str(Path(base_config).resolve()) if base_config else None
        with Store.create(root) as staging:
            if kind == "embedded":
                bases.place_embedded(staging, source)
            pipe = bases.load_pipeline(kind, source, config_dir, staging.local_base_dir(), device)
            record, records = bases.describe(pipe, kind, source, config_dir, layers)
            narrowest = min(records, key=lambda layer: layer.in_features)
            if capacity.capacity(narrowest.in_features, rank) < 1:
                raise UsageError(f"--rank {rank} exceeds the width {narrowest.in_features} of {narrowest.name}")
            commit = Version(
                parent=None,
                message=f"init: {kind} base {source}, rank {rank}, {layers} layers",
                library=LibraryConfig(base=record, rank=rank, layers=records),
                concepts=[],
            )
            staging.commit(commit, expected_seq=0)
        return cls.open(root)

    def _pinned(self) -> str | None:
        return self.at or self.store.checked_out()

    @property
    def root(self) -> str | Path:
        """Where the library lives: its .seqlib folder or its URL."""
        return self.store.root

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id."""
        return self.store.tags()

    @property
    def read_only(self) -> bool:
        """Whether this library object reads a pinned version (``at=``, or `seqlib checkout`)."""
        return self._pinned() is not None

    def checked_out(self) -> bool:
        """Whether a read-only version is pinned (`seqlib checkout`)."""
        return self.store.checked_out() is not None

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> list[str]:
        """Delete (or list) what no version reaches, once older than ``grace_seconds``."""
        return self.store.gc(grace_seconds=grace_seconds, dry_run=dry_run)

    def interrupted(self, name: str) -> bool:
        """Whether an unfinished add of ``name`` left a checkpoint to `--resume` from."""
        from seqlib import checkpoint

        return checkpoint.exists(self.store, name)

    def version(self) -> tuple[int, str]:
        """(version number, commit id) this library reads: --at, a checkout, or the tip."""
        pinned = self._pinned()
        if pinned:
            return self.store.resolve(pinned)
        seq, commit_id = self.store.tip()
        return seq, commit_id or ""

    def snapshot(self) -> Snapshot:
        """The version this library reads (--at, a checkout, or the tip) with its number and id,
        read once: what one request renders, exports or commits on, and names in its provenance,
        even while another add lands."""
        return self.store.snapshot(self._pinned())

    def writable_tip(self) -> Snapshot:
        """The tip a change starts from; refused while a read-only version is pinned."""
        pinned = self._pinned()
        if pinned:
            version = self.store.resolve(pinned)[0]
            raise UsageError(
                f"version {version} is checked out read-only; `seqlib checkout main` to change the library"
            )
        return self.store.snapshot()

    def concept(self, name: str, commit: Version | None = None) -> ConceptRecord:
        commit = commit or self.head()
        found = commit.concept(name)
        if found is None:
            raise unknown_concept(name, [c.name for c in commit.concepts])
        return found

    # what Reading's status and show read besides the snapshot
    def crosstalk(self, record: ConceptRecord):
        return self.store.crosstalk(record)

    def payload_size(self, payload_id: str) -> int:
        return self.store.payload_size(payload_id)

    def preview_location(self, preview_id: str) -> str:
        return self.store.preview_location(preview_id)

    def tensor_hash(self, concept: ConceptRecord, commit: Version | None = None) -> str:
        """The concept's identifier: sha256 of the tensors of its own kohya export at weight 1
        (recorded since format version 2; computed from the payload for older records)."""
        if concept.tensor_sha256:
            return concept.tensor_sha256
        from seqlib.export import concept_hash

        return concept_hash((commit or self.head()).library.layers, self.payload_arrays(concept))

    def load_text_side(self, commit: Version, device: str = "cpu"):
        """(tokenizer, text encoder) of the base, without loading its UNet where the base is a
        folder: all that `import` needs."""
        from seqlib.base import load_text_side

        local = self.store.local_base_dir() if commit.library.base.kind == "embedded" else None
        return load_text_side(commit.library, local, device)

    def log(self) -> list[tuple[int, str, Version]]:
        """(version, commit id, commit), newest first."""
        return self.store.log()

    def history(self) -> list[LogEntry]:
        """What ``seqlib log`` prints, newest first, without reading any concept record."""
        return history(self.store)

    def factors(self, concept: ConceptRecord, commit: Version):
        """(A by layer, B by layer, embedding) of a concept as float32 torch tensors."""
        import torch

        from seqlib import payload

        layers = commit.library.layers
        arrays = self.payload_arrays(concept, payload.factor_arrays(layers))
        A = {k: torch.from_numpy(v) for k, v in payload.unpack_coeffs(layers, arrays).items()}
        B = {k: torch.from_numpy(v) for k, v in payload.unpack_bases(layers, arrays).items()}
        return A, B, torch.from_numpy(arrays[payload.EMBEDDING_ARRAY])

    def payload_arrays(self, concept: ConceptRecord, names: list[str] | None = None) -> dict:
        """A concept's arrays (``names``: only these), each checked against the checksum its
        commit records; read once per library object (payloads are immutable)."""
        from seqlib.errors import ChecksumMismatch
        from seqlib.store import array_sha256

        cached = self._arrays.setdefault(concept.payload, {})
        wanted = [r.name for r in concept.arrays] if names is None else names
        missing = [n for n in wanted if n not in cached]
        if missing:
            try:
                arrays = self.store.read_payload(concept.payload, None if names is None else missing)
            except Exception as e:  # missing or unreadable files: zarr raises many kinds
                where = f"{self.store.root}/objects/payloads/{concept.payload}"
                raise StoreDamagedError(where, f"payload of concept {concept.name!r} unreadable: {e}") from None
            for record in concept.arrays:
                if record.name in missing:
                    got = array_sha256(arrays[record.name]) if record.name in arrays else "missing"
                    if got != record.sha256:
                        where = f"{self.store.root}/objects/payloads/{concept.payload}/{record.name}"
                        raise ChecksumMismatch(f"{where} (of concept {concept.name!r})", record.sha256, got)
            cached.update({n: arrays[n] for n in missing})
        return {n: cached[n] for n in wanted}

    def prefetch(self, concepts: list[ConceptRecord], names: list[str] | None = None) -> None:
        """Read these concepts' payloads (``names``: only these arrays) all at once: a payload is
        a few small files, so reading 100 one by one is mostly waiting. Damage is left for
        ``payload_arrays`` to report, concept by concept."""
        from seqlib.store import array_sha256

        todo = {}
        for c in concepts:
            cached = self._arrays.get(c.payload, {})
            missing = [r.name for r in c.arrays if (names is None or r.name in names) and r.name not in cached]
            if missing:
                todo[c.payload] = (c, missing)
        try:
            read = self.store.read_payloads({pid: missing for pid, (_, missing) in todo.items()})
        except Exception:  # noqa: BLE001  (any damage: the one-by-one path names it)
            return
        for pid, arrays in read.items():
            concept = todo[pid][0]
            if all(array_sha256(arrays[r.name]) == r.sha256 for r in concept.arrays if r.name in arrays):
                self._arrays.setdefault(pid, {}).update(arrays)

    def basis(self, concept: ConceptRecord, commit: Version) -> dict:
        """B by layer (float32 torch tensors), reading only the payload's basis arrays."""
        import torch

        from seqlib import payload

        layers = commit.library.layers
        arrays = self.payload_arrays(concept, payload.basis_arrays(layers))
        return {k: torch.from_numpy(v) for k, v in payload.unpack_bases(layers, arrays).items()}

    def reserve_directions(self, commit: Version) -> dict | None:
        """The shared reserve per layer, (m, dims) float64 torch tensors; None without one."""
        from seqlib.payload import read_directions

        return read_directions(self.store, commit)

    def input_summary(self, concept: ConceptRecord, commit: Version) -> dict:
        """Per layer: (principal input directions (m, k), energies (k,)) as numpy arrays."""
        from seqlib import payload

        return payload.unpack_summary(commit.library.layers, self.payload_arrays(concept))

    def load_base(self, commit: Version, device: str, base: str | None = None):
        """The base pipeline of ``commit`` (or ``base``, a local copy of it), without concepts."""
        from seqlib.base import load_base

        local = self.store.local_base_dir() if commit.library.base.kind == "embedded" else None
        return load_base(commit.library, local, device, override=base)

    def provenance(self, snapshot: Snapshot | None = None) -> dict:
        """Which library state made a file, written into exports and every rendered PNG: the
        snapshot the request already read (default: read one now)."""
        seq, commit_id, version = snapshot or self.snapshot()
        b = version.library.base
        base = {"base": b.source, "base_kind": b.kind, "base_fingerprint": b.fingerprint}
        return {"store_version": seq, "commit": commit_id, **base}

    def rm(self, name: str, message: str | None = None) -> Version:
        """Remove a concept from the current version; its subspace returns to free capacity.

        Later concepts stay valid: they were trained orthogonal to it, and still are to
        everything that remains. Earlier versions keep it.
        """
        tip = self.writable_tip()
        self.concept(name, tip.version)
        kept = [c for c in tip.version.concepts if c.name != name]
        return self.commit_state(tip, f"rm {name}" + _colon(message), concepts=kept)

    def revert(self, ref: str, message: str | None = None) -> Version:
        """A new commit whose state is that of version ``ref`` (history is kept)."""
        tip = self.writable_tip()
        old = self.store.snapshot(ref)
        return self.commit_state(tip, f"revert to version {old.seq}" + _colon(message), old.version)

    def commit_state(self, on: Snapshot, message: str, state: Version | None = None, **changes) -> Version:
        """Commit ``state`` (library, concepts, recipes; default: ``on``'s) with ``changes`` on
        top of the tip ``on``; fails if the branch moved since it was read."""
        state = state or on.version
        fields = {"library": state.library, "concepts": state.concepts, "recipes": state.recipes} | changes
        # records upgraded from version 1 get their identifier: format 3 records always carry one
        fields["concepts"] = [
            c if c.tensor_sha256 else c.model_copy(update={"tensor_sha256": self.tensor_hash(c, state)})
            for c in fields["concepts"]
        ]
        new = Version(parent=on.id, message=message, **fields)
        self.store.commit(new, expected_seq=on.seq)
        return new

    def tag(self, name: str, ref: str | None = None) -> tuple[int, str]:
        version, commit_id = self.store.resolve(ref) if ref else self.version()
        self.store.tag(name, commit_id)
        return version, commit_id

    def checkout(self, ref: str | None) -> tuple[int, str] | None:
        """Pin a read-only version for compose/status/show (``main`` or None: back to the tip)."""
        if ref in (None, "main"):
            self.store.set_checkout(None)
            return None
        version, commit_id = self.store.resolve(ref)
        self.store.set_checkout(commit_id)
        return version, commit_id


def _colon(message: str | None) -> str:
    return f": {message}" if message else ""
