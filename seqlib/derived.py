"""What the store's records compute from their fields, defined once for the pydantic models
(:mod:`seqlib.format`) and the plain JSON views the read commands use (:mod:`seqlib.glance`),
and the fields a later format added, absent from a file while they hold their default. No imports:
the read commands' fast path must not pay for pydantic.
"""

from __future__ import annotations

# Fields a later format added, absent from the bytes while they hold this default: an object
# written before them re-encodes to its exact bytes, so its id stays valid (format_spec.md).
LIBRARY_ABSENT_AT: dict[str, object] = {"reserve": None}
TRAINING_ABSENT_AT: dict[str, object] = {"kv_scope": "all"}


class LibraryDerived:
    """``LibraryConfig``'s derived values."""

    @property
    def reserved_dims(self) -> list[int]:
        """Per layer: the dimensions the shared reserve takes (0 without one)."""
        dims = list(self.reserve.dims) if self.reserve else []
        return (dims + [0] * len(self.layers))[: len(self.layers)]  # a damaged record: verify reports its length

    @property
    def layer_names(self) -> list[str]:
        return [layer.name for layer in self.layers]


class ConceptDerived:
    """A concept record's derived values."""

    @property
    def weight(self) -> float:
        """The preferred weight (``annotate --weight``), 1 unless set."""
        return self.notes.weight if self.notes else 1.0

    @property
    def method(self) -> str:
        return self.training.method if self.training else "imported"

    @property
    def protect(self) -> int:
        return self.training.protect if self.training else 0

    @property
    def kv_scope(self) -> str:
        return self.training.kv_scope if self.training is not None else "all"


class VersionDerived:
    """A version's lookups."""

    def concept(self, name: str):
        return next((c for c in self.concepts if c.name == name), None)
