"""The Python API: one method per CLI verb. ``seqlib.cli`` only parses and renders.

    >>> lib = Library.init("photos/.seqlib")            # embedded default base
    >>> lib.add("mydog", "photos/dog")                   # learns <mydog>
    >>> lib.compose(["mydog"], "a photo of <mydog>", out="out/")

``Library`` is the repository (``seqlib.repo``: reading, committing, the history verbs) with
the verbs bound on top; each verb lives in its own module and takes the repository:
``seqlib.adding`` (add), ``seqlib.adopt`` (import), ``seqlib.render`` (compose), ``seqlib.notes``
(annotate, recipes), ``seqlib.reserve``, ``seqlib.verify`` (fsck), ``seqlib.report``.
Module level imports stay torch-free so ``status`` and ``log`` answer instantly; training and
sampling import torch when they run.
"""

from __future__ import annotations

from pathlib import Path

from seqlib import adding, adopt, notes, render
from seqlib import reserve as shared_reserve
from seqlib.capacity import Status, WidthGroup
from seqlib.format import Recipe, check_concept_name, token_for
from seqlib.render import CROSSTALK_WARN
from seqlib.repo import Repository
from seqlib.selection import parse_selection

__all__ = [
    "CROSSTALK_WARN",
    "Library",
    "Repository",
    "Status",
    "WidthGroup",
    "check_concept_name",
    "parse_selection",
    "token_for",
]


class Library(Repository):
    """A versioned library of concepts on one base, stored in a ``.seqlib`` folder."""

    add = adding.add
    reserve = shared_reserve.reserve

    def export(self, selection, out: str | Path, fmt: str = "kohya") -> list[Path]:
        """One LoRA file of rank Σr for the selected concepts (with weights), a sidecar, and
        their token embeddings as textual-inversion files (``seqlib.export.export_library``)."""
        from seqlib.export import export_library  # torch: loaded when an export runs

        return export_library(self, selection, out, fmt)

    import_lora = adopt.import_lora

    annotate = notes.annotate

    save_recipe = notes.save_recipe

    remove_recipe = notes.remove_recipe

    def recipe(self, name: str) -> Recipe:
        """The recipe ``name`` (UsageError if unknown, or if one of its concepts was removed)."""
        return notes.recipe(self.head(), name)

    def verify(self, check_base: bool = True) -> dict:
        """Recompute everything the format promises; ``problems`` lists each violation."""
        from seqlib.verify import verify_library

        return verify_library(self, check_base=check_base)

    pipeline = render.pipeline

    preview = render.preview

    def report(self, out: str | Path = "report.html") -> Path:
        """One self-contained HTML page about the library (``seqlib.report``)."""
        from seqlib.report import write_report

        return write_report(self, out)

    compose = render.compose
