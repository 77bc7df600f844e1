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
