"""Pretrain the embedded tiny SD-architecture pipeline on the procedural world (issue 5, draft).

Two stages, both from scratch on CPU, deterministic for a seed and resumable:
1. the VAE reconstructs world images (MSE + a small KL term);
2. the text encoder and UNet learn ε-prediction on the frozen VAE's latents of captioned
   scenes, with 10% empty captions for classifier-free guidance.
Writes a diffusers pipeline folder, a contact sheet of samples for held-out captions, and
`train_log.json` (settings, losses) beside it.

    python scripts/pretrain_world.py --out build/world-base --minutes 40
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def batch_of(indices, size: int = 64):
    import numpy as np

    from seqlib.world import render, scene

    scenes = [scene(int(i)) for i in indices]
    x = torch.stack(
        [torch.from_numpy(np.asarray(render(s, size), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1) for s in scenes]
    )
    return x, [s.caption for s in scenes]


def optimise(opt, loss, step: int, history: list, stage: str) -> None:
    """One optimiser step; every 50th loss goes to the log and the terminal."""
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step % 50 == 0:
        history.append((step, float(loss)))
        print(f"{stage} {step} {float(loss):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/world-base"))
    parser.add_argument("--minutes", type=float, default=40.0, help="Wall-clock budget for both stages.")
    parser.add_argument("--vae-share", type=float, default=0.25, help="Share of the budget for the VAE.")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from diffusers import StableDiffusionPipeline

    from seqlib.embedded import build_embedded_pipeline

    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    init = args.out / "init"
    if not (init / "model_index.json").exists():
        build_embedded_pipeline(init)
    pipe = StableDiffusionPipeline.from_pretrained(init, safety_checker=None, requires_safety_checker=False)
    vae, unet, te, tok, sched = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    log = {"args": {k: str(v) for k, v in vars(args).items()}, "vae": [], "unet": []}
    budget, start = args.minutes * 60, time.time()
    g = torch.Generator().manual_seed(args.seed)
    held_out = 10_000_000  # training scenes are drawn below this index, samples above it

    # 1) VAE
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    step = 0
    while time.time() - start < budget * args.vae_share:
        x, _ = batch_of(torch.randint(0, held_out, (args.batch,), generator=g))
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample(generator=g)).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        step += 1
        optimise(opt, loss, step, log["vae"], "vae")
    vae.eval().requires_grad_(False)
    # SD's convention: scale latents to unit variance
    with torch.no_grad():
        x, _ = batch_of(range(held_out, held_out + 256))
        std = float(vae.encode(x).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=1.0 / std)

    # 2) text encoder + UNet
    unet.train()
    te.train()
    opt = torch.optim.AdamW([*unet.parameters(), *te.parameters()], lr=3e-4)
    step = 0
    while time.time() - start < budget:
        x, captions = batch_of(torch.randint(0, held_out, (args.batch,), generator=g))
        captions = ["" if torch.rand(1, generator=g).item() < 0.1 else c for c in captions]
        with torch.no_grad():
            lat = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
        ids = tok(
            captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), generator=g)
        pred = unet(sched.add_noise(lat, noise, t), t, te(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        step += 1
        optimise(opt, loss, step, log["unet"], "unet")

    unet.eval()
    te.eval()
    final = args.out / "pipeline"
    pipe.save_pretrained(final, safe_serialization=True)
    (args.out / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")

    from PIL import Image

    from seqlib.world import render, scene

    rows = []
    pipe.set_progress_bar_config(disable=True)
    for i in range(8):
        s = scene(held_out + 1000 + i)
        sample = pipe(
            s.caption,
            num_inference_steps=25,
            guidance_scale=4.0,
            height=64,
            width=64,
            generator=torch.Generator().manual_seed(i),
        ).images[0]
        rows.append((render(s), sample, s.caption))
    sheet = Image.new("RGB", (64 * 2, 64 * len(rows)), "white")  # left: the world's rendering, right: a sample
    for k, (truth, sample, _) in enumerate(rows):
        sheet.paste(truth, (0, 64 * k))
        sheet.paste(sample, (64, 64 * k))
    sheet.save(args.out / "samples.png")
    (args.out / "samples.txt").write_text("\n".join(c for _, _, c in rows) + "\n")
    print("done", final)


if __name__ == "__main__":
    main()
