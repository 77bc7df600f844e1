"""Real bases on the same architecture at small size: a diffusers folder, a hub id, refusals."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from seqlib.api import Library
from seqlib.base import classify, load_base
from seqlib.config import TrainConfig
from seqlib.errors import BaseLoadError, BaseMismatchError, SeqlibError
from seqlib.format import LayerRecord
from seqlib.store import Store

from .conftest import FAST


@pytest.fixture(scope="module")
def diffusers_folder(empty_store, tmp_path_factory):
    """A standalone diffusers pipeline folder (as a user's local SD1.5 copy would be)."""
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    shutil.copytree(empty_store / "base", folder)
    return folder


def test_a_local_diffusers_folder_is_a_base(diffusers_folder, tmp_path, photos):
    lib = Library.init(tmp_path / ".seqlib", base=str(diffusers_folder), rank=8)
    base = lib.head().library.base
    assert (base.kind, base.source) == ("diffusers", str(diffusers_folder.resolve()))
    assert not (tmp_path / ".seqlib" / "base").exists()  # nothing copied: the folder is referenced
    status = lib.status()
    assert status.fits == 64 // 8
    assert {g.in_features for g in status.groups} == {64, 128}


def test_the_adapted_layers_are_chosen_at_init_and_recorded(diffusers_folder, empty_store, tmp_path, photos):
    def names(lib: Library) -> list[str]:
        return lib.head().library.layer_names

    embedded = names(Library.open(empty_store))  # the embedded default: attention + feed-forward
    real = names(Library.init(tmp_path / "paper", base=str(diffusers_folder)))  # a real base: the paper's set
    assert real and all(re.search(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$", n) for n in real)
    ff = [n for n in embedded if n not in real]
    assert set(real) < set(embedded) and all(re.search(r"\.ff\.net\.(0\.proj|2)$", n) for n in ff)
    assert len(ff) * 4 == len(real)  # per transformer block: 8 attention projections, 2 feed-forward
    kv = names(Library.init(tmp_path / "kv", base=str(diffusers_folder), layers="cross-kv"))
    assert kv == [n for n in real if re.search(r"\.attn2\.to_[kv]$", n)] and len(kv) * 4 == len(real)

    lib = Library.init(tmp_path / "ff", base=str(diffusers_folder), layers="attention+ff")
    assert names(lib) == embedded
    concept = lib.add("mascot", photos / "mascot", config=TrainConfig(**FAST))
    A, B, _ = lib.factors(concept, lib.head())
    assert set(A) == set(embedded) and all(float(A[n].abs().max()) > 0 for n in ff)
    # a base that lacks a recorded layer is not this library's base
    library = lib.head().library
    bogus = library.model_copy(
        update={"layers": [*library.layers, LayerRecord(name="nope", in_features=1, out_features=1)]}
    )
    with pytest.raises(BaseMismatchError, match="has no layer nope"):
        load_base(bogus, None)
    with pytest.raises(SeqlibError, match="--layers must be one of"):
        Library.init(tmp_path / "bad", layers="everything")


def test_changed_base_weights_are_refused(diffusers_folder, tmp_path, photos):
    folder = tmp_path / "sd-copy"
    shutil.copytree(diffusers_folder, folder)
    lib = Library.init(tmp_path / ".seqlib", base=str(folder))
    lib.add("mascot", photos / "mascot", config=TrainConfig(**FAST))
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("attn1.to_q.weight"))
    state[key] = state[key] + 1e-3 * torch.ones_like(state[key])
    save_file(state, weights)
    before = Store(tmp_path / ".seqlib").tip()[1]
    with pytest.raises(BaseMismatchError, match="not the base this library was built on"):
        lib.add("emblem", photos / "emblem", config=TrainConfig(**FAST))
    with pytest.raises(BaseMismatchError):
        lib.pipeline(["mascot"])
    assert Store(tmp_path / ".seqlib").tip()[1] == before


def test_a_hub_id_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BaseLoadError, match="offline"):
        Library.init(tmp_path / ".seqlib", base="some-org/some-model-that-is-not-cached")
    assert not (tmp_path / ".seqlib").exists()
    assert not list(tmp_path.iterdir())  # the staging folder is gone too


@pytest.mark.parametrize(
    ("spec", "config", "message"),
    [
        ("model.ckpt", None, "pickles"),
        ("model.safetensors", None, "--base-config"),
        ("./not/here", None, "neither an existing"),
    ],
)
def test_base_specs_are_checked_before_loading(tmp_path, monkeypatch, spec, config, message):
    monkeypatch.chdir(tmp_path)
    if spec.startswith("model"):
        (tmp_path / spec).write_bytes(b"x")
    with pytest.raises(BaseLoadError, match=message):
        classify(spec, config)


def test_a_folder_without_model_index_is_refused(tmp_path):
    with pytest.raises(BaseLoadError, match="model_index.json"):
        classify(str(tmp_path), None)


def test_a_single_file_checkpoint_with_a_config_folder_is_a_base(diffusers_folder, tmp_path, photos):
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from .ldm import pipeline_to_ldm

    ckpt = tmp_path / "tiny-sd.safetensors"
    save_file(pipeline_to_ldm(StableDiffusionPipeline.from_pretrained(diffusers_folder)), ckpt)
    lib = Library.init(tmp_path / ".seqlib", base=str(ckpt), base_config=str(diffusers_folder))
    base = lib.head().library.base
    assert (base.kind, base.source, base.config) == ("single_file", str(ckpt), str(diffusers_folder.resolve()))
    # the same weights as the diffusers folder they came from
    other = Library.init(tmp_path / "b" / ".seqlib", base=str(diffusers_folder))
    assert base.fingerprint == other.head().library.base.fingerprint
    lib.add("mascot", photos / "mascot", config=TrainConfig(**FAST))
    (png,) = lib.compose(["mascot"], "a photo of <mascot>", out=tmp_path / "out", steps=2)
    assert png.is_file()
