"""`--kv-scope token`: cross-attention key/value residuals that act only at their concept's token."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from seqlib.api import Library
from seqlib.cli import main
from seqlib.config import TrainConfig, resolve_kv_scope
from seqlib.lora import LiveResiduals, TokenLocalPatch, TokenPositions, named_layers, reads_text
from seqlib.tokens import add_tokens

from .conftest import FAST


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    lib = Library.init(tmp_path_factory.mktemp("tl") / ".seqlib")
    pipe = lib.load_base(lib.head(), "cpu")
    add_tokens(pipe, {"<a>": torch.randn(pipe.text_encoder.config.hidden_size)})
    return pipe


def _states(pipe, prompts: list[str]):
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return ids, pipe.text_encoder(ids)[0]


def test_positions_are_found_by_value_whatever_the_pipeline_does_with_the_states(pipe):
    positions = TokenPositions(pipe.text_encoder)
    try:
        neg_ids, neg = _states(pipe, [""])
        pos_ids, pos = _states(pipe, ["a photo of <a>", "a photo of a thing"])
        x = torch.cat([neg, pos, pos[:1]])  # classifier-free guidance's order, and a repeat
        assert torch.equal(positions.ids_of(x), torch.cat([neg_ids, pos_ids, pos_ids[:1]]))
        token = pipe.tokenizer.convert_tokens_to_ids("<a>")
        mask = positions.mask(x, token)[..., 0]
        assert mask.sum(1).tolist() == [0, 1, 0, 1]  # once in each prompt holding it, nowhere else
        assert int(pos_ids[0].tolist().index(token)) == int(mask[1].nonzero())
        stranger = torch.randn_like(pos[:1])  # states this text encoder never made: no token anywhere
        assert (positions.ids_of(stranger) == -1).all()
    finally:
        positions.remove()


def test_a_token_local_residual_is_silent_without_its_token_and_whole_at_it(pipe):
    name = next(n for n, m in pipe.unet.named_modules() if reads_text(n))
    layer = dict(pipe.unet.named_modules())[name]
    g = torch.Generator().manual_seed(0)
    A = torch.randn(layer.out_features, 2, generator=g)
    B = torch.randn(layer.in_features, 2, generator=g)
    token = pipe.tokenizer.convert_tokens_to_ids("<a>")
    positions = TokenPositions(pipe.text_encoder)
    live = LiveResiduals([(name, layer)], positions, token)
    try:
        ids, x = _states(pipe, ["a photo of <a>", "a photo of a thing"])
        with torch.no_grad():
            plain = layer(x)
            with live:
                live.set([A], [B])
                got = layer(x)
        where = ids == token
        full = (x @ B) @ A.T
        torch.testing.assert_close(got[~where], plain[~where])  # every other position: the base's own
        torch.testing.assert_close(got[where], plain[where] + full[where], rtol=1e-5, atol=1e-5)
        assert (got[1] == plain[1]).all()  # the prompt without the token is untouched
    finally:
        positions.remove()


def test_composition_applies_exactly_what_training_applied(pipe):
    """The compose hook (several concepts, weights) equals the trainer's live masked residuals."""
    names = [n for n, _ in pipe.unet.named_modules() if reads_text(n)]
    layers = named_layers(pipe.unet, names)
    g = torch.Generator().manual_seed(1)
    As = [torch.randn(m.out_features, 2, generator=g) * 0.1 for _, m in layers]
    Bs = [torch.randn(m.in_features, 2, generator=g) for _, m in layers]
    token = pipe.tokenizer.convert_tokens_to_ids("<a>")
    latents = torch.randn(2, pipe.unet.config.in_channels, 8, 8, generator=g)
    t = torch.tensor([500, 500])

    def run(states):
        with torch.no_grad():
            return pipe.unet(latents, t, states).sample

    _, x = _states(pipe, ["a photo of <a>", "a photo of a thing"])
    base = run(x)
    positions = TokenPositions(pipe.text_encoder)
    live = LiveResiduals(layers, positions, token)
    _, x = _states(pipe, ["a photo of <a>", "a photo of a thing"])
    with live:
        live.set([0.5 * a for a in As], Bs)
        trained = run(x)
    positions.remove()
    patch = TokenLocalPatch(pipe.unet, pipe.text_encoder)
    patch.add({n: (a, b) for n, a, b in zip(names, As, Bs)}, token, weight=0.5)
    _, x = _states(pipe, ["a photo of <a>", "a photo of a thing"])
    composed = run(x)
    patch.remove()
    torch.testing.assert_close(composed, trained)
    assert not torch.allclose(composed[0], base[0])  # the prompt with the token changes
    torch.testing.assert_close(composed[1], base[1])  # the one without it is the base's


