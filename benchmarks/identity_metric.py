"""Validate the identity metric (``seqlib.identity``) on the benchmark's concepts.

The encoder never saw these concepts (it was trained on the ``"metric"`` namespace). For each
of ``--concepts`` concepts, its reference is the mean embedding of its 6 training photos;
queries are 6 other photos (new pose, scale, position, background), as they are and after a
round trip through the embedded base's VAE (generated images are that soft). Reports the
same-concept and other-concept cosine, their margin, top-1 identification among all
concepts, and the composition check on two-concept photos (both found, one per half; and
how often a wrong pair is "found").

    python benchmarks/identity_metric.py
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics

import torch


@functools.cache
def _vae():
    from diffusers import AutoencoderKL

    from seqlib.embedded import SHIPPED_BASE

    return AutoencoderKL.from_pretrained(SHIPPED_BASE / "vae").eval()


def through_vae(x: torch.Tensor) -> torch.Tensor:
    """Encode and decode with the embedded base's VAE: as soft as a generated image can be."""
    with torch.no_grad():
        return torch.cat([_vae().decode(_vae().encode(one).latent_dist.mean).sample.clamp(-1, 1) for one in x.split(1)])


def scores(encoder, queries: torch.Tensor, refs: torch.Tensor, per: int) -> dict:
    from seqlib.identity import identity_scores

    s = identity_scores(encoder, queries, refs)  # (C*per, C)
    own = torch.arange(refs.shape[0]).repeat_interleave(per)
    same = s[torch.arange(len(own)), own]
    other = (s.sum(-1) - same) / (refs.shape[0] - 1)
    nearest_other = s.scatter(1, own[:, None], -2).max(-1).values
    return {
        "same": float(same.mean()),
        "other": float(other.mean()),
        "margin": float((same - other).mean()),
        "worst margin to the nearest other": float((same - nearest_other).min()),
        "top-1": float((s.argmax(-1) == own).float().mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concepts", type=int, default=32)
    parser.add_argument("--pairs", type=int, default=64)
    args = parser.parse_args()

    from seqlib.heldout import held_out, pair_photo, photo
    from seqlib.identity import found, load_encoder, reference, to_tensor

    encoder = load_encoder()
    concepts = list(held_out(args.concepts).values())
    refs = torch.stack([reference(encoder, to_tensor([photo(c, i) for i in range(6)])) for c in concepts])
    queries = to_tensor([photo(c, 100 + i) for c in concepts for i in range(6)])
    rows = {
        "photos": scores(encoder, queries, refs, 6),
        "photos through the VAE": scores(encoder, through_vae(queries), refs, 6),
    }

    rng = random.Random(0)
    triples = [rng.sample(range(len(concepts)), 3) for _ in range(args.pairs)]
    clean = to_tensor([pair_photo(concepts[a], concepts[b], k) for k, (a, b, _) in enumerate(triples)])
    composition = {}
    for name, images in (("clean", clean), ("through the VAE", through_vae(clean))):
        right = [bool(found(encoder, im[None], refs, (a, b))[0]) for im, (a, b, _) in zip(images, triples)]
        wrong = [bool(found(encoder, im[None], refs, (a, c))[0]) for im, (a, _, c) in zip(images, triples)]
        composition[name] = (statistics.mean(right), statistics.mean(wrong))

    print(f"Identity metric on {len(concepts)} unseen concepts (6 reference photos, 6 query photos each):\n")
    keys = list(rows["photos"])
    print("| queries | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    for name, (right, wrong) in composition.items():
        print(
            f"\nComposition check on {args.pairs} two-concept photos ({name}): both found in "
            f"{right:.2f}; a wrong pair found in {wrong:.2f}."
        )


if __name__ == "__main__":
    main()
