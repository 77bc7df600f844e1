"""The paper's continual benchmark, offline: identity, forgetting, text alignment and composition.

For each method (seqlora, alternating, frozen-basis, lora = naive sum) one library learns a
stream of held-out concepts (``seqlib.heldout``, 6 photos each) with the default settings.
Measured with the identity metric (``seqlib.identity``, the stand-in for DINO), always on the
whole library as it stands (every learned concept active — the continually updated model):

- identity right after a concept is learned, and of every visible concept every
  ``--every`` concepts (the trajectory of the paper's Figure 3(b));
- at 8, 16 and 32 concepts (prefixes of one stream): per-concept identity (mean ± SEM, as in
  Appendix G), forgetting (identity right after learning − identity now), text alignment
  (prompts name a background colour; the share of images whose border has it), composition
  success (pairs prompted left/right; both concepts found, one per half), time per concept.

Images: "a photo of <c> on a {grey,white,black,blue} background", seeds 0-3, 20 DDIM steps; the last
column of the table scores "a photo of <c>" (seeds 0-3) too, since a background clause pulls the
embedded base's tiny text encoder back to its world shapes.
Calibration rows: the reference photos themselves (held-out poses: the metric's ceiling) and
the base without concepts (its floor).

    python benchmarks/stream.py --out benchmarks/stream     # ~60 min on 2 cores
    python benchmarks/stream.py --out benchmarks/stream --report-only
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

import torch

from seqlib.methods import METHODS as REGISTRY

METHODS = tuple(REGISTRY)  # every registered training method, seqlora first
BACKGROUNDS = ("grey", "white", "black", "blue")
SIZES = (8, 16, 32)
PHOTOS = 6
GUIDANCE = 5.0


def generate(pipe, prompts: list[str], seeds: list[int], guidance: float = GUIDANCE) -> torch.Tensor:
    out = pipe(
        prompts,
        num_inference_steps=20,
        guidance_scale=guidance,
        height=64,
        width=64,
        generator=[torch.Generator().manual_seed(s) for s in seeds],
        output_type="pt",
    ).images
    return out * 2 - 1  # [0, 1] -> [-1, 1]


def background_hits(images: torch.Tensor, named: list[str]) -> list[bool]:
    """Is the named background the world colour nearest to each image's 3-pixel border?"""
    from seqlib.world import BACKGROUNDS as COLOURS

    palette = torch.tensor([COLOURS[b] for b in BACKGROUNDS], dtype=torch.float32) / 127.5 - 1
    mask = torch.ones(images.shape[-2:], dtype=torch.bool)
    mask[3:-3, 3:-3] = False
    border = images[..., mask].mean(-1)  # (N, 3)
    nearest = torch.cdist(border, palette).argmin(-1)
    return [BACKGROUNDS[int(k)] == b for k, b in zip(nearest, named)]


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 127.5 - 1


def render(lib, visible: list[str], names: list[str]) -> dict[str, torch.Tensor]:
    """Each of ``names`` on the four backgrounds (key ``after``) and plainly, "a photo of <c>"
    (key ``plain``), seeds 0-3, with every ``visible`` concept active."""
    pipe = lib.pipeline({n: 1.0 for n in visible})
    out = {}
    seeds = list(range(len(BACKGROUNDS)))
    for start in range(0, len(names), 8):
        chunk = names[start : start + 8]
        prompts = [f"a photo of <{n}> on a {b} background" for n in chunk for b in BACKGROUNDS]
        images = generate(pipe, prompts, seeds * len(chunk))
        plain = generate(pipe, [f"a photo of <{n}>" for n in chunk for _ in seeds], seeds * len(chunk))
        for k, n in enumerate(chunk):
            out[f"after/{n}"] = to_uint8(images[k * len(seeds) : (k + 1) * len(seeds)])
            out[f"plain/{n}"] = to_uint8(plain[k * len(seeds) : (k + 1) * len(seeds)])
    return out


def keep(images: dict, t: int, rendered: dict[str, torch.Tensor]) -> None:
    """File ``render``'s images under the step they were rendered at ("after3/mascot")."""
    for key, im in rendered.items():
        kind, name = key.split("/")
        images[f"{kind}{t}/{name}"] = im


def render_pairs(lib, visible: list[str]) -> dict[str, torch.Tensor]:
    """Four images of each of four pairs, prompted one on the left, one on the right."""
    out = {}
    for a, b in [(visible[2 * k], visible[2 * k + 1]) for k in range(4)]:
        pipe = lib.pipeline({a: 1.0, b: 1.0})
        prompt = f"a photo of <{a}> on the left and <{b}> on the right"
        out[f"{a}+{b}"] = to_uint8(generate(pipe, [prompt] * 4, [0, 1, 2, 3]))
    return out


