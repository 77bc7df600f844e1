"""Pydantic models of the store, one per object in ``format_spec.md`` (the source of truth).

Nothing here imports torch, diffusers or zarr: read-only commands (``status``, ``log``)
use only this module and :mod:`seqlib.store`, and answer in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer

from seqlib._version import __version__
from seqlib.choices import (
    BASE_KINDS,
    BASIS_INITS,
    CONTEXTS,
    CROPS,
    FORMAT_VERSION,
    HVPS,
    KV_SCOPES,
    LAYOUTS,
    LORA_FORMATS,
    OPTIMIZERS,
    PRECISIONS,
    READABLE_VERSIONS,
    SCHEDULERS,
)
from seqlib.derived import LIBRARY_ABSENT_AT, TRAINING_ABSENT_AT, ConceptDerived, LibraryDerived, VersionDerived
from seqlib.errors import FormatVersionError, InvalidNameError, StoreDamagedError
from seqlib.methods import METHODS

# The LoRA file layouts seqlib writes (`export`) and reads (`import`): one definition for both.
LoraFormat = Literal[LORA_FORMATS]


def canonical_json(obj: dict) -> bytes:
    """The bytes that are hashed and stored: sorted keys, 2-space indent, trailing newline."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Model(BaseModel):
    # Unknown keys are rejected (a newer format wrote them; format_version says so, not silent
    # drops). defer_build: a schema is built when a model is first used, not all ~25 at import.
    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)
    # Fields a later format added, absent from the bytes while they hold this default: an object
    # written before them re-encodes to its exact bytes, so its id stays valid.
    _ABSENT_AT: ClassVar[dict[str, object]] = {}

    @model_serializer(mode="wrap")
    def _later_fields_absent_at_default(self, handler):
        data = handler(self)
        for name, default in self._ABSENT_AT.items():
            if name in data and data[name] == default:
                del data[name]
        return data


class _Object(_Model):
    """A content-addressed JSON file: its id is the sha256 of its canonical bytes."""

    def to_bytes(self) -> bytes:
        return canonical_json(self.model_dump(mode="json"))

    @property
    def id(self) -> str:
        return sha256_hex(self.to_bytes())


class StoreInfo(_Model):
    """``store.json``: marks a folder as a seqlib store."""

    format_version: int = Field(FORMAT_VERSION, description="Gates reading: readers refuse other versions.")
    seqlib_version: str = Field(__version__, description="The seqlib that created the store.")
    created: str = Field(default_factory=now_iso, description="ISO 8601, UTC.")


class BaseRecord(_Model):
    """Which pretrained model the library is built on; every concept depends on it."""

    kind: Literal[BASE_KINDS]
    source: str = Field(description="Embedded id, absolute folder/file path, or hub id.")
    config: str | None = Field(None, description="Diffusers config folder for single_file bases.")
    fingerprint: str = Field(description="sha256 over the adapted layers' W0 (see format_spec.md).")
    resolution: int = Field(description="Training and default sampling resolution in pixels.")


class LayerRecord(_Model):
    """One adapted linear layer ``W0`` (n x m)."""

    name: str = Field(description="Module path inside the UNet, e.g. `mid_block....attn1.to_q`.")
    in_features: int = Field(description="m: the width of the basis B (m x r).")
    out_features: int = Field(description="n: the height of the coefficients A (n x r).")


class ReserveRecord(_Model):
    """(v4) Input directions the base gives every input, reserved for no concept (``seqlib reserve``).

    Orthogonal bases silence concept j only on inputs inside span(B_j); trained bases settle on
    the directions every concept's inputs share, so residual j fires on concept i's inputs. The
    reserve takes those directions out of every later basis's free complement."""

    payload: str = Field(description="Id of the zarr group under objects/payloads/ holding `R_m<m>`.")
    arrays: list[ArrayRecord]
    dims: list[int] = Field(description="Per layer (library order): reserved directions, the leading columns of R.")
    captured: list[float] = Field(
        description="Per layer: the share of the generic inputs' energy (trace of Σ) the reserved directions hold."
    )
    energy: float = Field(gt=0, le=1, description="Target share: each layer reserves until it holds this much ...")
    max_fraction: float = Field(ge=0, lt=1, description="... or floor(max_fraction x m) directions, if fewer.")
    inputs: str = Field(description="What the generic inputs were (images, prompts, timesteps).")
    created: str


class LibraryConfig(LibraryDerived, _Model):
    base: BaseRecord
    rank: int = Field(gt=0, description="Default rank r of a new concept.")
    layers: list[LayerRecord]
    reserve: ReserveRecord | None = Field(None, description="v4: the shared reserve; absent (not null) when unset.")
    _ABSENT_AT: ClassVar[dict[str, object]] = LIBRARY_ABSENT_AT


class ImageRecord(_Model):
    file: str = Field(description="File name as it was added (no directories).")
    sha256: str


