"""How much of a concept's gain survives composition, and what it costs in capacity.

For each setting, trains N concepts sequentially on the embedded base, then for every
concept j measures its evaluation loss (its own images and prompt, fixed noise and
timesteps) with no concept, with j alone, and with all N composed:

    gain_j = L_j(∅) − L_j({j})          lost_j = L_j(all) − L_j({j})          share = lost / gain

and reports the median crosstalk ratio recorded at add time and the dimensions each
concept takes at the bottleneck layer. All numbers come from one run.

    python benchmarks/interference.py --concepts 8 --steps 10
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path

from _report import emit

SETTINGS = {
    "naive sum (plain LoRA)": dict(method="lora"),
    "SeqLoRA, random init": dict(),
    "SeqLoRA, activation init": dict(basis_init="activation"),
    "SeqLoRA, activation init + protect 2": dict(basis_init="activation", protect=2),
}


def run_setting(work: Path, photos: Path, names: list[str], overrides: dict, steps: int) -> dict:
    from seqlib.api import Library
    from seqlib.config import TrainConfig
    from seqlib.crosstalk import all_pairs
    from seqlib.data import find_images, load_images
    from seqlib.lora import summed_factors
    from seqlib.train import concept_loss, evaluation_inputs

    lib = Library.init(work / ".seqlib")
    start = time.perf_counter()
    for i, name in enumerate(names):
        lib.add(name, photos / name, config=TrainConfig(steps=steps, seed=i, **overrides))
    seconds = (time.perf_counter() - start) / len(names)

    head = lib.head()
    factors = {c.name: lib.factors(c, head) for c in head.concepts}
    everything = summed_factors([(A, B, 1.0) for A, B, _ in factors.values()])
    pipe = lib.load_base(head, "cpu", None)
    shares, gains = [], []
    for c in head.concepts:
        A, B, emb = factors[c.name]
        cfg = TrainConfig(steps=steps, seed=c.training.seed, **overrides)
        inputs = evaluation_inputs(pipe, c.token, emb, load_images(find_images(photos / c.name), 64), cfg)
        none, alone = concept_loss(pipe, {}, inputs), concept_loss(pipe, summed_factors([(A, B, 1.0)]), inputs)
        composed = concept_loss(pipe, everything, inputs)
        gains.append(none - alone)
        if none - alone > 0:
            shares.append((composed - alone) / (none - alone))
    pairs = [x for _, _, x in all_pairs(head.concepts, lib.store.crosstalk)]
    dims = [c.rank + max(c.reserved) for c in head.concepts]
    return {
        "seconds": seconds,
        "gain": statistics.mean(gains),
        "positive": len(shares),
        "share": statistics.median(shares) if shares else float("nan"),
        "share_mean": statistics.mean(shares) if shares else float("nan"),
        "crosstalk": statistics.median(pairs),
        "dims": statistics.mean(dims),
        "fits": lib.status().fits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="Append the table to this markdown file.")
    args = parser.parse_args()

    from seqlib.heldout import held_out, write_photos

    specs = held_out(args.concepts)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        write_photos(photos, specs, count=4)
        for label, overrides in SETTINGS.items():
            result = run_setting(Path(tmp) / label.replace(" ", "_"), photos, list(specs), overrides, args.steps)
            rows.append((label, result))
            print(f"{label}: {result}", flush=True)

    lines = [
        f"### Interference, {args.concepts} sequential concepts, {args.steps} rounds each "
        f"({date.today()}, {platform.machine()}, {platform.processor() or 'cpu'}, embedded pretrained base)",
        "",
        "| setting | mean gain L(∅)−L({j}) | concepts with gain > 0 | gain lost composed (median, mean) "
        "| median crosstalk | dims per concept | more concepts fit | s per concept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, r in rows:
        lines.append(
            f"| {label} | {r['gain']:.4f} | {r['positive']}/{args.concepts} | {r['share']:.0%}, {r['share_mean']:.0%} "
            f"| {r['crosstalk']:.3g} | {r['dims']:.1f} | {r['fits']} | {r['seconds']:.1f} |"
        )
    emit(lines, args.out)


if __name__ == "__main__":
    main()
