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
the UNet stage runs. Its recipe fits a 2-core CPU (benchmarks/RESULTS.md, "The lab base,
pretrained on this machine"): bf16 autocast with fp32 master weights and optimiser state
(AVX512-BF16 halves a step), Min-SNR-gamma loss weighting, a short warm-up and an EMA whose
decay suits a few thousand steps:

    python scripts/pretrain_world.py --preset lab --out ~/seqlib-build/lab-base   # resumable
    python scripts/pretrain_world.py --preset lab --out /tmp/p --stop-after 300 --unet-steps 3400  # a probe

Every ``--eval-every`` steps the raw (not EMA) weights are scored on a fixed held-out batch
(scenes the training never draws, fixed timesteps and noise, unweighted MSE), so probes with
different loss weightings compare on one scale; the scores and the seconds go to the log.
Seconds are training seconds: a step during which the process was stopped (SIGSTOP/SIGCONT,
to lend the CPU to a test run) is counted at the median of the steps before it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F

STAGES = ("vae", "unet")
TRAIN_SCENES = 10_000_000  # training scenes are drawn below this index; held-out ones above
LAB_STEPS = 1600  # ~3.4 s a step on this machine (RESULTS: the probes, and what fit one session)
LAB_LR = 1e-3


PRESETS = {  # the settings that differ; the tiny base's are the ones it shipped with
    "tiny": {
        "vae_steps": 4000,
        "unet_steps": 6500,
        "batch": 32,
        "lr": 3e-4,
        "warmup": 200,
        "precision": "fp32",
        "min_snr_gamma": 0.0,
        "ema_decay": 0.999,
        "attention": "sdpa",
    },
    "lab": {
        "vae_steps": 0,
        "unet_steps": LAB_STEPS,
        "batch": 32,
        "lr": LAB_LR,
        "warmup": 100,
        "precision": "bf16",
        "min_snr_gamma": 5.0,
        "ema_decay": 0.998,
        "attention": "classic",
    },
}
EVAL_SIZE = 64  # held-out images scored every --eval-every steps


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

    if args.workers <= 1:  # in this process: not through _batch_at, which pins a worker to one thread
        for step in range(start, stop):
            yield batch(args.seed, stage, step, args.batch, clutter_share, drop_caption, args.preset)
        return
    make = partial(_batch_at, args.seed, stage, args.batch, clutter_share, drop_caption, args.preset)
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


def snr_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma weights for epsilon prediction (Hang et al. 2023): min(SNR, gamma) / SNR,
    so the many nearly-clean timesteps stop dominating the gradient; 1 everywhere when gamma is 0."""
    if gamma <= 0:
        return torch.ones(t.shape)
    a = alphas_cumprod[t]
    snr = a / (1 - a)
    return torch.clamp(snr, max=gamma) / snr


def ema_decay(step: int, cap: float) -> float:
    """The EMA's decay at ``step``: (1 + step) / (10 + step), capped, so early weights fade fast."""
    return min(cap, (1 + step) / (10 + step))


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


def shown(path: Path) -> str:
    """A path as the recipe records it: relative to the folder the run started in, or ``~/…``
    under the home folder (a shipped recipe should not spell out one machine's folders)."""
    resolved = path.resolve()
    for base, prefix in ((Path.cwd().resolve(), ""), (Path.home().resolve(), "~/")):
        if resolved.is_relative_to(base):
            return prefix + str(resolved.relative_to(base))
    return str(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/world-base"))
    parser.add_argument("--preset", choices=PRESETS, default="tiny", help="tiny: the default base; lab: embedded:lab.")
    parser.add_argument("--vae-steps", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--unet-steps", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--batch", type=int, default=None, help="Default: the preset's.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda; the batches and noise are drawn on the CPU.")
    parser.add_argument("--workers", type=int, default=0, help="Processes drawing batches ahead (a GPU needs ~8).")
    parser.add_argument("--lr", type=float, default=None, help="Peak learning rate of the UNet stage.")
    parser.add_argument("--warmup", type=int, default=None, help="Linear warm-up steps of the UNet stage.")
    parser.add_argument(
        "--precision", choices=("fp32", "bf16"), default=None, help="bf16: CPU/GPU autocast, fp32 master weights."
    )
    parser.add_argument("--min-snr-gamma", type=float, default=None, help="Min-SNR-gamma loss weighting (0: off).")
    parser.add_argument(
        "--attention",
        choices=("sdpa", "classic"),
        default=None,
        help="classic: diffusers' AttnProcessor (bmm + softmax), faster than CPU flash attention at head dim 32.",
    )
    parser.add_argument("--ema-decay", type=float, default=None, help="The EMA decay's cap.")
    parser.add_argument(
        "--eval-every", type=int, default=100, help="Score the held-out batch every N steps (0: never)."
    )
    parser.add_argument("--ship", type=Path, default=None, help="Also write the fp16 copy the package ships here.")
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
    from seqlib.train import native_bf16

    if args.precision == "bf16" and device.type == "cpu" and native_bf16() is False:
        print("warning: this CPU has no native bf16 (no AVX512-BF16 or AMX): bf16 autocast runs emulated, "
              "many times slower than --precision fp32 here (the recipe's seconds were measured with it)")  # fmt: skip

    from diffusers import StableDiffusionPipeline

    from seqlib.embedded import build_embedded_pipeline, build_lab_pipeline

    args.out.mkdir(parents=True, exist_ok=True)
    init, ckpt_path = args.out / "init", args.out / "checkpoint.pt"
    if not (init / "model_index.json").exists():  # the architecture, with seeded random weights
        (build_lab_pipeline if args.preset == "lab" else build_embedded_pipeline)(init)
    pipe = StableDiffusionPipeline.from_pretrained(init, safety_checker=None, requires_safety_checker=False)
    pipe.to(device)
    vae, unet, te, tok, sched = pipe.vae, pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler
    if args.attention == "classic":  # the same function, computed another way: the weights mean the same
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    # the text encoder's average too: an averaged UNet reading a raw encoder's states would lag it
    ema_te = {k: v.detach().clone() for k, v in te.state_dict().items()}
    settings = {k: shown(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
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
        if "ema_te" in ckpt:  # checkpoints before it existed start the average where the encoder is
            ema_te = ckpt["ema_te"]
        else:
            ema_te = {k: v.detach().clone() for k, v in te.state_dict().items()}
        state = json.loads(ckpt["state"])
        if state["stage"] == "unet":
            vae.register_to_config(scaling_factor=state["scaling_factor"])
            opt = torch.optim.AdamW([*unet.parameters(), *te.parameters()], lr=3e-4)
        opt.load_state_dict(ckpt["opt"])
        print(f"resuming {state['stage']} at step {state['step']}", flush=True)
        # each run's own settings (threads, evaluation, stop) beside the first run's
        state["log"].setdefault("resumed", []).append({"step": state["step"], "settings": settings})
    log = state["log"]

    def checkpoint() -> None:
        save_atomic(
            {
                "vae": vae.state_dict(),
                "unet": unet.state_dict(),
                "te": te.state_dict(),
                "ema": ema,
                "ema_te": ema_te,
                "opt": opt.state_dict(),
                "state": json.dumps(state),
            },
            ckpt_path,
        )

    steps_this_run = 0

    peak = {"vae": 1e-3, "unet": args.lr}
    total = {"vae": args.vae_steps, "unet": args.unet_steps}

    stopped = {"flag": False}  # set by SIGCONT: the step in flight was paused
    signal.signal(signal.SIGCONT, lambda *_: stopped.update(flag=True))
    recent: list[float] = []

    def step_done(loss: torch.Tensor, stage: str, t0: float, after_step=None) -> None:
        """Apply the gradient of ``loss`` at the scheduled learning rate, then count, log and
        checkpoint the step."""
        nonlocal steps_this_run
        for group in opt.param_groups:
            group["lr"] = learning_rate(
                peak[stage], state["step"], total[stage], args.warmup if stage == "unet" else 200
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        if after_step is not None:
            after_step(state["step"])
        spent = time.time() - t0
        if stopped["flag"] and recent:  # lent to another job mid-step: count it as a typical step
            spent = sorted(recent)[len(recent) // 2]
            stopped["flag"] = False
        recent[:] = [*recent[-19:], spent]
        state["step"] += 1
        steps_this_run += 1
        log["seconds"][stage] = log["seconds"].get(stage, 0.0) + spent
        if state["step"] % 50 == 0:
            log[stage].append((state["step"], round(loss.item(), 5)))
            print(f"{stage} {state['step']} {loss.item():.4f} {log['seconds'][stage] / 60:.1f} min", flush=True)
        if stage == "unet" and args.eval_every and state["step"] % args.eval_every == 0:
            log.setdefault("eval", []).append(
                (state["step"], round(held_out_loss(), 5), round(log["seconds"][stage], 1))
            )
            print(f"  held-out {log['eval'][-1][1]:.4f}", flush=True)
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

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    held_out: dict = {}

    @torch.no_grad()
    def held_out_loss() -> float:
        """Unweighted epsilon MSE of the current (raw) weights on fixed held-out scenes."""
        if not held_out:
            world = world_module(args.preset)
            from seqlib.data import pil_to_tensor

            scenes = [world.scene(TRAIN_SCENES + k) for k in range(EVAL_SIZE)]
            x = torch.stack([pil_to_tensor(world.render(s)) for s in scenes]).to(device)
            g = torch.Generator().manual_seed(12345)
            lat = vae.encode(x).latent_dist.mean * vae.config.scaling_factor
            held_out["noise"] = torch.randn(lat.shape, generator=g).to(device)
            held_out["t"] = torch.linspace(0, sched.config.num_train_timesteps - 1, EVAL_SIZE).long().to(device)
            held_out["x"] = sched.add_noise(lat, held_out["noise"], held_out["t"])
            held_out["ids"] = tok(
                [s.caption for s in scenes], padding="max_length", max_length=tok.model_max_length, return_tensors="pt"
            ).input_ids.to(device)
        t0 = time.time()
        unet.eval()
        te.eval()
        with autocast():
            pred = unet(held_out["x"], held_out["t"], te(held_out["ids"])[0]).sample
        unet.train()
        te.train()
        log["seconds"]["eval"] = log["seconds"].get("eval", 0.0) + time.time() - t0
        return F.mse_loss(pred.float(), held_out["noise"]).item()

    def update_ema(step: int) -> None:
        decay = ema_decay(step, args.ema_decay)
        with torch.no_grad():
            for model, average in ((unet, ema), (te, ema_te)):
                for k, v in model.state_dict().items():
                    if v.is_floating_point():
                        average[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
                    else:
                        average[k].copy_(v)

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
        t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), generator=g)
        weights = snr_weights(sched.alphas_cumprod, t, args.min_snr_gamma).to(device)
        t = t.to(device)
        with autocast():
            pred = unet(sched.add_noise(lat, noise, t), t, te(ids)[0]).sample
        per_image = F.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (weights * per_image).mean()
        step_done(loss, "unet", t0, after_step=update_ema)
    if state["step"] % args.checkpoint_every:
        checkpoint()

    unet.load_state_dict(ema)
    te.load_state_dict(ema_te)
    if args.eval_every:  # the shipped (averaged) weights on the same held-out batch
        log["eval_ema"] = round(held_out_loss(), 5)
    unet.eval()
    te.eval()
    final = args.out / "pipeline"
    pipe.save_pretrained(final, safe_serialization=True)
    log["scaling_factor"] = vae.config.scaling_factor
    log["seconds"]["total"] = round(sum(v for k, v in log["seconds"].items() if k != "total"), 1)
    (args.out / "recipe.json").write_text(json.dumps(log, indent=1) + "\n")
    if args.samples:
        contact_sheet(pipe, args.out, args.seed, args.samples, args.preset)
    if args.ship:
        ship(args.out, args.ship)
    print("done", final, flush=True)


def ship(out: Path, dest: Path) -> None:
    """The pipeline as the package ships it: fp16 safetensors (half the bytes; loaded back as
    fp32), with the recipe and the contact sheet beside it."""
    import shutil

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out / "pipeline", safety_checker=None, requires_safety_checker=False)
    pipe.to(torch.float16)
    shutil.rmtree(dest, ignore_errors=True)
    pipe.save_pretrained(dest, safe_serialization=True)
    for config in dest.rglob("*.json"):  # diffusers records where it loaded from: not this machine's folders
        data = json.loads(config.read_text())
        if isinstance(data, dict) and "_name_or_path" in data:
            data["_name_or_path"] = shown(Path(data["_name_or_path"]))
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    for name in ("recipe.json", "samples.png", "samples.txt"):
        if (out / name).exists():
            shutil.copy(out / name, dest / name)


if __name__ == "__main__":
    main()
