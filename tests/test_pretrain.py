"""The pretraining recipe is deterministic and resumes exactly where a killed run stopped."""

import runpy
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

SCRIPT = Path(__file__).parents[1] / "scripts" / "pretrain_world.py"
TINY = ["--vae-steps", "2", "--unet-steps", "2", "--batch", "2", "--checkpoint-every", "1", "--samples", "0"]


def _run(monkeypatch, out: Path, *extra: str) -> None:
    """The script's main() in this process (it is step-counted, so an in-process run is the same run)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--out", str(out), *TINY, *extra])
    runpy.run_path(str(SCRIPT), run_name="__main__")


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch, capsys):
    _run(monkeypatch, tmp_path / "straight")
    with pytest.raises(SystemExit, match="run again to resume"):
        _run(monkeypatch, tmp_path / "resumed", "--stop-after", "3")  # both VAE steps and one UNet step
    assert not (tmp_path / "resumed" / "pipeline").exists()
    capsys.readouterr()
    _run(monkeypatch, tmp_path / "resumed")
    assert "resuming unet at step 1" in capsys.readouterr().out
    for part in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ):
        a = load_file(tmp_path / "straight" / "pipeline" / part)
        b = load_file(tmp_path / "resumed" / "pipeline" / part)
        assert all((a[k] == b[k]).all() for k in a), part


def test_a_shipped_base_records_no_machine_folder(tmp_path, monkeypatch):
    """The recipe and diffusers' `_name_or_path` in what ships say where the run was relative to
    where it started (or `~/…` under the home folder), never this machine's absolute folders."""
    import json

    shown = runpy.run_path(str(SCRIPT))["shown"]
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    assert shown(home / "build" / "base") == "build/base"  # the folder it started in comes first
    monkeypatch.chdir(elsewhere)
    assert shown(home / "build" / "base") == "~/build/base"
    assert shown(Path("/nowhere/else")) == "/nowhere/else"
    monkeypatch.chdir(tmp_path)
    _run(monkeypatch, tmp_path / "run", "--ship", str(tmp_path / "ship"))
    recipe = json.loads((tmp_path / "ship" / "recipe.json").read_text())
    assert (recipe["settings"]["out"], recipe["settings"]["ship"]) == ("run", "ship")
    configs = [json.loads(p.read_text()) for p in (tmp_path / "ship").rglob("*.json")]
    named = [c["_name_or_path"] for c in configs if isinstance(c, dict) and "_name_or_path" in c]
    assert named and all(n.startswith("run/pipeline") for n in named), named
    assert str(tmp_path) not in "".join(p.read_text() for p in (tmp_path / "ship").rglob("*.json"))
