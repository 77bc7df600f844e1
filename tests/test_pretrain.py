"""The pretraining recipe is deterministic and resumes exactly where a killed run stopped."""

import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

SCRIPT = Path(__file__).parents[1] / "scripts" / "pretrain_world.py"
TINY = ["--vae-steps", "2", "--unet-steps", "2", "--batch", "2", "--checkpoint-every", "1", "--samples", "0"]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out), *TINY, *extra], capture_output=True, text=True
    )


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    assert _run(tmp_path / "straight").returncode == 0
    first = _run(tmp_path / "resumed", "--stop-after", "3")  # both VAE steps and one UNet step
    assert first.returncode != 0 and "run again to resume" in first.stderr
    assert not (tmp_path / "resumed" / "pipeline").exists()
    second = _run(tmp_path / "resumed")
    assert second.returncode == 0 and "resuming unet at step 1" in second.stdout
    for part in (
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
    ):
        a = load_file(tmp_path / "straight" / "pipeline" / part)
        b = load_file(tmp_path / "resumed" / "pipeline" / part)
        assert all((a[k] == b[k]).all() for k in a), part
