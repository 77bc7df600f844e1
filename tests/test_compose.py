"""Compose, complete: weights, schedulers, PNG metadata, contact sheets, the pipeline API."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from seqlib.api import Library
from seqlib.lora import named_layers
from seqlib.row import row_columns


def test_pngs_carry_their_generation_parameters_and_a_grid(seqlora_store, tmp_path):
    lib = Library.open(seqlora_store)
    paths = lib.compose(
        "mascot=0.8,robot",
        "a photo of <mascot> with <robot>",
        out=tmp_path,
        seed=5,
        num_images=3,
        steps=2,
        negative_prompt="blurry",
        grid=True,
    )
    assert [p.name for p in paths] == [
        "mascot+robot-seed5.png",
        "mascot+robot-seed6.png",
        "mascot+robot-seed7.png",
        "mascot+robot-seed5-grid.png",
    ]
    meta = json.loads(Image.open(paths[1]).text["seqlib"])
    assert meta["seed"] == 6 and meta["concepts"] == {"mascot": 0.8, "robot": 1.0}
    assert meta["prompt"] == "a photo of <mascot> with <robot>" and meta["negative_prompt"] == "blurry"
    assert meta["store_version"] == 4 and meta["commit"] == lib.version()[1]
    assert meta["base_fingerprint"] == lib.head().library.base.fingerprint
    assert "Seed: 6" in Image.open(paths[1]).text["parameters"]
    assert Image.open(paths[3]).size == (128, 128)  # 3 images on a 2 x 2 sheet of 64 px tiles


def test_the_scheduler_can_be_chosen(seqlora_store, tmp_path):
    lib = Library.open(seqlora_store)
    a = lib.compose(["mascot"], "<mascot>", out=tmp_path / "a", steps=3)[0]
    b = lib.compose(["mascot"], "<mascot>", out=tmp_path / "b", steps=3, scheduler="euler")[0]
    assert json.loads(Image.open(b).text["seqlib"])["scheduler"] == "EulerDiscreteScheduler"
    assert np.abs(np.asarray(Image.open(a), dtype=int) - np.asarray(Image.open(b))).max() > 0


def test_pipeline_api_returns_a_diffusers_pipeline_with_the_weighted_sum_applied(seqlora_store):
    lib = Library.open(seqlora_store)
    head = lib.head()
    pipe = lib.pipeline({"mascot": 0.5, "emblem": 1.0})
    base = lib.load_base(head, "cpu", None)
    (A1, B1, _), (A2, B2, _) = (lib.factors(head.concept(n), head) for n in ("mascot", "emblem"))
    names = head.library.layer_names
    patched, original = dict(named_layers(pipe.unet, names)), dict(named_layers(base.unet, names))
    for name in patched:
        expected = original[name].weight + 0.5 * A1[name] @ B1[name].T + A2[name] @ B2[name].T
        torch.testing.assert_close(patched[name].weight, expected, atol=1e-6, rtol=0)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.tokenizer.convert_tokens_to_ids("<emblem>") != pipe.tokenizer.unk_token_id


def test_a_one_tile_row_is_the_ordinary_compose(seqlora_store, tmp_path):
    lib = Library.open(seqlora_store)
    args = dict(seed=3, steps=4, negative_prompt="blurry")
    plain = lib.compose({"mascot": 0.7}, "a photo of <mascot>", out=tmp_path / "sum", **args)[0]
    row = lib.compose({"mascot": 0.7}, "a photo of <mascot>", out=tmp_path / "row", layout="row", **args)[0]
    other = lib.compose(["emblem"], "a photo of <emblem>", out=tmp_path / "other", layout="row", **args)[0]
    plain, row, other = (np.asarray(Image.open(p), dtype=int) for p in (plain, row, other))
    # same latents, same scheduler calls; the residual added live instead of patched: float rounding only
    assert np.abs(plain - row).max() <= 1
    assert np.abs(row - other).mean() > 1


def test_a_row_is_one_overlapping_square_tile_per_concept(seqlora_store, tmp_path):
    assert row_columns(16, 3) == [slice(0, 16), slice(12, 28), slice(24, 40)]
    lib = Library.open(seqlora_store)
    prompts = "a photo of <mascot> | a photo of <robot> | a photo of <emblem>"
    path = lib.compose("mascot,robot,emblem", prompts, out=tmp_path, steps=2, layout="row")[0]
    image = Image.open(path)
    assert image.size == (64 + 2 * 48, 64)  # 64-px tiles, a quarter overlapping
    meta = json.loads(image.text["seqlib"])
    assert meta["layout"] == "row" and meta["prompt"] == prompts


def test_one_snapshot_per_compose_while_another_commit_lands(store_copy, tmp_path, monkeypatch):
    """The PNG names the version its pixels came from, even when a commit lands mid-compose: here
    another process sets mascot's preferred weight to 0.3 after the request read the library."""
    lib = Library.open(store_copy)
    seq, commit_id = lib.version()
    reference = lib.compose("mascot", "a photo of <mascot>", out=tmp_path / "ref", steps=4)[0]
    original = lib.load_base

    def racing(*args, **kwargs):
        monkeypatch.setattr(lib, "load_base", original)
        Library.open(store_copy).annotate("mascot", weight=0.3)  # lands between the read and the render
        return original(*args, **kwargs)

    monkeypatch.setattr(lib, "load_base", racing)
    raced = lib.compose("mascot", "a photo of <mascot>", out=tmp_path / "race", steps=4)[0]
    assert Library.open(store_copy).version()[0] == seq + 1  # the other commit did land
    params = json.loads(Image.open(raced).text["seqlib"])
    assert params["commit"] == commit_id and params["store_version"] == seq and params["concepts"] == {"mascot": 1.0}
    assert np.array_equal(np.asarray(Image.open(raced)), np.asarray(Image.open(reference)))