def run_method(
    method: str,
    concepts: dict,
    photos: Path,
    work: Path,
    out: Path,
    every: int,
    settings: dict | None = None,
    base: str | None = None,
    layers: str | None = None,
    reserve: bool = False,
) -> None:
    """Learn the stream; keep every evaluation image (scored later, so the metric can change).
    ``reserve``: `seqlib reserve` the library before its first concept. Resumable: after each
    concept the images and seconds so far are saved beside the library, and a rerun with the same
    ``--work`` goes on from the last concept the library holds."""
    from safetensors.torch import load_file, save_file

    from seqlib.api import Library
    from seqlib.config import TrainConfig

    store, partial = work / method / ".seqlib", work / method / "partial"
    names = list(concepts)
    seconds, images = {}, {}
    if store.exists():
        lib = Library.open(store)
        if (partial / "seconds.json").exists():
            seconds = json.loads((partial / "seconds.json").read_text())
            images = load_file(partial / "images.safetensors")
        held = [c.name for c in lib.head().concepts]
        if len(held) == len(seconds) + 1 and held[-1] == names[len(seconds)]:  # stopped before its images
            lib.rm(held.pop(), message="stream.py: relearn, its images were not saved")
        if held != names[: len(held)] or list(seconds) != held:
            raise SystemExit(f"{store} holds {held}, not a prefix of this stream: delete {work / method} to restart")
        print(f"{method}: resuming after {len(held)} concepts")
    else:
        lib = Library.init(store, base=base, layers=layers)
        if reserve:
            lib.reserve()
    for t, name in enumerate(names, 1):
        visible = names[:t]
        due = t % every == 0 or t in SIZES
        if name in seconds:  # learned before a resume; a rerun with another --every may owe a render
            if due and any(f"after{t}/{n}" not in images for n in visible) and t == len(seconds):
                keep(images, t, render(lib, visible, visible))
            continue
        start = time.perf_counter()
        # the 64-wide layers hold 16 rank-4 concepts; later ones leave those layers out
        config = TrainConfig(**{**(settings or {}), "method": method, "seed": t})
        lib.add(name, photos / name, config=config, when_full="skip")
        seconds[name] = time.perf_counter() - start
        keep(images, t, render(lib, visible, visible if due else [name]))
        if t in SIZES:
            for pair, im in render_pairs(lib, visible).items():
                images[f"pairs{t}/{pair}"] = im
        partial.mkdir(exist_ok=True)
        save_file(images, partial / "images.safetensors")  # before seconds.json: it marks the step done
        (partial / "seconds.json").write_text(json.dumps(seconds))
        print(f"{method} {t}/{len(names)} {name}: {seconds[name]:.0f} s", flush=True)
    sheet(lib, names[:8], concepts, out / f"samples-{method}.png")
    save_file(images, out / f"{method}.safetensors")
    record = {"method": method, "settings": settings or {}, "seconds": seconds}
    (out / f"{method}.json").write_text(json.dumps(record, indent=1) + "\n")


def score(method: str, out: Path, refs: dict, encoder) -> dict:
    """Identity, alignment and composition of one method's saved images."""
    from safetensors.torch import load_file

    from seqlib.identity import found, identity_scores

    images = load_file(out / f"{method}.safetensors")
    names = list(refs)
    references = torch.stack(list(refs.values()))
    record: dict = {"seconds": json.loads((out / f"{method}.json").read_text())["seconds"]}
    per: dict[int, dict] = {}
    for key, im in images.items():
        kind, name = key.split("/")
        t = int(kind.removeprefix("after").removeprefix("pairs").removeprefix("plain"))
        x = to_float(im)
        if kind.startswith("plain"):  # absent in runs saved before plain prompts were added
            plain = float(identity_scores(encoder, x, refs[name][None]).mean())
            per.setdefault(t, {}).setdefault(name, {})["plain"] = plain
        elif kind.startswith("after"):
            hits = background_hits(x, list(BACKGROUNDS))
            per.setdefault(t, {}).setdefault(name, {}).update(
                identity=float(identity_scores(encoder, x, refs[name][None]).mean()),
                alignment=sum(hits) / len(hits),
            )
        else:
            a, b = name.split("+")
            visible = names[:t]
            ok = found(encoder, x, references[:t], (visible.index(a), visible.index(b)))
            record.setdefault("composition", {}).setdefault(t, []).extend(ok.tolist())
    record["immediate"] = {n: per[k + 1][n] for k, n in enumerate(names) if k + 1 in per}
    record["trajectory"] = [
        (t, statistics.mean(v["identity"] for v in per[t].values())) for t in sorted(per) if len(per[t]) == t
    ]
    # the table's rows: the sizes, and any other point where every visible concept was rendered
    # (a run stopped early with --every 4 still has a row at 4)
    record["at"] = {t: per[t] for t in sorted(per) if t in SIZES or (len(per[t]) == t and t > 1)}
    return record


