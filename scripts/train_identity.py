"""Train the identity metric's encoder (``seqlib.identity``) and ship it in the package.

Identities: ``--identities`` concepts of the ``"metric"`` namespace of ``seqlib.heldout``
(disjoint from the benchmark's). Each is photographed ``--photos`` times with a wider scale
range than the benchmark's photos; every step adds blur and pixel noise (generated images
are softer than references). Loss: a cosine classifier with an additive margin (CosFace),
whose normalised features are the identity embedding. Deterministic for a seed.

    python scripts/train_identity.py            # ~10 min on 2 cores, writes seqlib/assets/
    python benchmarks/identity_metric.py        # its validation on the benchmark concepts
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur with a per-image sigma (0 = none), 5×5 kernel."""
    r = torch.arange(-2, 3, dtype=x.dtype)
    k = torch.exp(-(r[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = k / k.sum(-1, keepdim=True)  # (N, 5)
    n, c, h, w = x.shape
    y = x.reshape(1, n * c, h, w)
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    ky = k.repeat_interleave(c, 0)[:, None, :, None]
    y = F.conv2d(F.pad(y, (2, 2, 0, 0), mode="replicate"), kx, groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, 2, 2), mode="replicate"), ky, groups=n * c)
    return y.reshape(n, c, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=600)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Default: the package's assets/identity.safetensors.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from safetensors.torch import save_file

    from seqlib.heldout import held_out, photo
    from seqlib.identity import WEIGHTS, IdentityEncoder, to_tensor

    out = args.out or WEIGHTS
    start = time.time()
    identities = list(held_out(args.identities, namespace="metric").values())
    pool = to_tensor([photo(c, i, scale=(0.3, 0.85)) for c in identities for i in range(args.photos)])
    labels = torch.arange(len(identities)).repeat_interleave(args.photos)
    print(f"{len(pool)} photos of {len(identities)} identities in {time.time() - start:.0f} s", flush=True)

    encoder = IdentityEncoder()
    classes = torch.nn.Parameter(torch.randn(len(identities), encoder.head.out_features) * 0.01)
    opt = torch.optim.AdamW([*encoder.parameters(), classes], lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    history = []
    for step in range(args.steps):
        lr = 2e-3 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(pool), (args.batch,), generator=g)
        x = blur(pool[idx], torch.rand(args.batch, generator=g) * 1.2)
        x = x + 0.05 * torch.rand(args.batch, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g)
        logits = encoder(x) @ F.normalize(classes, dim=-1).T
        logits = 16 * (logits - 0.2 * F.one_hot(labels[idx], len(identities)))
        loss = F.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            history.append((step, round(loss.item(), 4)))
            print(f"step {step} loss {loss.item():.3f} {(time.time() - start) / 60:.1f} min", flush=True)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in encoder.state_dict().items()}, tmp)
    os.replace(tmp, out)
    os.chmod(out, 0o644)
    settings = vars(args) | {"out": str(out.relative_to(Path.cwd()) if out.is_relative_to(Path.cwd()) else out)}
    recipe = {"settings": settings, "loss": history, "minutes": (time.time() - start) / 60}
    out.with_suffix(".json").write_text(json.dumps(recipe, indent=1) + "\n")
    print("wrote", out, flush=True)


if __name__ == "__main__":
    main()
