"""`add`: learn a concept from a folder of images and commit it, all or nothing.

The steps: claim the name on a writable tip, plan each layer's rank against free capacity,
load the images, load the base and prepare it, resume a checkpoint if asked, train
(``seqlib.train``), measure crosstalk with every earlier concept, write the payload, and move
the ref with compare-and-swap. ``begin`` and ``append`` are shared with ``seqlib.adopt``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from seqlib import methods
from seqlib.capacity import layer_ranks
from seqlib.crosstalk import record_fields
from seqlib.errors import ConceptExistsError, EnvironmentProblem, InvalidNameError, SeqlibError, UsageError
from seqlib.format import ConceptRecord, Crosstalk, TrainingRecord, Version, check_concept_name, now_iso, token_for

if TYPE_CHECKING:
    from seqlib.config import TrainConfig
    from seqlib.repo import Repository
    from seqlib.store import Snapshot

Warn = Callable[[str], None] | None


def begin(lib: Repository, name: str) -> Snapshot:
    """The tip a new concept ``name`` will be committed on top of."""
    check_concept_name(name)
    tip = lib.writable_tip()
    if tip.version.concept(name) is not None:
        raise ConceptExistsError(f"concept {name!r} already exists; pick another name")
    return tip


def append(lib: Repository, tip: Snapshot, concept: ConceptRecord, message: str) -> None:
    """Commit ``tip`` plus ``concept``; fails if the library moved since ``begin``."""
    lib.commit_state(tip, message, concepts=[*tip.version.concepts, concept])


def earlier_concepts(lib: Repository, commit: Version, bases_only: bool = False) -> list:
    """Every concept of ``commit`` as the trainer sees it (``seqlib.train.Earlier``: factors,
    input directions, its --protect). ``bases_only``: what a projection needs (B, and the input
    directions only if some concept reserved them with --protect), reading nothing else."""
    import torch

    from seqlib import payload
    from seqlib.train import Earlier

    inputs = not bases_only or any(c.protect for c in commit.concepts)
    lib.prefetch(commit.concepts, payload.basis_arrays(commit.library.layers) if bases_only and not inputs else None)
    return [
        Earlier(
            {} if bases_only else lib.factors(c, commit)[0],
            lib.basis(c, commit) if bases_only else lib.factors(c, commit)[1],
            orthogonal=c.orthogonal,
            U={k: torch.from_numpy(u) for k, (u, _) in lib.input_summary(c, commit).items()} if inputs else None,
            protect=c.protect,
            kv_scope=c.kv_scope,
        )
        for c in commit.concepts
    ]


def add(
    lib: Repository,
    name: str,
    images: str | Path,
    config: TrainConfig | None = None,
    rank: int | None = None,
    message: str | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    device: str = "cpu",
    base: str | None = None,
    warn: Warn = None,
    when_full: str = "shrink",
    resume: bool = False,
    preview: bool = True,
) -> ConceptRecord:
    """Learn concept ``name`` from a folder of images and commit it. All or nothing.

    ``when_full`` decides what happens on a layer with fewer than r free dimensions:
    ``refuse``, ``shrink`` (train that layer at the rank left) or ``skip`` (leave it out).
    Training state is checkpointed every few rounds; ``resume`` continues an interrupted
    add of the same name, images and settings on the same library version. ``preview``
    renders the concept alone (``render.preview_png``) into the store with it.
    """
    from seqlib import checkpoint, distributed
    from seqlib.base import pick_device
    from seqlib.config import TrainConfig, resolve_kv_scope
    from seqlib.train import prepare, train_concept

    check_concept_name(name)
    pick_device(device)  # an unknown or absent device fails before any work
    device = distributed.device_for(device)
    tip = begin(lib, name)
    commit = tip.version
    lib.store.check_writable()
    r = rank or commit.library.rank
    config = config or TrainConfig(resolution=commit.library.base.resolution)
    config = replace(config, kv_scope=resolve_kv_scope(config.kv_scope, commit.library.layer_names))
    method = methods.get(config.method)
    ranks = plan_ranks(commit, r, when_full, warn, method.projects)
    records, tensor, augmented = _images(Path(images), config, warn)
    pipe = lib.load_base(commit, device, base)
    distributed.init_from_env(pipe.unet.device.type)
    config = prepare(pipe, config, warn)
    token = token_for(name)
    if warn and config.init_word != TrainConfig.init_word:  # the default is neutral on purpose
        _warn_unknown_words(commit.library.base.source, pipe.tokenizer, config.init_word, token, warn)
    if token in pipe.tokenizer.get_vocab():
        raise InvalidNameError(f"{token} is already a token of the base's tokenizer; pick another name")
    frozen = _frozen_columns(commit, r) if method.basis == "frozen" else None
    meta = {"parent": tip.id, "config": config.record(), "images": [i.sha256 for i in records], "ranks": ranks}
    state = _resume_state(lib, name, meta, warn) if resume else _fresh_start(lib, name, warn)
    result = train_concept(
        pipe,
        commit.library.layer_names,
        earlier_concepts(lib, commit),
        tensor,
        token,
        ranks,
        config,
        progress,
        frozen,
        augmented,
        resume=state,
        checkpoint=lambda s: checkpoint.save(lib.store, name, s, meta),
        reserve=lib.reserve_directions(commit),
    )
    concept = _record(lib, commit, name, r, ranks, method, frozen, records, config, result)
    if preview and distributed.is_main():
        try:
            concept = with_preview(lib, commit, concept, (result.A, result.B, result.embedding), device)
        except (SeqlibError, RuntimeError) as e:  # e.g. out of memory: never lose the training for it
            if warn:
                warn(f"no preview ({str(e).splitlines()[0]}); render one later with `seqlib preview {name} --save`")
    _commit_everywhere(lib, tip, concept, f"add {name}" + (f": {message}" if message else ""))
    return concept


def _warn_unknown_words(base_source: str, tokenizer, words: str, token: str, warn) -> None:
    """Warn about a word of ``--init-word`` the base has no meaning for: for an embedded base, one
    its pretraining captions never used; for others, one its tokenizer splits into pieces."""
    from seqlib import world, world_lab
    from seqlib.embedded import EMBEDDED_BASE_ID, LAB_BASE_ID

    captions = {EMBEDDED_BASE_ID: world.VOCABULARY, LAB_BASE_ID: world_lab.VOCABULARY}.get(base_source)
    if captions is not None:
        unknown = [w for w in words.split() if w.lower() not in captions]
    else:
        unknown = [w for w in words.split() if len(tokenizer(w, add_special_tokens=False).input_ids) > 1]
    if unknown:
        warn(
            f"the base never learned the word {unknown[0]!r} (--init-word): {token} starts from an "
            "embedding with no meaning to it; use a word from its captions, or leave the default"
        )


def plan_ranks(commit: Version, r: int, when_full: str, warn: Warn, projects: bool = True) -> list[int]:
    """Each layer's rank; a concept without projection (plain LoRA) takes no capacity."""
    narrowest = min(commit.library.layers, key=lambda layer: layer.in_features)
    if r > narrowest.in_features // 2:  # --when-full shrink would hand it (almost) every free dimension
        raise UsageError(
            f"--rank {r} is more than half the width {narrowest.in_features} of {narrowest.name}: one concept "
            f"would take most of the library's room; use a rank up to {narrowest.in_features // 2} "
            f"(the library's is {commit.library.rank})"
        )
    ranks = [r] * len(commit.library.layers)
    if projects:
        ranks, short = layer_ranks(commit, r, when_full)
        if short and warn:
            kept = {layer.name: k for layer, k in zip(commit.library.layers, ranks)}
            shown = ", ".join(f"{n} (rank {kept[n]})" for n in short[:3]) + (" …" if len(short) > 3 else "")
            warn(f"--when-full {when_full}: {len(short)} layers have less than {r} free dimensions: {shown}")
    return ranks