def sheet(lib, names: list[str], concepts: dict, path: Path) -> None:
    """Top row: a training photo of each concept; bottom: the library's image of it at the end."""
    from PIL import Image

    from seqlib.heldout import photo

    images = generate(
        lib.pipeline({c.name: 1.0 for c in lib.head().concepts}),
        [f"a photo of <{n}> on a grey background" for n in names],
        [0] * len(names),
    )
    grid = Image.new("RGB", (64 * len(names), 128))
    for k, (n, im) in enumerate(zip(names, images)):
        grid.paste(photo(concepts[n], 0), (64 * k, 0))
        grid.paste(Image.fromarray(to_uint8(im).permute(1, 2, 0).numpy()), (64 * k, 64))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def calibration(concepts: dict, refs: dict, encoder, base: str | None) -> dict:
    """The metric's ceiling (other photos of the concept) and floor (the base without it)."""
    from seqlib.base import load_pipeline
    from seqlib.heldout import photo
    from seqlib.identity import identity_scores, to_tensor

    ceiling = [
        float(identity_scores(encoder, to_tensor([photo(c, 100 + i) for i in range(4)]), refs[n][None]).mean())
        for n, c in concepts.items()
    ]
    from seqlib.base import classify
    from seqlib.embedded import EMBEDDED_BASES

    kind, source = classify(base, None)
    shipped = {base_id: folder for base_id, folder in EMBEDDED_BASES.values()}
    pipe = load_pipeline(kind, source, None, shipped.get(source))
    images = generate(pipe, [f"a photo of a thing on a {b} background" for b in BACKGROUNDS], [0, 1, 2, 3])
    floor = identity_scores(encoder, images, torch.stack(list(refs.values()))).mean(0).tolist()
    return {"ceiling": ceiling, "floor": floor, "floor_alignment": sum(background_hits(images, list(BACKGROUNDS))) / 4}


def mean_sem(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) / math.sqrt(len(values)):.3f}"


def report(results: dict, calib: dict, out: Path) -> str:
    lines = [
        "| concepts | method | identity (mean ± SEM) | forgetting | text alignment | composition | s / concept "
        "| identity, plain prompt |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size in sorted({t for r in results.values() for t in r["at"]}):
        for method, r in results.items():
            at = r["at"].get(size)
            if at is None:
                continue
            names = list(at)
            identity = [at[n]["identity"] for n in names]
            forgetting = [r["immediate"][n]["identity"] - at[n]["identity"] for n in names]
            alignment = statistics.mean(at[n]["alignment"] for n in names)
            pairs = r.get("composition", {}).get(size)  # rendered at the sizes only
            composed = f"{statistics.mean(pairs):.2f}" if pairs else "n/a"
            seconds = statistics.mean(r["seconds"][n] for n in names)
            plain = [at[n]["plain"] for n in names if "plain" in at[n]]
            lines.append(
                f"| {size} | {method} | {mean_sem(identity)} | {mean_sem(forgetting)} | {alignment:.2f} "
                f"| {composed} | {seconds:.0f} | {mean_sem(plain) if plain else 'n/a'} |"
            )
    lines += [
        "",
        f"Calibration: other photos of each concept score {mean_sem(calib['ceiling'])} (ceiling); the base "
        f"without concepts scores {mean_sem(calib['floor'])} (floor), and its backgrounds match the prompt in "
        f"{calib['floor_alignment']:.2f} of images.",
    ]
    table = "\n".join(lines)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, r in results.items():
        ts, ids = zip(*r["trajectory"])
        ax.plot(ts, ids, marker="o", label=method)
    ax.axhline(statistics.mean(calib["floor"]), color="grey", ls="--", lw=1, label="base, no concept")
    ax.set_xlabel("concepts learned")
    ax.set_ylabel("mean identity of visible concepts")
    ax.set_title("Forgetting trajectory (cf. the paper's Figure 3(b))")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "forgetting.png", dpi=120)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/stream"))
    parser.add_argument("--concepts", type=int, default=32)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--every", type=int, default=4, help="Render every visible concept this often.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    parser.add_argument("--work", type=Path, default=Path("build/stream"), help="Libraries are kept here.")
    parser.add_argument("--report-only", action="store_true", help="Score and tabulate the saved images.")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides, all methods.")
    parser.add_argument("--base", default=None, help="seqlib init --base (default: the tiny embedded base).")
    parser.add_argument("--layers", default=None, help="seqlib init --layers (default: the base's).")
    parser.add_argument("--reserve", action="store_true", help="`seqlib reserve` each library before its concepts.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from _report import parse_settings

    from seqlib.heldout import held_out, photo, write_photos
    from seqlib.identity import load_encoder, reference, to_tensor

    args.out.mkdir(parents=True, exist_ok=True)
    concepts = held_out(args.concepts)
    if not args.report_only:
        photos = args.work / "photos"
        write_photos(photos, concepts, count=PHOTOS)
        for method in args.methods:
            if (args.out / f"{method}.json").exists():
                print(f"{method}: kept the saved run (delete {method}.json to rerun)")
                continue
            settings = parse_settings(args.set)
            run_method(
                method,
                concepts,
                photos,
                args.work,
                args.out,
                args.every,
                settings,
                args.base,
                args.layers,
                args.reserve,
            )
    encoder = load_encoder()
    refs = {n: reference(encoder, to_tensor([photo(c, i) for i in range(PHOTOS)])) for n, c in concepts.items()}
    results = {m: score(m, args.out, refs, encoder) for m in METHODS if (args.out / f"{m}.json").exists()}
    calib = calibration(concepts, refs, encoder, args.base)
    table = report(results, calib, args.out)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
