"""Where a store's bytes live: a local folder or an object store (S3 and compatibles).

The store protocol needs only five primitives, and each backend implements them natively:
read, an atomic overwrite, a **create-if-absent** (``os.link`` locally, a conditional put
``If-None-Match: *`` on S3: the one compare-and-swap that makes concurrent writers safe),
listing one level, and deletion. Payload groups are written through zarr's own store for
each backend.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from seqlib.errors import EnvironmentProblem, UsageError, object_store_reason


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_partial(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
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


class Backend(ABC):
    """Keys are ``/``-separated paths relative to the store's root."""

    url: str

    @abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError if absent."""

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Atomic overwrite."""

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Create-if-absent; False if the key exists (another writer won)."""

    @abstractmethod
    def list(self, prefix: str) -> dict[str, float]:
        """Names directly below ``prefix/`` (objects and sub-folders) -> last-modified time."""

    def names(self, prefix: str) -> list[str]:
        return list(self.list(prefix))  # the names alone: a folder lists them without a stat each

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object or a whole sub-tree."""

    @abstractmethod
    def zarr_store(self, prefix: str, read_only: bool):
        """A zarr store rooted at ``prefix``."""

    @abstractmethod
    def size(self, prefix: str) -> int:
        """Bytes stored under ``prefix``."""

    @abstractmethod
    def keys(self, prefix: str) -> list[str]:
        """Every object key below ``prefix/``, at any depth (payload arrays included)."""

    @contextmanager
    def writing_tree(self, prefix: str) -> Iterator[object | None]:
        """A zarr store to write an immutable tree into; it appears at ``prefix`` only once the
        block completes. Object stores have no rename: the tree is written in place, which is
        safe because nothing refers to it before it is complete. ``None``: already there."""
        yield self.zarr_store(prefix, read_only=False)

    def exists(self, key: str) -> bool:
        try:
            self.read(key)
            return True
        except FileNotFoundError:
            return False

    def upload_tree(self, folder: Path, prefix: str) -> None:
        for path in sorted(Path(folder).rglob("*")):
            if path.is_file():
                self.write(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())

    def download_tree(self, prefix: str, folder: Path) -> None:
        for key in self.keys(prefix):
            target = Path(folder) / key[len(prefix) + 1 :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.read(key))


class LocalBackend(Backend):
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def read(self, key: str) -> bytes:
        with open(os.path.join(self.url, key), "rb") as f:  # not pathlib: a fifth of `list`'s reads
            return f.read()

    def exists(self, key: str) -> bool:
        return (self.root / key).exists()

    def write(self, key: str, data: bytes) -> None:
        atomic_write(self.root / key, data)

    def create(self, key: str, data: bytes) -> bool:
        return create_exclusive(self.root / key, data)

    def list(self, prefix: str) -> dict[str, float]:
        folder = self.root / prefix
        if not folder.is_dir():
            return {}
        return {p.name: p.stat().st_mtime for p in folder.iterdir()}

    def names(self, prefix: str) -> list[str]:
        folder = os.path.join(self.url, prefix)
        return os.listdir(folder) if os.path.isdir(folder) else []

    def delete(self, key: str) -> None:
        path = self.root / key
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)

    def zarr_store(self, prefix: str, read_only: bool):
        from zarr.storage import LocalStore

        return LocalStore(self.root / prefix, read_only=read_only)

    def size(self, prefix: str) -> int:
        return sum(p.stat().st_size for p in (self.root / prefix).rglob("*") if p.is_file())

    @contextmanager
    def writing_tree(self, prefix: str) -> Iterator[object | None]:
        """Built under a ``.partial`` name, fsynced and renamed into place: all or nothing."""
        final = self.root / prefix
        if final.exists():  # content-addressed: an identical tree is already complete
            yield None
            return
        target = final.with_name(f"{final.name}.{uuid.uuid4().hex}.partial")
        try:
            yield self.zarr_store(target.relative_to(self.root).as_posix(), read_only=False)
            for dirpath, _, files in os.walk(target):
                for f in files:
                    with open(os.path.join(dirpath, f), "rb+") as fh:
                        os.fsync(fh.fileno())
            target.rename(final)
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise

    def keys(self, prefix: str) -> list[str]:
        return sorted(p.relative_to(self.root).as_posix() for p in (self.root / prefix).rglob("*") if p.is_file())


