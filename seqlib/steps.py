"""One bilevel iteration of Algorithm 1 and the pieces it is made of: the objective, the
cross-Hessian-vector products, gradient clipping and the Adam preconditioner.

Pure functions of tensors and a callable objective; ``seqlib.train`` runs them in a loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from seqlib.config import TrainConfig
from seqlib.distributed import average
from seqlib.errors import TrainingDivergedError
from seqlib.lora import LiveResiduals
from seqlib.methods import METHODS
from seqlib.subspace import project_out


class Objective:
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


def leaves(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().requires_grad_(True) for t in tensors]


def check_finite(loss: Tensor, where: str, cfg: TrainConfig) -> float:
    value = float(loss)
    if not math.isfinite(value):
        raise TrainingDivergedError(
            f"training diverged ({where}: loss is {value}); nothing was committed — "
            f"try smaller step sizes, e.g. {_safer_steps(cfg)}"
        )
    return value


# Step sizes known to train on the embedded base, per optimizer (docs/method.md, "Defaults, and why").
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
    A_k, B = leaves(A_k), leaves(B)
    with sdpa_kernel(SDPBackend.MATH):
        loss = objective(A_k, B, ehs, batch)
        grad_A = torch.autograd.grad(loss, A_k, create_graph=True)
        dot = sum((g * v).sum() for g, v in zip(grad_A, g_A))
        return list(torch.autograd.grad(dot, B))


def _difference_step(A_k, g_A, rel_step: float) -> float:
    """h for a difference along A_k + h·g_A: ``rel_step`` of max(‖A_k‖, ‖g_A‖) (far smaller
    loses the difference to float32 round-off); 0 when g_A is zero."""
    v_norm = math.sqrt(sum(float(v.square().sum()) for v in g_A))
    if v_norm == 0.0:
        return 0.0
    a_norm = math.sqrt(sum(float(a.square().sum()) for a in A_k))
    return rel_step * max(a_norm, v_norm) / v_norm


def gradient_B(objective, A, B, ehs, batch) -> list[Tensor]:
    """∇_B L(A, B) on one batch."""
    B_l = leaves(B)
    return list(torch.autograd.grad(objective([a.detach() for a in A], B_l, ehs, batch), B_l))


def cross_hessian_finite_diff(objective, A_k, B, g_A, ehs, batch, rel_step: float = 1e-2) -> list[Tensor]:
    """The same H[g_A] as a central difference of ∇_B L along A_k ± h·g_A.

    No double backward, so fast attention kernels work and memory stays near a plain
    LoRA step.
    """
    h = _difference_step(A_k, g_A, rel_step)
    if h == 0.0:
        return [torch.zeros_like(b) for b in B]
    plus, minus = (
        gradient_B(objective, [a.detach() + sign * h * v for a, v in zip(A_k, g_A)], B, ehs, batch)
        for sign in (1.0, -1.0)
    )
    return [(gp - gm) / (2 * h) for gp, gm in zip(plus, minus)]


def cross_hessian_forward_diff(objective, A_k, B, g_A, ehs, batch, base: list[Tensor], rel_step: float = 3e-3):
    """H[g_A] as a one-sided difference (∇_B L(A_k + h·g_A, B) − ∇_B L(A_k, B)) / h, where
    ``base`` is ∇_B L(A_k, B) on the same batch: one pass instead of the central difference's
    two, and none more when ``base`` comes free from an earlier backward (the tentative step's,
    at B = B_k). Its error is O(h) instead of O(h²), hence a smaller step than the central one.
    """
    h = _difference_step(A_k, g_A, rel_step)
    if h == 0.0:
        return [torch.zeros_like(b) for b in B]
    moved = gradient_B(objective, [a.detach() + h * v for a, v in zip(A_k, g_A)], B, ehs, batch)
    return [(gp - g0) / h for gp, g0 in zip(moved, base)]


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


def direction(grads: list[Tensor], adam: Adam | None, cfg: TrainConfig) -> list[Tensor]:
    """The update direction of one step: Adam's, or the clipped gradient (plain steps)."""
    return adam.step(grads) if adam is not None else clip(grads, cfg.max_grad_norm)


