"""Trainer benchmark: time and memory of a bilevel iteration per method, projector cost,
and a small quality table (fit and forgetting) for the four methods. Ratios from one run.

    python benchmarks/trainer.py                 # embedded base + full-size SD1.5 UNet (random weights)
    python benchmarks/trainer.py --skip-sd15     # embedded base only (about 5 minutes)

Memory is the peak resident set size of a fresh process running that variant only, minus
the same process's size before the first iteration (CPU); on a GPU it is the CUDA peak.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from _report import emit

VARIANTS = {
    "seqlora / autograd": dict(method="seqlora", hvp="autograd"),
    "seqlora / finite-diff": dict(method="seqlora", hvp="finite-diff"),
    "seqlora / forward-diff": dict(method="seqlora", hvp="forward-diff"),
    "seqlora / forward-diff, S_B=1": dict(method="seqlora", hvp="forward-diff", S_B=1),
    "alternating": dict(method="alternating"),
    "alternating, S_B=1": dict(method="alternating", S_B=1),
    "plain LoRA step": None,  # one forward+backward on A and B: the unit everything is measured in
}


SD15_UNET = dict(  # Stable Diffusion v1.5's UNet config (random weights here)
    sample_size=64,
    cross_attention_dim=768,
    attention_head_dim=8,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
# The same shape at a size a CPU runs in seconds: what `gpu_check.py --dry-run` exercises.
SD15_SHAPED_TINY = SD15_UNET | dict(
    sample_size=8, cross_attention_dim=32, block_out_channels=(32, 32, 64, 64), norm_num_groups=8
)


def _setup(base: str, resolution: int, dtype=None, batch_size: int = 1):
    """(objective, A, B, ehs, batch, layers) for one base, frozen, on the CPU or a GPU.

    ``base``: "sd15" or "sd15-tiny" (random weights, SD1.5's layer names) or "embedded"."""
    import torch
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from seqlib.lora import LiveResiduals, adapted_layers
    from seqlib.steps import Objective

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    if base in ("sd15", "sd15-tiny"):
        unet = UNet2DConditionModel(**(SD15_UNET if base == "sd15" else SD15_SHAPED_TINY))
        d, factor = unet.config.cross_attention_dim, 8
    else:
        from seqlib.embedded import SHIPPED_BASE, VAE_FACTOR

        unet = UNet2DConditionModel.from_pretrained(SHIPPED_BASE / "unet")
        d, factor = unet.config.cross_attention_dim, VAE_FACTOR
    unet = unet.to(device, dtype or torch.float32).requires_grad_(False).eval()
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    pipe = type("Pipe", (), {"unet": unet, "scheduler": scheduler})()
    layers = adapted_layers(unet)
    g = torch.Generator().manual_seed(0)
    A = [0.01 * torch.randn(m.out_features, 4, generator=g).to(device) for _, m in layers]
    B = [torch.linalg.qr(torch.randn(m.in_features, 4, generator=g))[0].to(device) for _, m in layers]
    h, n = resolution // factor, batch_size
    batch = (torch.randn(n, 4, h, h).to(device), torch.randn(n, 4, h, h).to(device), torch.full((n,), 500).to(device))
    ehs = torch.randn(1, 77, d).to(device)
    return Objective(pipe, LiveResiduals(layers)), A, B, ehs, batch, layers


def measure_variant(base: str, variant: str, resolution: int, iterations: int, dtype=None, batch_size: int = 1) -> dict:
    """Seconds per iteration and peak memory of one variant (run in its own process on a CPU,
    where memory is the process's peak; a GPU's peak is reset per variant)."""
    import torch

    from seqlib.config import TrainConfig
    from seqlib.steps import bilevel_iteration
    from seqlib.subspace import orthonormal_basis

    objective, A, B, ehs, batch, layers = _setup(base, resolution, dtype, batch_size)
    Qs = [orthonormal_basis(torch.zeros(m.in_features, 0)).to(A[0].device) for _, m in layers]
    emb = torch.zeros(8)
    cuda = A[0].is_cuda
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def one():
        if VARIANTS[variant] is None:
            leaves = [t.detach().requires_grad_(True) for t in A + B]
            torch.autograd.grad(objective(leaves[: len(A)], leaves[len(A) :], ehs, batch), leaves)
        else:
            cfg = TrainConfig(**VARIANTS[variant])
            encode = lambda e: ehs + 0 * e.sum()  # noqa: E731 (no text encoder)
            bilevel_iteration(objective, encode, A, B, Qs, emb, lambda: batch, cfg)

    with objective.live:
        one()  # warm-up
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(iterations):
            one()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / iterations
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"seconds": seconds, "memory": max(peak - before, 0)}


