"""SD1.5 at scale, no training: import N rank-4 LoRAs into an SD1.5-architecture library and
time every verb users run on it, against diffusers + PEFT loading and fusing the same adapters.

The base is SD1.5's architecture with random weights and the real CLIP tokenizer
(``sd15_random.py``). Concepts are synthetic rank-4 kohya files, adopted with ``import``: their
bases are projected into the free space, so by concept 81 the 320-wide layers are full
(floor(320 / 4) = 80) and the rest are adopted with ``--when-full skip``; one import with
``--when-full shrink`` and one with ``refuse`` are tried there too. At each checkpoint N it
times status, list, show, verify, export, and compose: reading the factors + the sum into the
weights (``compose``), against loading the base alone, and ``Library.pipeline`` end to end (a
fresh base, tokens registered, the sum), and diffusers + PEFT loading seqlib's own exports of the same N concepts
(``load_lora_weights`` each, ``set_adapters``, ``fuse_lora``); the fused UNet weights are
compared with seqlib's composed ones. Ratios in one run. One thread pool: run it alone.

    python benchmarks/scale.py --base build/sd15-random --work build/scale            # ~1 h on 2 cores
    python benchmarks/scale.py --base build/sd15-random --work build/scale --concepts 12 --checkpoints 1,10 --peft 1,10
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
from _report import emit
from safetensors.torch import save_file

from seqlib import Library
from seqlib.errors import CapacityError
from seqlib.export import to_kohya
from seqlib.lora import WeightPatch, summed_factors


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def synthetic_lora(layers, seed: int, path: Path, rank: int = 4) -> Path:
    """A rank-``rank`` kohya LoRA on every adapted layer: random factors, ΔW ~ 1e-2 per entry."""
    g = torch.Generator().manual_seed(seed)
    factors = {
        x.name: (
            torch.randn(x.out_features, rank, generator=g) / 10,
            torch.randn(rank, x.in_features, generator=g) / 10,
        )
        for x in layers
    }
    save_file(to_kohya({k: (up / 10, down / 10) for k, (up, down) in factors.items()}), str(path))
    return path


def cli_seconds(store: Path, *args: str) -> float:
    """Wall time of a `seqlib` command in a fresh process (what a user waits for)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seqlib", "--store", str(store), *args], check=True, capture_output=True)
    return time.perf_counter() - start


def compose_checks(lib: Library, names: list[str], exports: Path, peft: bool) -> dict:
    """seqlib's compose of ``names`` (base load, factors, sum) and PEFT's load + fuse of the
    same concepts' exports; their fused attention weights compared."""
    commit = lib.head()
    row: dict = {}
    row["base_load_s"], pipe = timed(lambda: lib.load_base(commit, "cpu"))
    row["factors_s"], factors = timed(lambda: [(*lib.factors(lib.concept(n, commit), commit)[:2], 1.0) for n in names])
    row["sum_s"], _ = timed(lambda: WeightPatch(pipe.unet).apply(summed_factors(factors)))
    row["compose_s"] = row["factors_s"] + row["sum_s"]
    ours = {n: m.weight.detach().clone() for n, m in pipe.unet.named_modules() if n in factors[0][0]}
    pipe = None  # freed before the end-to-end call loads another
    row["pipeline_s"], _ = timed(lambda: lib.pipeline(names))  # the public call, end to end
    if peft:
        from diffusers import StableDiffusionPipeline

        base = lib.head().library.base.source
        theirs = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)

        def load_and_fuse() -> None:
            for n in names:
                theirs.load_lora_weights(str(exports / f"{n}.safetensors"), adapter_name=n)
            theirs.set_adapters(names, [1.0] * len(names))
            theirs.fuse_lora(adapter_names=names, lora_scale=1.0)

        row["peft_s"], _ = timed(load_and_fuse)
        modules = dict(theirs.unet.named_modules())
        fused = {n: getattr(modules[n], "base_layer", modules[n]).weight for n in ours}
        row["peft_max_abs_diff"] = max(float((fused[n] - w).abs().max()) for n, w in ours.items())
        row["peft_over_seqlib"] = row["peft_s"] / row["compose_s"]
    row["compose_over_base_load"] = row["compose_s"] / row["base_load_s"]
    return row