class ObjectBackend(Backend):
    """S3 (or any obstore URL). Credentials and endpoint come from the usual ``AWS_*``
    environment variables (``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP=true`` for a local emulator)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        with self._reaching():
            self._store = self._open("")

    def _open(self, prefix: str):
        from datetime import timedelta

        from obstore.store import from_url

        url = f"{self.url}/{prefix}".rstrip("/") if prefix else self.url
        kwargs: dict = {
            # fail within about a minute when the endpoint cannot be reached (obstore: 3 minutes)
            "retry_config": {"max_retries": 3, "retry_timeout": timedelta(seconds=60)},
        }
        if os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true"):
            kwargs["client_options"] = {"allow_http": True}
        return from_url(url, **kwargs)

    @contextmanager
    def _reaching(self, key: str = "") -> Iterator[None]:
        """obstore's errors (network, credentials, configuration) as one-line environment errors."""
        from obstore.exceptions import BaseError, NotFoundError

        try:
            yield
        except NotFoundError:
            raise FileNotFoundError(f"{self.url}/{key}") from None
        except BaseError as e:
            raise EnvironmentProblem(f"object store {self.url}: {object_store_reason(e)}") from None

    def read(self, key: str) -> bytes:
        import obstore

        with self._reaching(key):
            return bytes(obstore.get(self._store, key).bytes())

    def write(self, key: str, data: bytes) -> None:
        import obstore

        with self._reaching(key):
            obstore.put(self._store, key, data)  # an S3 PUT is atomic: old or new object, never half

    def create(self, key: str, data: bytes) -> bool:
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        with self._reaching(key):
            try:
                obstore.put(self._store, key, data, mode="create")  # If-None-Match: *
            except (AlreadyExistsError, PreconditionError):
                return False
        return True

    def list(self, prefix: str) -> dict[str, float]:
        # A "folder" is as old as the newest object below it (gc's grace period needs that).
        out: dict[str, float] = {}
        root = prefix.rstrip("/") + "/"
        for o in self._keys(prefix):
            name = o["path"][len(root) :].split("/", 1)[0]
            out[name] = max(out.get(name, 0.0), o["last_modified"].timestamp())
        return out

    def _keys(self, prefix: str) -> list[dict]:
        import obstore

        with self._reaching(prefix):
            return [o for batch in obstore.list(self._store, prefix.rstrip("/") + "/") for o in batch]

    def delete(self, key: str) -> None:
        import obstore

        paths = [o["path"] for o in self._keys(key)] or [key]
        with self._reaching(key):
            obstore.delete(self._store, paths)

    def zarr_store(self, prefix: str, read_only: bool):
        from zarr.storage import ObjectStore

        return ObjectStore(self._open(prefix), read_only=read_only)

    def size(self, prefix: str) -> int:
        return sum(int(o["size"]) for o in self._keys(prefix))

    def keys(self, prefix: str) -> list[str]:
        return sorted(o["path"] for o in self._keys(prefix))


class MemoryBackend(Backend):
    """A store held in this process's memory (``memory://name``): for tests, notebooks and
    throw-away libraries. Every ``memory://name`` opened in one process is the same store; it
    is gone when the process ends. Payload arrays live in zarr's MemoryStore, under the same keys."""

    _stores: dict[str, dict[str, tuple[bytes, float]]] = {}
    _lock = threading.Lock()  # one for every instance: two opened on one URL share its objects

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._objects = self._stores.setdefault(self.url, {})

    def read(self, key: str) -> bytes:
        try:
            return self._objects[key][0]
        except KeyError:
            raise FileNotFoundError(f"{self.url}/{key}") from None

    def write(self, key: str, data: bytes) -> None:
        with self._lock:
            self._objects[key] = (bytes(data), time.time())

    def create(self, key: str, data: bytes) -> bool:
        with self._lock:  # the compare-and-swap: check and insert under one lock
            if key in self._objects:
                return False
            self._objects[key] = (bytes(data), time.time())
            return True

    def list(self, prefix: str) -> dict[str, float]:
        root = prefix.rstrip("/") + "/"
        out: dict[str, float] = {}
        for key, (_, mtime) in list(self._objects.items()):
            if key.startswith(root):
                name = key[len(root) :].split("/", 1)[0]
                out[name] = max(out.get(name, 0.0), mtime)
        return out

    def delete(self, key: str) -> None:
        with self._lock:
            for k in [k for k in self._objects if k == key or k.startswith(key.rstrip("/") + "/")]:
                del self._objects[k]

    def zarr_store(self, prefix: str, read_only: bool):
        return _memory_zarr_store(self, prefix, read_only)

    def size(self, prefix: str) -> int:
        return sum(len(self._objects[k][0]) for k in self.keys(prefix))

    def keys(self, prefix: str) -> list[str]:
        root = prefix.rstrip("/") + "/"
        return sorted(k for k in self._objects if k.startswith(root))


def _memory_zarr_store(backend: MemoryBackend, prefix: str, read_only: bool):
    """zarr's MemoryStore over the backend's own objects below ``prefix`` (a dict view that
    reads and writes ``prefix/<zarr key>``), so list, size, delete and gc see payloads too."""
    from collections.abc import MutableMapping

    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    class View(MutableMapping):
        def _key(self, key: str) -> str:
            return f"{prefix}/{key}"

        def __getitem__(self, key):
            try:
                return default_buffer_prototype().buffer.from_bytes(backend.read(self._key(key)))
            except FileNotFoundError:
                raise KeyError(key) from None

        def __setitem__(self, key, value) -> None:
            backend.write(self._key(key), value.to_bytes())

        def __delitem__(self, key) -> None:
            backend.delete(self._key(key))

        def __iter__(self):
            return (k[len(prefix) + 1 :] for k in backend.keys(prefix))

        def __len__(self) -> int:
            return len(backend.keys(prefix))

        def __contains__(self, key) -> bool:
            return backend.exists(self._key(key))

    return MemoryStore(View(), read_only=read_only)


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location


OBJECT_STORE_SCHEMES = ("s3", "gs", "az", "abfs", "https", "http")  # what obstore's from_url opens


def open_backend(location: str | Path) -> Backend:
    if not is_url(location):
        return LocalBackend(Path(location))
    if str(location).startswith("memory://"):
        return MemoryBackend(str(location))
    scheme = str(location).split("://", 1)[0].lower()
    if scheme not in OBJECT_STORE_SCHEMES:
        raise UsageError(
            f"{location}: a library lives in a folder or an object store "
            f"({', '.join(f'{x}://' for x in OBJECT_STORE_SCHEMES)}), not at a {scheme}:// URL"
        )
    return ObjectBackend(str(location))