def bilevel_iteration(
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

    method = METHODS[cfg.method]
    if method.joint:
        return joint_steps(objective, encode, A_k, B_k, emb, draw, cfg, opt)
    # forward-diff: the first B-step shares the tentative step's batch, whose backward then also
    # gives ∇_B L(A_k, B_k), the base point of the one-sided cross-Hessian difference, for free
    reuse = method.cross_hessian and method.moves_basis and cfg.hvp == "forward-diff"

    # Step 1: tentative lower-level update Ã = A_k − α D∘∇_A L(A_k, B_k)  (D = 1: plain steps)
    A_leaf, B_leaf, first = leaves(A_k), leaves(B_k), draw()
    wrt = A_leaf + (B_leaf if reuse else [])
    grads = average(torch.autograd.grad(objective(A_leaf, B_leaf if reuse else B_k, ehs, first), wrt))
    grad_A, base = grads[: len(A_leaf)], grads[len(A_leaf) :]
    if opt is None:
        grad_A, D = clip(grad_A, cfg.max_grad_norm), None
    else:
        D = opt.A.diagonal(grad_A)
        grad_A = [d * g for d, g in zip(D, grad_A)]
    A_tilde = [a - alpha * g for a, g in zip(A_k, grad_A)]

    # Steps 2-3: S_B reduced-gradient steps on B, each projected onto the free complement
    B = list(B_k)
    for j in range(cfg.S_B if method.moves_basis else 0):
        At, Bl, batch = leaves(A_tilde), leaves(B), first if reuse and j == 0 else draw()
        grads = average(torch.autograd.grad(objective(At, Bl, ehs, batch), At + Bl))
        g_A, g_B = grads[: len(At)], grads[len(At) :]
        if method.cross_hessian:
            if D is not None:  # Ã moved along D∘∇_A L, so the reduced gradient looks along D∘g_A
                g_A = [d * g for d, g in zip(D, g_A)]
            if cfg.hvp == "forward-diff":
                at_k = base if j == 0 else average(gradient_B(objective, A_k, B, ehs, batch))
                H = average(cross_hessian_forward_diff(objective, A_k, B, g_A, ehs, batch, at_k))
            else:
                hvp = cross_hessian_autograd if cfg.hvp == "autograd" else cross_hessian_finite_diff
                H = average(hvp(objective, A_k, B, g_A, ehs, batch))
            g_B = [gb - alpha * h for gb, h in zip(g_B, H)]  # ∇Φ = g_B − α H[g_A]
        B = [b - beta * g for b, g in zip(B, direction(g_B, opt and opt.B, cfg))]
        if method.projects:
            B = [project_out(b, q) for b, q in zip(B, Qs)]

    # Step 4: S_A steps on A (and the token embedding) from A_k at the new B
    A = list(A_k)
    for _ in range(cfg.S_A):
        Al, e = leaves(A), emb.detach().requires_grad_(True)
        loss = objective(Al, B, encode(e), draw())
        grads = average(torch.autograd.grad(loss, Al + [e]))
        if opt is None:
            grads = clip(grads, cfg.max_grad_norm)
        else:
            grads = opt.A.step(grads[:-1]) + opt.embedding.step(grads[-1:])
        A = [a - alpha * g for a, g in zip(A, grads[:-1])]
        emb = (e - cfg.lr_embed * grads[-1]).detach()
    return [a.detach() for a in A], [b.detach() for b in B], emb, average([loss.detach()])[0]


def joint_steps(objective, encode, A, B, emb, draw: Callable[[], tuple], cfg: TrainConfig, opt: Optimizers | None):
    """Plain LoRA as usually trained (``lora-joint``): 1 + S_B + S_A steps, each one gradient of
    the loss on a fresh batch moving A (by α), B (by β) and the token embedding together; no
    projection. The same passes as an alternating iteration, so the two compare per second."""
    n = len(A)
    for _ in range(1 + cfg.S_B + cfg.S_A):
        Al, Bl, e = leaves(A), leaves(B), emb.detach().requires_grad_(True)
        loss = objective(Al, Bl, encode(e), draw())
        grads = average(torch.autograd.grad(loss, Al + Bl + [e]))
        if opt is None:
            grads = clip(grads, cfg.max_grad_norm)
        else:
            grads = opt.A.step(grads[:n]) + opt.B.step(grads[n : 2 * n]) + opt.embedding.step(grads[-1:])
        A = [a - cfg.alpha * g for a, g in zip(A, grads[:n])]
        B = [b - cfg.beta * g for b, g in zip(B, grads[n : 2 * n])]
        emb = (e - cfg.lr_embed * grads[-1]).detach()
    return [a.detach() for a in A], [b.detach() for b in B], emb, average([loss.detach()])[0]
