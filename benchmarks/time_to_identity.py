"""Time to identity: how many seconds of training each method needs before its concept renders as
itself. The headline trainer metric (issue 16): per-iteration cost says little if one method needs
more iterations.

For each variant, learns ``examples/<name>`` into a fresh library at several budgets (``--steps``
rounds each, every budget a separate run from scratch, so the schedule is the one a user with that
budget gets), renders "a photo of <name>" alone (seeds 0-7, sampled as in ``stream.py``) and scores
identity (``seqlib.identity``: cosine to the mean embedding of the training photos). Prints a table
(training seconds and identity per budget; seconds to reach 0.5 and 0.7, interpolated between
budgets) and writes the curves to ``--out``/time_to_identity.png.

    python benchmarks/time_to_identity.py --out build/tti                    # ~25 min on 2 cores
    python benchmarks/time_to_identity.py --out build/tti --steps 5,15 --variants "plain LoRA"
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from datetime import date
from pathlib import Path

import torch
from _report import emit
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
VARIANTS = {
    "seqlora (defaults)": {},
    "seqlora S_B=1 forward-diff": {"S_B": 1, "hvp": "forward-diff"},
    "alternating": {"method": "alternating"},
    "plain LoRA": {"method": "lora-joint"},
}
THRESHOLDS = (0.5, 0.7)


def seconds_to(points: list[tuple[float, float]], level: float) -> float | None:
    """First time the (seconds, identity) curve reaches ``level``, linear between budgets."""
    previous = (0.0, 0.0)
    for t, score in points:
        if score >= level:
            (t0, s0) = previous
            return t0 + (t - t0) * (level - s0) / (score - s0) if score > s0 else t
        previous = (t, score)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/tti"))
    parser.add_argument("--name", default="mascot")
    parser.add_argument("--steps", default="5,15,30,60", help="budgets in training rounds (60: the default)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names from VARIANTS")
    parser.add_argument("--fresh", action="store_true", help="ignore the points a previous run saved in --out")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()

    from seqlib.identity import load_encoder, reference, to_tensor

    encoder = load_encoder()
    photos = [Image.open(f).convert("RGB") for f in sorted((EXAMPLES / args.name).glob("*.png"))]
    refs = reference(encoder, to_tensor(photos))[None]
    budgets = [int(s) for s in args.steps.split(",")]
    saved = args.out / "time_to_identity.json"
    done = {} if args.fresh or not saved.is_file() else json.loads(saved.read_text())  # resumable: point by point
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for variant in args.variants.split(","):
        curves[variant] = []
        for steps in budgets:
            key = f"{variant} | {steps}"
            if key not in done:
                done[key] = _point(args, variant, steps, encoder, refs)
                saved.write_text(json.dumps(done, indent=1) + "\n")
            curves[variant].append(tuple(done[key]))
            row = {"variant": variant, "steps": steps, "seconds": done[key][0], "identity": done[key][1]}
            print(json.dumps(row), flush=True)
    _plot(curves, args.out / "time_to_identity.png", args.name)
    header = " | ".join(f"{s} rounds: s, identity" for s in budgets)
    lines = [
        f"`<{args.name}>` alone, {args.images} images, tiny embedded base, CPU ({torch.get_num_threads()} threads), "
        f"{date.today()}",
        "",
        f"| variant | {header} | s to 0.5 | s to 0.7 |",
        "|---|" + "---:|" * (len(budgets) + 2),
    ]
    for variant, points in curves.items():
        cells = " | ".join(f"{t:.0f}, {m:.2f} ± {sd:.2f}" for t, m, sd in points)
        reach = [seconds_to([(t, m) for t, m, _ in points], level) for level in THRESHOLDS]
        lines.append(f"| {variant} | {cells} | " + " | ".join("–" if r is None else f"{r:.0f}" for r in reach) + " |")
    emit(lines, None)


def _point(args, variant: str, steps: int, encoder, refs) -> tuple[float, float, float]:
    """(training seconds, mean identity, its sd) of one add at ``steps`` rounds from scratch."""
    from stream import generate

    from seqlib.api import Library
    from seqlib.config import TrainConfig
    from seqlib.identity import identity_scores

    folder = args.out / "libraries" / f"{variant}-{steps}".replace(" ", "_")
    finished = (folder / ".seqlib" / "store.json").is_file() and not args.fresh
    concept = Library.open(folder).head().concept(args.name) if finished else None
    lib = Library.open(folder) if concept else None
    if concept is None:  # not trained yet (a finished library is reused: the run is resumable)
        shutil.rmtree(folder, ignore_errors=True)
        lib = Library.init(folder)
        config = TrainConfig(steps=steps, **VARIANTS[variant])
        concept = lib.add(args.name, EXAMPLES / args.name, config=config, preview=False)
    pipe = lib.pipeline({args.name: 1.0})
    images = generate(pipe, [f"a photo of <{args.name}>"] * args.images, list(range(args.images)))
    scores = identity_scores(encoder, images, refs)[:, 0].tolist()
    return concept.train_seconds, statistics.mean(scores), statistics.stdev(scores)


def _plot(curves: dict, path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for variant, points in curves.items():
        t, m, sd = zip(*points)
        ax.errorbar(t, m, yerr=sd, marker="o", capsize=3, label=variant)
    for level in THRESHOLDS:
        ax.axhline(level, color="#bbb", linewidth=0.8, linestyle="--")
    ax.set_xlabel("training seconds (2-core CPU)")
    ax.set_ylabel(f"identity of <{name}> alone")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
