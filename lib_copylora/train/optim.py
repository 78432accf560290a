"""Optimisers and learning-rate schedules.

A schedule is a pure function of the step: the loop sets each group's learning rate to base · factor(step) before
every optimizer step, so resuming needs nothing but the step number.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .config import OptimConfig, OptimizerKind, SchedulerKind
from .errors import OptimizerUnavailable


def lr_factor(kind: SchedulerKind, step: int, total_steps: int, warmup_steps: int = 0, num_cycles: int = 1) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (0-based) of `total_steps`; the same curves
    as diffusers' `get_scheduler` (warm-up rises linearly from 0 over `warmup_steps`)."""
    if kind is SchedulerKind.CONSTANT:
        return 1.0
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if kind is SchedulerKind.CONSTANT_WITH_WARMUP:
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if kind is SchedulerKind.LINEAR:
        return max(0.0, 1.0 - progress)
    if kind is SchedulerKind.COSINE:
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if kind is SchedulerKind.COSINE_WITH_RESTARTS:
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))
    raise ValueError(f"unknown scheduler {kind}")


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update is the sign of an
    interpolation between the momentum and the gradient; used when lion-pytorch is not installed."""

    def __init__(self, params: Iterable, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"Lion learning rate must be > 0, not {lr}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                momentum = state["exp_avg"]
                p.mul_(1.0 - group["lr"] * group["weight_decay"])
                update = momentum.mul(beta1).add_(p.grad, alpha=1.0 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                momentum.mul_(beta2).add_(p.grad, alpha=1.0 - beta2)
        return loss


def multi_tensor_options(param_groups: list[dict]) -> dict:
    """torch's fused AdamW where it has one for every parameter's device (CUDA, CPU), else its foreach form: one
    kernel (or one op per kind) over all tensors instead of several ops per tensor."""
    params = [p for group in param_groups for p in group["params"]]
    fusable = all(p.device.type in ("cuda", "cpu") and p.is_floating_point() for p in params)
    return {"fused": True} if fusable else {"foreach": True}


def build_optimizer(param_groups: list[dict], config: OptimConfig, multi_tensor: bool = False
                    ) -> torch.optim.Optimizer:
    """The optimiser over `param_groups` (each with its own "lr"); a missing package is a clear error.
    `multi_tensor` asks for AdamW's fused (or foreach) implementation; the others have one form."""
    kind = config.optimizer
    common = dict(lr=config.learning_rate, weight_decay=config.effective_weight_decay)
    if kind is OptimizerKind.ADAMW:
        extra = multi_tensor_options(param_groups) if multi_tensor else {}
        return torch.optim.AdamW(param_groups, betas=config.effective_betas, eps=config.eps, **common, **extra)
    if kind is OptimizerKind.ADAMW_8BIT:
        try:
            import bitsandbytes
        except ImportError:
            raise OptimizerUnavailable("AdamW 8-bit needs bitsandbytes: `pip install bitsandbytes`, or choose "
                                       "the adamw optimizer") from None
        return bitsandbytes.optim.AdamW8bit(param_groups, betas=config.effective_betas, eps=config.eps, **common)
    if kind is OptimizerKind.LION:
        try:
            from lion_pytorch import Lion as LionClass
        except ImportError:
            LionClass = Lion
        return LionClass(param_groups, betas=config.effective_betas, **common)
    if kind is OptimizerKind.PRODIGY:
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise OptimizerUnavailable("Prodigy needs prodigyopt: `pip install prodigyopt`, or choose adamw") \
                from None
        return Prodigy(param_groups, betas=config.effective_betas, eps=config.eps, **common)
    raise ValueError(f"unknown optimizer {kind}")


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """`module.Class`, as kohya writes `ss_optimizer`."""
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__name__}"


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Scale every group's base rate ("initial_lr") by `factor`; returns the first group's rate for logging."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
    return optimizer.param_groups[0]["lr"]
