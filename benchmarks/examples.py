"""The three example concepts, learned in sequence, each rendered alone and with the whole library.

Learns ``examples/{mascot,emblem,robot}`` (or ``--names``) into a fresh library with the default
settings, overridden by ``--set key=value`` (any TrainConfig field), then renders
"a photo of <c>" (seeds 0-3, sampled as in ``stream.py``: 20 DDIM steps, guidance 5) with only <c> active and with every
concept active, "a photo of <a> on the left and <b> on the right" with the first two (``--layout sum``),
and the same two as a row ("a photo of <a> | a photo of <b>", ``--layout row``).
Prints identity (cosine to the mean embedding of the concept's photos, ``seqlib.identity``)
and the share of pair images where the composition check finds both (sum: in the two halves;
row: each tile's best match is its own concept); writes the image grid (rows in that order,
the row images last) to ``--out``/grid.png.

    python benchmarks/examples.py --out build/examples                       # ~5 min on 2 cores
    python benchmarks/examples.py --out build/examples-sgd --set optimizer=sgd alpha=3 beta=3 lr_embed=3 steps=30
    python benchmarks/examples.py --out build/examples-kv --layers cross-kv --set context=base
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from PIL import Image

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/examples"))
    parser.add_argument("--names", default="mascot,emblem,robot")
    parser.add_argument("--layers", default=None, help="seqlib init --layers (default: the embedded base's).")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from _report import parse_settings
    from stream import GUIDANCE, generate, to_uint8  # the stream benchmark's sampling settings

    from seqlib.api import Library
    from seqlib.config import TrainConfig, default_layer_set
    from seqlib.data import pil_to_tensor
    from seqlib.identity import found, identity_scores, load_encoder, reference, to_tensor
    from seqlib.row import row_columns

    names = args.names.split(",")
    settings = parse_settings(args.set)
    shutil.rmtree(args.out / ".seqlib", ignore_errors=True)
    lib = Library.init(args.out / ".seqlib", layers=args.layers)
    start = time.perf_counter()
    for name in names:
        lib.add(name, EXAMPLES / name, config=TrainConfig(**settings))
    seconds = (time.perf_counter() - start) / len(names)

    encoder = load_encoder()
    photos = {n: [Image.open(f).convert("RGB") for f in sorted((EXAMPLES / n).glob("*.png"))] for n in names}
    refs = torch.stack([reference(encoder, to_tensor(photos[n])) for n in names])

    def render(selection: list[str], prompt: str) -> torch.Tensor:
        pipe = lib.pipeline({n: 1.0 for n in selection})
        pipe.set_progress_bar_config(disable=True)
        return generate(pipe, [prompt] * 4, list(range(4)))

    layers = args.layers or default_layer_set("embedded")
    rows, result = [], {"layers": layers, "settings": settings, "seconds_per_concept": round(seconds, 1)}
    for i, name in enumerate(names):
        for selection, tag in (([name], "alone"), (names, "all")):
            images = render(selection, f"a photo of <{name}>")
            rows.append(images)
            result[f"{name} {tag}"] = round(float(identity_scores(encoder, images, refs)[:, i].mean()), 3)
    wide = []
    if len(names) > 1:
        images = render(names[:2], f"a photo of <{names[0]}> on the left and <{names[1]}> on the right")
        rows.append(images)
        result["pair found"] = float(found(encoder, images, refs, (0, 1)).float().mean())
        prompts = f"a photo of <{names[0]}> | a photo of <{names[1]}>"
        paths = lib.compose(names[:2], prompts, out=args.out / "row", num_images=4, guidance=GUIDANCE, layout="row")
        wide = [pil_to_tensor(Image.open(p).convert("RGB")) for p in paths]
        tiles = [torch.stack([im[..., cols] for im in wide]) for cols in row_columns(wide[0].shape[-2], 2)]
        own = [identity_scores(encoder, t, refs).argmax(-1) == i for i, t in enumerate(tiles)]
        result["row found"] = float((own[0] & own[1]).float().mean())
    print(json.dumps(result, indent=1))
    grid = torch.cat([torch.cat(list(r), 2) for r in rows], 1)
    if wide:  # two row images per grid row, padded to the grid's width
        pairs = [torch.cat(wide[i : i + 2], 2) for i in range(0, len(wide), 2)]
        pairs = [torch.nn.functional.pad(p, (0, grid.shape[-1] - p.shape[-1]), value=1.0) for p in pairs]
        grid = torch.cat([grid, *pairs], 1)
    Image.fromarray(to_uint8(grid).permute(1, 2, 0).numpy()).save(args.out / "grid.png")
    (args.out / "result.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
