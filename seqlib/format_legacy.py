"""Reading format versions 1 and 2 (``format_spec.md``, "Versions 1 and 2"): each commit held
every concept record inline, crosstalk included. Readers turn such a commit into a
:class:`~seqlib.format.Version` whose records are version-3 records; a library's next commit
writes them as objects. The old commits stay as they are, and re-encode to their exact bytes.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from seqlib import crosstalk
from seqlib.format import (
    ConceptFields,
    ConceptRecord,
    Crosstalk,
    LibraryConfig,
    Recipe,
    Version,
    _Object,
    canonical_json,
    now_iso,
)

# Fields version 2 added, per model: absent from version-1 objects, dropped when one is re-encoded.
V2_FIELDS = {
    "CommitV2": ("recipes",),
    "ConceptRecordV2": ("tensor_sha256", "notes", "preview", "loss_curve"),
    "ImportRecord": ("tensor_sha256",),
}


class ConceptRecordV2(ConceptFields):
    """A concept record inside a version-1 or -2 commit: its crosstalk inline."""

    crosstalk_from: dict[str, float]
    crosstalk_onto: dict[str, float]

    def upgrade(self) -> tuple[ConceptRecord, Crosstalk]:
        """The version-3 record and its Crosstalk object (same values)."""
        values = Crosstalk(crosstalk_from=self.crosstalk_from, crosstalk_onto=self.crosstalk_onto)
        fields = self.model_dump(exclude={"crosstalk_from", "crosstalk_onto"})
        record = ConceptRecord(**fields, **crosstalk.record_fields(self.name, values))
        return record, values


class CommitV2(_Object):
    """A version-1 or -2 commit: the library's full state in one file."""

    format_version: int
    seqlib_version: str
    parent: str | None
    message: str
    timestamp: str = Field(default_factory=now_iso)
    library: LibraryConfig
    concepts: list[ConceptRecordV2]
    recipes: dict[str, Recipe] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fields_of_its_version(self) -> CommitV2:
        if self.format_version not in (1, 2):
            raise ValueError(f"format_version {self.format_version} is not 1 or 2")
        if self.format_version == 1:
            records = [self, *self.concepts, *(c.imported for c in self.concepts if c.imported)]
            for record in records:
                for name in V2_FIELDS[type(record).__name__]:
                    if getattr(record, name):
                        raise ValueError(f"a version-1 commit cannot hold {name} (a version-2 field)")
        return self

    def to_bytes(self) -> bytes:
        data = self.model_dump(mode="json")
        if self.format_version == 1:  # re-encode exactly as written: without the version-2 fields
            for name in V2_FIELDS["CommitV2"]:
                data.pop(name)
            for concept in data["concepts"]:
                for name in V2_FIELDS["ConceptRecordV2"]:
                    concept.pop(name)
                for name in V2_FIELDS["ImportRecord"] if concept["imported"] else ():
                    concept["imported"].pop(name)
        return canonical_json(data)

    def upgrade(self) -> tuple[Version, list[Crosstalk]]:
        """The version it holds, with version-3 records, and their Crosstalk objects."""
        upgraded = [c.upgrade() for c in self.concepts]
        version = Version(
            format_version=self.format_version,
            seqlib_version=self.seqlib_version,
            parent=self.parent,
            message=self.message,
            timestamp=self.timestamp,
            library=self.library,
            concepts=[record for record, _ in upgraded],
            recipes=self.recipes,
        )
        return version, [values for _, values in upgraded]
