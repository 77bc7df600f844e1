"""The read commands' fast path: one version of a store read as plain JSON, without pydantic.

``seqlib list``, ``status``, ``show`` and ``log`` are what a user runs most, and git answers such
commands in milliseconds; importing pydantic and building the format's models costs several times
``python -c pass`` before any file is read (RESULTS, "The command-line floor"). So these commands
first try :func:`open`, which reads what ``format_spec.md`` promises of an ordinary store (format
3 or 4, the branch tip or a version of it, each file a JSON object with the fields the commands
show) into :class:`View`\\ s: the parsed dicts, their keys as attributes like the models'. Anything
else (a pinned checkout, an older format, a file missing, malformed or with a field of the wrong
type, an unknown concept) raises :class:`Unusual` and the caller reads through
:class:`seqlib.repo.Repository`, which validates every record and names the damage.

:class:`Reading` holds what the two readers share (``status``, ``show``), so the fast path and
the full one compute each answer once. Imports nothing of pydantic, rich or torch (a layout test).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import NamedTuple

from seqlib import capacity, crosstalk
from seqlib.backends import Backend, is_url, open_backend
from seqlib.canonical import CrosstalkMap, header, without
from seqlib.choices import READABLE_VERSIONS
from seqlib.derived import LIBRARY_ABSENT_AT, TRAINING_ABSENT_AT, ConceptDerived, LibraryDerived, VersionDerived
from seqlib.errors import LostStoreInfo, SeqlibError, StoreNotFoundError

STORE_DIRNAME = ".seqlib"


def find_store(start: Path | None = None) -> Path:
    """The nearest ``.seqlib`` in ``start`` or its parents, like git finds ``.git``."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / STORE_DIRNAME / "store.json").is_file():
            return folder / STORE_DIRNAME
        if (folder / STORE_DIRNAME / "refs").is_dir() or (folder / STORE_DIRNAME / "objects").is_dir():
            raise LostStoreInfo(folder / STORE_DIRNAME)
    raise StoreNotFoundError(f"no seqlib library in {start} or its parents; create one with `seqlib init`")


BRANCH_PREFIX = "refs/heads/main"
_COMMIT_ID = re.compile(r"[0-9a-f]{64}")


class Unusual(Exception):
    """Not what the fast path reads: the full reader (``seqlib.repo``) takes it."""


class Snapshot(NamedTuple):
    """One version of a library as one request reads it: its number on the branch, its commit id
    and the version itself. Verbs render, export and commit from it, so the pixels, the provenance
    and the parent of a new commit all name the same version however many adds land meanwhile."""

    seq: int
    id: str
    version: object  # format.Version, or a VersionView here


class LogEntry(NamedTuple):
    """One line of the history: a version's number, id, parent, message, time and size."""

    seq: int
    id: str
    parent: str | None
    message: str
    timestamp: str
    concepts: int


@cache
def _taken(cls: type) -> frozenset[str]:
    return frozenset(dir(cls))


class View(dict):
    """A JSON object as read, its keys also attributes (``record.name``), as the models have them.
    ``ABSENT_AT``: the fields a later format added, absent from older files at their defaults."""

    ABSENT_AT: dict[str, object] = {}

    def __init__(self, data: dict) -> None:
        super().__init__(data)
        # keys as instance attributes too: read at attribute speed (`list` reads 11 per concept);
        # a key that names a method or property of the class stays an item only
        taken = _taken(type(self))
        self.__dict__.update({k: v for k, v in data.items() if k not in taken})

    def __setitem__(self, key: str, value) -> None:
        super().__setitem__(key, value)
        if key not in _taken(type(self)):
            self.__dict__[key] = value

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            if name in self.ABSENT_AT:
                return self.ABSENT_AT[name]
            raise AttributeError(name) from None

    def model_dump(self, mode: str = "json") -> dict:
        """The record as the models dump it: what the file holds (they too leave out the fields
        absent at their defaults)."""
        return dict(self)


class TrainingView(View):
    ABSENT_AT = TRAINING_ABSENT_AT


