"""Does all-active identity fall with N·r/m, the share of a layer the other concepts' bases hold?

Issue 12's probe, on whatever base the library is made on (default: the embedded tiny base).
For each (layer set, rank) one library learns a stream of held-out concepts (seqlora, the
default settings, ``--context library``). After 2, 4, ... concepts every visible concept is
rendered with all of them active ("a photo of <c>", seeds 0-3) and scored with the identity
metric; each concept is also rendered with only itself active ("alone"). Per row:

- ``N·r/m``: the share of the narrowest adapted width the N concepts' bases occupy;
- ``caught``: the measured share of a concept's recorded input energy (its top-8 input
  directions per layer, energy-weighted over layers) that lies in the other concepts' bases —
  the inputs on which the others' residuals fire; the argument predicts it tracks N·r/m;
- identity all-active and alone (mean ± SEM) and their ratio ("kept").

    python benchmarks/capacity_probe.py --out benchmarks/capacity-v3 --threads 1   # ~80 min
    python benchmarks/capacity_probe.py --out benchmarks/capacity-v3 --report-only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

SEEDS = (0, 1, 2, 3)


def caught_energy(lib, commit) -> dict[str, float]:
    """Per concept: the share of its recorded input energy inside the other concepts' bases."""
    concepts = commit.concepts
    bases = {c.name: lib.factors(c, commit)[1] for c in concepts}
    out = {}
    for c in concepts:
        summary = lib.input_summary(c, commit)
        inside = total = 0.0
        for layer, (U, energy) in summary.items():
            weighted = U * np.sqrt(energy)[None, :]  # (m, k): directions scaled by their energy
            total += float(np.square(weighted).sum())
            for other in concepts:
                B = bases[other.name].get(layer)
                if other.name != c.name and B is not None and B.shape[1]:
                    inside += float(np.square(B.numpy().T @ weighted).sum())
        out[c.name] = inside / total if total else 0.0
    return out


def identity(encoder, pipe, name: str, ref: torch.Tensor) -> float:
    from stream import generate

    from seqlib.identity import identity_scores

    images = generate(pipe, [f"a photo of <{name}>"] * len(SEEDS), list(SEEDS))
    return float(identity_scores(encoder, images, ref[None]).mean())


def run(layers: str, rank: int, args, concepts: dict, refs: dict, encoder) -> dict:
    from seqlib.api import Library
    from seqlib.concepts import write_photos
    from seqlib.config import TrainConfig

    work = args.work / f"{layers}-r{rank}"
    photos = args.work / "photos"
    write_photos(photos, concepts)
    lib = Library.init(work / ".seqlib", rank=rank, layers=layers, base=args.base)
    names = list(concepts)
    narrowest = min(layer.in_features for layer in lib.head().library.layers)
    record: dict = {"layers": layers, "rank": rank, "narrowest": narrowest, "at": {}, "seconds": {}}
    for t, name in enumerate(names, 1):
        start = time.perf_counter()
        lib.add(name, photos / name, config=TrainConfig(**{**args.settings, "seed": t}), when_full="skip")
        record["seconds"][name] = time.perf_counter() - start
        if t in args.at:
            commit = lib.head()
            pipe = lib.pipeline({n: 1.0 for n in names[:t]})
            record["at"][t] = {
                "all": {n: identity(encoder, pipe, n, refs[n]) for n in names[:t]},
                "caught": caught_energy(lib, commit),
            }
        print(f"{layers} r={rank} {t}/{len(names)} {name}: {record['seconds'][name]:.0f} s", flush=True)
    record["alone"] = {n: identity(encoder, lib.pipeline({n: 1.0}), n, refs[n]) for n in names}
    return record


def mean_sem(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) / len(values) ** 0.5:.2f}"


def table(records: list[dict]) -> str:
    lines = [
        "| layers | r | N | N·r/m | caught (measured) | identity all-active | identity alone | kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        for t, at in sorted(rec["at"].items(), key=lambda kv: int(kv[0])):
            names = list(at["all"])
            everything = [at["all"][n] for n in names]
            alone = [rec["alone"][n] for n in names]
            kept = statistics.mean(everything) / statistics.mean(alone) if statistics.mean(alone) > 0 else float("nan")
            lines.append(
                f"| {rec['layers']} | {rec['rank']} | {t} | {int(t) * rec['rank'] / rec['narrowest']:.2f} "
                f"| {mean_sem(list(at['caught'].values()))} | {mean_sem(everything)} | {mean_sem(alone)} "
                f"| {kept:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/capacity-v3"))
    parser.add_argument("--work", type=Path, default=Path("build/capacity"))
    parser.add_argument("--base", default=None, help="seqlib init --base (default: the embedded base).")
    parser.add_argument("--layers", nargs="+", default=["attention+ff"])
    parser.add_argument("--ranks", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--extra", nargs="*", default=["cross-kv:4"], metavar="LAYERS:RANK")
    parser.add_argument("--concepts", type=int, default=8)
    parser.add_argument("--at", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides.")
    args = parser.parse_args()
    from _report import parse_settings

    args.settings = parse_settings(args.set)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from stream import PHOTOS

    from seqlib.concepts import held_out, photo
    from seqlib.identity import load_encoder, reference, to_tensor

    args.out.mkdir(parents=True, exist_ok=True)
    runs = [(layers, r) for layers in args.layers for r in args.ranks]
    runs += [(e.split(":")[0], int(e.split(":")[1])) for e in args.extra]
    if not args.report_only:
        encoder = load_encoder()
        concepts = held_out(args.concepts)
        refs = {n: reference(encoder, to_tensor([photo(c, i) for i in range(PHOTOS)])) for n, c in concepts.items()}
        for layers, rank in runs:
            path = args.out / f"{layers}-r{rank}.json"
            if path.exists():
                print(f"kept {path} (delete it to rerun)")
                continue
            path.write_text(json.dumps(run(layers, rank, args, concepts, refs, encoder), indent=1) + "\n")
    records = [
        json.loads((args.out / f"{lay}-r{r}.json").read_text())
        for lay, r in runs
        if (args.out / f"{lay}-r{r}.json").exists()
    ]
    text = table(records)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