def projector_cost(concepts: int = 100) -> dict:
    """Building the projector over `concepts` earlier bases on SD1.5's layer widths, and one
    projection per layer, against an SD1.5 step measured elsewhere in this run."""
    import torch

    from seqlib.subspace import orthonormal_basis, project_out

    widths = [320] * 30 + [640] * 30 + [768] * 32 + [1280] * 36 + [1280] * 12  # ≈ SD1.5's 140 adapted layers
    start = time.perf_counter()
    for m in widths:
        r = min(4, m // (concepts + 1))
        Q = orthonormal_basis(torch.randn(m, concepts * r))
        project_out(torch.randn(m, r), Q)
    build = time.perf_counter() - start
    Qs = [orthonormal_basis(torch.randn(m, concepts * min(4, m // (concepts + 1)))) for m in widths]
    start = time.perf_counter()
    for m, Q in zip(widths, Qs):
        project_out(torch.randn(m, 4), Q)
    per_step = time.perf_counter() - start
    return {"build_seconds": build, "projection_seconds_per_B_step": per_step}


def quality(concepts: int, steps: int) -> list[tuple[str, dict]]:
    """Fit (gain when learned) and forgetting (loss increase after all later concepts) per method."""
    from seqlib.api import Library
    from seqlib.config import TrainConfig
    from seqlib.data import find_images, load_images
    from seqlib.heldout import held_out, write_photos
    from seqlib.lora import summed_factors
    from seqlib.train import concept_loss, evaluation_inputs

    rows = []
    specs = held_out(concepts)
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        write_photos(photos, specs, count=4)
        for method in ("seqlora", "alternating", "frozen-basis", "lora"):
            lib = Library.init(Path(tmp) / method / ".seqlib")
            start = time.perf_counter()
            for i, name in enumerate(specs):
                lib.add(name, photos / name, config=TrainConfig(method=method, steps=steps, seed=i))
            per_concept = (time.perf_counter() - start) / concepts
            head = lib.head()
            pipe = lib.load_base(head, "cpu", None)
            factors = [lib.factors(c, head) for c in head.concepts]
            fits, forgetting = [], []
            for j, c in enumerate(head.concepts):
                cfg = TrainConfig(method=method, steps=steps, seed=j)
                inputs = evaluation_inputs(
                    pipe, c.token, factors[j][2], load_images(find_images(photos / c.name), 64), cfg
                )
                upto = concept_loss(pipe, summed_factors([(A, B, 1.0) for A, B, _ in factors[: j + 1]]), inputs)
                before = concept_loss(pipe, summed_factors([(A, B, 1.0) for A, B, _ in factors[:j]]), inputs)
                end = concept_loss(pipe, summed_factors([(A, B, 1.0) for A, B, _ in factors]), inputs)
                fits.append(before - upto)
                forgetting.append(end - upto)
            rows.append(
                (
                    method,
                    {
                        "fit": statistics.mean(fits),
                        "forgetting": statistics.mean(forgetting),
                        "forgetting_sem": statistics.stdev(forgetting) / len(forgetting) ** 0.5,
                        "seconds": per_concept,
                    },
                )
            )
            print(method, rows[-1][1], flush=True)
    return rows


def _passes(variant: str) -> str:
    from seqlib.config import TrainConfig
    from seqlib.methods import get

    cfg = TrainConfig(**VARIANTS[variant])
    passes = get(cfg.method).passes_per_iteration(cfg.S_B, cfg.S_A, cfg.hvp)
    return f"{passes}" + (" (double backward counted as 3)" if cfg.hvp == "autograd" else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-sd15", action="store_true")
    parser.add_argument("--skip-embedded", action="store_true")
    parser.add_argument("--cost-only", action="store_true", help="Only the per-iteration cost tables.")
    parser.add_argument("--concepts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="Append the tables to this markdown file.")
    parser.add_argument("--_variant", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._variant:  # child process: one variant, JSON on stdout
        base, variant, res, iters = args._variant
        print(json.dumps(measure_variant(base, variant, int(res), int(iters))))
        return

    lines = [f"### Trainer benchmark ({date.today()}, {platform.machine()}, {platform.processor() or 'cpu'})", ""]
    bases = ([] if args.skip_embedded else [("embedded", 64, 5)]) + ([] if args.skip_sd15 else [("sd15", 128, 1)])
    for base, res, iters in bases:
        results = {}
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, __file__, "--_variant", base, variant, str(res), str(iters)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            results[variant] = json.loads(out.strip().splitlines()[-1])
            print(base, variant, results[variant], flush=True)
        unit, mem = results["plain LoRA step"]["seconds"], results["plain LoRA step"]["memory"] or 1
        alt = results["alternating"]["seconds"]
        lines += [
            f"**{base}** ({res} px, batch 1, K=1 iteration with S_B=S_A=2)",
            "",
            "| variant | s / iteration | × plain LoRA step | × alternating | peak memory | × plain LoRA step |",
            "|---|---|---|---|---|---|",
        ]
        for variant, r in results.items():
            lines.append(
                f"| {variant} | {r['seconds']:.3f} | {r['seconds'] / unit:.1f} | {r['seconds'] / alt:.2f} "
                f"| {r['memory'] / 2**20:.0f} MiB | {r['memory'] / mem:.2f} |"
            )
        lines.append("")
        lines.append(
            "Passes per iteration (forward+backward, from `Method.passes_per_iteration`, checked by "
            "`tests/test_method.py`): "
            + ", ".join(f"{v} {_passes(v)}" for v in VARIANTS if VARIANTS[v] is not None)
            + "."
        )
        lines.append("")
        if base == "sd15" and not args.cost_only:
            proj = projector_cost()
            step = results["seqlora / autograd"]["seconds"]
            per_step = proj["projection_seconds_per_B_step"]
            lines += [
                f"Projector at 100 concepts on SD1.5's widths: built once per concept in "
                f"{proj['build_seconds']:.2f} s; applied per B-step in {per_step * 1e3:.1f} ms "
                f"= {per_step / step:.2%} of a seqlora iteration at this resolution.",
                "",
            ]
    if args.cost_only:
        emit(lines, args.out)
        return
    rows = quality(args.concepts, args.steps)
    lines += [
        f"**Quality**, {args.concepts} sequential concepts, {args.steps} rounds each, embedded pretrained base",
        "",
        "| method | fit (loss gain when learned) | forgetting (loss rise after all later concepts, ± SEM) "
        "| s per concept |",
        "|---|---|---|---|",
    ]
    for method, r in rows:
        lines.append(
            f"| {method} | {r['fit']:.4f} | {r['forgetting']:+.4f} ± {r['forgetting_sem']:.4f} | {r['seconds']:.1f} |"
        )
    emit(lines, args.out)


if __name__ == "__main__":
    main()
