"""The GPU check, ready for the day a GPU is lent: one script, well under 8 minutes on one GPU.

On SD1.5's UNet architecture with random weights (no download), at 512 px in bf16 (fp16 with
--dtype fp16), measured in one run:

1. seconds and peak memory per bilevel iteration (K=1, S_B=S_A=2) for seqlora with the
   finite-difference cross-Hessian, alternating, and one plain LoRA step (the unit);
2. a full `seqlib add` at the suggested SD1.5 settings (docs/method.md), extrapolated from (1):
   steps x K iterations (the text encoder and VAE add little beside the UNet's passes);
3. composing 100 rank-4 concepts: seqlib's sum (one matmul per layer, added into the weights)
   against PEFT injecting the same 100 adapters and merging them (diffusers' load + fuse path
   without the file reads), and loading the base itself for scale.

Writes gpu_check.json and gpu_check.md to --out. ``--dry-run`` runs the same code on a CPU
with an SD1.5-shaped UNet a few MB large (a test runs it).

    python benchmarks/gpu_check.py --out $OUT                # on the GPU machine
    python benchmarks/gpu_check.py --dry-run --out build/gpu  # anywhere, seconds
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
from trainer import SD15_SHAPED_TINY, SD15_UNET, measure_variant

SUGGESTED = {"steps": 150, "K": 3}  # docs/method.md, "SD1.5: suggested settings"


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compose_check(config: dict, concepts: int, peft_concepts: int, dtype) -> dict:
    """Seconds to load the base, to compose 1, 10 and ``concepts`` rank-4 concepts with seqlib,
    and the first ``peft_concepts`` of them with PEFT (its per-adapter injection walks the whole
    model each time: 100 adapters took minutes even on a tiny UNet)."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.lora import LoraLayer

    from seqlib.lora import WeightPatch, adapted_layers, summed_factors

    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet = None

    def load() -> None:
        nonlocal unet
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**config).to(device, dtype).eval()

    load_seconds = _timed(load)
    layers = adapted_layers(unet)
    g = torch.Generator().manual_seed(1)
    factors = [
        (
            {n: 0.01 * torch.randn(m.out_features, 4, generator=g) for n, m in layers},
            {n: torch.randn(m.in_features, 4, generator=g) for n, m in layers},
            1.0,
        )
        for _ in range(concepts)
    ]
    gpu = [({n: a.to(device) for n, a in A.items()}, {n: b.to(device) for n, b in B.items()}, w) for A, B, w in factors]
    seqlib_seconds = {}
    for n in sorted({1, min(10, concepts), min(peft_concepts, concepts), concepts}):
        patch = WeightPatch(unet)
        seqlib_seconds[n] = _timed(lambda n=n, patch=patch: patch.apply(summed_factors(gpu[:n])))
        patch.revert()

    load()  # a fresh base for PEFT
    targets = sorted({n.rsplit(".", 1)[-1] if not n.endswith("to_out.0") else "to_out.0" for n, _ in layers})

    def peft() -> None:
        for i, (A, B, _) in enumerate(factors[:peft_concepts]):
            name = f"c{i}"
            inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=targets), unet, adapter_name=name)
            state = {f"{n}.lora_A.weight": B[n].T for n in A} | {f"{n}.lora_B.weight": A[n] for n in A}
            set_peft_model_state_dict(unet, state, adapter_name=name)
        for module in unet.modules():
            if isinstance(module, LoraLayer):
                module.merge(adapter_names=[f"c{i}" for i in range(peft_concepts)])

    peft_seconds = _timed(peft)
    return {"load_base": load_seconds, "seqlib": seqlib_seconds, "peft": peft_seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/gpu_check"))
    parser.add_argument("--dry-run", action="store_true", help="CPU, an SD1.5-shaped UNet a few MB large.")
    parser.add_argument(
        "--dtype", choices=("bf16", "fp16", "fp32"), default=None, help="Default: bf16 (dry run: fp32)."
    )
    parser.add_argument("--concepts", type=int, default=100, help="Concepts composed by seqlib (dry run: 10).")
    parser.add_argument("--peft-concepts", type=int, default=10, help="The first N of them through PEFT (dry run: 3).")
    args = parser.parse_args()
    dry = args.dry_run
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("fp32" if dry else "bf16")
    ]
    base, size, iterations = ("sd15-tiny", 64, 1) if dry else ("sd15", 512, 3)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    report: dict = {"device": device, "dtype": str(dtype), "resolution": size, "dry_run": dry}

    variants = ("seqlora / finite-diff", "alternating", "plain LoRA step")
    report["iteration"] = {v: measure_variant(base, v, size, iterations, dtype) for v in variants}
    t = report["iteration"]
    seqlora = t["seqlora / finite-diff"]["seconds"]
    report["ratios"] = {
        "seqlora / alternating": seqlora / t["alternating"]["seconds"],
        "seqlora / plain LoRA step": seqlora / t["plain LoRA step"]["seconds"],
    }
    report["add_extrapolated_seconds"] = SUGGESTED["steps"] * SUGGESTED["K"] * seqlora
    concepts, peft_concepts = (
        (min(args.concepts, 10), min(args.peft_concepts, 3)) if dry else (args.concepts, args.peft_concepts)
    )
    report["compose"] = compose_check(SD15_SHAPED_TINY if dry else SD15_UNET, concepts, peft_concepts, dtype)
    c, same = (
        report["compose"],
        report["compose"]["seqlib"][peft_concepts] if peft_concepts in report["compose"]["seqlib"] else None,
    )

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"GPU check on {device}, {report['dtype']}, {size} px{' (DRY RUN: not a GPU number)' if dry else ''}",
        "",
        "| variant | s / iteration | peak memory |",
        "|---|---|---|",
        *[f"| {v} | {r['seconds']:.3f} | {r['memory'] / 2**30:.2f} GiB |" for v, r in t.items()],
        "",
        f"seqlora / alternating {report['ratios']['seqlora / alternating']:.2f}x; "
        f"a full add at the suggested settings ({SUGGESTED['steps']} rounds x K={SUGGESTED['K']}) "
        f"≈ {report['add_extrapolated_seconds'] / 60:.1f} min (extrapolated).",
        "",
        "Compose: seqlib "
        + ", ".join(f"{n} concepts {s:.3f} s" for n, s in c["seqlib"].items())
        + f"; loading the base {c['load_base']:.2f} s (seqlib at {concepts} = "
        f"{c['seqlib'][concepts] / c['load_base']:.2f}x of it); PEFT inject + merge of {peft_concepts} concepts "
        f"{c['peft']:.2f} s" + (f" ({c['peft'] / same:.0f}x seqlib's for as many)." if same else "."),
    ]
    (args.out / "gpu_check.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
