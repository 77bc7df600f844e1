"""The store's immutable objects (``format_spec.md``): JSON objects (pages, concept records,
crosstalk), one zarr v3 group per concept payload, preview PNGs, and the last render of each
recipe (not history). A mixin of :class:`seqlib.store.Store`, which supplies ``backend``,
``is_local``, ``_where`` and ``_parse``.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from seqlib.backends import Backend
from seqlib.errors import ChecksumMismatch, EnvironmentProblem, StoreDamagedError
from seqlib.format import ArrayRecord, ConceptRecord, Crosstalk, _Object, canonical_json, sha256_hex

if TYPE_CHECKING:
    import numpy as np


def array_sha256(array: np.ndarray) -> str:
    import numpy as np

    return sha256_hex(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())


class Objects:
    backend: Backend
    is_local: bool
    root: str | Path

    def _where(self, key: str) -> str:
        raise NotImplementedError

    def _parse(self, raw: bytes, key: str, model):
        raise NotImplementedError

    def _init_objects(self) -> None:
        # Objects are immutable, so what was read once is kept: a version shares almost all its
        # records and pages with the one before, and `log` reads each of them once.
        self._objects: dict[str, _Object] = {}
        self._on_disk: set[str] = set()  # object ids known to be written
        self._verified: set[str] = set()  # object ids whose bytes were re-hashed

    # ---- JSON objects: pages, concept records, crosstalk -----------------------

    def read_object(self, kind: str, object_id: str, model: type[_Object], verify: bool = False) -> _Object:
        """``objects/<kind>/<id>.json`` (pages, concepts, crosstalk); ``verify`` re-hashes it."""
        found = self._objects.get(object_id)
        if found is not None and (not verify or object_id in self._verified):
            return found
        key = f"objects/{kind}/{object_id}.json"
        try:
            raw = self.backend.read(key)
        except FileNotFoundError:
            raise StoreDamagedError(self._where(key), "missing") from None
        found = self._parse(raw, key, model)
        if verify and sha256_hex(raw) != object_id:
            raise ChecksumMismatch(self._where(key), object_id, sha256_hex(raw))
        if verify and raw != found.to_bytes():
            raise StoreDamagedError(self._where(key), "not in the canonical JSON encoding")
        self._objects[object_id] = found
        self._on_disk.add(object_id)
        if verify:
            self._verified.add(object_id)
        return found

    def crosstalk(self, record: ConceptRecord) -> Crosstalk:
        """A concept's Crosstalk object (its values with every concept before it)."""
        return self.read_object("crosstalk", record.crosstalk, Crosstalk)

    def keep(self, obj: _Object) -> str:
        """Hold a new object (a concept's Crosstalk) to be written with the next commit that needs it."""
        self._objects.setdefault(obj.id, obj)
        return obj.id

    def _write_object(self, kind: str, obj: _Object) -> str:
        object_id = obj.id
        if object_id not in self._on_disk:
            key = f"objects/{kind}/{object_id}.json"
            if not self.backend.exists(key):
                self.backend.write(key, obj.to_bytes())
            self._on_disk.add(object_id)
            self._objects.setdefault(object_id, obj)
        return object_id

    # ---- payloads --------------------------------------------------------------

    def payload_path(self, payload_id: str) -> Path:
        """The folder of a payload (local stores only)."""
        return Path(self.root) / "objects" / "payloads" / payload_id

    def payload_size(self, payload_id: str) -> int:
        return self.backend.size(f"objects/payloads/{payload_id}")

    def write_payload(self, arrays: dict[str, np.ndarray], attrs: dict) -> tuple[str, list[ArrayRecord]]:
        """Write an immutable zarr v3 group, one single-chunk array per entry.

        The id is the sha256 over the arrays' checksums, so identical payloads share a group;
        the backend makes the group appear whole or not at all (``Backend.writing_tree``).
        """
        import zarr

        payload_id, records = self.describe_payload(arrays)
        with self.backend.writing_tree(f"objects/payloads/{payload_id}") as store:
            if store is not None:
                group = zarr.open_group(store, mode="w", zarr_format=3, attributes=attrs)
                for name, a in sorted(arrays.items()):
                    # Single chunk per array; write_empty_chunks so all-zero factors exist on disk.
                    z = group.create_array(
                        name, shape=a.shape, dtype=a.dtype, chunks=a.shape, config={"write_empty_chunks": True}
                    )
                    z[...] = a
        return payload_id, records

    @staticmethod
    def describe_payload(arrays: dict[str, np.ndarray]) -> tuple[str, list[ArrayRecord]]:
        """The id and array records a payload of these arrays has, without writing it."""
        records = [
            ArrayRecord(name=name, shape=list(a.shape), dtype=str(a.dtype), sha256=array_sha256(a))
            for name, a in sorted(arrays.items())
        ]
        return sha256_hex(canonical_json({"arrays": [r.model_dump() for r in records]})), records

    def read_payloads(self, wanted: dict[str, list[str]]) -> dict[str, dict[str, np.ndarray]]:
        """Many payloads at once (payload id -> array names): every array read concurrently on
        zarr's event loop, a payload being a few small files (2x faster than threads for 100)."""
        import asyncio

        from zarr.api import asynchronous as za

        async def one(payload_id: str, names: list[str]) -> tuple[str, dict]:
            store = self.backend.zarr_store(f"objects/payloads/{payload_id}", read_only=True)
            group = await za.open_group(store=store, mode="r", zarr_format=3)

            async def array(name: str):
                return name, await (await group.getitem(name)).getitem(...)

            return payload_id, dict(await asyncio.gather(*(array(n) for n in names)))

        async def every() -> list:
            return await asyncio.gather(*(one(pid, names) for pid, names in wanted.items()))

        from zarr.core.sync import sync

        return dict(sync(every()))

    def read_payload(self, payload_id: str, names: list[str] | None = None) -> dict[str, np.ndarray]:
        import zarr

        # mode="r": zarr's default "a" would silently create a missing group.
        store = self.backend.zarr_store(f"objects/payloads/{payload_id}", read_only=True)
        group = zarr.open_group(store, mode="r", zarr_format=3)
        keys = names if names is not None else sorted(group.array_keys())
        return {k: group[k][...] for k in keys}

    # ---- previews --------------------------------------------------------------

    def check_writable(self) -> None:
        """Fail now, not after minutes of training, when the library's folder cannot be written
        (a read-only mount, another user's files). Object stores answer at the write itself."""
        if not self.is_local:
            return
        probe = Path(self.root) / "objects" / f".write-test.{uuid.uuid4().hex}.partial"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise EnvironmentProblem(
                f"cannot write to the library {self.root} ({e.strerror or e}); nothing was trained"
            ) from None

    def write_preview(self, png: bytes) -> str:
        """Store a preview image, content-addressed and immutable; returns its id (sha256)."""
        preview_id = sha256_hex(png)
        key = f"objects/previews/{preview_id}.png"
        if self.is_local:
            (Path(self.root) / "objects" / "previews").mkdir(exist_ok=True)
        if not self.backend.exists(key):
            self.backend.write(key, png)
        return preview_id

    def read_preview(self, preview_id: str) -> bytes:
        key = f"objects/previews/{preview_id}.png"
        try:
            data = self.backend.read(key)
        except FileNotFoundError:
            raise StoreDamagedError(self._where(key), "missing") from None
        if sha256_hex(data) != preview_id:
            raise ChecksumMismatch(f"preview {preview_id[:12]}", preview_id, sha256_hex(data))
        return data

    def preview_location(self, preview_id: str) -> str:
        return self._where(f"objects/previews/{preview_id}.png")

    # Not history: the last image `compose @recipe` made, for `report` (overwritten each time).
    def save_render(self, recipe: str, png: bytes) -> None:
        if self.is_local:
            (Path(self.root) / "renders").mkdir(exist_ok=True)
        self.backend.write(f"renders/{recipe}.png", png)

    def last_render(self, recipe: str) -> bytes | None:
        try:
            return self.backend.read(f"renders/{recipe}.png")
        except FileNotFoundError:
            return None
