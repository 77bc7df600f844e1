"""Training methods are objects in one registry: a new one is a `register` call (issue 13)."""

from __future__ import annotations

import json

from seqlib.api import Library
from seqlib.config import TrainConfig
from seqlib.methods import METHODS, Method, get

from .conftest import FAST


def test_the_registry_is_what_the_cli_and_the_format_offer():
    from seqlib.cli import add_command
    from seqlib.format import TrainingRecord

    method_option = next(p for p in add_command.params if p.name == "method")
    assert (
        list(method_option.type.choices)
        == list(METHODS)
        == ["seqlora", "alternating", "frozen-basis", "lora", "lora-joint"]
    )
    assert get("lora").projects is False and get("seqlora").cross_hessian is True
    assert "method" in TrainingRecord.model_fields


def test_a_registered_toy_method_trains_end_to_end(store_copy, photos, monkeypatch, capsys):
    # A combination no built-in method has: start on the shared orthogonal matrix, then move B.
    toy = Method(
        "toy", "frozen start, trained basis", projects=True, moves_basis=True, cross_hessian=False, basis="frozen"
    )
    monkeypatch.setitem(METHODS, "toy", toy)
    lib = Library.open(store_copy)
    concept = lib.add("toyish", photos / "robot", config=TrainConfig(method="toy", **FAST))
    assert concept.training.method == "toy" and concept.orthogonal and concept.frozen_columns == [0, 1, 2, 3]
    report = lib.verify(check_base=False)
    assert report["ok"], report["problems"]
    assert report["worst_orthogonality"]["max_abs_cos"] < 1e-5  # projected against the three earlier concepts
    from seqlib.cli import main

    assert main(["--store", str(store_copy), "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[-1]["method"] == "toy"


def test_pass_counts_follow_the_algorithm():
    # tentative step + S_B B-steps (each with its cross-Hessian passes) + S_A A-steps
    seqlora, alternating, frozen = (get(n) for n in ("seqlora", "alternating", "frozen-basis"))
    assert seqlora.passes_per_iteration(2, 2, "finite-diff") == 1 + 2 * (1 + 2) + 2 == 9
    assert seqlora.passes_per_iteration(2, 2, "autograd") == 1 + 2 * (1 + 3) + 2 == 11
    assert alternating.passes_per_iteration(2, 2, "finite-diff") == 5
    assert frozen.passes_per_iteration(2, 2, "autograd") == 3


def test_plain_lora_concepts_of_one_library_start_from_different_bases(lora_store):
    """Without a projection every concept's free space is the whole input space: seeded by its
    position in the library, two plain-LoRA concepts no longer share one starting basis (the
    baseline every comparison is made against had |cos| = 1.000 between them)."""
    from seqlib.api import Library
    from seqlib.subspace import max_cosine

    lib = Library.open(lora_store)
    head = lib.head()
    first, second = (lib.basis(c, head) for c in head.concepts[:2])
    layer = head.library.layer_names[0]
    assert max_cosine(first[layer], second[layer]) < 0.9
