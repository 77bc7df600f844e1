"""What users say about their library without retraining: concept notes and recipes.

Both are history (a commit each) and neither touches a tensor: ``annotate`` replaces one
concept record's ``notes`` (same payload, same identifier), a recipe is a named composition
with its sampling settings, replayed exactly by ``compose @name``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

from seqlib.errors import UsageError
from seqlib.format import Notes, Recipe, check_concept_name, now_iso
from seqlib.selection import check_request, weights_for

if TYPE_CHECKING:
    from seqlib.format import ConceptRecord
    from seqlib.repo import Repository


def annotate(
    lib: Repository,
    name: str,
    description: str | None = None,
    trigger: str | None = None,
    weight: float | None = None,
    tags: list[str] | None = None,
    message: str | None = None,
) -> ConceptRecord:
    """Set a concept's description, trigger words, preferred weight or tags (None: keep) in a
    new commit that changes nothing else."""
    if weight is not None and not math.isfinite(weight):
        raise UsageError(f"--weight must be a finite number, not {weight}")
    changes = {"description": description, "trigger": trigger, "weight": weight, "tags": tags}

    def new_notes(concept: ConceptRecord) -> dict:
        old = concept.notes or Notes()
        notes = Notes(**(old.model_dump() | {k: v for k, v in changes.items() if v is not None}))
        if notes == old:
            raise UsageError(f"nothing to change on {name!r}: give --description, --trigger, --weight or --tags")
        return {"notes": notes}

    return _update_concept(lib, name, f"annotate {name}" + (f": {message}" if message else ""), new_notes)


def set_preview(lib: Repository, name: str, png: bytes) -> ConceptRecord:
    """Store ``png`` as the concept's preview in a new commit (nothing else changes)."""
    return _update_concept(lib, name, f"preview {name}", lambda _: {"preview": lib.store.write_preview(png)})


def _update_concept(lib: Repository, name: str, message: str, update: Callable[[ConceptRecord], dict]) -> ConceptRecord:
    """Commit the tip with concept ``name``'s record changed by ``update(record)`` (fields -> values)."""
    tip = lib.writable_tip()
    concept = lib.concept(name, tip.version)
    updated = concept.model_copy(update=update(concept))
    lib.commit_state(tip, message, concepts=[updated if c.name == name else c for c in tip.version.concepts])
    return updated


def save_recipe(
    lib: Repository,
    name: str,
    selection,
    prompt: str,
    seed: int = 0,
    num_images: int = 1,
    steps: int = 20,
    guidance: float = 7.5,
    negative_prompt: str | None = None,
    size: int | None = None,
    scheduler: str | None = None,
    layout: str = "sum",
    replace: bool = False,
) -> Recipe:
    """Record a named composition: concepts with weights (a concept's preferred weight where
    none is given, fixed now) and the sampling settings, checked as ``compose`` checks them."""
    check_concept_name(name, "recipe")
    tip = lib.writable_tip()
    commit = tip.version
    if name in commit.recipes and not replace:
        raise UsageError(f"recipe {name!r} already exists; `seqlib recipe rm {name}` first, or --replace")
    weights = weights_for(selection, commit)
    for concept in weights:
        lib.concept(concept, commit)
    check_request(prompt, weights, commit, layout, size or commit.library.base.resolution, guidance)
    recipe = Recipe(
        concepts=list(weights.items()),
        prompt=prompt,
        negative_prompt=negative_prompt,
        seed=seed,
        num_images=num_images,
        steps=steps,
        guidance=guidance,
        size=size,
        scheduler=scheduler,
        layout=layout,
        created=now_iso(),
    )
    recipes = {**commit.recipes, name: recipe}
    lib.commit_state(tip, f"recipe save {name}", recipes=recipes)
    return recipe


def remove_recipe(lib: Repository, name: str) -> None:
    tip = lib.writable_tip()
    recipe(tip.version, name)
    lib.commit_state(tip, f"recipe rm {name}", recipes={k: v for k, v in tip.version.recipes.items() if k != name})


def recipe(commit, name: str) -> Recipe:
    """A recipe of ``commit`` whose concepts all still exist."""
    found = commit.recipes.get(name)
    if found is None:
        known = ", ".join(commit.recipes) or "none yet"
        raise UsageError(f"no recipe named {name!r} (recipes: {known})")
    gone = [c for c in found.weights if commit.concept(c) is None]
    if gone:
        raise UsageError(f"recipe {name!r} uses concepts no longer in the library: {', '.join(gone)}")
    return found
