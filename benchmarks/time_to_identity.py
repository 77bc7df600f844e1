"""Time to identity: how many seconds of training each method needs before its concept renders as
itself. The headline trainer metric (issue 16): per-iteration cost says little if one method needs
more iterations.

For each variant, learns ``examples/<name>`` (or several, ``--name a,b,c``, one after the other
into one library) into a fresh library at several budgets (``--steps`` rounds each, every budget a
separate run from scratch, so the schedule is the one a user with that budget gets), renders "a
photo of <name>" (seeds 0-7, sampled as in ``stream.py``) with the concept alone and, for several
concepts, with all of them active (the paper's protocol), and scores identity (``seqlib.identity``:
cosine to the mean embedding of the concept's training photos). Prints a table (training seconds
and identity per budget; seconds to reach 0.5 and 0.7 alone, interpolated between budgets) and
writes the curves to ``--out``/time_to_identity.png.

    python benchmarks/time_to_identity.py --out build/tti                    # ~25 min on 2 cores
    python benchmarks/time_to_identity.py --out build/tti --steps 5,15 --variants "plain LoRA"
    python benchmarks/time_to_identity.py --out build/tti3 --name mascot,emblem,robot --steps 15,45 \
        --variants "seqlora S_B=1 forward-diff,seqlora (defaults),plain LoRA"   # ~30 min
    python benchmarks/time_to_identity.py --out build/lab-tti --name mascot --steps 30,60,120 --one-run \
        --base embedded:lab --grids --variants "seqlora forward-diff bf16"     # ~16 min per concept

``--one-run``: each concept alone in its own library, every budget from one add at the largest
(the smaller ones resume its checkpoints: the same factors, to the digit, as a from-scratch add).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import replace
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
    "seqlora token-local K/V": {"kv_scope": "token"},
    "seqlora forward-diff": {"hvp": "forward-diff"},
    "seqlora forward-diff token-local K/V": {"hvp": "forward-diff", "kv_scope": "token"},
    "seqlora forward-diff bf16": {"hvp": "forward-diff", "precision": "bf16"},
    "seqlora forward-diff bf16 lr 3e-3": {"hvp": "forward-diff", "precision": "bf16"}
    | {"alpha": 3e-3, "beta": 3e-3, "lr_embed": 3e-3},
    "seqlora forward-diff bf16 lr 1e-2": {"hvp": "forward-diff", "precision": "bf16"}
    | {"alpha": 1e-2, "beta": 1e-2, "lr_embed": 1e-2},
    "seqlora forward-diff bf16 lr 3e-3 batch 8": {"hvp": "forward-diff", "precision": "bf16", "batch_size": 8}
    | {"alpha": 3e-3, "beta": 3e-3, "lr_embed": 3e-3},
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
    parser.add_argument("--base", default=None, help="seqlib init --base (default: the tiny embedded base)")
    parser.add_argument("--grids", action="store_true", help="save each point's images as PNG grids in --out")
    parser.add_argument("--reserve", action="store_true", help="`seqlib reserve` each library before its concepts")
    parser.add_argument("--layers", default=None, help="seqlib init --layers (default: the base's default set)")
    parser.add_argument(
        "--one-run",
        action="store_true",
        help="each concept alone in its own library, all budgets from one add at the largest: the smaller "
        "budgets resume its checkpoints (the same factors a from-scratch add reaches: constant step sizes, "
        "one seeded batch stream)",
    )
    parser.add_argument(
        "--guidance", default="5", help="--one-run: guidance scales to render each point at (5: stream.py's)"
    )
    args = parser.parse_args()
    if args.guidance != "5" and not args.one_run:
        parser.error("--guidance needs --one-run")

    from seqlib.identity import load_encoder, reference, to_tensor

    encoder = load_encoder()
    names = args.name.split(",")
    refs = {}
    for name in names:
        photos = [Image.open(f).convert("RGB") for f in sorted((EXAMPLES / name).glob("*.png"))]
        refs[name] = reference(encoder, to_tensor(photos))[None]
    budgets = [int(s) for s in args.steps.split(",")]
    saved = args.out / "time_to_identity.json"
    done = {} if args.fresh or not saved.is_file() else json.loads(saved.read_text())  # resumable: point by point
    curves: dict[str, list[tuple[float, float, float]]] = {}
    scales = [float(g) for g in args.guidance.split(",")]
    runs = [(v, g) for v in args.variants.split(",") for g in scales]
    for variant, g in runs:
        label = variant + ("" if g == 5 else f", guidance {g:g}")
        curves[label] = []
        for steps in budgets:
            key = f"{variant} | {steps}" + ("" if len(names) == 1 else f" | {args.name}")
            key += f" | {args.base}" if args.base else ""
            key += " | reserve" if args.reserve else ""
            key += f" | {args.layers}" if args.layers else ""
            key += " | one-run" if args.one_run else ""
            at_g = "" if g == 5 else f" | g{g:g}"
            if key + at_g not in done and args.one_run:
                for (b, scale), point in _curve(args, variant, budgets, encoder, refs, scales).items():
                    at = key.replace(f"{variant} | {steps}", f"{variant} | {b}")
                    done[at + ("" if scale == 5 else f" | g{scale:g}")] = point
                saved.write_text(json.dumps(done, indent=1) + "\n")
            key += at_g
            if key not in done:
                done[key] = _point(args, variant, steps, encoder, refs)
                saved.write_text(json.dumps(done, indent=1) + "\n")
            point = list(done[key])
            if len(point) == 3:  # one concept: all active is alone
                point += point[1:3]
            curves[label].append(tuple(point))
            row = {"variant": label, "steps": steps, "seconds": point[0], "alone": point[1], "all": point[3]}
            print(json.dumps(row), flush=True)
    _plot(curves, args.out / "time_to_identity.png", args.name, several=len(names) > 1)
    header = " | ".join(f"{s} rounds: s, alone" + (", all active" if len(names) > 1 else "") for s in budgets)
    where = "alone" if len(names) == 1 else "alone and with all active (mean over the concepts)"
    lines = [
        f"`{', '.join(f'<{n}>' for n in names)}` {where}, {args.images} images each, "
        f"{args.base or 'tiny embedded'} base, "
        f"CPU ({torch.get_num_threads()} threads), {date.today()}",
        "",
        f"| variant | {header} | s to 0.5 alone | s to 0.7 alone |",
        "|---|" + "---:|" * (len(budgets) + 2),
    ]
    for variant, points in curves.items():
        cells = " | ".join(
            f"{t:.0f}, {m:.2f} ± {sd:.2f}" + (f", {a:.2f} ± {asd:.2f}" if len(names) > 1 else "")
            for t, m, sd, a, asd in points
        )
        reach = [seconds_to([(p[0], p[1]) for p in points], level) for level in THRESHOLDS]
        lines.append(f"| {variant} | {cells} | " + " | ".join("–" if r is None else f"{r:.0f}" for r in reach) + " |")
    emit(lines, None)


def _point(args, variant: str, steps: int, encoder, refs: dict) -> tuple[float, ...]:
    """(training seconds, identity alone: mean, sd[, with all active: mean, sd]) of adds at
    ``steps`` rounds from scratch, the concepts one after the other into one library."""
    from stream import generate

    from seqlib.api import Library
    from seqlib.config import TrainConfig
    from seqlib.identity import identity_scores

    names = list(refs)
    tag = f"{variant}-{steps}" + (f"-{args.base}" if args.base else "") + ("-reserve" if args.reserve else "")
    tag += f"-{args.layers}" if args.layers else ""
    folder = args.out / "libraries" / tag.replace(" ", "_").replace(":", "_").replace("/", "_")
    if args.fresh or not (folder / ".seqlib" / "store.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        Library.init(folder, base=args.base, layers=args.layers)
        if args.reserve:
            Library.open(folder).reserve()
    lib = Library.open(folder)
    for name in names:  # a finished concept is reused: the run is resumable
        if lib.head().concept(name) is None:
            start = time.perf_counter()
            lib.add(name, EXAMPLES / name, config=TrainConfig(steps=steps, **VARIANTS[variant]), preview=False)
            print(f"add {name} ({tag}): {time.perf_counter() - start:.0f} s wall", flush=True)
    seconds = sum(lib.head().concept(n).train_seconds for n in names)
    pairs = [v for n in names[1:] for v in lib.store.crosstalk(lib.head().concept(n)).crosstalk_from.values()]
    pairs += [v for n in names[1:] for v in lib.store.crosstalk(lib.head().concept(n)).crosstalk_onto.values()]
    if pairs:
        print(
            f"crosstalk between the {len(names)} concepts: median {statistics.median(pairs):.3g}, "
            f"max {max(pairs):.3g} ({len(pairs)} values)",
            flush=True,
        )
    seeds = list(range(args.images))

    def scores(selection: dict[str, float]) -> list[float]:
        pipe = lib.pipeline(selection)
        found = []
        for name in names if len(selection) > 1 else list(selection):
            images = generate(pipe, [f"a photo of <{name}>"] * args.images, seeds)
            found += identity_scores(encoder, images, refs[name])[:, 0].tolist()
            if args.grids:
                which = "all" if len(selection) > 1 else "alone"
                _grid(images, args.out / "grids" / f"{folder.name}-{name}-{which}.png")
        return found

    alone = [x for n in names for x in scores({n: 1.0})]
    point = (seconds, statistics.mean(alone), statistics.stdev(alone))
    if len(names) > 1:
        everything = scores(dict.fromkeys(names, 1.0))
        point += (statistics.mean(everything), statistics.stdev(everything))
    return point


def _curve(args, variant: str, budgets: list[int], encoder, refs: dict, scales: list[float]) -> dict:
    """Per (budget, guidance) (training seconds, identity alone: mean, sd), every concept in its own library, from
    one add per concept at the largest budget. Its checkpoints at the smaller budgets are resumed in
    copies of the empty library with ``steps`` set to that budget, so each point is the concept a user
    with that ``--steps`` gets; seconds are the largest add's, pro rata (a round costs the same)."""
    from stream import generate

    from seqlib import checkpoint
    from seqlib.api import Library
    from seqlib.config import TrainConfig
    from seqlib.identity import identity_scores

    budgets, top = sorted(budgets), max(budgets)
    tag = f"{variant}-one-run" + (f"-{args.base}" if args.base else "") + (f"-{args.layers}" if args.layers else "")
    root = args.out / "libraries" / tag.replace(" ", "_").replace(":", "_").replace("/", "_")
    shutil.rmtree(root, ignore_errors=True)
    scores: dict[tuple[int, float], list[float]] = {(b, g): [] for b in budgets for g in scales}
    seconds = dict.fromkeys(budgets, 0.0)
    save = checkpoint.save
    for name in refs:
        empty = root / f"{name}-empty"
        Library.init(empty, base=args.base, layers=args.layers)
        libraries = {b: root / f"{name}-{b}" for b in budgets}
        for folder in libraries.values():
            shutil.copytree(empty, folder)

        def keep(store, concept, state, meta, _libraries=libraries):
            save(store, concept, state, meta)
            rounds = len(state["losses"])
            if rounds in _libraries and rounds < top:
                target = Library.open(_libraries[rounds]).store
                save(target, concept, state, meta | {"config": meta["config"] | {"steps": rounds}})

        checkpoint.save = keep  # the add at the largest budget leaves its state at every smaller one
        try:
            config = TrainConfig(steps=top, **VARIANTS[variant])
            Library.open(libraries[top]).add(name, EXAMPLES / name, config=config, preview=False)
        finally:
            checkpoint.save = save
        total = Library.open(libraries[top]).head().concept(name).train_seconds
        for b, folder in libraries.items():
            lib = Library.open(folder)
            if b < top:
                lib.add(name, EXAMPLES / name, config=replace(config, steps=b), preview=False, resume=True)
            seconds[b] += total * b / top
            prompts = [f"a photo of <{name}>"] * args.images
            pipe = lib.pipeline({name: 1.0})
            for g in scales:
                images = generate(pipe, prompts, list(range(args.images)), guidance=g)
                found = identity_scores(encoder, images, refs[name])[:, 0].tolist()
                scores[b, g] += found
                print(f"{variant} {name} {b} rounds, guidance {g:g}: identity {statistics.mean(found):.3f}", flush=True)
                if args.grids:
                    suffix = "" if g == 5 else f"-g{g:g}"
                    _grid(images, args.out / "grids" / f"{root.name}-{name}-{b}{suffix}.png")
    return {(b, g): (seconds[b], statistics.mean(v), statistics.stdev(v)) for (b, g), v in scores.items()}


def _grid(images: torch.Tensor, path: Path) -> None:
    """Images in [-1, 1] side by side, upscaled 2x (nearest) so 64 px samples can be looked at."""
    path.parent.mkdir(parents=True, exist_ok=True)
    row = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    im = Image.fromarray(row.transpose(1, 0, 2, 3).reshape(row.shape[1], -1, 3))
    im.resize((im.width * 2, im.height * 2), Image.Resampling.NEAREST).save(path)


def _plot(curves: dict, path: Path, name: str, several: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for variant, points in curves.items():
        t, m, sd, a, asd = zip(*points)
        line = ax.errorbar(t, m, yerr=sd, marker="o", capsize=3, label=f"{variant}, alone" if several else variant)
        if several:
            colour = line.lines[0].get_color()
            ax.errorbar(
                t, a, yerr=asd, marker="s", capsize=3, linestyle="--", color=colour, label=f"{variant}, all active"
            )
    for level in THRESHOLDS:
        ax.axhline(level, color="#bbb", linewidth=0.8, linestyle="--")
    ax.set_xlabel("training seconds (2-core CPU)")
    ax.set_ylabel("identity (mean over the concepts)" if several else f"identity of <{name}> alone")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