class ArrayRecord(_Model):
    name: str = Field(description="Array name inside the payload group, e.g. `B_m64`.")
    shape: list[int]
    dtype: str
    sha256: str = Field(description="sha256 of the array's C-order little-endian bytes.")


class TrainingRecord(_Model):
    """The hyper-parameters a concept was trained with, named after the paper's symbols."""

    method: str = Field(description="A registered training method (`seqlib.methods`).")

    @field_validator("method")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in METHODS:
            raise ValueError(f"unknown method {value!r} (known: {', '.join(METHODS)})")
        return value

    alpha: float = Field(description="α: step size of the A (lower-level) updates.")
    beta: float = Field(description="β: step size of the B (upper-level) updates.")
    K: int = Field(description="Bilevel iterations per training round.")
    S_B: int = Field(description="Local B iterations per bilevel iteration.")
    S_A: int = Field(description="Local A iterations per bilevel iteration.")
    eps: float | None = Field(None, description="Until format 3 an ε no trainer used (I − QQᵀ is exact); null since.")
    context: Literal[CONTEXTS] = Field(
        "library", description="library: learned on top of the earlier residuals (the paper); base: on W0 alone."
    )
    steps: int = Field(description="Training rounds; each draws a fresh batch (noise, timesteps).")
    batch_size: int
    lr_embed: float = Field(description="Step size of the token embedding (updated with A).")
    max_grad_norm: float = Field(description="sgd: global-norm clip of each step's gradient; 0 = unclipped.")
    optimizer: Literal[OPTIMIZERS] = Field("sgd", description="sgd: plain clipped steps; adam: preconditioned.")
    hvp: Literal[HVPS] = Field(description="As used (`auto` is resolved before training).")
    seed: int
    init_word: str
    prompt_template: str
    resolution: int
    basis_init: Literal[BASIS_INITS] = "random"
    precision: Literal[PRECISIONS] = "fp32"
    gradient_checkpointing: bool = False
    crop: Literal[CROPS] = "center"
    flip: bool = False
    aug_copies: int = 4
    kv_scope: Literal[KV_SCOPES] = Field("all", description="v4: token: K/V residual only at its token; absent: all.")
    protect: int = Field(0, description="Top input directions of each earlier concept B was kept orthogonal to.")
    activation_k: int = Field(8, description="Principal input directions stored per layer.")
    _ABSENT_AT: ClassVar[dict[str, object]] = TRAINING_ABSENT_AT


class ImportRecord(_Model):
    """Where an imported concept came from (it has no training images)."""

    file: str = Field(description="File name of the foreign LoRA.")
    sha256: str
    format: LoraFormat
    relative_error: float = Field(description="‖ΔW − A Bᵀ‖ / ‖ΔW‖ over all layers after projection and refit.")
    tensor_sha256: str | None = Field(
        None, description="v2: sha256 of the file's tensor bytes (AutoV3): `import` refuses the same file twice."
    )


class Notes(_Model):
    """What a user says about a concept (``seqlib annotate``); changing it never touches tensors."""

    description: str = ""
    trigger: str = Field("", description="Words to use with the token, e.g. `photo of <mydog>, corgi`.")
    weight: float = Field(1.0, description="Preferred weight: the default in compose and in composed exports.")
    tags: list[str] = Field(default_factory=list)


class Recipe(_Model):
    """A named composition (``seqlib recipe save``): replayed exactly by ``compose @name``."""

    concepts: list[tuple[str, float]] = Field(
        description="(name, weight) pairs in the order given: the order of the sum, so a list (JSON objects are "
        "stored with sorted keys, and a different order changes the last bits of the pixels)."
    )
    prompt: str
    negative_prompt: str | None = None
    seed: int
    num_images: int = Field(gt=0)
    steps: int = Field(gt=0)
    guidance: float
    size: int | None = Field(None, description="Pixels; None: the base's resolution.")
    scheduler: Literal[tuple(SCHEDULERS)] | None = Field(None, description="None: the base's own.")
    layout: Literal[LAYOUTS] = "sum"
    created: str

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.concepts)


