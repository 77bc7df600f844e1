"""The lab base's architecture and world (issue 12): SD1.5's proportions where the claim needs them."""

from __future__ import annotations

import json

import numpy as np
import torch

from seqlib.cli import main
from seqlib.world_lab import COLOURS, OBJECTS, render, scene


def test_the_lab_world_is_deterministic_and_its_captions_name_what_is_drawn():
    assert scene(7) == scene(7) and scene(7) != scene(8)
    np.testing.assert_array_equal(np.asarray(render(scene(3))), np.asarray(render(scene(3))))
    scenes = [scene(i) for i in range(400)]
    kinds = {t.kind for s in scenes for t in s.things}
    assert set(OBJECTS) <= kinds  # every composite object occurs
    assert {s.relation for s in scenes} == {"single", "left-right", "above", "inside"}
    for s in scenes[:60]:
        im = np.asarray(render(s)).reshape(-1, 3).astype(int)
        corner = np.asarray(render(s))[1, 1].astype(int)
        assert np.abs(corner - COLOURS[s.background]).max() < 12  # the named background is drawn
        main_colour = np.array(COLOURS[s.things[0].colour])
        assert (np.abs(im - main_colour).max(axis=1) < 12).sum() > 4, s.caption  # so is the first object
        assert len(s.caption.split()) < 60  # well inside CLIP's 77 tokens


def test_the_lab_architecture_has_sd15_proportions(tmp_path):
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig

    from seqlib.capacity import capacity
    from seqlib.config import LAYER_SETS, default_layer_set
    from seqlib.embedded import LAB_BASE_ID, build_lab_pipeline

    build_lab_pipeline(tmp_path)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    layers = [(n, m) for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)]
    assert default_layer_set("embedded", LAB_BASE_ID) == "cross-kv"
    adapted = [m for n, m in layers if LAYER_SETS["attention"].search(n)]
    assert capacity(min(m.in_features for m in adapted), 4) >= 64  # SD1.5: 80
    assert "attentions" in dict(unet.down_blocks[0].named_children())  # attention at the finest latents
    assert unet.config.sample_size == 16 and unet.config.cross_attention_dim >= 256
    text = CLIPTextConfig.from_pretrained(tmp_path / "text_encoder")
    assert text.num_hidden_layers >= 4 and text.hidden_size >= 256
    tokenizer = json.loads((tmp_path / "tokenizer" / "vocab.json").read_text())
    assert all(f"{word}</w>" in tokenizer for word in ("creature", "checkered", "inside", "floor"))


def test_the_lab_base_ships_and_inits_offline(tmp_path, capsys):
    """`seqlib init --base embedded:lab` on a fresh install: the shipped fp16 weights load as fp32,
    the library records 64-concept capacity on 256-wide layers, and every shipped weight together
    stays within 90 MB."""
    from seqlib.api import Library
    from seqlib.embedded import SHIPPED_LAB_BASE

    assert (SHIPPED_LAB_BASE / "model_index.json").is_file(), "the lab base's weights must ship in the package"
    assets = SHIPPED_LAB_BASE.parent
    shipped = sum(p.stat().st_size for p in assets.rglob("*.safetensors"))
    assert shipped <= 90e6, f"{shipped / 1e6:.1f} MB of shipped weights"
    assert main(["init", str(tmp_path), "--base", "embedded:lab"]) == 0
    lib = Library.open(tmp_path)
    head = lib.head()
    assert min(layer.in_features for layer in head.library.layers) == 256 and lib.status().fits == 64
    pipe = lib.load_base(head, "cpu", None)  # fingerprint checked
    assert {pipe.unet.dtype, pipe.text_encoder.dtype, pipe.vae.dtype} == {torch.float32}
    assert main(["init", str(tmp_path / "other"), "--base", "embedded:huge"]) == 2
    assert "embedded:tiny, embedded:lab" in capsys.readouterr().err
