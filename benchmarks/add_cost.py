"""Where an `add`'s seconds go, per base: one training round (K bilevel iterations) timed under
each lever, in one process, so the ratios come from one run on one machine.

Levers: the cross-Hessian-vector product (exact double backward vs the one-sided difference),
the attention processor (PyTorch's fused SDPA vs diffusers' classic matmul-softmax-matmul, which
was 11% faster than SDPA for the lab base's pretraining on this CPU), and the base's dtype.

    python benchmarks/add_cost.py --base embedded:lab --rounds 2        # ~5 min on 2 cores
    python benchmarks/add_cost.py --rounds 2                            # the tiny base
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from seqlib.api import Library
from seqlib.config import TrainConfig
from seqlib.data import find_images, load_images
from seqlib.heldout import examples, write_photos
from seqlib.train import train_concept

SETTINGS = {
    "defaults (autograd HVP, SDPA)": dict(hvp="autograd"),
    "forward-diff HVP": dict(hvp="forward-diff"),
    "autograd HVP, classic attention": dict(hvp="autograd", attention="classic"),
    "forward-diff, classic attention": dict(hvp="forward-diff", attention="classic"),
    "forward-diff, classic, bf16 base": dict(hvp="forward-diff", attention="classic", precision="bf16"),
    "forward-diff, SDPA, bf16 base": dict(hvp="forward-diff", precision="bf16"),
    "forward-diff, SDPA, bf16 base, token-local K/V": dict(hvp="forward-diff", precision="bf16", kv_scope="token"),
    "forward-diff, classic, bf16 base, token-local K/V": dict(
        hvp="forward-diff", attention="classic", precision="bf16", kv_scope="token"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--settings", default=";".join(SETTINGS), help="names joined by ';'")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        lib = Library.init(Path(tmp) / ".seqlib", **({"base": args.base} if args.base else {}))
        write_photos(Path(tmp) / "photos", {"mascot": examples()["mascot"]}, count=8)
        head = lib.head()
        images = load_images(find_images(Path(tmp) / "photos" / "mascot"), head.library.base.resolution)
        rows = []
        for name in args.settings.split(";"):
            s = dict(SETTINGS[name])
            attention = s.pop("attention", "sdpa")
            pipe = lib.load_base(head, "cpu")
            if attention == "classic":
                from diffusers.models.attention_processor import AttnProcessor

                pipe.unet.set_attn_processor(AttnProcessor())
            if s.get("precision") == "bf16":  # as `add --precision bf16` does: the frozen base only
                for module in (pipe.unet, pipe.vae, pipe.text_encoder):
                    module.to(torch.bfloat16)
            cfg = replace(TrainConfig(resolution=head.library.base.resolution), steps=args.rounds, **s)
            first = train_concept(
                pipe, head.library.layer_names, [], images, "<mascot>", head.library.rank, replace(cfg, steps=1)
            )
            result = train_concept(pipe, head.library.layer_names, [], images, "<mascot>", head.library.rank, cfg)
            per_round = (result.seconds - first.seconds) / max(1, args.rounds - 1)
            rows.append((name, per_round, result.final_loss))
            print(f"{name}: {per_round:.2f} s/round (final loss {result.final_loss:.4f})", flush=True)
        ref = rows[0][1]
        print(f"\n| setting | s/round | vs first | loss after {args.rounds} rounds |\n|---|---:|---:|---:|")
        for name, sec, loss in rows:
            print(f"| {name} | {sec:.2f} | {sec / ref:.2f}× | {loss:.4f} |")


if __name__ == "__main__":
    main()
