"""Reading an object's canonical bytes (``format_spec.md``, "JSON encoding": sorted keys, 2-space
indent, no raw newline inside a string) without parsing all of it: a top-level key starts a line at
indent 2 and a key of an object inside it at indent 4. The read commands' fast path
(:mod:`seqlib.glance`) finds a commit's header, cuts a record's long lists and looks up one
crosstalk value this way; bytes not so encoded raise ValueError and are parsed whole, or read by the
full reader. No imports beyond the standard library.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

_QUOTED = re.compile(rb'"([^"]*)"')


def header(raw: bytes, keys: tuple[str, ...]) -> dict:
    """Top-level fields of an object (a commit's that ``log`` shows, say), found in its
    canonical bytes (format_spec.md: sorted keys, 2-space indent, so a top-level key starts a line
    at indent 2 and a string never holds a raw newline) without parsing the rest (in a commit, the
    library config every commit repeats: 90% of its bytes)."""
    found, end = {}, 0
    for key in sorted(keys):  # in the file's order: each search starts where the last one ended
        start = raw.find(b'\n  "' + key.encode() + b'": ', end)
        if start < 0:
            raise ValueError(f"no {key}")
        start += len(key) + 7
        end = raw.find(b"\n  ]", start) + 4 if raw.startswith(b"[\n", start) else raw.find(b"\n", start)
        found[key] = _value(raw[start:end].rstrip(b","), ids=key in ("pages", "concepts"))
    return found


def _value(text: bytes, ids: bool):
    """A JSON value; a plain string or a list of ids without json's machinery (`log` reads
    thousands)."""
    if text.startswith(b'"') and b"\\" not in text:
        return text[1:-1].decode()
    if ids and text.startswith(b"[") and b"\\" not in text:
        return [x.decode() for x in _QUOTED.findall(text)]
    if text.startswith(b"[") and not text.strip(b"[]0, \n"):  # all zeros (`reserved` without --protect)
        return [0] * text.count(b"0")
    return json.loads(text)


def without(raw: bytes, keys) -> bytes:
    """Canonical bytes with the top-level ``keys`` cut out (each runs to the next top-level key):
    the rest parses in a third of the time when the cut lists are most of the bytes."""
    pieces, pos = [], 0
    for key in sorted(keys):
        start = raw.find(b'\n  "' + key.encode() + b'": ', pos)
        if start >= 0:
            pieces.append(raw[pos:start])
            pos = raw.find(b'\n  "', start + 4)  # the last key's value would leave a trailing comma
    return b"".join([*pieces, raw[pos:]])


class CrosstalkMap(Mapping):
    """One of a Crosstalk file's maps (concept name -> value), read from its canonical bytes: one
    name is found without parsing the rest (format_spec.md: a key of a top-level object's object
    starts a line at indent 4); iterating parses the map whole."""

    def __init__(self, raw: bytes, key: str) -> None:
        self.raw = raw
        self.start = raw.find(b'\n  "' + key.encode() + b'": {')
        if self.start < 0:
            raise ValueError(f"no {key}")
        self.end = raw.find(b"}", self.start)  # names hold no brace; an empty map is "{}"
        self._all: dict[str, float] | None = None

    def _value(self, name: str):
        at = self.raw.find(b'\n    "' + name.encode() + b'": ', self.start, self.end)
        if at < 0:
            return None
        at += len(name) + 9
        return float(self.raw[at : self.raw.find(b"\n", at)].rstrip(b","))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._value(name) is not None

    def __getitem__(self, name: str) -> float:
        value = self._value(name)
        if value is None:
            raise KeyError(name)
        return value

    def _parsed(self) -> dict[str, float]:
        if self._all is None:
            self._all = json.loads(self.raw[self.raw.find(b"{", self.start) : self.end + 1])
        return self._all

    def __iter__(self):
        return iter(self._parsed())

    def items(self):
        return self._parsed().items()

    def __len__(self) -> int:
        return len(self._parsed())