class LibraryView(LibraryDerived, View):
    ABSENT_AT = LIBRARY_ABSENT_AT


class ConceptView(ConceptDerived, View):
    """A concept record read from its canonical bytes in steps: its name and Crosstalk id at once
    (all `show` needs of the other concepts), the other fields when one is first read (checked
    then: a wrong type is Unusual), its long lists (``LAZY``) only when read themselves (`list`
    needs none of them, `status` only ``reserved``)."""

    LAZY = {"arrays": list, "loss_curve": (list, type(None)), "reserved": list}

    def __init__(self, raw: bytes, record_id: str) -> None:
        first = header(raw, ("crosstalk", "name"))
        if not all(isinstance(v, str) for v in first.values()):
            raise ValueError("name, crosstalk")
        super().__init__(first)
        self.__dict__.update(_raw=raw, _id=record_id, _whole=False)

    def _read_the_rest(self) -> None:
        data = _checked(json.loads(without(self.__dict__["_raw"], self.LAZY)), _CONCEPT_FIELDS, self.__dict__["_id"])
        data["images"] = [View(im) for im in data["images"]]
        data["training"] = TrainingView(data["training"]) if data["training"] is not None else None
        data["notes"] = View(data["notes"]) if data["notes"] is not None else None
        dict.update(self, data)  # at once, not item by item: `list` does this for every concept
        taken = _taken(type(self))
        self.__dict__.update({k: v for k, v in data.items() if k not in taken}, _whole=True)

    def __getattr__(self, name: str):
        if not self.__dict__["_whole"]:
            try:
                self._read_the_rest()
            except ValueError as e:
                raise Unusual(self.__dict__["_id"]) from e
            if name in self.__dict__:
                return self.__dict__[name]
        if name in self.LAZY and name not in self:
            try:
                value = header(self.__dict__["_raw"], (name,))[name]
            except ValueError as e:
                raise Unusual(name) from e
            if not isinstance(value, self.LAZY[name]):
                raise Unusual(name)
            self[name] = value
        return View.__getattr__(self, name)

    def model_dump(self, mode: str = "json") -> dict:
        return json.loads(self.__dict__["_raw"])


class VersionView(VersionDerived, View):
    pass


# The fields the read commands show, by type: a record without them, or with another type, is
# read by the full reader, which names the damage (`verify` checks everything else).
_NUMBER, _OPTIONAL_NUMBER = (int, float), (int, float, type(None))
_CONCEPT_FIELDS = {
    "name": str, "token": str, "rank": int, "orthogonal": bool, "payload": str, "images": list,
    "training": (dict, type(None)), "initial_loss": _OPTIONAL_NUMBER,
    "final_loss": _OPTIONAL_NUMBER, "train_seconds": _NUMBER, "created": str, "crosstalk": str,
    "crosstalk_worst": list, "notes": (dict, type(None)), "ranks": (list, type(None)),
    "tensor_sha256": (str, type(None)), "preview": (str, type(None)),
}  # fmt: skip
_COMMIT_FIELDS = {"parent": (str, type(None)), "message": str, "timestamp": str, "library": dict, "pages": list}
_HEADER_FIELDS = ("format_version", "message", "pages", "parent", "timestamp")


def _checked(data: object, fields: dict[str, type | tuple], where: str) -> dict:
    if not isinstance(data, dict) or data.get("format_version") not in READABLE_VERSIONS[2:]:
        raise Unusual(f"{where}: not a format 3+ object")
    for name, kind in fields.items():
        if not isinstance(data.get(name, ...), kind) or (kind is int and isinstance(data[name], bool)):
            raise Unusual(f"{where}: {name}")
    return data


