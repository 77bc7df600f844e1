"""The SeqLoRA trainer: Algorithm 1 of the paper for one new concept.

Concept i is trained on top of ``W0 + Σ_{j<i} A_j B_jᵀ`` (earlier residuals patched into
the weights, frozen). Each training round runs K bilevel iterations of the loss L; every
step below draws its own batch (images, noise, timesteps), and the quantities of one B-step
(g_B, g_A and the cross-Hessian) share theirs, so its reduced gradient is exact for that batch:

1. Ã = A_k − α ∇_A L(A_k, B_k)                                   tentative lower-level step
2. S_B times: g_B, g_A = ∇_B L(Ã, B), ∇_A L(Ã, B)
              H = ∇_B ⟨g_A, ∇_A L(A_k, B)⟩                          cross-Hessian (seqlora only)
              B ← P⊥(B − β (g_B − α H))                            projected upper-level step
3. S_A times: A ← A − α ∇_A L(A, B_{k+1}),  starting from A_k      (token embedding too)

``method="alternating"`` drops H (same code path, one flag); ``method="lora"`` also drops
the projection (the naive-sum baseline); ``method="frozen-basis"`` never moves B. With
``optimizer="sgd"`` every gradient is clipped to ``max_grad_norm`` (0 = the paper's plain
steps). With ``optimizer="adam"`` each step is preconditioned by Adam's diagonal
D = 1/(√v̂ + ε) instead: Ã = A_k − α D∘∇_A L and, since D is constant in B, the cross-Hessian
is taken along D∘g_A — the same reduced gradient for a diagonally scaled inner step. When
several processes train together, gradients are averaged across them before use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from seqlib import distributed
from seqlib.activations import SecondMoments, activation_basis, top_directions
from seqlib.config import TrainConfig
from seqlib.distributed import average
from seqlib.errors import CapacityError, DataError, TrainingDivergedError
from seqlib.lora import LiveResiduals, WeightPatch, named_layers, summed_deltas
from seqlib.methods import METHODS
from seqlib.subspace import frozen_basis, orthonormal_basis, project_out, random_basis


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


def taken_space(name: str, in_features: int, earlier: list[Earlier], protect: int) -> tuple[Tensor, int]:
    """Orthonormal Q of what a new concept must avoid on one layer, and how many of its
    dimensions the new concept's own ``protect`` adds (its capacity cost beyond its rank).

    Avoided: every orthogonal concept's basis, plus the input directions each earlier
    ``--protect`` reserved (kept reserved so later concepts cannot undo the protection).
    """
    cols = [c.B[name].double() for c in earlier if c.orthogonal]
    for i, c in enumerate(earlier):
        cols += [e.U[name][:, : c.protect].double() for e in earlier[:i] if c.protect and e.U is not None]
    new = [e.U[name][:, :protect].double() for e in earlier if protect and e.U is not None]
    empty = torch.zeros(in_features, 0, dtype=torch.float64)
    before = orthonormal_basis(torch.cat(cols, dim=1) if cols else empty)
    Q = orthonormal_basis(torch.cat(cols + new, dim=1)) if new else before
    return Q, Q.shape[1] - before.shape[1]


Progress = Callable[[int, int, float], None]


class _Objective:
    """L(A, B, ehs; batch): the ε-prediction denoising MSE with live residuals."""

    def __init__(self, pipe, live: LiveResiduals) -> None:
        self.unet, self.scheduler, self.live = pipe.unet, pipe.scheduler, live

    def __call__(self, As, Bs, ehs: Tensor, batch: tuple[Tensor, Tensor, Tensor]) -> Tensor:
        latents, noise, t = batch
        noisy = self.scheduler.add_noise(latents, noise, t).to(self.unet.dtype)
        self.live.set(As, Bs)
        pred = self.unet(noisy, t, ehs.to(self.unet.dtype).expand(latents.shape[0], -1, -1)).sample
        if self.scheduler.config.prediction_type == "v_prediction":
            target = self.scheduler.get_velocity(latents, noise, t)
        else:
            target = noise
        return torch.nn.functional.mse_loss(pred.float(), target.float())


def _leaves(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().requires_grad_(True) for t in tensors]


def _check_finite(loss: Tensor, where: str, cfg: TrainConfig) -> float:
    value = float(loss)
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"training diverged ({where}: loss is {value}); nothing was committed — "
            f"try smaller step sizes, e.g. {_safer_steps(cfg)}"
        )
    return value


# Step sizes known to train on the embedded base, per optimizer (README, "Defaults").
SAFE_STEPS = {"adam": 1e-3, "sgd": 3.0}


def _safer_steps(cfg: TrainConfig) -> str:
    """A third of the step sizes that diverged, but never above what is known to work for the
    optimizer in use (an Adam step of 6.67 diverges as surely as one of 20)."""
    safe = SAFE_STEPS.get(cfg.optimizer, cfg.alpha)
    alpha, beta = min(cfg.alpha / 3, safe), min(cfg.beta / 3, safe)
    return f"--alpha {alpha:g} --beta {beta:g}"


def clip(grads: list[Tensor], max_norm: float) -> list[Tensor]:
    """Scale a gradient list down to global norm ``max_norm`` (0 disables).

    A guard against the rare huge gradient of a near-zero timestep, which otherwise
    throws plain gradient steps far off (seen as NaN within a few rounds at α=100).
    """
    if max_norm <= 0:
        return list(grads)
    norm = math.sqrt(sum(float(g.square().sum()) for g in grads))
    scale = min(1.0, max_norm / (norm + 1e-12))
    return [g * scale for g in grads]


def cross_hessian_autograd(objective, A_k, B, g_A, ehs, batch) -> list[Tensor]:
    """H[g_A] = ∇_B ⟨g_A, ∇_A L(A_k, B)⟩ by double backward.

    The math SDPA backend is forced: fused CPU/GPU attention kernels have no double backward.
    """
    A_k, B = _leaves(A_k), _leaves(B)
    with sdpa_kernel(SDPBackend.MATH):
        loss = objective(A_k, B, ehs, batch)
        grad_A = torch.autograd.grad(loss, A_k, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grad_A, g_A))
        return list(torch.autograd.grad(dot, B))


def cross_hessian_finite_diff(objective, A_k, B, g_A, ehs, batch, rel_step: float = 1e-2) -> list[Tensor]:
    """The same H[g_A] as a central difference of ∇_B L along A_k ± h·g_A.

    No double backward, so fast attention kernels work and memory stays near a plain
    LoRA step. h makes the perturbation ``rel_step`` of max(‖A_k‖, ‖g_A‖): far smaller
    loses the difference to float32 round-off.
    """
    v_norm = math.sqrt(sum(float(v.square().sum()) for v in g_A))
    if v_norm == 0.0:
        return [torch.zeros_like(b) for b in B]
    a_norm = math.sqrt(sum(float(a.square().sum()) for a in A_k))
    h = rel_step * max(a_norm, v_norm) / v_norm
    grads = []
    for sign in (1.0, -1.0):
        A_pert = [a.detach() + sign * h * v for a, v in zip(A_k, g_A)]
        B_l = _leaves(B)
        grads.append(torch.autograd.grad(objective(A_pert, B_l, ehs, batch), B_l))
    return [(gp - gm) / (2 * h) for gp, gm in zip(*grads)]


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
) -> TrainResult:
    """Learn one concept; returns its factors. Touches nothing on disk.

    ``rank``: one rank for every layer, or one per layer (0 leaves a layer unadapted);
    ``frozen_columns``: for ``method="frozen-basis"``, the shared-matrix columns B is fixed to;
    ``train_images``: augmented views to draw batches from (default: ``image_tensor``, which
    always serves the evaluation batch). ``checkpoint`` receives the training state every
    ``checkpoint_every`` rounds; passing such a state back as ``resume`` continues exactly
    where it left off (same factors, same random stream).
    """
    start = time.perf_counter()
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    device = unet.device
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
        module.eval()

    try:
        layers = named_layers(unet, layer_names)
    except KeyError as e:
        raise DataError(f"the base has no linear layer {e.args[0]} that the library adapts") from None
    names = [n for n, _ in layers]

    gen = torch.Generator().manual_seed(cfg.seed)
    method = METHODS[cfg.method]

    # Earlier concepts are frozen: patch them into W once instead of running them live.
    context = earlier if cfg.context == "library" else []
    with patched(pipe, summed_deltas([(c.A, c.B, 1.0) for c in context])):
        # 1) the space each layer must avoid (nothing for plain LoRA), and room checks
        Q, reserved = {}, []
        for name, module in layers:
            if not method.projects:
                Q[name], extra = torch.zeros(module.in_features, 0, dtype=torch.float64), 0
            else:
                Q[name], extra = taken_space(name, module.in_features, earlier, cfg.protect)
            reserved.append(extra)
        ranks = dict(zip(names, rank if isinstance(rank, list) else [rank] * len(layers)))
        full = [n for n, m in layers if m.in_features - Q[n].shape[1] < ranks[n]]
        if full:
            raise CapacityError(full, max(ranks.values()), {n: m.in_features - Q[n].shape[1] for n, m in layers})
        # 2) A = 0, B random orthonormal in the free complement (the residual starts at 0)
        if method.basis == "frozen":
            Bs = [frozen_basis(m.in_features, frozen_columns[: ranks[n]], Q[n]).float().to(device) for n, m in layers]
        else:
            Bs = [random_basis(m.in_features, ranks[n], Q[n], gen).float().to(device) for n, m in layers]
        As = [torch.zeros(m.out_features, ranks[n], device=device) for n, m in layers]
        Qs = [Q[n].to(device) for n, _ in layers]

        emb, embed_hook = _init_token(pipe, token, cfg.init_word)
        try:
            ids = tokenizer(
                cfg.prompt_template.format(token=token),
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(device)  # (1, 77)

            def encode(e: Tensor) -> Tensor:  # (1, 77, d)
                embed_hook.value = e
                return text_encoder(ids)[0]

            def encode_images(x: Tensor) -> Tensor:  # (N, 4, h, w) float32
                with torch.no_grad():
                    latents = vae.encode(x.to(device, vae.dtype)).latent_dist.mean
                    return (latents * vae.config.scaling_factor).float()

            latents = encode_images(image_tensor)
            pool = latents if train_images is None else encode_images(train_images)

            # Batches differ per process (data parallel); the basis init above does not.
            batches = torch.Generator().manual_seed(cfg.seed + 7919 * (distributed.rank() + 1))

            def draw(g: torch.Generator, size: int) -> tuple[Tensor, Tensor, Tensor]:
                idx = torch.randint(0, pool.shape[0], (size,), generator=g)
                noise = torch.randn(pool[idx].shape, generator=g)
                t = torch.randint(0, pipe.scheduler.config.num_train_timesteps, (size,), generator=g)
                return pool[idx], noise.to(device), t.to(device)

            eval_batch = _eval_batch(latents, pipe.scheduler.config.num_train_timesteps, cfg.seed + 1)
            objective = _Objective(pipe, LiveResiduals(layers))

            def moments(As, Bs, e) -> SecondMoments:  # layer inputs on the evaluation batch
                recorder = SecondMoments(layers)
                with objective.live, recorder.recording(), torch.no_grad():
                    objective(As, Bs, encode(e), eval_batch)
                return recorder

            opt = Optimizers(Adam(As), Adam(Bs), Adam([emb])) if cfg.optimizer == "adam" else None
            if resume is not None:
                As = [a.to(device) for a in resume["As"]]
                Bs = [b.to(device) for b in resume["Bs"]]
                emb, initial, losses = resume["embedding"].to(device), resume["initial"], list(resume["losses"])
                batches.set_state(resume["rng"])
                if opt is not None:
                    opt.load(resume["optimizer"])
            else:
                if cfg.basis_init == "activation" and method.basis == "init":
                    # B spans the top principal directions of the concept's inputs in the free space
                    before = moments(As, Bs, emb)
                    Bs = [activation_basis(before.moment(n), Q[n], ranks[n]).float().to(device) for n, _ in layers]
                with objective.live, torch.no_grad():
                    initial = _check_finite(objective(As, Bs, encode(emb), eval_batch), "start", cfg)
                losses = []

            def next_batch() -> tuple[Tensor, Tensor, Tensor]:
                return draw(batches, cfg.batch_size)

            with objective.live:
                for step in range(len(losses), cfg.steps):
                    for _ in range(cfg.K):
                        As, Bs, emb, loss = _bilevel_iteration(objective, encode, As, Bs, Qs, emb, next_batch, cfg, opt)
                    losses.append(_check_finite(loss, f"round {step + 1}", cfg))
                    if progress:
                        progress(step + 1, cfg.steps, losses[-1])
                    if checkpoint and (step + 1) % checkpoint_every == 0 and step + 1 < cfg.steps:
                        checkpoint(
                            {
                                "As": As,
                                "Bs": Bs,
                                "embedding": emb,
                                "initial": initial,
                                "losses": losses,
                                "rng": batches.get_state(),
                                "optimizer": opt.state() if opt is not None else {},
                            }
                        )
                with torch.no_grad():
                    final = _check_finite(objective(As, Bs, encode(emb), eval_batch), "end", cfg)
            after = moments(As, Bs, emb)
            summary = {n: top_directions(after.moment(n), cfg.activation_k) for n, _ in layers}
        finally:
            embed_hook.remove()

    return TrainResult(
        A={n: a.detach().cpu().numpy() for n, a in zip(names, As)},
        B={n: b.detach().cpu().numpy() for n, b in zip(names, Bs)},
        embedding=emb.detach().cpu().numpy(),
        U={n: u.float().numpy() for n, (u, _) in summary.items()},
        energies={n: lam.float().numpy() for n, (_, lam) in summary.items()},
        reserved=reserved,
        initial_loss=initial,
        final_loss=final,
        losses=losses,
        seconds=time.perf_counter() - start,
    )


def _eval_batch(latents: Tensor, num_timesteps: int, seed: int, per_image: int = 4):
    """Every image at ``per_image`` evenly spread timesteps with fixed noise: the loss the
    concept is judged by (start vs end), with far less variance than a random batch."""
    g = torch.Generator().manual_seed(seed)
    n = latents.shape[0]
    t = torch.linspace(0.05, 0.95, per_image).mul(num_timesteps).long().repeat_interleave(n)  # (n*per_image,)
    lat = latents.repeat(per_image, 1, 1, 1)
    return lat, torch.randn(lat.shape, generator=g).to(lat.device), t.to(lat.device)


class Adam:
    """Adam's moments for one group of tensors (A, B or the embedding), kept across rounds.

    ``step`` turns a gradient into Adam's update direction m̂/(√v̂ + ε) and advances the
    moments; ``diagonal`` is the preconditioner D = 1/(√v̂ + ε) a gradient would see now,
    without advancing anything (the tentative step's scaling).
    """

    def __init__(self, like: list[Tensor], b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> None:
        self.m = [torch.zeros_like(t) for t in like]
        self.v = [torch.zeros_like(t) for t in like]
        self.t, self.b1, self.b2, self.eps = 0, b1, b2, eps

    def _v_hat(self, v: Tensor, g: Tensor, t: int) -> Tensor:
        return (self.b2 * v + (1 - self.b2) * g.square()) / (1 - self.b2**t)

    def diagonal(self, grads: list[Tensor]) -> list[Tensor]:
        return [1 / (self._v_hat(v, g, self.t + 1).sqrt() + self.eps) for v, g in zip(self.v, grads)]

    def step(self, grads: list[Tensor]) -> list[Tensor]:
        self.t += 1
        out = []
        for i, g in enumerate(grads):
            self.m[i] = self.b1 * self.m[i] + (1 - self.b1) * g
            v_hat = self._v_hat(self.v[i], g, self.t)
            self.v[i] = v_hat * (1 - self.b2**self.t)
            out.append(self.m[i] / (1 - self.b1**self.t) / (v_hat.sqrt() + self.eps))
        return out

    def state(self, prefix: str) -> dict[str, Tensor]:
        named = {f"{prefix}.m.{i}": m for i, m in enumerate(self.m)}
        named |= {f"{prefix}.v.{i}": v for i, v in enumerate(self.v)}
        return named | {f"{prefix}.t": torch.tensor(self.t)}

    def load(self, prefix: str, state: dict[str, Tensor]) -> None:
        self.m = [state[f"{prefix}.m.{i}"].to(m.device) for i, m in enumerate(self.m)]
        self.v = [state[f"{prefix}.v.{i}"].to(v.device) for i, v in enumerate(self.v)]
        self.t = int(state[f"{prefix}.t"])


@dataclass
class Optimizers:
    """Per-group Adam state (``optimizer="adam"``); ``None`` means the paper's plain steps."""

    A: Adam
    B: Adam
    embedding: Adam

    def state(self) -> dict[str, Tensor]:
        return self.A.state("A") | self.B.state("B") | self.embedding.state("embedding")

    def load(self, state: dict[str, Tensor]) -> None:
        for name in ("A", "B", "embedding"):
            getattr(self, name).load(name, state)


def _direction(grads: list[Tensor], adam: Adam | None, cfg: TrainConfig) -> list[Tensor]:
    """The update direction of one step: Adam's, or the clipped gradient (plain steps)."""
    return adam.step(grads) if adam is not None else clip(grads, cfg.max_grad_norm)


def _bilevel_iteration(
    objective, encode, A_k, B_k, Qs, emb, draw: Callable[[], tuple], cfg: TrainConfig, opt: Optimizers | None = None
):
    """One k of Algorithm 1. Returns (A_{k+1}, B_{k+1}, embedding, loss at the last A-step).

    ``draw()`` gives a fresh batch for the tentative step, each B-step and each A-step: the
    quantities of one step (g_B, g_A and H[g_A]) share its batch, steps do not. Reusing one
    batch for all 1 + S_B + S_A steps fits that batch's noise: on the embedded base a
    fresh batch per step learns the example concepts visibly better at the same cost.
    """
    alpha, beta = cfg.alpha, cfg.beta
    with torch.no_grad():
        ehs = encode(emb)  # the embedding is a lower-level variable: fixed during the B-steps

    # Step 1: tentative lower-level update Ã = A_k − α D∘∇_A L(A_k, B_k)  (D = 1: plain steps)
    A_leaf = _leaves(A_k)
    grad_A = average(torch.autograd.grad(objective(A_leaf, B_k, ehs, draw()), A_leaf))
    if opt is None:
        grad_A, D = clip(grad_A, cfg.max_grad_norm), None
    else:
        D = opt.A.diagonal(grad_A)
        grad_A = [d * g for d, g in zip(D, grad_A)]
    A_tilde = [a - alpha * g for a, g in zip(A_k, grad_A)]

    # Steps 2-3: S_B reduced-gradient steps on B, each projected onto the free complement
    B = list(B_k)
    method = METHODS[cfg.method]
    for _ in range(cfg.S_B if method.moves_basis else 0):
        At, Bl, batch = _leaves(A_tilde), _leaves(B), draw()
        grads = average(torch.autograd.grad(objective(At, Bl, ehs, batch), At + Bl))
        g_A, g_B = grads[: len(At)], grads[len(At) :]
        if method.cross_hessian:
            hvp = cross_hessian_autograd if cfg.hvp == "autograd" else cross_hessian_finite_diff
            if D is not None:  # Ã moved along D∘∇_A L, so the reduced gradient looks along D∘g_A
                g_A = [d * g for d, g in zip(D, g_A)]
            H = average(hvp(objective, A_k, B, g_A, ehs, batch))
            g_B = [gb - alpha * h for gb, h in zip(g_B, H)]  # ∇Φ = g_B − α H[g_A]
        B = [b - beta * g for b, g in zip(B, _direction(g_B, opt and opt.B, cfg))]
        if method.projects:
            B = [project_out(b, q) for b, q in zip(B, Qs)]

    # Step 4: S_A steps on A (and the token embedding) from A_k at the new B
    A = list(A_k)
    for _ in range(cfg.S_A):
        Al, e = _leaves(A), emb.detach().requires_grad_(True)
        loss = objective(Al, B, encode(e), draw())
        grads = average(torch.autograd.grad(loss, Al + [e]))
        if opt is None:
            grads = clip(grads, cfg.max_grad_norm)
        else:
            grads = opt.A.step(grads[:-1]) + opt.embedding.step(grads[-1:])
        A = [a - alpha * g for a, g in zip(A, grads[:-1])]
        emb = (e - cfg.lr_embed * grads[-1]).detach()
    return [a.detach() for a in A], [b.detach() for b in B], emb, average([loss.detach()])[0]


class _EmbeddingHook:
    """Replaces the new token's row of the input embeddings by a tensor we optimise."""

    def __init__(self, module: torch.nn.Embedding, token_id: int) -> None:
        self.token_id, self.value = token_id, None
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.value is None:
            return output
        mask = (args[0] == self.token_id).unsqueeze(-1)  # (b, seq, 1)
        return torch.where(mask, self.value.to(output.dtype), output)

    def remove(self) -> None:
        self._handle.remove()


def add_tokens(pipe, tokens: dict[str, Tensor]) -> None:
    """Register concept tokens in the tokenizer and give them their learned embeddings."""
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    new = [t for t in tokens if t not in tokenizer.get_vocab()]
    if new:
        tokenizer.add_tokens(new)
        text_encoder.resize_token_embeddings(len(tokenizer))
    weight = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, vector in tokens.items():
            weight[tokenizer.convert_tokens_to_ids(token)] = vector.to(weight.device, weight.dtype)


def _init_token(pipe, token: str, init_word: str) -> tuple[Tensor, _EmbeddingHook]:
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    table = text_encoder.get_input_embeddings().weight
    init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
    if not init_ids:
        raise DataError(f"--init-word {init_word!r} is empty after tokenisation")
    start = table[init_ids].mean(0).detach().float().clone()  # (d,) fp32 whatever the base's dtype
    add_tokens(pipe, {token: start})
    hook = _EmbeddingHook(text_encoder.get_input_embeddings(), tokenizer.convert_tokens_to_ids(token))
    return start, hook


def evaluation_inputs(pipe, token: str, embedding: Tensor, image_tensor: Tensor, cfg: TrainConfig):
    """(text states, batch) of a concept's evaluation batch, as its training judged it."""
    add_tokens(pipe, {token: embedding})
    ids = pipe.tokenizer(
        cfg.prompt_template.format(token=token),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.unet.device)
    with torch.no_grad():
        latents = pipe.vae.encode(image_tensor.to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mean.float()
        latents = latents * pipe.vae.config.scaling_factor
        batch = _eval_batch(latents, pipe.scheduler.config.num_train_timesteps, cfg.seed + 1)
        return pipe.text_encoder(ids)[0], batch


@contextmanager
def patched(pipe, deltas: dict[str, Tensor]):
    """The pipeline with ``deltas`` added to its adapted weights for the duration of the block."""
    patch = WeightPatch(pipe.unet)
    patch.apply(deltas)
    try:
        yield pipe
    finally:
        patch.revert()


def concept_loss(pipe, deltas: dict[str, Tensor], inputs) -> float:
    """A concept's evaluation loss with exactly ``deltas`` applied (e.g. alone, or composed)."""
    ehs, batch = inputs
    with patched(pipe, deltas), torch.no_grad():
        return float(_Objective(pipe, LiveResiduals([]))([], [], ehs, batch))


def input_moments(pipe, layer_names: list[str], deltas: dict[str, Tensor], inputs) -> SecondMoments:
    """Second moments of every adapted layer's inputs on a concept's evaluation batch with
    ``deltas`` applied: the direct measurement that the stored summaries estimate."""
    ehs, batch = inputs
    recorder = SecondMoments(named_layers(pipe.unet, layer_names))
    with patched(pipe, deltas), recorder.recording(), torch.no_grad():
        _Objective(pipe, LiveResiduals([]))([], [], ehs, batch)
    return recorder