@pytest.mark.slow
def test_add_with_kv_scope_token_records_it_hooks_kv_at_the_token_and_export_warns(tmp_path, photos, capsys):
    lib = Library.init(tmp_path / ".seqlib")
    concept = lib.add("mascot", photos / "mascot", config=TrainConfig(kv_scope="token", **FAST), preview=False)
    assert concept.training.kv_scope == "token" and lib.concept("mascot").kv_scope == "token"
    bare = lib.load_base(lib.head(), "cpu")
    pipe = lib.pipeline("mascot")
    W0, W = dict(bare.unet.named_modules()), dict(pipe.unet.named_modules())
    kv = [n for n in lib.head().library.layer_names if reads_text(n)]
    other = [n for n in lib.head().library.layer_names if not reads_text(n)]
    assert kv and other
    assert all(torch.equal(W[n].weight, W0[n].weight) for n in kv)  # hooked at the token, not merged
    assert not any(torch.equal(W[n].weight, W0[n].weight) for n in other)
    code = main(["--store", str(tmp_path / ".seqlib"), "export", "mascot", "-o", str(tmp_path / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 0 and (tmp_path / "m.safetensors").exists()
    assert "--kv-scope token" in err and "every position" in " ".join(err.split())


@pytest.mark.slow
def test_on_cross_kv_a_token_local_concept_has_no_crosstalk_onto_others_and_verify_agrees(tmp_path, photos):
    lib = Library.init(tmp_path / ".seqlib", layers="cross-kv")
    mascot = lib.add("mascot", photos / "mascot", config=TrainConfig(**FAST), preview=False)
    assert mascot.kv_scope == "token"  # `auto` on a cross-kv library
    emblem = lib.add("emblem", photos / "emblem", config=TrainConfig(kv_scope="all", seed=1, **FAST), preview=False)
    values = lib.store.crosstalk(emblem)
    assert values.crosstalk_from["mascot"] == 0.0  # silent on every layer there is
    assert values.crosstalk_onto["mascot"] > 0.0  # the plain one still reads every position
    assert main(["--store", str(tmp_path / ".seqlib"), "verify"]) == 0
    lib.add("robot", photos / "robot", config=TrainConfig(seed=2, **FAST), preview=False)

    def pixels(selection: str, prompt: str, out: str) -> np.ndarray:
        (path,) = lib.compose(selection, prompt=prompt, out=tmp_path / out, steps=4, size=32)
        return np.asarray(Image.open(path))

    # the paper's protocol: every concept active, the prompt names one. With token-local K/V on
    # cross-kv, the others' residuals meet no token of theirs: the picture is the concept's alone
    alone = pixels("mascot", "a photo of <mascot>", "alone")
    assert np.array_equal(pixels("mascot,robot", "a photo of <mascot>", "both"), alone)
    both = pixels("mascot,robot", "a photo of <mascot> and <robot>", "pair")
    assert not np.array_equal(both, pixels("mascot,robot=0", "a photo of <mascot> and <robot>", "one"))  # robot acts
    # the plain (all-positions) emblem still fires on a prompt without its token
    assert not np.array_equal(pixels("mascot,emblem", "a photo of <mascot>", "bleed"), alone)


def test_auto_kv_scope_is_token_exactly_on_a_library_of_cross_attention_keys_and_values():
    kv = ["down.attn2.to_k", "down.attn2.to_v", "up.attn2.to_k", "up.attn2.to_v"]
    assert resolve_kv_scope("auto", kv) == "token"
    assert resolve_kv_scope("auto", [*kv, "down.attn2.to_q"]) == "all"  # a layer that reads the image
    assert resolve_kv_scope("auto", ["down.attn1.to_k"]) == "all"  # self-attention reads the image
    assert resolve_kv_scope("auto", []) == "all"
    assert resolve_kv_scope("all", kv) == "all" and resolve_kv_scope("token", ["down.attn1.to_q"]) == "token"
