"""The Python API: one method per CLI verb. ``seqlib.cli`` only parses and renders.

    >>> lib = Library.init("photos/.seqlib")            # embedded default base
    >>> lib.add("mydog", "photos/dog")                   # learns <mydog>
    >>> lib.compose(["mydog"], "a photo of <mydog>", out="out/")

Module level imports stay torch-free so ``status`` and ``log`` answer instantly;
training and sampling import torch and diffusers when they run.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from seqlib import methods
from seqlib.backends import is_url
from seqlib.config import LAYER_SETS, default_layer_set
from seqlib.errors import (
    CapacityError,
    ConceptExistsError,
    ConceptNotFoundError,
    EnvironmentProblem,
    InvalidNameError,
    SeqlibError,
    StoreDamagedError,
    UsageError,
)
from seqlib.format import (
    Commit,
    ConceptRecord,
    LibraryConfig,
    TrainingRecord,
    capacity,
    concepts_that_fit,
    crosstalk_pairs,
    free_dims,
    layer_ranks,
    now_iso,
    used_dims,
)
from seqlib.store import STORE_DIRNAME, Store, find_store

if TYPE_CHECKING:
    from seqlib.config import TrainConfig

_NAME_RE = re.compile(r"[a-z][a-z0-9_-]*")

# Crosstalk above this (another concept's residual energy on a concept's own inputs, relative
# to that concept's own residual) is flagged by `compose` and `status`. A judgement call on the
# embedded base, to be re-measured on a pretrained one.
CROSSTALK_WARN = 0.5


def check_concept_name(name: str) -> None:
    """A concept name:

    - is 1 to 40 characters long,
    - starts with a lower-case letter,
    - has only lower-case letters, digits, ``-`` and ``_`` (it becomes the token ``<name>``
      and a file name in exports, so nothing a shell or tokenizer treats specially).
    """
    if not 1 <= len(name) <= 40:
        raise InvalidNameError(f"concept name {name!r} must be 1 to 40 characters")
    if not name[0].isascii() or not name[0].islower():
        raise InvalidNameError(f"concept name {name!r} must start with a lower-case letter")
    if not _NAME_RE.fullmatch(name):
        raise InvalidNameError(f"concept name {name!r} may contain only a-z, 0-9, '-' and '_'")


def token_for(name: str) -> str:
    return f"<{name}>"


@dataclass(frozen=True)
class WidthGroup:
    """Layers of one input width m: they share capacity arithmetic."""

    in_features: int
    layers: int
    capacity: int  # floor(m / r) concepts
    used: int  # basis dimensions taken (the same on every layer of the library)
    free: int


@dataclass(frozen=True)
class Status:
    commit_id: str
    version: int
    commit: Commit
    groups: list[WidthGroup]
    bottleneck: str  # the layer with the fewest free dimensions
    bottleneck_free: int
    fits: int  # more concepts at the library's rank
    fits_by_policy: dict[str, int]  # the same under each --when-full policy
    worst_pairs: list[tuple[str, str, float]]  # (source, target, crosstalk), worst first

    def to_json(self) -> dict:
        lib = self.commit.library
        return {
            "version": self.version,
            "commit": self.commit_id,
            "base": lib.base.model_dump(mode="json"),
            "rank": lib.rank,
            "concepts": [
                {
                    "name": c.name,
                    "token": c.token,
                    "rank": c.rank,
                    "method": c.method,
                    "orthogonal": c.orthogonal,
                    "final_loss": c.final_loss,
                    "created": c.created,
                }
                for c in self.commit.concepts
            ],
            "widths": [g.__dict__ for g in self.groups],
            "bottleneck": {"layer": self.bottleneck, "free": self.bottleneck_free},
            "fits": self.fits,
            "fits_by_policy": self.fits_by_policy,
            "worst_pairs": [{"source": a, "target": b, "crosstalk": x} for a, b, x in self.worst_pairs],
        }


def parse_selection(spec: str | list[str] | dict[str, float]) -> dict[str, float]:
    """``"mydog=0.8,cat"`` or ``["mydog", "cat"]`` -> {name: weight}."""
    if isinstance(spec, dict):
        return dict(spec)
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: dict[str, float] = {}
    for item in (i.strip() for i in items):
        if not item:
            continue
        name, _, weight = item.partition("=")
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise UsageError(f"weight of {name!r} must be a number, not {weight!r}") from None
        if not math.isfinite(value):
            raise UsageError(f"weight of {name!r} must be a finite number, not {weight!r}")
        out[name.strip()] = value
    if not out:
        raise UsageError("no concepts selected; name one or more, e.g. `mydog,cat`")
    return out


class Library:
    """A versioned library of concepts on one base, stored in a ``.seqlib`` folder."""

    def __init__(self, store: Store, at: str | None = None) -> None:
        self.store = store
        self.at = at  # a version, tag or commit to read instead of the branch tip
        self._arrays: dict[str, dict] = {}  # payload id -> arrays; payloads are immutable

    # ---- opening ---------------------------------------------------------------

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
                raise StoreDamagedError(f"{folder}/store.json", "missing")
        return find_store(p) if p.is_dir() else p

    @classmethod
    def open(cls, path: str | Path | None = None, at: str | None = None) -> Library:
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
    ) -> Library:
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
                if staging.is_local:
                    bases.write_embedded(Path(staging.root), source)
                else:
                    with tempfile.TemporaryDirectory() as tmp:
                        bases.write_embedded(Path(tmp), source)
                        staging.upload_base(Path(tmp) / "base")
            pipe = bases.load_pipeline(kind, source, config_dir, staging.local_base_dir(), device)
            record, records = bases.describe(pipe, kind, source, config_dir, layers)
            narrowest = min(records, key=lambda layer: layer.in_features)
            if capacity(narrowest.in_features, rank) < 1:
                raise UsageError(f"--rank {rank} exceeds the width {narrowest.in_features} of {narrowest.name}")
            commit = Commit(
                parent=None,
                message=f"init: {kind} base {source}, rank {rank}, {layers} layers",
                library=LibraryConfig(base=record, rank=rank, layers=records),
                concepts=[],
            )
            staging.commit(commit, expected_seq=0)
        return cls.open(root)

    # ---- reading (no torch) ------------------------------------------------------

    def _pinned(self) -> str | None:
        return self.at or self.store.checked_out()

    @property
    def root(self) -> str | Path:
        """Where the library lives: its .seqlib folder or its URL."""
        return self.store.root

    def tags(self) -> dict[str, str]:
        """Tag name -> commit id."""
        return self.store.tags()

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
        return self.store.resolve(pinned) if pinned else (self.store.head_seq(), self.store.head_id() or "")

    def head(self) -> Commit:
        pinned = self._pinned()
        return self.store.read_commit(self.store.resolve(pinned)[1]) if pinned else self.store.head()

    def _writable(self) -> tuple[int, str | None, Commit]:
        """The tip a change starts from; refused while a read-only version is pinned."""
        pinned = self._pinned()
        if pinned:
            version = self.store.resolve(pinned)[0]
            raise UsageError(
                f"version {version} is checked out read-only; `seqlib checkout main` to change the library"
            )
        return self.store.head_seq(), self.store.head_id(), self.store.head()

    def concept(self, name: str, commit: Commit | None = None) -> ConceptRecord:
        commit = commit or self.head()
        found = commit.concept(name)
        if found is None:
            known = ", ".join(c.name for c in commit.concepts) or "none yet"
            raise ConceptNotFoundError(f"no concept named {name!r} (concepts: {known})")
        return found

    def status(self) -> Status:
        commit = self.head()
        r = commit.library.rank
        used, free = used_dims(commit), free_dims(commit)
        groups: dict[int, list[str]] = {}
        for layer in commit.library.layers:
            groups.setdefault(layer.in_features, []).append(layer.name)
        widths = [
            WidthGroup(
                in_features=m,
                layers=len(names),
                capacity=capacity(m, r),
                used=max(used[n] for n in names),
                free=min(free[n] for n in names),
            )
            for m, names in sorted(groups.items())
        ]
        bottleneck = min(commit.library.layers, key=lambda layer: (free[layer.name], layer.in_features))
        version, commit_id = self.version()
        return Status(
            commit_id=commit_id,
            version=version,
            commit=commit,
            groups=widths,
            bottleneck=bottleneck.name,
            bottleneck_free=free[bottleneck.name],
            fits=concepts_that_fit(commit),
            fits_by_policy={p: concepts_that_fit(commit, policy=p) for p in ("refuse", "shrink", "skip")},
            worst_pairs=crosstalk_pairs(commit)[:5],
        )

    def show(self, name: str) -> dict:
        """Everything recorded about one concept, plus its size on disk and its interferers."""
        commit = self.head()
        concept = self.concept(name, commit)
        pairs = crosstalk_pairs(commit)
        return {
            "concept": concept.model_dump(mode="json"),
            "size_bytes": self.store.payload_size(concept.payload),
            "interfered_by": [{"source": a, "crosstalk": x} for a, b, x in pairs if b == name],
            "interferes_with": [{"target": b, "crosstalk": x} for a, b, x in pairs if a == name],
        }

    def log(self) -> list[tuple[int, str, Commit]]:
        """(version, commit id, commit), newest first."""
        return self.store.log()

    # ---- factors ---------------------------------------------------------------

    def factors(self, concept: ConceptRecord, commit: Commit):
        """(A by layer, B by layer, embedding) of a concept as float32 torch tensors."""
        import torch

        from seqlib import payload

        arrays = self.payload_arrays(concept)
        layers = commit.library.layers
        A = {k: torch.from_numpy(v) for k, v in payload.unpack_coeffs(layers, arrays).items()}
        B = {k: torch.from_numpy(v) for k, v in payload.unpack_bases(layers, arrays).items()}
        return A, B, torch.from_numpy(arrays[payload.EMBEDDING_ARRAY])

    def payload_arrays(self, concept: ConceptRecord) -> dict:
        """A concept's arrays, each checked against the checksum its commit records."""
        from seqlib.errors import ChecksumMismatch
        from seqlib.store import array_sha256

        if concept.payload not in self._arrays:
            try:
                arrays = self.store.read_payload(concept.payload)
            except Exception as e:  # missing or unreadable files: zarr raises many kinds
                where = f"{self.store.root}/objects/payloads/{concept.payload}"
                raise StoreDamagedError(where, f"payload of concept {concept.name!r} unreadable: {e}") from None
            for record in concept.arrays:
                got = array_sha256(arrays[record.name]) if record.name in arrays else "missing"
                if got != record.sha256:
                    raise ChecksumMismatch(f"array {record.name} of concept {concept.name!r}", record.sha256, got)
            self._arrays[concept.payload] = arrays
        return self._arrays[concept.payload]

    def input_summary(self, concept: ConceptRecord, commit: Commit) -> dict:
        """Per layer: (principal input directions (m, k), energies (k,)) as numpy arrays."""
        from seqlib import payload

        return payload.unpack_summary(commit.library.layers, self.payload_arrays(concept))

    def _earlier(self, commit: Commit):
        """Every concept of ``commit`` as the trainer sees it (factors, input directions)."""
        import torch

        from seqlib.train import Earlier

        return [
            Earlier(
                *self.factors(c, commit)[:2],
                orthogonal=c.orthogonal,
                U={k: torch.from_numpy(u) for k, (u, _) in self.input_summary(c, commit).items()},
                protect=c.protect,
            )
            for c in commit.concepts
        ]

    def _load_base(self, commit: Commit, device: str, base: str | None):
        from seqlib.base import load_base

        local = self.store.local_base_dir() if commit.library.base.kind == "embedded" else None
        return load_base(commit.library, local, device, override=base)

    # ---- add -------------------------------------------------------------------

    def add(
        self,
        name: str,
        images: str | Path,
        config: TrainConfig | None = None,
        rank: int | None = None,
        message: str | None = None,
        progress: Callable[[int, int, float], None] | None = None,
        device: str = "cpu",
        base: str | None = None,
        warn: Callable[[str], None] | None = None,
        when_full: str = "shrink",
        resume: bool = False,
    ) -> ConceptRecord:
        """Learn concept ``name`` from a folder of images and commit it. All or nothing.

        ``when_full`` decides what happens on a layer with fewer than r free dimensions:
        ``refuse``, ``shrink`` (train that layer at the rank left) or ``skip`` (leave it out).
        Training state is checkpointed every few rounds; ``resume`` continues an interrupted
        add of the same name, images and settings on the same library version.
        """
        from seqlib import data, distributed, payload
        from seqlib.base import pick_device
        from seqlib.train import TrainConfig, train_concept

        check_concept_name(name)
        pick_device(device)  # an unknown or absent device fails before any work
        device = distributed.device_for(device)
        seq, parent_id, commit = self._writable()
        if commit.concept(name) is not None:
            raise ConceptExistsError(f"concept {name!r} already exists; pick another name")
        lib = commit.library
        r = rank or lib.rank
        config = config or TrainConfig(resolution=lib.base.resolution)
        ranks = [r] * len(lib.layers)
        method = methods.get(config.method)
        if method.projects:  # a method without projection (plain LoRA) takes no capacity
            ranks, short = layer_ranks(commit, r, when_full)
            if short and warn:
                kept = {layer.name: k for layer, k in zip(lib.layers, ranks)}
                shown = ", ".join(f"{n} (rank {kept[n]})" for n in short[:3]) + (" …" if len(short) > 3 else "")
                warn(f"--when-full {when_full}: {len(short)} layers have less than {r} free dimensions: {shown}")

        skipped: list[Path] = []
        files = data.find_images(Path(images), skipped)
        if skipped and warn:
            names = ", ".join(p.name for p in skipped[:5]) + (" …" if len(skipped) > 5 else "")
            warn(f"skipped {len(skipped)} files that are not images: {names}")
        records = data.image_records(files)
        tensor = data.load_images(files, config.resolution)
        augmented = None
        if config.crop == "random" or config.flip:
            augmented = data.load_images(
                files, config.resolution, config.crop, config.flip, config.aug_copies, config.seed
            )
        pipe = self._load_base(commit, device, base)
        distributed.init_from_env(pipe.unet.device.type)
        _prepare_for_training(pipe, config, warn)
        token = token_for(name)
        if token in pipe.tokenizer.get_vocab():
            raise InvalidNameError(f"{token} is already a token of the base's tokenizer; pick another name")
        from dataclasses import replace

        from seqlib.config import resolve_hvp

        config = replace(
            config, hvp=resolve_hvp(config.hvp, pipe.unet.device.type, sum(p.numel() for p in pipe.unet.parameters()))
        )
        earlier = self._earlier(commit)
        frozen = None
        if method.basis == "frozen":  # the next r columns no earlier concept took
            taken = [col for c in commit.concepts for col in (c.frozen_columns or [])]
            start = max(taken) + 1 if taken else 0
            frozen = list(range(start, start + r))
        from seqlib import checkpoint

        meta = {"parent": parent_id, "config": config.record(), "images": [i.sha256 for i in records], "ranks": ranks}
        state = None
        if not resume and warn and checkpoint.exists(self.store, name):
            warn(
                f"an interrupted add of {name!r} was found; this run starts over and replaces it "
                "(Ctrl-C now and add --resume to continue it instead)"
            )
        if resume:
            saved = checkpoint.load(self.store, name)
            if saved is None:
                raise UsageError(f"no interrupted add of {name!r} to resume; run it without --resume")
            state, saved_meta = saved
            for key, what in (
                ("parent", "the library changed since"),
                ("images", "the images changed"),
                ("config", "the settings differ"),
                ("ranks", "the free capacity changed"),
            ):
                if saved_meta[key] != meta[key]:
                    raise UsageError(f"cannot resume {name!r}: {what}; run it again without --resume")
        result = train_concept(
            pipe,
            lib.layer_names,
            earlier,
            tensor,
            token,
            ranks,
            config,
            progress,
            frozen,
            augmented,
            resume=state,
            checkpoint=lambda s: checkpoint.save(self.store, name, s, meta),
        )
        arrays = payload.pack(lib.layers, result.A, result.B, result.embedding, result.U, result.energies)
        # every process must hold the same factors: the gradients were averaged before each step
        if not distributed.same_everywhere(payload.digest(arrays)):
            raise EnvironmentProblem("the training processes ended with different factors; nothing was committed")
        crosstalk_from, crosstalk_onto = self._crosstalk_with_earlier(commit, result)
        if distributed.is_main():
            payload_id, array_records = self.store.write_payload(arrays, {"concept": name, "rank": r})
        else:
            payload_id, array_records = self.store.describe_payload(arrays)
        concept = ConceptRecord(
            name=name,
            token=token,
            rank=r,
            ranks=None if all(k == r for k in ranks) else ranks,
            orthogonal=method.projects,
            frozen_columns=frozen,
            payload=payload_id,
            arrays=array_records,
            images=records,
            training=TrainingRecord(**config.record()),
            reserved=result.reserved,
            crosstalk_from=crosstalk_from,
            crosstalk_onto=crosstalk_onto,
            initial_loss=result.initial_loss,
            final_loss=result.final_loss,
            train_seconds=round(result.seconds, 3),
            created=now_iso(),
        )
        new = Commit(
            parent=parent_id,
            message=f"add {name}" + (f": {message}" if message else ""),
            library=lib,
            concepts=[*commit.concepts, concept],
        )
        error: SeqlibError | None = None
        if distributed.is_main():
            try:
                self.store.commit(new, expected_seq=seq)
                checkpoint.clear(self.store, name)
            except SeqlibError as e:
                error = e
        message = distributed.from_main(str(error) if error else None)  # every process reports the outcome
        if error:
            raise error
        if message:
            raise SeqlibError(message)
        return concept

    def _crosstalk_with_earlier(self, commit: Commit, result) -> tuple[dict[str, float], dict[str, float]]:
        """Crosstalk between a freshly trained concept and each earlier one, both directions."""
        from seqlib.activations import crosstalk

        names = commit.library.layer_names
        new = (result.A, result.B)
        new_summary = {n: (result.U[n], result.energies[n]) for n in names}
        onto_new, from_new = {}, {}
        for c in commit.concepts:
            A, B, _ = self.factors(c, commit)
            old = ({k: v.numpy() for k, v in A.items()}, {k: v.numpy() for k, v in B.items()})
            onto_new[c.name] = round(crosstalk(names, old, new, new_summary)[0], 6)
            from_new[c.name] = round(crosstalk(names, new, old, self.input_summary(c, commit))[0], 6)
        return onto_new, from_new

    # ---- export and import -----------------------------------------------------

    def export(self, selection, out: str | Path, fmt: str = "kohya") -> list[Path]:
        """One LoRA file of rank Σr for the selected concepts (with weights), a sidecar, and
        their token embeddings as textual-inversion files. Returns the paths written."""
        from seqlib.export import stack_factors, write_export

        weights = parse_selection(selection)
        commit = self.head()
        chosen = [(self.concept(n, commit), w) for n, w in weights.items()]
        loaded = [(self.factors(c, commit), w) for c, w in chosen]
        version, commit_id = self.version()
        meta = {
            "concepts": weights,
            "store_version": version,
            "commit": commit_id,
            "base": commit.library.base.source,
            "base_fingerprint": commit.library.base.fingerprint,
        }
        return write_export(
            Path(out),
            fmt,
            stack_factors([(A, B, w) for (A, B, _), w in loaded]),
            {c.token: f[2] for (c, _), (f, _) in zip(chosen, loaded)},
            meta,
        )

    def import_lora(
        self,
        name: str,
        path: str | Path,
        rank: int | None = None,
        init_word: str = "thing",
        max_error: float = 0.5,
        force: bool = False,
        device: str = "cpu",
    ) -> tuple[ConceptRecord, dict[str, float]]:
        """Adopt a foreign LoRA: project its basis onto the free space, refit its coefficients.

        Per layer, with ΔW the LoRA's residual and P⊥ the projector onto what earlier concepts
        left free, B = the top-r right singular vectors of ΔW P⊥ and A = ΔW B: the rank-r
        residual A Bᵀ with B in the free space closest to ΔW (Eckart–Young). Returns the record
        and the relative error ‖ΔW − A Bᵀ‖ / ‖ΔW‖ per layer (and "overall").
        """
        import hashlib

        import numpy as np
        import torch

        from seqlib import payload
        from seqlib.errors import ImportRejectedError
        from seqlib.export import from_lora_file
        from seqlib.format import ImportRecord
        from seqlib.subspace import fit_factors_in_free_space, random_basis
        from seqlib.train import _init_token, taken_space

        check_concept_name(name)
        seq, parent_id, commit = self._writable()
        if commit.concept(name) is not None:
            raise ConceptExistsError(f"concept {name!r} already exists; pick another name")
        lib, r = commit.library, rank or commit.library.rank
        path = Path(path)
        fmt, deltas = from_lora_file(path, {x.name: (x.out_features, x.in_features) for x in lib.layers})
        earlier = self._earlier(commit)
        gen = torch.Generator().manual_seed(0)
        A, B, errors, num, den = {}, {}, {}, 0.0, 0.0
        free = free_dims(commit)
        full = [layer.name for layer in lib.layers if free[layer.name] < r]
        if full:
            raise CapacityError(full, r, free)
        for layer in lib.layers:
            Q, _ = taken_space(layer.name, layer.in_features, earlier, 0)
            up, down = deltas.get(layer.name, (None, None))
            if up is None or not torch.any(up) or not torch.any(down):  # untouched: zero residual, free basis
                B[layer.name] = random_basis(layer.in_features, r, Q, gen).float().numpy()
                A[layer.name] = np.zeros((layer.out_features, r), np.float32)
                continue
            # in factor space: no n x m matrix is formed (SD1.5's 1280-wide layers cost an SVD each)
            a, b, relative, norm2 = fit_factors_in_free_space(up, down, Q, r, gen)
            errors[layer.name] = relative
            num, den = num + relative**2 * norm2, den + norm2
            A[layer.name], B[layer.name] = a.float().numpy(), b.float().numpy()
        errors["overall"] = (num / den) ** 0.5 if den else 0.0
        if errors["overall"] > max_error and not force:
            raise ImportRejectedError(
                f"{path.name} fits the free space only with relative error {errors['overall']:.2f} "
                f"(> {max_error}); use a larger --rank, or --force to import anyway"
            )
        pipe = self._load_base(commit, device, None)
        token = token_for(name)
        embedding, hook = _init_token(pipe, token, init_word)
        hook.remove()
        zeros_u = {layer.name: np.zeros((layer.in_features, 8), np.float32) for layer in lib.layers}
        zeros_s = {layer.name: np.zeros(8, np.float32) for layer in lib.layers}
        arrays = payload.pack(lib.layers, A, B, embedding.cpu().numpy(), zeros_u, zeros_s)
        payload_id, array_records = self.store.write_payload(arrays, {"concept": name, "rank": r})
        concept = ConceptRecord(
            name=name,
            token=token,
            rank=r,
            orthogonal=True,
            payload=payload_id,
            arrays=array_records,
            images=[],
            training=None,
            imported=ImportRecord(
                file=path.name,
                sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                format=fmt,
                relative_error=round(errors["overall"], 6),
            ),
            reserved=[0] * len(lib.layers),
            crosstalk_from={},
            crosstalk_onto={},
            initial_loss=None,  # imported: never trained here (not NaN, which JSON cannot hold)
            final_loss=None,
            train_seconds=0.0,
            created=now_iso(),
        )
        new = Commit(
            parent=parent_id,
            message=f"import {name} from {path.name}",
            library=lib,
            concepts=[*commit.concepts, concept],
        )
        self.store.commit(new, expected_seq=seq)
        return concept, errors

    # ---- history verbs ---------------------------------------------------------

    def rm(self, name: str, message: str | None = None) -> Commit:
        """Remove a concept from the current version; its subspace returns to free capacity.

        Later concepts stay valid: they were trained orthogonal to it, and still are to
        everything that remains. Earlier versions keep it.
        """
        seq, parent_id, commit = self._writable()
        self.concept(name, commit)
        new = Commit(
            parent=parent_id,
            message=f"rm {name}" + (f": {message}" if message else ""),
            library=commit.library,
            concepts=[c for c in commit.concepts if c.name != name],
        )
        self.store.commit(new, expected_seq=seq)
        return new

    def revert(self, ref: str, message: str | None = None) -> Commit:
        """A new commit whose state is that of version ``ref`` (history is kept)."""
        seq, parent_id, _ = self._writable()
        version, commit_id = self.store.resolve(ref)
        old = self.store.read_commit(commit_id)
        new = Commit(
            parent=parent_id,
            message=f"revert to version {version}" + (f": {message}" if message else ""),
            library=old.library,
            concepts=old.concepts,
        )
        self.store.commit(new, expected_seq=seq)
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

    def verify(self, check_base: bool = True) -> dict:
        """Recompute everything the format promises; ``problems`` lists each violation."""
        from seqlib.verify import verify_library

        return verify_library(self, check_base=check_base)

    # ---- compose ---------------------------------------------------------------

    def pipeline(self, selection, device: str = "cpu", base: str | None = None):
        """A standard diffusers StableDiffusionPipeline with the selected concepts applied.

        Composition is a plain sum: W = W0 + Σ w_i A_i B_iᵀ, patched into the weights.
        """
        from seqlib.lora import WeightPatch, summed_deltas

        pipe, factors = self._with_tokens(parse_selection(selection), self.head(), device, base)
        WeightPatch(pipe.unet).apply(summed_deltas(factors))
        return pipe

    def _with_tokens(self, weights: dict[str, float], commit: Commit, device: str, base: str | None):
        """The bare base with the selected concepts' tokens registered, and their (A, B, weight)."""
        from seqlib.train import add_tokens

        chosen = [(self.concept(n, commit), w) for n, w in weights.items()]
        pipe = self._load_base(commit, device, base)
        loaded = [(c, self.factors(c, commit), w) for c, w in chosen]
        add_tokens(pipe, {c.token: embedding for c, (_, _, embedding), _ in loaded})
        return pipe, [(A, B, w) for _, (A, B, _), w in loaded]

    def compose(
        self,
        selection,
        prompt: str,
        out: str | Path = "out",
        seed: int = 0,
        num_images: int = 1,
        steps: int = 20,
        guidance: float = 7.5,
        negative_prompt: str | None = None,
        size: int | None = None,
        device: str = "cpu",
        base: str | None = None,
        warn: Callable[[str], None] | None = None,
        scheduler: str | None = None,
        grid: bool = False,
        layout: str = "sum",
    ) -> list[Path]:
        """Render the selected concepts together; returns the PNG paths written.

        ``layout="sum"``: one image from one prompt with every residual summed into the weights.
        ``layout="row"``: a row of square tiles, one per concept in selection order, tile i
        denoised with only concept i's residual and the i-th of the ``" | "``-separated prompts
        (``seqlib.compose``). Every PNG carries its generation parameters in text chunks
        (``seqlib`` as JSON, and ``parameters`` in the AUTOMATIC1111 style). ``grid`` adds a
        contact sheet. ``warn`` receives a message for each selected pair whose recorded
        crosstalk is high (sum only: a row never adds two residuals).
        """
        import torch
        from PIL.PngImagePlugin import PngInfo

        from seqlib.compose import Tile, sample_row

        weights = parse_selection(selection)
        commit = self.head()
        for name in weights:
            self.concept(name, commit)
        if layout not in ("sum", "row"):
            raise UsageError(f"unknown layout {layout!r}; use sum or row")
        tile_prompts = _row_prompts(prompt, weights, commit) if layout == "row" else None
        if tile_prompts is None:
            _check_prompt(prompt, weights, commit)
        if warn is not None and layout == "sum":
            loose = [n for n in weights if not commit.concept(n).orthogonal]
            if loose and len(weights) > 1:
                warn(
                    f"{', '.join(token_for(n) for n in loose)} trained without projection (plain LoRA): "
                    "composed with others it shares their subspaces and may bleed into them"
                )
            for a, b, x in crosstalk_pairs(commit):
                if a in weights and b in weights and x > CROSSTALK_WARN:
                    warn(
                        f"<{a}> interferes with <{b}> (crosstalk {x:.2f} > {CROSSTALK_WARN}): "
                        f"<{b}> may not look like itself in this composition"
                    )
        size = size or commit.library.base.resolution
        if size % 8:  # diffusers' pipelines need it; every SD VAE's factor divides 8
            raise UsageError(f"--size {size}: must be a multiple of 8, e.g. {max(8, size // 8 * 8)}")
        if not math.isfinite(guidance):
            raise UsageError(f"--guidance must be a finite number, not {guidance}")
        from seqlib.base import pick_device

        pick_device(device)
        if tile_prompts is None:
            pipe = self.pipeline(weights, device, base)

            def render(generator):
                return pipe(
                    prompt,
                    negative_prompt=negative_prompt,
                    num_inference_steps=steps,
                    guidance_scale=guidance,
                    height=size,
                    width=size,
                    generator=generator,
                ).images[0]
        else:
            pipe, factors = self._with_tokens(weights, commit, device, base)
            at = pipe.unet.device
            tiles = [
                Tile(tile_prompt, {n: ((w * A[n]).to(at), B[n].to(at)) for n in A})
                for tile_prompt, (A, B, w) in zip(tile_prompts, factors)
            ]

            def render(generator):
                return sample_row(pipe, tiles, size, steps, guidance, generator, negative_prompt)

        if scheduler is not None:
            pipe.scheduler = make_scheduler(scheduler, pipe.scheduler.config)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        version, commit_id = self.version()
        paths, images = [], []
        for k in range(num_images):
            image = render(torch.Generator(device="cpu").manual_seed(seed + k))
            params = {
                "prompt": prompt,
                "layout": layout,
                "negative_prompt": negative_prompt,
                "seed": seed + k,
                "steps": steps,
                "guidance": guidance,
                "size": size,
                "scheduler": type(pipe.scheduler).__name__,
                "concepts": weights,
                "store_version": version,
                "commit": commit_id,
                "base": commit.library.base.source,
                "base_fingerprint": commit.library.base.fingerprint,
            }
            info = PngInfo()
            info.add_text("seqlib", json.dumps(params, sort_keys=True))
            info.add_text("parameters", _a1111_parameters(params))
            path = out / f"{'+'.join(weights)}-seed{seed + k}.png"
            image.save(path, pnginfo=info)
            paths.append(path)
            images.append(image)
        if grid:
            paths.append(_contact_sheet(images, out / f"{'+'.join(weights)}-seed{seed}-grid.png"))
        return paths


SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "ddpm": "DDPMScheduler",
}


def make_scheduler(name: str, config):
    import diffusers

    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}; choose from {', '.join(SCHEDULERS)}")
    return getattr(diffusers, SCHEDULERS[name]).from_config(config)


def _a1111_parameters(p: dict) -> str:
    concepts = ", ".join(f"{n}:{w:g}" for n, w in p["concepts"].items())
    lines = [p["prompt"]]
    if p["negative_prompt"]:
        lines.append(f"Negative prompt: {p['negative_prompt']}")
    lines.append(
        f"Steps: {p['steps']}, Sampler: {p['scheduler']}, CFG scale: {p['guidance']}, Seed: {p['seed']}, "
        f"Size: {p['size']}x{p['size']}, Model hash: {p['base_fingerprint'][:10]}, "
        f"seqlib concepts: {concepts}, seqlib version: {p['store_version']}"
    )
    return "\n".join(lines)


def _contact_sheet(images: list, path: Path) -> Path:
    import math

    from PIL import Image

    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    sheet = Image.new("RGB", (cols * w, rows * h), "white")
    for i, im in enumerate(images):
        sheet.paste(im, ((i % cols) * w, (i // cols) * h))
    sheet.save(path)
    return path


def _prepare_for_training(pipe, config: TrainConfig, warn: Callable[[str], None] | None) -> None:
    """Precision, gradient checkpointing, and an honest warning for big bases on a CPU."""
    import torch

    device = pipe.unet.device.type
    if config.precision != "fp32":
        if config.precision == "fp16" and device == "cpu":
            raise UsageError("--precision fp16 needs a GPU; on a CPU use bf16 or fp32")
        dtype = torch.float16 if config.precision == "fp16" else torch.bfloat16
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.to(dtype)  # the frozen base only: LoRA factors and their updates stay fp32
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    params = sum(p.numel() for p in pipe.unet.parameters())
    if device == "cpu" and params > 100_000_000 and warn:
        # measured: one SD1.5 forward+backward at 512 px takes ~20 s on 2 CPU cores
        passes = config.K * (1 + config.S_B * (4 if config.hvp == "autograd" else 3) + config.S_A)
        seconds = config.steps * passes * 20 * (config.resolution / 512) ** 2 * config.batch_size / 4 * params / 860e6
        warn(
            f"training a {params / 1e6:.0f}M-parameter UNet on the CPU: about {seconds / 3600:.1f} h "
            "(use --device cuda on a GPU machine)"
        )


def _mentioned(prompt: str) -> set[str]:
    """Concept names a prompt mentions by token (``<name>``)."""
    return set(re.findall(r"<([^<>\s]+)>", prompt))


def _row_prompts(prompt: str, weights: dict[str, float], commit: Commit) -> list[str]:
    """One prompt per tile, each mentioning its own concept and no other."""
    prompts = [p.strip() for p in prompt.split("|")]
    if len(prompts) != len(weights):
        example = " | ".join(f"a photo of {token_for(n)}" for n in weights)
        raise UsageError(
            f"--layout row needs one prompt per concept, separated by '|': {len(weights)} concepts, "
            f'{len(prompts)} prompt{"s" if len(prompts) != 1 else ""} (e.g. "{example}")'
        )
    for i, (name, tile_prompt) in enumerate(zip(weights, prompts), 1):
        mentioned = _mentioned(tile_prompt) & {c.name for c in commit.concepts}
        if mentioned != {name}:
            raise UsageError(
                f"tile {i} is {token_for(name)}'s: its prompt must mention {token_for(name)} and no other concept "
                f"(it has {tile_prompt!r})"
            )
    return prompts


def _check_prompt(prompt: str, weights: dict[str, float], commit: Commit) -> None:
    mentioned = _mentioned(prompt)
    selected = set(weights)
    if not mentioned & selected:
        tokens = " ".join(token_for(n) for n in weights)
        raise UsageError(f"the prompt mentions none of the selected concepts; use their tokens: {tokens}")
    known = {c.name for c in commit.concepts}
    unselected = sorted((mentioned & known) - selected)
    if unselected:
        raise UsageError(
            f"the prompt mentions {', '.join(token_for(n) for n in unselected)} but the selection "
            f"does not include {'it' if len(unselected) == 1 else 'them'}; add to the selection"
        )