class Reading:
    """What both readers answer the same way, from ``snapshot()`` and the objects it names."""

    def snapshot(self) -> Snapshot:
        raise NotImplementedError

    def concept(self, name: str, commit=None):
        raise NotImplementedError

    def head(self):
        return self.snapshot().version

    def status(self) -> capacity.Status:
        """Capacity per layer width, the bottleneck, what still fits, the worst crosstalk."""
        seq, commit_id, head = self.snapshot()
        worst = crosstalk.worst_pairs(head.concepts, 5, self.crosstalk)
        return capacity.status(head, seq, commit_id, worst_pairs=worst)

    def show(self, name: str) -> dict:
        """Everything recorded about one concept, plus its size on disk and its interferers."""
        commit = self.head()
        concept = self.concept(name, commit)
        pairs = crosstalk.pairs_with(commit.concepts, name, self.crosstalk)
        return {
            "concept": concept.model_dump(mode="json"),
            "size_bytes": self.payload_size(concept.payload),
            "tensor_sha256": self.tensor_hash(concept, commit),
            "preview": self.preview_location(concept.preview) if concept.preview else None,
            "interfered_by": [{"source": a, "crosstalk": x} for a, b, x in pairs if b == name],
            "interferes_with": [{"target": b, "crosstalk": x} for a, b, x in pairs if a == name],
        }


