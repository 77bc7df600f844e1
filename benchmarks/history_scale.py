"""How the history grows with the library, and whether list / status / show / report stay fast:
synthetic commits of N concepts (records as `add` writes them on SD1.5's 128 attention layers,
with crosstalk measured against every earlier concept; payloads are not written, so `show`'s
size on disk and previews are absent), one commit per concept as a library grows. The history
is every JSON object under objects/ (commits, pages, records, crosstalk); "per commit" is what
the N-th add wrote.

    python benchmarks/history_scale.py --sizes 100,300,1000 --work build/history
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _report import emit

from seqlib import Library
from seqlib.crosstalk import record_fields
from seqlib.format import ArrayRecord, ConceptRecord, Crosstalk, LayerRecord, LibraryConfig, TrainingRecord, Version
from seqlib.store import Store

LAYERS = [  # SD1.5's attention layers: 128 of them, m in {320, 640, 768, 1280}
    LayerRecord(name=f"layer{i}.to_{p}", in_features=m, out_features=n)
    for i, (m, n) in enumerate([(320, 320)] * 8 + [(640, 640)] * 8 + [(1280, 1280)] * 8 + [(768, 320)] * 8)
    for p in ("q", "k", "v", "out")
]


def record(store: Store, k: int, earlier: list[str], rng: random.Random) -> ConceptRecord:
    hexes = lambda: "".join(rng.choice("0123456789abcdef") for _ in range(64))  # noqa: E731
    training = TrainingRecord(
        method="seqlora", alpha=1e-3, beta=1e-3, K=3, S_B=2, S_A=2, eps=1e-8, steps=150, batch_size=1,
        lr_embed=1e-3, max_grad_norm=1.0, hvp="finite-diff", seed=k, init_word="thing",
        prompt_template="a photo of {}", resolution=512,
    )  # fmt: skip
    values = Crosstalk(
        crosstalk_from={e: round(rng.random() / 10, 6) for e in earlier},
        crosstalk_onto={e: round(rng.random() / 10, 6) for e in earlier},
    )
    store.keep(values)
    arrays = [ArrayRecord(name=f"B_m{m}", shape=[32, m, 4], dtype="float32", sha256=hexes()) for m in (320, 640, 768)]
    return ConceptRecord(
        name=f"c{k:04d}",
        token=f"<c{k:04d}>",
        rank=4,
        orthogonal=True,
        payload=hexes(),
        arrays=arrays,
        images=[],
        training=training,
        reserved=[0] * len(LAYERS),
        **record_fields(f"c{k:04d}", values),
        initial_loss=0.2,
        final_loss=0.1,
        train_seconds=600.0,
        created="2026-12-01T00:00:00+00:00",
        tensor_sha256=hexes(),
        loss_curve=[round(0.2 - i / 1000, 5) for i in range(100)],
    )


def history_bytes(root: Path, kind: str = "*") -> int:
    return sum(f.stat().st_size for f in root.glob(f"objects/{kind}/*.json"))


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cli_seconds(store: Path, *args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seqlib", "--store", str(store), *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = sorted(int(x) for x in args.sizes.split(","))
    shutil.rmtree(args.work, ignore_errors=True)
    root = args.work / ".seqlib"
    with Store.create(root) as staging:
        config = LibraryConfig(
            base={"kind": "diffusers", "source": "/sd15", "fingerprint": "0" * 64, "resolution": 512},
            rank=4,
            layers=LAYERS,
        )
        staging.commit(Version(parent=None, message="init", library=config, concepts=[]), expected_seq=0)
    store, rng, concepts, rows = Store(root), random.Random(0), [], []
    start = time.perf_counter()
    for n in range(1, sizes[-1] + 1):
        concepts.append(record(store, n, [c.name for c in concepts], rng))
        before = history_bytes(root)
        store.commit(Version(parent=store.tip()[1], message=f"add c{n:04d}", library=config, concepts=concepts), n)
        if n in sizes:
            middle = f"c{n // 2:04d}"
            row = {
                "n": n,
                "commit_kb": (history_bytes(root) - before) / 1e3,
                "history_mb": history_bytes(root) / 1e6,
                "crosstalk_mb": history_bytes(root, "crosstalk") / 1e6,
                # in process, cold: a fresh Library reads every file again
                "list_s": seconds(lambda: [c.tensor_sha256 for c in Library.open(root).head().concepts]),
                "status_s": seconds(lambda: Library.open(root).status()),
                "show_s": seconds(lambda m=middle: Library.open(root).show(m)),
                "list_cli_s": cli_seconds(root, "list"),
                "status_cli_s": cli_seconds(root, "status"),
                "show_cli_s": cli_seconds(root, "show", middle),
                "report_s": seconds(lambda: Library.open(root).report(args.work / "report.html")),
                "build_s": time.perf_counter() - start,
            }
            rows.append(row)
            print(row, flush=True)
    floor = cli_seconds(root, "--version")
    lines = [
        "| concepts | written by the last add (KB) | history (MB) | of it crosstalk (MB) | list (s) | status (s) "
        "| show (s) | report (s) | `seqlib list` (s) | `seqlib status` (s) | `seqlib show` (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(
            f"| {r['n']} | {r['commit_kb']:.0f} | {r['history_mb']:.1f} | {r['crosstalk_mb']:.1f} | {r['list_s']:.2f} "
            f"| {r['status_s']:.2f} | {r['show_s']:.2f} | {r['report_s']:.2f} | {r['list_cli_s']:.2f} "
            f"| {r['status_cli_s']:.2f} | {r['show_cli_s']:.2f} |"
            for r in rows
        ),
    ]
    lines += ["", f"`seqlib --version` (interpreter start and imports: the floor of every command): {floor:.2f} s"]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
