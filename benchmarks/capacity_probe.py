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


def _span(B: np.ndarray) -> np.ndarray:
    """An orthonormal basis of span(B): trained bases are not normalised (only A Bᵀ matters),
    and a shrunk layer has zero columns."""
    U, S, _ = np.linalg.svd(B.astype(np.float64), full_matrices=False)
    return U[:, S > 1e-6 * S.max()] if S.size and S.max() > 0 else U[:, :0]


def caught_energy(lib, commit, names: list[str], random: bool = False) -> dict[str, float]:
    """Per concept of ``names``: the share of its recorded input energy inside the span of the
    other concepts' bases (mutually orthogonal, so the shares of each add up). ``random``:
    the same for random subspaces of the same dimensions, what N·r/m predicts (seeded)."""
    concepts = [c for c in commit.concepts if c.name in names]
    spans = {c.name: {k: _span(v.numpy()) for k, v in lib.factors(c, commit)[1].items()} for c in concepts}
    rng = np.random.default_rng(0)
    out = {}
    for c in concepts:
        inside = total = 0.0
        for layer, (U, energy) in lib.input_summary(c, commit).items():
            weighted = U.astype(np.float64) * np.sqrt(energy)[None, :]  # (m, k): directions scaled by energy
            total += float(np.square(weighted).sum())
            others = [spans[o.name][layer] for o in concepts if o.name != c.name]
            Q = np.concatenate(others, axis=1) if others else np.zeros((weighted.shape[0], 0))
            if random and Q.shape[1]:
                Q = np.linalg.qr(rng.standard_normal(Q.shape))[0]
            inside += float(np.square(Q.T @ weighted).sum())
        out[c.name] = inside / total if total else 0.0
    return out


def identity(encoder, pipe, name: str, ref: torch.Tensor) -> float:
    from stream import generate

    from seqlib.identity import identity_scores

    images = generate(pipe, [f"a photo of <{name}>"] * len(SEEDS), list(SEEDS))
    return float(identity_scores(encoder, images, ref[None]).mean())


def run(layers: str, rank: int, args, concepts: dict, refs: dict, encoder) -> dict:
    from seqlib.api import Library
    from seqlib.config import TrainConfig
    from seqlib.heldout import write_photos

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
                "caught": caught_energy(lib, commit, names[:t]),
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
        "| layers | r | N | N·r/m | caught: trained bases | caught: random bases | identity all-active "
        "| identity alone | kept |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        for t, at in sorted(rec["at"].items(), key=lambda kv: int(kv[0])):
            names = list(at["all"])
            everything = [at["all"][n] for n in names]
            alone = [rec["alone"][n] for n in names]
            # a ratio to an alone identity at the floor means nothing
            kept = (
                f"{statistics.mean(everything) / statistics.mean(alone):.2f}" if statistics.mean(alone) > 0.1 else "n/a"
            )
            lines.append(
                f"| {rec['layers']} | {rec['rank']} | {t} | {int(t) * rec['rank'] / rec['narrowest']:.2f} "
                f"| {mean_sem(list(at['caught'].values()))} "
                f"| {mean_sem(list(at['caught_random'].values())) if 'caught_random' in at else 'n/a'} "
                f"| {mean_sem(everything)} | {mean_sem(alone)} "
                f"| {kept} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/capacity-v3"))
    parser.add_argument("--work", type=Path, default=Path("build/capacity"))
    parser.add_argument("--base", default=None, help="seqlib init --base (default: the embedded base).")
    parser.add_argument("--layers", nargs="+", default=["attention+ff"])
    parser.add_argument("--ranks", nargs="*", type=int, default=[1, 2, 4])
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

    from seqlib.heldout import held_out, photo
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
    records = []
    for lay, r in runs:
        path = args.out / f"{lay}-r{r}.json"
        if not path.exists():
            continue
        record = json.loads(path.read_text())
        library = args.work / f"{lay}-r{r}" / ".seqlib"
        if args.report_only and library.exists():  # re-measure "caught" from the kept library
            from seqlib.api import Library

            lib = Library.open(library)
            names = [c.name for c in lib.head().concepts]
            for t in record["at"]:
                record["at"][t]["caught"] = caught_energy(lib, lib.head(), names[: int(t)])
                record["at"][t]["caught_random"] = caught_energy(lib, lib.head(), names[: int(t)], random=True)
            path.write_text(json.dumps(record, indent=1) + "\n")
        records.append(record)
    text = table(records)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