class Glance(Reading):
    """A store read through its backend as plain JSON (see the module's docstring)."""

    def __init__(self, backend: Backend, root: str | Path, at: str | None) -> None:
        self.backend, self.root, self.at = backend, root, at
        self._snapshot: Snapshot | None = None
        self._pages: dict[str, list[str]] = {}
        self._sizes: dict[str, int] = {}

    def _json(self, key: str):
        try:
            return json.loads(self.backend.read(key))
        except (OSError, ValueError) as e:  # missing, unreadable, not JSON: the full reader says which
            raise Unusual(key) from e

    def _entries(self) -> list[tuple[int, str]]:
        """(version, key of its ref entry), oldest first: the entries are read only where needed."""
        names = sorted(n for n in self.backend.names(BRANCH_PREFIX) if n.isdigit())
        if [int(n) for n in names] != list(range(1, len(names) + 1)):
            raise Unusual("the branch's entries are not 1..N")
        return [(int(n), f"{BRANCH_PREFIX}/{n}") for n in names]

    def ref(self, key: str) -> str:
        try:
            text = self.backend.read(key).decode("ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise Unusual(key) from e
        if not _COMMIT_ID.fullmatch(text):
            raise Unusual(key)
        return text

    def _commit(self, commit_id: str) -> dict:
        return _checked(self._json(f"objects/commits/{commit_id}.json"), _COMMIT_FIELDS, commit_id)

    def _page(self, page_id: str) -> list[str]:
        if page_id not in self._pages:  # pages are shared between versions: `log` reads each once
            try:
                concepts = header(self.backend.read(f"objects/pages/{page_id}.json"), ("concepts",))["concepts"]
            except (OSError, ValueError) as e:
                raise Unusual(page_id) from e
            if not isinstance(concepts, list):
                raise Unusual(page_id)
            self._pages[page_id] = concepts
        return self._pages[page_id]

    def _page_size(self, page_id: str) -> int:
        """How many records a page lists: its id lines (indent 4), counted without decoding them."""
        if page_id not in self._sizes:
            try:
                self._sizes[page_id] = self.backend.read(f"objects/pages/{page_id}.json").count(b'\n    "')
            except OSError as e:
                raise Unusual(page_id) from e
        return self._sizes[page_id]

    def _record(self, record_id: str) -> ConceptView:
        key = f"objects/concepts/{record_id}.json"
        try:
            return ConceptView(self.backend.read(key), record_id)
        except (OSError, ValueError) as e:  # missing, unreadable, not canonical JSON: the full reader says which
            raise Unusual(key) from e

    def _resolve(self, entries: list[tuple[int, str]]) -> tuple[int, str]:
        """The --at version: a number, ``main`` or a full commit id (tags and prefixes: the full reader)."""
        ref = self.at
        if ref is None or ref == "main":
            found = entries[-1:]
        elif ref.isdigit():
            found = [e for e in entries if e[0] == int(ref)]
        else:
            found = [e for e in entries if self.ref(e[1]) == ref]
        if len(found) != 1:
            raise Unusual(f"--at {ref}")
        return found[0][0], self.ref(found[0][1])

    def snapshot(self) -> Snapshot:
        """The version read once per request (the tip or ``at``), its number and id with it."""
        if self._snapshot is None:
            entries = self._entries()
            if not entries:
                raise Unusual("no commits")
            seq, commit_id = self._resolve(entries)
            commit = self._commit(commit_id)
            library = LibraryView(commit["library"])
            library["base"] = View(library["base"])
            library["layers"] = [View(layer) for layer in library["layers"]]
            if library.get("reserve") is not None:
                library["reserve"] = View(library["reserve"])
            records = [self._record(rid) for pid in commit["pages"] for rid in self._page(pid)]
            version = VersionView(commit | {"library": library, "concepts": records})
            self._snapshot = Snapshot(seq, commit_id, version)
        return self._snapshot

    def version(self) -> tuple[int, str]:
        seq, commit_id, _ = self.snapshot()
        return seq, commit_id

    def concept(self, name: str, commit=None) -> ConceptView:
        found = (commit or self.head()).concept(name)
        if found is None:
            raise Unusual(f"no concept {name!r}")  # the full reader suggests the nearest names
        return found

    def checked_out(self) -> bool:
        return False  # open() leaves a pinned checkout to the full reader

    def tags(self) -> dict[str, str]:
        names = sorted(n for n in self.backend.list("refs/tags") if ".partial" not in n)
        return {n: self.ref(f"refs/tags/{n}") for n in names}

    def crosstalk(self, record: ConceptView) -> View:
        """A concept's Crosstalk, its two maps looked up in the canonical bytes (`show` asks each
        later concept's for one name: parsing them all was O(N²) values at 1,000 concepts)."""
        try:
            raw = self.backend.read(f"objects/crosstalk/{record.crosstalk}.json")
            return View({key: CrosstalkMap(raw, key) for key in ("crosstalk_from", "crosstalk_onto")})
        except (OSError, ValueError) as e:
            raise Unusual(record.crosstalk) from e

    def tensor_hash(self, concept: ConceptView, commit=None) -> str:
        if concept.tensor_sha256 is None:
            raise Unusual("a version-1 record: its hash is computed from the payload")
        return concept.tensor_sha256

    def payload_size(self, payload_id: str) -> int:
        return self.backend.size(f"objects/payloads/{payload_id}")

    def preview_location(self, preview_id: str) -> str:
        return f"{self.root}/objects/previews/{preview_id}.png"

    def history(self) -> list[LogEntry]:
        """Every version on the branch, newest first, as ``log`` prints it."""
        out = []
        fields = {k: v for k, v in _COMMIT_FIELDS.items() if k != "library"}
        for seq, key in reversed(self._entries()):
            commit_id = self.ref(key)
            try:
                c = _checked(
                    header(self.backend.read(f"objects/commits/{commit_id}.json"), _HEADER_FIELDS), fields, commit_id
                )
            except (OSError, ValueError) as e:
                raise Unusual(commit_id) from e
            count = sum(self._page_size(pid) for pid in c["pages"])
            out.append(LogEntry(seq, commit_id, c["parent"], c["message"], c["timestamp"], count))
        return out


def open(path: str | Path | None = None, at: str | None = None) -> Glance:  # noqa: A001  (glance.open)
    """The library at ``path`` (default: the nearest ``.seqlib``) for a fast look; Unusual when
    it is not an ordinary store on its branch (the full reader then opens it)."""
    try:
        root = find_store() if path is None else path
        if not is_url(root) and not (Path(root) / "store.json").is_file():
            root = Path(root) / ".seqlib"
        backend = open_backend(root)
        info = json.loads(backend.read("store.json"))
        if not isinstance(info, dict) or info.get("format_version") not in READABLE_VERSIONS[2:]:
            raise Unusual("store.json")
        if backend.exists("HEAD"):
            raise Unusual("a pinned checkout")
    except (SeqlibError, OSError, ValueError) as e:
        raise Unusual(str(e)) from e
    return Glance(backend, root, at)
