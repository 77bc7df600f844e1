"""The GPU check's dry run: the same code on a CPU with an SD1.5-shaped UNet a few MB large."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_gpu_check_dry_run_writes_its_tables(tmp_path):
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "gpu_check.py", "--dry-run", "--out", str(tmp_path)],
        cwd=BENCHMARKS,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] and "DRY RUN" in (tmp_path / "gpu_check.md").read_text()
    for variant in ("seqlora / finite-diff", "alternating", "plain LoRA step"):
        assert report["iteration"][variant]["seconds"] > 0
    assert report["ratios"]["seqlora / alternating"] > 1  # the cross-Hessian costs passes
    assert set(report["compose"]["seqlib"]) == {"1", "3", "10"} and report["compose"]["peft"] > 0
