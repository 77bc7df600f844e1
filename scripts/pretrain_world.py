"""Pretrain the embedded tiny SD-architecture pipeline on the procedural world.

Two stages, from scratch on CPU, counted in optimiser steps (not wall-clock), so a seed
gives the same weights on every run and a killed run resumes where it stopped:
1. the VAE reconstructs world scenes and caption-free clutter (MSE + L1 + a small KL term);
2. the text encoder and UNet learn ε-prediction on the frozen VAE's latents of captioned
   scenes; 10% of captions are dropped (classifier-free guidance) and 10% of images are
   clutter with an empty caption (a broad unconditional prior). The UNet weights shipped
   are an exponential moving average.
Every batch, noise draw and timestep is a function of (seed, stage, step); a checkpoint
(models, optimiser, EMA, log) is written atomically every ``--checkpoint-every`` steps.
The output folder gets the diffusers pipeline, ``recipe.json`` (settings, losses, times)
and a contact sheet of samples for captions it was trained on.

    python scripts/pretrain_world.py --out build/world-base        # ~53 min on 2 cores
    python scripts/pretrain_world.py --out build/world-base        # again: resumes

``--preset lab`` pretrains the lab base (``seqlib.embedded.build_lab_pipeline``, 256-wide
attention at 16x16) on the lab world (``seqlib.world_lab``): the VAE is the tiny base's, so only
the UNet stage runs (~8 s a step at batch 32 on 2 CPU cores; well under a second on a GPU):

    python scripts/pretrain_world.py --preset lab --out build/lab-base --device cuda
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

STAGES = ("vae", "unet")
TRAIN_SCENES = 10_000_000  # training scenes are drawn below this index; held-out ones above


PRESETS = {  # architecture builder, world module, and the settings that differ
    "tiny": {"vae_steps": 4000, "unet_steps": 6500, "batch": 32},
    "lab": {"vae_steps": 0, "unet_steps": 8000, "batch": 32},
}


def world_module(preset: str):
    import seqlib.world
    import seqlib.world_lab

    return seqlib.world_lab if preset == "lab" else seqlib.world


def batch(seed: int, stage: str, step: int, size: int, clutter_share: float, drop_caption: float, preset: str = "tiny"):
    """Images and captions of one step: a pure function of its arguments."""
    from seqlib.data import pil_to_tensor
    from seqlib.world import clutter

    world = world_module(preset)
    render, scene = world.render, world.scene

    rng = random.Random(f"{seed}-{stage}-{step}")
    images, captions = [], []
    for _ in range(size):
        if rng.random() < clutter_share:
            images.append(clutter(rng.getrandbits(40)))
            captions.append("")
        else:
            s = scene(rng.randrange(TRAIN_SCENES))
            images.append(render(s))
            captions.append("" if rng.random() < drop_caption else s.caption)
    return torch.stack([pil_to_tensor(im) for im in images]), captions


def batches(args, stage: str, start: int, stop: int, clutter_share: float, drop_caption: float):
    """The batches of steps start..stop-1 in order; with ``--workers`` drawn ahead by a process
    pool (each is a pure function of its step, so the weights do not depend on the count)."""
    from functools import partial

    make = partial(_batch_at, args.seed, stage, args.batch, clutter_share, drop_caption, args.preset)
    if args.workers <= 1:
        yield from map(make, range(start, stop))
        return
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        yield from pool.imap(make, range(start, stop), chunksize=4)


def _batch_at(seed, stage, size, clutter_share, drop_caption, preset, step):
    torch.set_num_threads(1)
    return batch(seed, stage, step, size, clutter_share, drop_caption, preset)


def generator(seed: int, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + STAGES.index(stage) * 100_000_000 + step)


def learning_rate(peak: float, step: int, total: int, warmup: int = 200) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def contact_sheet(pipe, out: Path, seed: int, count: int = 12, preset: str = "tiny") -> None:
    """Left: the world's rendering of a training caption; right: the base's sample for it."""
    from PIL import Image

    world = world_module(preset)
    render, scene = world.render, world.scene

    rng = random.Random(f"{seed}-samples")
    scenes = [scene(rng.randrange(TRAIN_SCENES)) for _ in range(count)]
    pipe.set_progress_bar_config(disable=True)
    sheet = Image.new("RGB", (64 * 2, 64 * count), "white")
    for k, s in enumerate(scenes):
        sample = pipe(
            s.caption,
            num_inference_steps=30,
            guidance_scale=4.0,
            height=64,
            width=64,
            generator=torch.Generator(pipe.device).manual_seed(k),
        ).images[0]
        sheet.paste(render(s), (0, 64 * k))
        sheet.paste(sample, (64, 64 * k))
    sheet.save(out / "samples.png")
    (out / "samples.txt").write_text("\n".join(s.caption for s in scenes) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/world-base"))
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="tiny: the default base; lab: embedded:lab.")
    parser.add_argument("--vae-steps", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--unet-steps", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--batch", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; the batches and noise are drawn on the CPU.")
    parser.add_argument("--workers", type=int, default=0, help="Processes drawing batches ahead (a GPU needs ~8).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads; part of what makes a run reproducible.")
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--samples", type=int, default=12, help="Rows of the contact sheet (0: none).")
    parser.add_argument(
        "--stop-after", type=int, default=0, help="Checkpoint and exit after this many steps (run again to resume)."
    )
    args = parser.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from diffusers import StableDiffusionPipeline

    from seqlib.embedded import build_embedded_pipeline, build_lab_pipeline

    args.out.mkdir(parents=True, exist_ok=True)
    init, ckpt_path = args.out / "init", args.out / "checkpoint.pt"
    if not (init / "model_index.json").exists():  # the architecture, with seeded random weights
        (build_lab_pipeline if args.preset == "lab" else build_embedded_pipeline)(init)
    pipe = StableDiffusionPipeline.from_pretrained(init, safety_checker=None, requires_safety_checker=False)
    pipe.to(device)
    vae, unet, te, tok, sched = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    state = {"stage": "vae", "step": 0, "log": {"settings": settings, "vae": [], "unet": [], "seconds": {}}}
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    if args.vae_steps == 0 and not ckpt_path.exists():  # a trained VAE came with the architecture
        state.update(stage="unet", scaling_factor=vae.config.scaling_factor)
        opt = torch.optim.AdamW([*unet.parameters(), *te.parameters()], lr=3e-4)
    if ckpt_path.exists():
        ckpt = torch.load(
            ckpt_path, weights_only=True, map_location=device
        )  # our own file; weights_only never runs code
        vae.load_state_dict(ckpt["vae"])
        unet.load_state_dict(ckpt["unet"])
        te.load_state_dict(ckpt["te"])
        ema = ckpt["ema"]
        state = json.loads(ckpt["state"])
        if state["stage"] == "unet":
            vae.register_to_config(scaling_factor=state["scaling_factor"])
            opt = torch.optim.AdamW([*unet.parameters(), *te.parameters()], lr=3e-4)
        opt.load_state_dict(ckpt["opt"])
        print(f"resuming {state['stage']} at step {state['step']}", flush=True)
    log = state["log"]

    def checkpoint() -> None:
        save_atomic(
            {
                "vae": vae.state_dict(),
                "unet": unet.state_dict(),
                "te": te.state_dict(),
                "ema": ema,
                "opt": opt.state_dict(),
                "state": json.dumps(state),
            },
            ckpt_path,
        )

    steps_this_run = 0

    peak = {"vae": 1e-3, "unet": 3e-4}
    total = {"vae": args.vae_steps, "unet": args.unet_steps}

    def step_done(loss: torch.Tensor, stage: str, t0: float, after_step=None) -> None:
        """Apply the gradient of ``loss`` at the scheduled learning rate, then count, log and
        checkpoint the step."""
        nonlocal steps_this_run
        for group in opt.param_groups:
            group["lr"] = learning_rate(peak[stage], state["step"], total[stage])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(state["step"])
        spent = time.time() - t0
        state["step"] += 1
        steps_this_run += 1
        log["seconds"][stage] = log["seconds"].get(stage, 0.0) + spent
        if state["step"] % 50 == 0:
            log[stage].append((state["step"], round(loss.item(), 5)))
            print(f"{stage} {state['step']} {loss.item():.4f} {log['seconds'][stage] / 60:.1f} min", flush=True)
        if state["step"] % args.checkpoint_every == 0 or steps_this_run == args.stop_after:
            checkpoint()
        if steps_this_run == args.stop_after:
            raise SystemExit(f"stopped after {steps_this_run} steps; run again to resume")

    # 1) VAE on world scenes and clutter
    if state["stage"] == "vae":
        vae.train()
        for x, _ in batches(args, "vae", state["step"], args.vae_steps, clutter_share=0.5, drop_caption=0.0):
            t0, step = time.time(), state["step"]
            x = x.to(device)
            post = vae.encode(x).latent_dist
            eps = torch.randn(post.mean.shape, generator=generator(args.seed, "vae", step)).to(device)
            rec = vae.decode(post.mean + post.std * eps).sample
            loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-6 * post.kl().mean()
            step_done(loss, "vae", t0)
        # SD's convention: latents scaled to unit variance
        vae.eval()
        with torch.no_grad():
            x, _ = batch(args.seed, "scale", 0, 256, clutter_share=0.1, drop_caption=0.0)
            state["scaling_factor"] = 1.0 / float(vae.encode(x.to(device)).latent_dist.mean.std())
        vae.register_to_config(scaling_factor=state["scaling_factor"])
        state.update(stage="unet", step=0)
        opt = torch.optim.AdamW([*unet.parameters(), *te.parameters()], lr=3e-4)
        checkpoint()
    vae.eval().requires_grad_(False)

    def update_ema(step: int) -> None:
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay) if v.is_floating_point() else ema[k].copy_(v)

    # 2) text encoder + UNet
    unet.train()
    te.train()
    for x, captions in batches(args, "unet", state["step"], args.unet_steps, clutter_share=0.1, drop_caption=0.1):
        t0, step = time.time(), state["step"]
        g = generator(args.seed, "unet", step)
        with torch.no_grad():
            lat = vae.encode(x.to(device)).latent_dist.mean * vae.config.scaling_factor
        ids = tok(
            captions, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(device)
        noise = torch.randn(lat.shape, generator=g).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), generator=g).to(device)
        pred = unet(sched.add_noise(lat, noise, t), t, te(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        step_done(loss, "unet", t0, after_step=update_ema)
    if state["step"] % args.checkpoint_every:
        checkpoint()

    unet.load_state_dict(ema)
    unet.eval()
    te.eval()
    final = args.out / "pipeline"
    pipe.save_pretrained(final, safe_serialization=True)
    log["scaling_factor"] = vae.config.scaling_factor
    (args.out / "recipe.json").write_text(json.dumps(log, indent=1) + "\n")
    if args.samples:
        contact_sheet(pipe, args.out, args.seed, args.samples, args.preset)
    print("done", final, flush=True)


if __name__ == "__main__":
    main()