def _images(folder: Path, config: TrainConfig, warn: Warn):
    """(image records, the images as a tensor, augmented views or None)."""
    from seqlib import data

    skipped: list[Path] = []
    files = data.find_images(folder, skipped)
    if skipped and warn:
        names = ", ".join(p.name for p in skipped[:5]) + (" …" if len(skipped) > 5 else "")
        warn(f"skipped {len(skipped)} files that are not images: {names}")
    records = data.image_records(files)
    for message in data.photo_warnings(files, config.resolution) if warn else []:
        warn(message)
    tensor = data.load_images(files, config.resolution)
    augmented = None
    if config.crop == "random" or config.flip:
        augmented = data.load_images(files, config.resolution, config.crop, config.flip, config.aug_copies, config.seed)
    return records, tensor, augmented


def _frozen_columns(commit: Version, r: int) -> list[int]:
    """frozen-basis: the next r columns of the shared matrix that no earlier concept took."""
    taken = [col for c in commit.concepts for col in (c.frozen_columns or [])]
    start = max(taken) + 1 if taken else 0
    return list(range(start, start + r))


def _fresh_start(lib: Repository, name: str, warn: Warn) -> None:
    from seqlib import checkpoint

    if warn and checkpoint.exists(lib.store, name):
        warn(
            f"an interrupted add of {name!r} was found; this run starts over and replaces it "
            "(Ctrl-C now and add --resume to continue it instead)"
        )


