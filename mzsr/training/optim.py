"""The optimiser of both training stages: TensorFlow 1's Adam, as the authors trained with, or PyTorch's.

TF-1's `AdamOptimizer` (and its ApplyAdam kernel) folds the bias corrections into the step size and
adds epsilon after them ("epsilon hat" in Kingma and Ba):

    m_t = m + (g - m)(1 - b1),   v_t = v + (g^2 - v)(1 - b2)
    lr_t = lr sqrt(1 - b2^t) / (1 - b1^t)
    theta -= lr_t m_t / (sqrt(v_t) + eps)

PyTorch's Adam divides by sqrt(v_t / (1 - b2^t)) + eps instead, which in TF's form is an epsilon of
eps / sqrt(1 - b2^t): 31.6x larger at t = 1, 3.2x at t = 100. Meta-gradients at theta_T are tiny
(median |g| about 1.7e-7), so for most parameters the release's first updates are damped where
PyTorch's are not. "adam_tf1" is the default of pre-training and meta-training; "adam" keeps PyTorch's.
"""

from __future__ import annotations

import torch

from mzsr import MZSRError

OPTIMIZERS = ("adam_tf1", "adam")


class AdamTF1(torch.optim.Optimizer):
    """Adam with TensorFlow 1's update (see the module docstring); its defaults are TF-1's.

    The state is per parameter: `step` (float32 count), `exp_avg`, `exp_avg_sq`, all zero when fresh
    and all on the parameter's device; b1^t and b2^t are computed from the count on the device. So a
    step has no host synchronisation and can be captured in a CUDA graph as it is, and a zeroed state
    is a fresh one (what the CUDA-graph warm-up of mzsr.training.meta_step.MetaStep relies on). The learning rate is
    read from the parameter group at every eager step (a captured graph keeps the one it was captured with).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if lr <= 0 or eps < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"AdamTF1: invalid lr {lr}, betas {betas} or eps {eps}")
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (b1, b2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamTF1 does not take sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if state["step"].device != p.device:  # a state loaded from another device
                    state["step"] = state["step"].to(p.device)
                step, m, v, g = state["step"], state["exp_avg"], state["exp_avg_sq"], p.grad
                step.add_(1)
                t = step.to(p.dtype)
                m.lerp_(g, 1 - b1)  # m + (g - m)(1 - b1), TF's form
                v.lerp_(g * g, 1 - b2)
                step_size = lr * torch.sqrt(1 - torch.pow(b2, t)) / (1 - torch.pow(b1, t))
                p.sub_(m * step_size / (v.sqrt() + eps))
        return loss


def make_optimizer(name: str, params, lr: float) -> torch.optim.Optimizer:
    """The training config's `optimizer`: "adam_tf1" (the release's) or "adam" (PyTorch's), default betas and eps."""
    if name == "adam_tf1":
        return AdamTF1(params, lr=lr)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise MZSRError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
