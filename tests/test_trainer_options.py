"""Trainer options: the four methods, HVP selection, capacity policies at a full layer."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from seqlib.api import Library
from seqlib.capacity import concepts_that_fit
from seqlib.cli import main
from seqlib.config import TrainConfig, resolve_hvp
from seqlib.errors import CapacityError
from seqlib.subspace import max_cosine, shared_orthogonal

from .conftest import FAST


def test_frozen_basis_takes_fresh_columns_of_the_shared_matrix_and_trains_only_A(tmp_path, empty_store, photos):
    shutil.copytree(empty_store, tmp_path / ".seqlib")
    lib = Library.open(tmp_path / ".seqlib")
    first = lib.add("mascot", photos / "mascot", config=TrainConfig(method="frozen-basis", **FAST))
    second = lib.add("emblem", photos / "emblem", config=TrainConfig(method="frozen-basis", **FAST))
    assert first.frozen_columns == [0, 1, 2, 3] and second.frozen_columns == [4, 5, 6, 7]
    head = lib.head()
    for concept in (first, second):
        A, B, _ = lib.factors(concept, head)
        for b in B.values():
            m = b.shape[0]
            expected = shared_orthogonal(m)[:, concept.frozen_columns].float()
            torch.testing.assert_close(b, expected, atol=1e-6, rtol=0)  # B never moved
        assert any(float(a.abs().max()) > 0 for a in A.values())  # A did
    _, B1, _ = lib.factors(first, head)
    _, B2, _ = lib.factors(second, head)
    assert max(max_cosine(B1[n], B2[n]) for n in B1) < 1e-6


def test_hvp_auto_picks_finite_differences_on_gpus_and_large_bases():
    assert resolve_hvp("auto", "cpu", 5_000_000) == "autograd"
    assert resolve_hvp("auto", "cuda", 5_000_000) == "finite-diff"
    assert resolve_hvp("auto", "cpu", 860_000_000) == "finite-diff"
    assert resolve_hvp("autograd", "cuda", 860_000_000) == "autograd"


def test_finite_difference_training_matches_autograd_training(tmp_path, empty_store, photos):
    factors = {}
    for hvp in ("autograd", "finite-diff"):
        shutil.copytree(empty_store, tmp_path / hvp / ".seqlib")
        lib = Library.open(tmp_path / hvp / ".seqlib")
        # Plain steps: Adam's first step is sign-like, so a near-zero element of the reduced
        # gradient may flip sign between the two and move by 2β — not a disagreement of H.
        cfg = TrainConfig(hvp=hvp, steps=1, K=1, S_B=1, S_A=1, optimizer="sgd", alpha=3.0, beta=3.0, lr_embed=3.0)
        concept = lib.add("mascot", photos / "mascot", config=cfg)
        assert concept.training.hvp == hvp
        factors[hvp] = lib.factors(concept, lib.head())[1]
    diff = max(float((factors["autograd"][n] - factors["finite-diff"][n]).abs().max()) for n in factors["autograd"])
    # One bilevel iteration agrees to ~1e-6 (measured). Over many iterations at the default
    # step sizes the two runs drift apart (1e-3 after 2, O(1) after 8): the dynamics amplify
    # round-off, so only a single iteration is a fair comparison.
    assert diff < 1e-4


@pytest.fixture(scope="module")
def brim_template(tmp_path_factory, photos):
    """Rank 24 on 64- and 128-wide layers: after two concepts the 64-wide ones have 16 left."""
    lib = Library.init(tmp_path_factory.mktemp("brim") / ".seqlib", rank=24, layers="attention")
    for name in ("mascot", "emblem"):
        lib.add(name, photos / name, config=TrainConfig(**FAST))
    return lib.root


@pytest.fixture
def brim(brim_template, tmp_path):
    """A copy of the template (trained once per module) to change freely."""
    shutil.copytree(brim_template, tmp_path / ".seqlib")
    return Library.open(tmp_path / ".seqlib")


def test_status_counts_what_fits_under_each_policy(brim):
    status = brim.status()
    assert status.bottleneck_free == 16
    assert status.fits_by_policy == {"refuse": 0, "shrink": 1, "skip": (128 - 48) // 24}
    assert concepts_that_fit(brim.head(), policy="shrink") == 1


def test_refuse_names_the_full_layers(brim, photos):
    with pytest.raises(CapacityError, match="down_blocks.1"):
        brim.add("robot", photos / "robot", config=TrainConfig(**FAST), when_full="refuse")


def test_shrink_trains_a_full_layer_at_the_rank_left_and_warns(brim, photos):
    warnings = []
    concept = brim.add("robot", photos / "robot", config=TrainConfig(**FAST), warn=warnings.append)
    layers = brim.head().library.layers
    assert [k for k, layer in zip(concept.ranks, layers)] == [16 if layer.in_features == 64 else 24 for layer in layers]
    assert "--when-full shrink" in warnings[0] and "down_blocks.1" in warnings[0]
    status = brim.status()
    assert status.bottleneck_free == 0 and status.fits_by_policy["shrink"] == 0
    head = brim.head()
    _, B, _ = brim.factors(concept, head)
    narrow = next(layer.name for layer in layers if layer.in_features == 64)
    assert np.count_nonzero(np.linalg.norm(B[narrow].numpy(), axis=0)) == 16  # zero-padded to 24
    assert brim.verify(check_base=False)["ok"]


def test_skip_leaves_full_layers_unadapted(brim, photos, capsys):
    code = main(
        [
            "--store",
            str(brim.store.root),
            "add",
            "robot",
            str(photos / "robot"),
            "--steps",
            "1",
            "-K",
            "1",
            "--when-full",
            "skip",
        ]
    )
    assert code == 0 and "--when-full skip" in capsys.readouterr().err
    head = brim.head()
    concept = head.concept("robot")
    A, B, _ = brim.factors(concept, head)
    for layer, k in zip(head.library.layers, concept.ranks):
        assert k == (0 if layer.in_features == 64 else 24)
        if k == 0:
            assert float(A[layer.name].abs().max()) == 0.0 and float(B[layer.name].abs().max()) == 0.0
    assert brim.verify(check_base=False)["ok"]


def test_gradient_checkpointing_changes_memory_not_results(tmp_path, empty_store, photos):
    factors = {}
    for checkpointing in (False, True):
        shutil.copytree(empty_store, tmp_path / str(checkpointing) / ".seqlib")
        lib = Library.open(tmp_path / str(checkpointing) / ".seqlib")
        cfg = TrainConfig(gradient_checkpointing=checkpointing, steps=1, K=1, S_B=1, S_A=1)
        concept = lib.add("mascot", photos / "mascot", config=cfg)
        factors[checkpointing] = lib.factors(concept, lib.head())[0]
    assert max(float((factors[True][n] - factors[False][n]).abs().max()) for n in factors[True]) < 1e-5


def test_native_bf16_reads_the_cpu_flags():
    from seqlib.train import native_bf16

    assert native_bf16("processor : 0\nflags : fpu avx avx2 avx512f avx512_bf16\n") is True
    assert native_bf16("processor : 0\nflags : fpu avx amx_bf16 amx_tile\n") is True
    assert native_bf16("processor : 0\nflags : fpu avx avx2 fma\n") is False  # emulated: ~100x slower
    assert native_bf16("processor : 0\nFeatures : fp asimd bf16 i8mm\n") is True  # Arm
    assert native_bf16("") is None


def test_bf16_on_a_cpu_trains_with_the_classic_attention_processor(empty_store):
    from diffusers.models.attention_processor import AttnProcessor

    from seqlib.train import prepare

    lib = Library.open(empty_store)
    for precision, classic in (("fp32", False), ("bf16", True)):
        pipe = lib.load_base(lib.head(), "cpu")
        prepare(pipe, TrainConfig(precision=precision))
        processors = list(pipe.unet.attn_processors.values())
        assert processors and all(isinstance(p, AttnProcessor) for p in processors) is classic
        assert pipe.unet.dtype == (torch.bfloat16 if classic else torch.float32)


def test_bf16_base_with_augmentation_trains_fp32_factors(store_copy, photos, capsys, monkeypatch):
    """Also the GPU path through the same code on the CPU: a bf16 base with what `--hvp auto` picks
    on a GPU (finite differences: no double backward through fused attention); on a CPU without
    native bf16 it says that bf16 runs emulated there."""
    monkeypatch.setattr("seqlib.train.native_bf16", lambda: False)
    code = main(
        [
            "--store",
            str(store_copy),
            "add",
            "newone",
            str(photos / "robot"),
            "--steps",
            "1",
            "-K",
            "1",
            "--s-b",
            "1",
            "--s-a",
            "1",
            "--precision",
            "bf16",
            "--crop",
            "random",
            "--flip",
            "--aug-copies",
            "2",
            "--hvp",
            "finite-diff",
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no native bf16" in " ".join(err.split())
    lib = Library.open(store_copy)
    concept = lib.head().concept("newone")
    assert (concept.training.precision, concept.training.crop, concept.training.flip) == ("bf16", "random", True)
    assert concept.training.hvp == "finite-diff" and lib.verify(check_base=False)["ok"]  # still orthogonal
    assert lib.payload_arrays(concept)["B_m64"].dtype == np.float32
    assert np.isfinite(concept.final_loss)


@pytest.mark.parametrize("device", ["cuda", "cuda:3"])
def test_a_missing_gpu_is_one_clear_line_and_nothing_changes(store_copy, photos, capsys, device):
    before = sorted(p.name for p in (store_copy / "refs" / "heads" / "main").iterdir())
    code = main(["--store", str(store_copy), "add", "newone", str(photos / "robot"), "--device", device])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err and f"--device {device}" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (store_copy / "refs" / "heads" / "main").iterdir()) == before


def test_fp16_on_a_cpu_is_refused(store_copy, photos, capsys):
    code = main(["--store", str(store_copy), "add", "newone", str(photos / "robot"), "--precision", "fp16"])
    assert code == 2 and "fp16 needs a GPU" in capsys.readouterr().err


def test_augmented_views_differ_but_stay_deterministic(photos):
    from seqlib.data import find_images, load_images

    files = find_images(photos / "mascot")
    a = load_images(files, 64, crop="random", flip=True, copies=3, seed=1)
    b = load_images(files, 64, crop="random", flip=True, copies=3, seed=1)
    assert a.shape == (3 * len(files), 3, 64, 64)
    torch.testing.assert_close(a, b)
    assert float((a[0] - a[1]).abs().max()) > 0.1


def test_an_interrupted_add_resumes_to_the_same_factors(tmp_path, empty_store, photos, capsys, monkeypatch):
    import seqlib.train

    args = ["add", "mascot", str(photos / "mascot"), "--steps", "7", "-K", "1", "--s-b", "1", "--s-a", "1"]
    args += ["--hvp", "forward-diff", "--no-preview"]  # the cheapest iteration: only resuming is tested
    straight = tmp_path / "straight" / ".seqlib"
    shutil.copytree(empty_store, straight)
    assert main(["--store", str(straight), *args]) == 0
    expected = Library.open(straight).factors(
        Library.open(straight).head().concept("mascot"), Library.open(straight).head()
    )

    store = tmp_path / "interrupted" / ".seqlib"
    shutil.copytree(empty_store, store)
    original, calls = seqlib.train.bilevel_iteration, {"n": 0}

    def stop_in_round_7(*a, **k):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(*a, **k)

    monkeypatch.setattr(seqlib.train, "bilevel_iteration", stop_in_round_7)
    assert main(["--store", str(store), *args]) == 130
    assert "--resume" in capsys.readouterr().err  # a checkpoint of round 5 exists
    monkeypatch.setattr(seqlib.train, "bilevel_iteration", original)
    assert main(["--store", str(store), *args, "--resume"]) == 0
    lib = Library.open(store)
    got = lib.factors(lib.head().concept("mascot"), lib.head())
    # Same state (factors, Adam moments), same random stream; float round-off differs slightly
    # between the two runs, far below what two rounds move the factors or another seed would.
    for want, have in zip(expected[:2], got[:2]):
        scale = max(float(want[n].abs().max()) for n in want)
        assert max(float((want[n] - have[n]).abs().max()) for n in want) < 1e-3 * scale
    assert not list((store / "scratch").iterdir())  # the checkpoint is gone once committed
    code = main(["--store", str(store), "add", "robot", str(photos / "robot"), "--resume"])
    assert code == 2 and "no interrupted add" in capsys.readouterr().err


def test_two_data_parallel_processes_agree_and_commit_once(store_copy, photos, capfd):
    # the launcher runs here; the two training processes are real ones (gloo on the CPU)
    args = ["--store", str(store_copy), "add", "newone", str(photos / "robot"), "--steps", "2", "-K", "1"]
    args += ["--s-b", "1", "--hvp", "forward-diff", "--no-preview"]
    assert main([*args, "--num-processes", "2"]) == 0, capfd.readouterr().err
    assert "factors identical across 2 processes" in capfd.readouterr().out.replace("\n", " ")
    lib = Library.open(store_copy)
    assert lib.log()[0][2].message == "add newone" and len(lib.log()) == 5  # one commit, not two
    assert lib.verify(check_base=False)["ok"]


def test_plain_lora_concepts_are_flagged_in_status_and_compose(lora_store, tmp_path, capsys):
    assert main(["--store", str(lora_store), "status"]) == 0
    assert "trained without projection" in capsys.readouterr().err
    assert (
        main(
            [
                "--store",
                str(lora_store),
                "compose",
                "mascot,robot",
                "-p",
                "<mascot> <robot>",
                "--steps",
                "1",
                "-o",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "trained without projection" in capsys.readouterr().err


def test_context_base_learns_on_w0_and_keeps_only_the_bases_orthogonal(seqlora_store, photos):
    from seqlib.adding import earlier_concepts
    from seqlib.data import find_images, load_images
    from seqlib.train import Earlier, train_concept

    lib = Library.open(seqlora_store)
    head = lib.head()
    earlier = earlier_concepts(lib, head)[:1]
    louder = [Earlier({k: 3 * a for k, a in e.A.items()}, e.B, e.orthogonal) for e in earlier]  # same basis
    pipe = lib.load_base(head, "cpu", None)
    images = load_images(find_images(photos / "robot"), 64)
    names = head.library.layer_names

    def learn(context: str, prior: list[Earlier]):
        cfg = TrainConfig(context=context, steps=2, K=1, S_B=1, S_A=1)
        return train_concept(pipe, names, prior, images, "<robot>", 4, cfg)

    def gap(a, b) -> float:
        return max(float(np.abs(a.A[n] - b.A[n]).max()) for n in names)

    on_base, on_base_louder = learn("base", earlier), learn("base", louder)
    assert gap(on_base, on_base_louder) == 0.0  # the earlier residual is not in the model it learns on
    assert gap(learn("library", earlier), learn("library", louder)) > 1e-6  # the paper's: it is
    for n in names:  # ... and either way the new basis avoids the earlier one
        assert max_cosine(torch.from_numpy(on_base.B[n]), earlier[0].B[n]) < 1e-5