def import_one(lib: Library, layers, work: Path, i: int, names: list[str], imports: list[dict]) -> dict:
    """Import concept ``names[-1]`` (number ``i``), with ``skip`` once a layer is full (and
    ``refuse``/``shrink`` tried there once); export it for PEFT."""
    name = names[-1]
    path = synthetic_lora(layers, i, work / "loras" / f"{name}.safetensors")
    full = lib.status().bottleneck_free < lib.head().library.rank
    if full and "shrink" not in {x["policy"] for x in imports}:
        for policy in ("refuse", "shrink"):  # both refuse on a full layer: shrink never drops one
            try:
                lib.import_lora(name, path, when_full=policy, force=True)
                raise SystemExit(f"--when-full {policy} imported into a full layer")
            except CapacityError as e:
                imports.append({"n": i, "policy": policy, "seconds": None, "refused": str(e).splitlines()[0]})
    policy = "skip" if full else "refuse"
    seconds, (_, errors) = timed(lambda: lib.import_lora(name, path, when_full=policy, force=True))
    imports.append({"n": i, "policy": policy, "seconds": seconds, "error": errors["overall"]})
    export_s, _ = timed(lambda: lib.export(name, work / "exports" / f"{name}.safetensors"))
    print(
        f"import {name} ({policy}) {seconds:.2f} s, error {errors['overall']:.3f}; export {export_s:.2f} s", flush=True
    )
    return {"n": i, "import_s": seconds, "export_one_s": export_s}


def checkpoint(lib: Library, names: list[str], work: Path, peft: bool) -> dict:
    """Every verb timed on the library as it stands."""
    row = {}
    row["status_s"], _ = timed(lib.status)
    row["show_s"], _ = timed(lambda: lib.show(names[-1]))
    row["list_cli_s"] = cli_seconds(lib.root, "list")
    row["status_cli_s"] = cli_seconds(lib.root, "status")
    row["verify_s"], report = timed(lambda: lib.verify(check_base=False))
    row["verify_ok"] = not report.get("problems")
    row["export_all_s"], _ = timed(lambda: lib.export(names, work / "all" / "all.safetensors"))
    row |= compose_checks(lib, names, work / "exports", peft)
    commits = (Path(lib.root) / "objects" / "commits").glob("*.json")
    row["history_bytes"] = sum(f.stat().st_size for f in commits)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, required=True, help="an SD1.5-architecture diffusers folder")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (the library, LoRA files)")
    parser.add_argument("--concepts", type=int, default=101)
    parser.add_argument("--checkpoints", default="1,10,50,80,100")
    parser.add_argument("--peft", default="1,10,100", help="checkpoints where PEFT load+fuse is timed too")
    parser.add_argument("--out", type=Path, help="append the tables to this markdown file")
    args = parser.parse_args()
    checkpoints = {int(x) for x in args.checkpoints.split(",")} | {args.concepts}
    peft_at = {int(x) for x in args.peft.split(",") if x}

    shutil.rmtree(args.work, ignore_errors=True)
    (args.work / "loras").mkdir(parents=True)
    (args.work / "exports").mkdir()
    init_s, lib = timed(lambda: Library.init(args.work / "lib", base=str(args.base), rank=4))
    layers = lib.head().library.layers
    print(f"init {init_s:.1f} s; {len(layers)} layers; widths {sorted({x.in_features for x in layers})}", flush=True)
    imports, rows, names = [], [], []
    for i in range(1, args.concepts + 1):
        names.append(f"c{i:03d}")
        row = import_one(lib, layers, args.work, i, names, imports)
        if i in checkpoints:
            row |= checkpoint(lib, names, args.work, i in peft_at)
            rows.append(row)
            print(json.dumps(row), flush=True)

    machine = platform.processor() or platform.machine()
    result = {"date": str(date.today()), "machine": machine, "imports": imports, "rows": rows}
    (args.work / "scale.json").write_text(json.dumps(result, indent=1))
    lines = [
        f"SD1.5 architecture, random weights, {len(layers)} attention layers, rank 4, CPU "
        f"({torch.get_num_threads()} threads), {date.today()}",
        "",
        "| N | import (s) | status (s) | `seqlib list` (s) | `seqlib status` (s) | verify (s) | export all (s) "
        "| base load (s) | compose (s) | compose / base load | `Library.pipeline` (s) | PEFT load+fuse (s) "
        "| PEFT / seqlib | max abs weight diff | history (MB) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        peft = "– | – | –"
        if "peft_s" in r:
            peft = f"{r['peft_s']:.1f} | {r['peft_over_seqlib']:.0f}× | {r['peft_max_abs_diff']:.1e}"
        lines.append(
            f"| {r['n']} | {r['import_s']:.2f} | {r['status_s']:.3f} | {r['list_cli_s']:.1f} | {r['status_cli_s']:.1f} "
            f"| {r['verify_s']:.1f} | {r['export_all_s']:.2f} | {r['base_load_s']:.1f} | {r['compose_s']:.2f} "
            f"| {r['compose_over_base_load']:.2f} | {r['pipeline_s']:.1f} | {peft} | {r['history_bytes'] / 1e6:.1f} |"
        )
    refused = [x for x in imports if x.get("refused")]
    lines += ["", *(f"- concept {x['n']}, `--when-full {x['policy']}`: {x['refused']}" for x in refused)]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
