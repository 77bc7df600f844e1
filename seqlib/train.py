"""The SeqLoRA trainer: Algorithm 1 of the paper for one new concept.

Concept i is trained on top of ``W0 + Σ_{j<i} A_j B_jᵀ`` (earlier residuals patched into
the weights, frozen): the space each layer must avoid is found, A = 0 and B start in the free
complement, and each training round runs K bilevel iterations (``seqlib.steps``, where the
algorithm is written out) on fresh batches. The state can be checkpointed and resumed
exactly. Nothing here touches the store.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from seqlib import distributed
from seqlib.activations import SecondMoments, activation_basis, top_directions
from seqlib.config import TrainConfig, resolve_hvp
from seqlib.errors import CapacityError, DataError, UsageError
from seqlib.lora import LiveResiduals, TokenPositions, WeightPatch, named_layers, reads_text, summed_factors
from seqlib.methods import METHODS, Method
from seqlib.steps import Adam, Objective, Optimizers, bilevel_iteration, check_finite
from seqlib.subspace import frozen_basis, orthonormal_basis, random_basis
from seqlib.tokens import add_tokens, init_token, prompt_ids


@dataclass
class TrainResult:
    A: dict[str, np.ndarray]  # name -> (n, r)
    B: dict[str, np.ndarray]  # name -> (m, r)
    embedding: np.ndarray  # (d,)
    U: dict[str, np.ndarray]  # name -> (m, k) principal input directions after training
    energies: dict[str, np.ndarray]  # name -> (k,) their energies
    reserved: list[int]  # per layer: dimensions --protect took beyond the rank
    initial_loss: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Earlier:
    """A concept already in the library, as the trainer needs it."""

    A: dict[str, Tensor]
    B: dict[str, Tensor]
    orthogonal: bool
    U: dict[str, Tensor] | None = None  # principal input directions (m, k), for --protect
    protect: int = 0  # the --protect it was trained with: those directions stay reserved
    kv_scope: str = "all"  # token: its K/V residual acts only where its own token is

    def in_context(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """(A, B) of its residual on a prompt without its token: token-local K/V residuals are silent there."""
        kept = [n for n in self.A if not (self.kv_scope == "token" and reads_text(n))]
        return {n: self.A[n] for n in kept}, {n: self.B[n] for n in kept}


def taken_space(
    name: str, in_features: int, earlier: list[Earlier], protect: int, reserve: dict[str, Tensor] | None = None
) -> tuple[Tensor, int]:
    """Orthonormal Q of what a new concept must avoid on one layer, and how many of its
    dimensions the new concept's own ``protect`` adds (its capacity cost beyond its rank).

    Avoided: the library's shared reserve (``seqlib.reserve``), every orthogonal concept's
    basis, plus the input directions each earlier ``--protect`` reserved (kept reserved so later
    concepts cannot undo the protection).
    """
    cols = [reserve[name].double()] if reserve is not None and name in reserve else []
    cols += [c.B[name].double() for c in earlier if c.orthogonal]
    for i, c in enumerate(earlier):
        cols += [e.U[name][:, : c.protect].double() for e in earlier[:i] if c.protect and e.U is not None]
    new = [e.U[name][:, :protect].double() for e in earlier if protect and e.U is not None]
    empty = torch.zeros(in_features, 0, dtype=torch.float64)
    before = orthonormal_basis(torch.cat(cols, dim=1) if cols else empty)
    Q = orthonormal_basis(torch.cat(cols + new, dim=1)) if new else before
    return Q, Q.shape[1] - before.shape[1]


Progress = Callable[[int, int, float], None]


def native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Does this CPU multiply bf16 in hardware (x86 AVX512-BF16 or AMX, Arm's bf16)? None where
    it cannot tell (no /proc/cpuinfo). Without it torch emulates bf16: measured on an AVX2-only
    2-core machine, a 1024² bf16 matmul took 6.0 s against 58 ms in fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    words = set(cpuinfo.split())
    if not words & {"flags", "Features"}:
        return None
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def prepare(pipe, config: TrainConfig, warn=None) -> TrainConfig:
    """Make the base ready to train on: precision, gradient checkpointing, and an honest warning
    for a big base on a CPU. Returns ``config`` with ``hvp`` resolved (``auto`` becomes what runs:
    the cost estimate counts its passes, and the record says what was used)."""
    import torch

    device = pipe.unet.device.type
    params = sum(p.numel() for p in pipe.unet.parameters())
    config = replace(config, hvp=resolve_hvp(config.hvp, device, params))
    if config.precision != "fp32":
        if config.precision == "fp16" and device == "cpu":
            raise UsageError("--precision fp16 needs a GPU; on a CPU use bf16 or fp32")
        if config.precision == "bf16" and device == "cpu" and native_bf16() is False and warn:
            warn(
                "this CPU has no native bf16 (no AVX512-BF16 or AMX): --precision bf16 runs emulated, "
                "many times slower than fp32 here"
            )
        dtype = torch.float16 if config.precision == "fp16" else torch.bfloat16
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.to(dtype)  # the frozen base only: LoRA factors and their updates stay fp32
        if config.precision == "bf16" and device == "cpu":
            from diffusers.models.attention_processor import AttnProcessor

            # measured on the lab base (benchmarks/add_cost.py): PyTorch's fused attention in bf16 on a
            # CPU is no faster than fp32; diffusers' matmul-softmax-matmul takes 0.57x of its round
            pipe.unet.set_attn_processor(AttnProcessor())
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    if device == "cpu" and params > 100_000_000 and warn:
        # measured: one SD1.5 forward+backward at 512 px takes ~20 s on 2 CPU cores
        passes = config.K * METHODS[config.method].passes_per_iteration(config.S_B, config.S_A, config.hvp)
        seconds = config.steps * passes * 20 * (config.resolution / 512) ** 2 * config.batch_size / 4 * params / 860e6
        warn(
            f"training a {params / 1e6:.0f}M-parameter UNet on the CPU: about {seconds / 3600:.1f} h "
            "(use --device cuda on a GPU machine)"
        )
    return config


def train_concept(
    pipe,
    layer_names: list[str],
    earlier: list[Earlier],
    image_tensor: Tensor,
    token: str,
    rank: int | list[int],
    cfg: TrainConfig,
    progress: Progress | None = None,
    frozen_columns: list[int] | None = None,
    train_images: Tensor | None = None,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 5,
    reserve: dict[str, Tensor] | None = None,
) -> TrainResult:
    """Learn one concept; returns its factors. Touches nothing on disk.

    ``rank``: one rank for every layer, or one per layer (0 leaves a layer unadapted);
    ``frozen_columns``: for ``method="frozen-basis"``, the shared-matrix columns B is fixed to;
    ``train_images``: augmented views to draw batches from (default: ``image_tensor``, which
    always serves the evaluation batch). ``checkpoint`` receives the training state every
    ``checkpoint_every`` rounds; passing such a state back as ``resume`` continues exactly
    where it left off (same factors, same random stream). ``reserve``: the library's shared
    reserve per layer (m, k), avoided like an earlier basis.
    """
    start = time.perf_counter()
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
        module.eval()
    try:
        layers = named_layers(pipe.unet, layer_names)
    except KeyError as e:
        raise DataError(f"the base has no linear layer {e.args[0]} that the library adapts") from None
    method = METHODS[cfg.method]
    ranks = dict(zip([n for n, _ in layers], rank if isinstance(rank, list) else [rank] * len(layers)))
    # Earlier concepts are frozen: patch them into W once instead of running them live.
    context = earlier if cfg.context == "library" else []
    with patched(pipe, summed_factors([(*c.in_context(), 1.0) for c in context])):
        Q, reserved = _space_to_avoid(layers, earlier, method, cfg.protect, ranks, reserve)
        emb, embed_hook = init_token(pipe, token, cfg.init_word)
        positions = TokenPositions(pipe.text_encoder) if cfg.kv_scope == "token" else None
        try:
            ids = prompt_ids(pipe.tokenizer, cfg.prompt_template.format(token=token), pipe.unet.device)
            live = LiveResiduals(layers, positions, pipe.tokenizer.convert_tokens_to_ids(token))
            run = _Run(pipe, layers, cfg, embed_hook, ids, live, position=len(earlier))
            run.encode_images(image_tensor, train_images)
            state = resume or run.start(Q, ranks, method, frozen_columns, emb)
            Qs = [Q[n].to(pipe.unet.device) for n, _ in layers]
            state = run.rounds(state, Qs, progress, checkpoint, checkpoint_every)
            final, summary = run.finish(state)
        finally:
            embed_hook.remove()
            if positions is not None:
                positions.remove()
    names = [n for n, _ in layers]
    return TrainResult(
        A={n: a.detach().cpu().numpy() for n, a in zip(names, state["As"])},
        B={n: b.detach().cpu().numpy() for n, b in zip(names, state["Bs"])},
        embedding=state["embedding"].detach().cpu().numpy(),
        U={n: u.float().numpy() for n, (u, _) in summary.items()},
        energies={n: lam.float().numpy() for n, (_, lam) in summary.items()},
        reserved=reserved,
        initial_loss=state["initial"],
        final_loss=final,
        losses=state["losses"],
        seconds=time.perf_counter() - start,
    )


def _space_to_avoid(layers, earlier: list[Earlier], method: Method, protect: int, ranks: dict[str, int], reserve=None):
    """Per layer the space to avoid (nothing for plain LoRA) and what --protect adds; checks
    that every layer has room for its rank."""
    Q, reserved = {}, []
    for name, module in layers:
        if not method.projects:
            Q[name], extra = torch.zeros(module.in_features, 0, dtype=torch.float64), 0
        else:
            Q[name], extra = taken_space(name, module.in_features, earlier, protect, reserve)
        reserved.append(extra)
    full = [n for n, m in layers if m.in_features - Q[n].shape[1] < ranks[n]]
    if full:
        raise CapacityError(full, max(ranks.values()), {n: m.in_features - Q[n].shape[1] for n, m in layers})
    return Q, reserved


class _Run:
    """One concept's training: the encoded images, the batch stream, the objective."""

    def __init__(self, pipe, layers, cfg: TrainConfig, embed_hook, ids: Tensor, live: LiveResiduals, position: int = 0):
        self.pipe, self.layers, self.cfg, self.hook, self.ids = pipe, layers, cfg, embed_hook, ids
        self.position = position  # how many concepts the library held before this one
        self.device = pipe.unet.device
        self.objective = Objective(pipe, live)
        # Batches differ per process (data parallel); the basis init does not.
        self.batches = torch.Generator().manual_seed(cfg.seed + 7919 * (distributed.rank() + 1))

    def encode(self, e: Tensor) -> Tensor:  # (1, 77, d)
        self.hook.value = e
        return self.pipe.text_encoder(self.ids)[0]

    def encode_images(self, image_tensor: Tensor, train_images: Tensor | None) -> None:
        vae = self.pipe.vae
        with torch.no_grad():
            latents = [
                (vae.encode(x.to(self.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor).float()
                for x in ([image_tensor] if train_images is None else [image_tensor, train_images])
            ]
        self.pool = latents[-1]
        self.eval_batch = eval_batch(latents[0], self.pipe.scheduler.config.num_train_timesteps, self.cfg.seed + 1)

    def draw(self) -> tuple[Tensor, Tensor, Tensor]:
        size = self.cfg.batch_size
        idx = torch.randint(0, self.pool.shape[0], (size,), generator=self.batches)
        noise = torch.randn(self.pool[idx].shape, generator=self.batches)
        t = torch.randint(0, self.pipe.scheduler.config.num_train_timesteps, (size,), generator=self.batches)
        return self.pool[idx], noise.to(self.device), t.to(self.device)

    def moments(self, As, Bs, e) -> SecondMoments:
        """Layer inputs on the evaluation batch."""
        recorder = SecondMoments(self.layers)
        with self.objective.live, recorder.recording(), torch.no_grad():
            self.objective(As, Bs, self.encode(e), self.eval_batch)
        return recorder

    def loss(self, As, Bs, e, where: str) -> float:
        with self.objective.live, torch.no_grad():
            return check_finite(self.objective(As, Bs, self.encode(e), self.eval_batch), where, self.cfg)

    def start(self, Q, ranks, method: Method, frozen_columns, emb: Tensor) -> dict:
        """A = 0, B orthonormal in the free complement (the residual starts at 0)."""
        # without a projection the free space is the same for every concept: seed by position, or
        # two plain-LoRA concepts of one library would start from one basis
        offset = 0 if method.projects else 1_000_003 * self.position
        gen, device = torch.Generator().manual_seed(self.cfg.seed + offset), self.device
        if method.basis == "frozen":
            Bs = [frozen_basis(m.in_features, frozen_columns[: ranks[n]], Q[n]) for n, m in self.layers]
        else:
            Bs = [random_basis(m.in_features, ranks[n], Q[n], gen) for n, m in self.layers]
        Bs = [b.float().to(device) for b in Bs]
        As = [torch.zeros(m.out_features, ranks[n], device=device) for n, m in self.layers]
        # B spans the top principal directions of the concept's inputs in the free space. Not
        # without a projection: the free space is then everything, and every concept of the
        # library would start on the same few directions all inputs share (|cos| = 1 between
        # two plain-LoRA concepts): they start random, seeded by position, as LoRA usually does.
        if self.cfg.basis_init == "activation" and method.basis == "init" and method.projects:
            before = self.moments(As, Bs, emb)
            Bs = [activation_basis(before.moment(n), Q[n], ranks[n]).float().to(device) for n, _ in self.layers]
        return {"As": As, "Bs": Bs, "embedding": emb, "initial": self.loss(As, Bs, emb, "start"), "losses": []}

    def rounds(self, state: dict, Qs, progress, checkpoint, every: int) -> dict:
        """The training rounds still to run, each K bilevel iterations on fresh batches."""
        cfg = self.cfg
        As, Bs = [a.to(self.device) for a in state["As"]], [b.to(self.device) for b in state["Bs"]]
        emb, losses, initial = state["embedding"].to(self.device), list(state["losses"]), state["initial"]
        opt = Optimizers(Adam(As), Adam(Bs), Adam([emb])) if cfg.optimizer == "adam" else None
        if opt is not None and state.get("optimizer"):
            opt.load(state["optimizer"])
        if "rng" in state:
            self.batches.set_state(state["rng"])
        with self.objective.live:
            for step in range(len(losses), cfg.steps):
                for _ in range(cfg.K):
                    As, Bs, emb, loss = bilevel_iteration(
                        self.objective, self.encode, As, Bs, Qs, emb, self.draw, cfg, opt
                    )
                losses.append(check_finite(loss, f"round {step + 1}", cfg))
                if progress:
                    progress(step + 1, cfg.steps, losses[-1])
                if checkpoint and (step + 1) % every == 0 and step + 1 < cfg.steps:
                    optimizer = opt.state() if opt is not None else {}
                    checkpoint(
                        {"As": As, "Bs": Bs, "embedding": emb, "initial": initial, "losses": losses}
                        | {"rng": self.batches.get_state(), "optimizer": optimizer}
                    )
        return {"As": As, "Bs": Bs, "embedding": emb, "initial": initial, "losses": losses}

    def finish(self, state: dict) -> tuple[float, dict]:
        """(final loss, per layer the top input directions and energies) on the evaluation batch."""
        final = self.loss(state["As"], state["Bs"], state["embedding"], "end")
        after = self.moments(state["As"], state["Bs"], state["embedding"])
        return final, {n: top_directions(after.moment(n), self.cfg.activation_k) for n, _ in self.layers}


def eval_batch(latents: Tensor, num_timesteps: int, seed: int, per_image: int = 4):
    """Every image at ``per_image`` evenly spread timesteps with fixed noise: the loss the
    concept is judged by (start vs end), with far less variance than a random batch."""
    g = torch.Generator().manual_seed(seed)
    n = latents.shape[0]
    t = torch.linspace(0.05, 0.95, per_image).mul(num_timesteps).long().repeat_interleave(n)  # (n*per_image,)
    lat = latents.repeat(per_image, 1, 1, 1)
    return lat, torch.randn(lat.shape, generator=g).to(lat.device), t.to(lat.device)


def evaluation_inputs(pipe, token: str, embedding: Tensor, image_tensor: Tensor, cfg: TrainConfig):
    """(text states, batch) of a concept's evaluation batch, as its training judged it."""
    add_tokens(pipe, {token: embedding})
    ids = prompt_ids(pipe.tokenizer, cfg.prompt_template.format(token=token), pipe.unet.device)
    with torch.no_grad():
        latents = pipe.vae.encode(image_tensor.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean.float()
        latents = latents * pipe.vae.config.scaling_factor
        batch = eval_batch(latents, pipe.scheduler.config.num_train_timesteps, cfg.seed + 1)
        return pipe.text_encoder(ids)[0], batch


@contextmanager
def patched(pipe, residuals: dict[str, tuple[Tensor, Tensor]]):
    """The pipeline with ``residuals`` (factors per layer) added to its adapted weights for the
    duration of the block."""
    patch = WeightPatch(pipe.unet)
    patch.apply(residuals)
    try:
        yield pipe
    finally:
        patch.revert()


def concept_loss(pipe, residuals: dict[str, tuple[Tensor, Tensor]], inputs) -> float:
    """A concept's evaluation loss with exactly ``residuals`` applied (e.g. alone, or composed)."""
    ehs, batch = inputs
    with patched(pipe, residuals), torch.no_grad():
        return float(Objective(pipe, LiveResiduals([]))([], [], ehs, batch))


def input_moments(pipe, layer_names: list[str], residuals: dict[str, tuple[Tensor, Tensor]], inputs) -> SecondMoments:
    """Second moments of every adapted layer's inputs on a concept's evaluation batch with
    ``residuals`` applied: the direct measurement that the stored summaries estimate."""
    ehs, batch = inputs
    recorder = SecondMoments(named_layers(pipe.unet, layer_names))
    with patched(pipe, residuals), recorder.recording(), torch.no_grad():
        Objective(pipe, LiveResiduals([]))([], [], ehs, batch)
    return recorder