class ConceptFields(ConceptDerived, _Model):
    """What a concept record holds in every format version (version 3 adds crosstalk by reference)."""

    name: str
    token: str = Field(description="The prompt token, `<name>`.")
    rank: int
    ranks: list[int] | None = Field(
        None, description="Per layer (library order) when not all equal to `rank`: --when-full shrink/skip."
    )
    orthogonal: bool = Field(description="False for plain LoRA concepts (no projection).")
    payload: str = Field(description="Id of the zarr group under objects/payloads/.")
    arrays: list[ArrayRecord]
    images: list[ImageRecord]
    training: TrainingRecord | None = Field(description="None for imported concepts.")
    imported: ImportRecord | None = Field(None, description="Set for concepts adopted by `seqlib import`.")
    frozen_columns: list[int] | None = Field(
        None, description="frozen-basis: the columns of each width's shared orthogonal matrix B was taken from."
    )
    reserved: list[int] = Field(
        description="Per layer (library order): dimensions this concept's --protect took beyond its basis."
    )
    initial_loss: float | None = Field(description="Denoising loss on the evaluation batch before training.")
    final_loss: float | None = Field(description="The same loss after training (None when imported).")
    train_seconds: float
    created: str
    tensor_sha256: str | None = Field(
        None,
        description="v2: sha256 of the tensor bytes of the concept's own kohya export at weight 1 "
        "(kohya sshs_model_hash, Civitai AutoV3); null in version-1 records (readers compute it).",
    )
    notes: Notes | None = Field(None, description="v2: description, trigger, preferred weight, tags.")
    preview: str | None = Field(
        None, description="v2: sha256 of a PNG under objects/previews/: the concept alone, 'a photo of <name>'."
    )
    loss_curve: list[float] | None = Field(None, description="v2: the training loss per round (<= 100 points).")


class Crosstalk(_Object):
    """``objects/crosstalk/<id>.json``: a concept's crosstalk with every concept before it."""

    format_version: int = FORMAT_VERSION
    crosstalk_from: dict[str, float] = Field(
        description="Per earlier concept: its residual's energy on this concept's inputs / this concept's own."
    )
    crosstalk_onto: dict[str, float] = Field(description="Per earlier concept: this one's energy on its inputs / own.")


class ConceptRecord(ConceptFields, _Object):
    """``objects/concepts/<id>.json``: one concept, shared by every version that holds it unchanged."""

    format_version: int = FORMAT_VERSION
    crosstalk: str = Field(description="Id of its Crosstalk object under objects/crosstalk/.")
    crosstalk_worst: list[tuple[str, str, float]] = Field(
        description="Its Crosstalk's worst 5 (source, target, value)."
    )


class Page(_Object):
    """``objects/pages/<id>.json``: consecutive concepts of a version, in training order."""

    format_version: int = FORMAT_VERSION
    concepts: list[str] = Field(description="ConceptRecord ids.")


class Commit(_Object):
    """``objects/commits/<id>.json``: one version of the library, its concepts by reference."""

    format_version: int = FORMAT_VERSION
    seqlib_version: str = __version__
    parent: str | None = Field(description="Id of the previous commit; None for the first.")
    message: str
    timestamp: str = Field(default_factory=now_iso)
    library: LibraryConfig
    pages: list[str] = Field(description="Page ids; their concepts, concatenated, in training order.")
    recipes: dict[str, Recipe] = Field(default_factory=dict, description="Named compositions.")


class Version(VersionDerived, _Model):
    """One version as read (not a file): a commit with its concept records resolved."""

    format_version: int = FORMAT_VERSION
    seqlib_version: str = __version__
    parent: str | None
    message: str
    timestamp: str = Field(default_factory=now_iso)
    library: LibraryConfig
    concepts: list[ConceptRecord] = Field(description="In training order: each is orthogonal to all before it.")
    recipes: dict[str, Recipe] = Field(default_factory=dict)


PAGE_SPLIT = 64  # a page ends after a record id whose last 4 hex digits are 0 mod this ...
PAGE_MAX = 256  # ... or at this many records


def paginate(record_ids: list[str]) -> list[list[str]]:
    """Split a version's record ids into pages at content-defined boundaries: appending a concept
    rewrites only the last page and removing one only its own, so a commit costs O(N/64 + 64) ids."""
    pages, page = [], []
    for record_id in record_ids:
        page.append(record_id)
        if int(record_id[-4:], 16) % PAGE_SPLIT == 0 or len(page) == PAGE_MAX:
            pages.append(page)
            page = []
    return [*pages, page] if page else pages


def check_format_version(data: dict, path: str) -> None:
    found = data.get("format_version")
    if not isinstance(found, int) or isinstance(found, bool):
        raise StoreDamagedError(path, "no integer format_version")
    if found not in READABLE_VERSIONS:
        raise FormatVersionError(path, found, READABLE_VERSIONS)


_NAME_RE = re.compile(r"[a-z][a-z0-9_-]*")


def check_concept_name(name: str, what: str = "concept") -> None:
    """A concept (or recipe) name:

    - is 1 to 40 characters long,
    - starts with a lower-case letter,
    - has only lower-case letters, digits, ``-`` and ``_`` (it becomes the token ``<name>``
      and a file name in exports, so nothing a shell or tokenizer treats specially).
    """
    if not 1 <= len(name) <= 40:
        raise InvalidNameError(f"{what} name {name!r} must be 1 to 40 characters")
    if not name[0].isascii() or not name[0].islower():
        raise InvalidNameError(f"{what} name {name!r} must start with a lower-case letter")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(f"{what} name {name!r} may contain only a-z, 0-9, '-' and '_'")


def token_for(name: str) -> str:
    """A concept's token: ``<name>``."""
    return f"<{name}>"