def _resume_state(lib: Repository, name: str, meta: dict, warn: Warn) -> dict:
    """The checkpointed training state of an interrupted add with exactly these inputs."""
    from seqlib import checkpoint

    saved = checkpoint.load(lib.store, name)
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
    return state


def _record(lib: Repository, commit: Version, name, r, ranks, method, frozen, records, config, result) -> ConceptRecord:
    """Write the payload (main process only) and describe the concept for its commit."""
    from seqlib import distributed, payload
    from seqlib.export import concept_hash

    arrays = payload.pack(commit.library.layers, result.A, result.B, result.embedding, result.U, result.energies)
    # every process must hold the same factors: the gradients were averaged before each step
    if not distributed.same_everywhere(payload.digest(arrays)):
        raise EnvironmentProblem("the training processes ended with different factors; nothing was committed")
    crosstalk_from, crosstalk_onto = crosstalk_with_earlier(lib, commit, result, config.kv_scope)
    values = Crosstalk(crosstalk_from=crosstalk_from, crosstalk_onto=crosstalk_onto)
    lib.store.keep(values)  # written with the commit
    if distributed.is_main():
        payload_id, array_records = lib.store.write_payload(arrays, {"concept": name, "rank": r})
    else:
        payload_id, array_records = lib.store.describe_payload(arrays)
    return ConceptRecord(
        name=name,
        token=token_for(name),
        rank=r,
        ranks=None if all(k == r for k in ranks) else ranks,
        orthogonal=method.projects,
        frozen_columns=frozen,
        payload=payload_id,
        arrays=array_records,
        images=records,
        training=TrainingRecord(**config.record()),
        reserved=result.reserved,
        **record_fields(name, values),
        initial_loss=result.initial_loss,
        final_loss=result.final_loss,
        train_seconds=round(result.seconds, 3),
        created=now_iso(),
        tensor_sha256=concept_hash(commit.library.layers, arrays),
        loss_curve=loss_curve(result.losses),
    )


def with_preview(lib: Repository, commit: Version, concept: ConceptRecord, factors, device: str) -> ConceptRecord:
    """The record with a freshly rendered preview stored and referenced."""
    import torch

    from seqlib.render import preview_png

    A, B, embedding = factors
    as_torch = [{k: torch.as_tensor(v) for k, v in f.items()} for f in (A, B)]
    png = preview_png(lib, commit, concept.token, (*as_torch, embedding), device, concept.kv_scope)
    return concept.model_copy(update={"preview": lib.store.write_preview(png)})


def loss_curve(losses: list[float], points: int = 100) -> list[float]:
    """The per-round losses averaged into at most ``points`` consecutive buckets (5 digits)."""
    if not losses:
        return []
    size = -(-len(losses) // points)  # ceil: every bucket but the last holds `size` rounds
    return [float(f"{sum(b) / len(b):.5g}") for b in (losses[i : i + size] for i in range(0, len(losses), size))]


def _commit_everywhere(lib: Repository, tip: Snapshot, concept: ConceptRecord, message: str) -> None:
    """The main process commits and drops the checkpoint; every process reports the outcome."""
    from seqlib import checkpoint, distributed

    error: SeqlibError | None = None
    if distributed.is_main():
        try:
            append(lib, tip, concept, message)
            checkpoint.clear(lib.store, concept.name)
        except SeqlibError as e:
            error = e
    relayed = distributed.from_main(str(error) if error else None)
    if error:
        raise error
    if relayed:
        raise SeqlibError(relayed)


def crosstalk_with_earlier(
    lib: Repository, commit: Version, result, kv_scope: str = "all"
) -> tuple[dict[str, float], dict[str, float]]:
    """Crosstalk between a freshly trained concept and each earlier one, both directions."""
    from seqlib.activations import crosstalk, silent_layers

    names = commit.library.layer_names
    new = (result.A, result.B)
    new_summary = {n: (result.U[n], result.energies[n]) for n in names}
    onto_new, from_new = {}, {}
    for c in commit.concepts:
        A, B, _ = lib.factors(c, commit)
        old = ({k: v.numpy() for k, v in A.items()}, {k: v.numpy() for k, v in B.items()})
        onto_new[c.name] = round(crosstalk(names, old, new, new_summary, silent_layers(names, c.kv_scope))[0], 6)
        mine = silent_layers(names, kv_scope)
        from_new[c.name] = round(crosstalk(names, new, old, lib.input_summary(c, commit), mine)[0], 6)
    return onto_new, from_new
