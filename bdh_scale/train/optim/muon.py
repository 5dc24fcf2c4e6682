"""Muon for matrices and stacks of matrices, with AdamW for everything else, in one optimizer.

Why our own class rather than `torch.optim.Muon`:
  * torch's Muon rejects any parameter that is not 2-D, and BDH's encoders are 3-D
    (nh, D, N): one D x N matrix per head, which must be orthogonalized head by head (a
    reshape to 2-D would orthogonalize the wrong matrix). `zeropower_via_newtonschulz` here is
    torch's iteration (same quintic coefficients, bf16, 5 steps) applied batch-wise over the
    leading dims; on a 2-D input it matches torch's own (tested against it).
  * torch's learning-rate adjustment assumes nn.Linear's (out, in) layout. BDH multiplies
    `x @ W`, i.e. (in, out), so each Muon group says which layout its params use
    (group["layout"]) and the adjustment is taken from the true fan-in / fan-out.
  * Training needs ONE optimizer object: accelerate's `prepare(optimizer)`, one
    state_dict in the checkpoint, one `param_groups` list for the LR scheduler. So Muon and
    AdamW groups live side by side in a single `torch.optim.Optimizer`, told apart by
    group["kind"] ("muon" | "adamw"). The AdamW step is written out (a handful of tensors:
    embeddings, head, gains) and tested against `torch.optim.AdamW`.

Not for sharded parameters (FSDP/ZeRO-3): Newton-Schulz needs each whole matrix. Under DDP
every rank runs the same (redundant) orthogonalization, which is correct.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

# Quintic Newton-Schulz coefficients from Keller Jordan's Muon (also torch.optim.Muon's).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7

LAYOUTS = ("in_out", "out_in")
ADJUST_LR_FNS = ("original", "match_rms_adamw")


def zeropower_via_newtonschulz(
    g: Tensor,
    steps: int = NS_STEPS,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = NS_EPS,
) -> Tensor:
    """Approximately orthogonalize each matrix in the last two dims of `g` (ndim >= 2).

    Returns U S' V^T with S' roughly in [0.5, 1.5] rather than exactly U V^T: the quintic is
    tuned for speed, which costs nothing in training quality (Keller Jordan's Muon notes).
    Runs in bf16 like the reference; the result is bf16.
    """
    if g.ndim < 2:
        raise ValueError(f"Newton-Schulz needs a matrix or a stack of matrices, got shape {tuple(g.shape)}")
    a, b, c = coefficients
    x = g.bfloat16().reshape(-1, *g.shape[-2:])  # (batch, rows, cols)
    tall = g.size(-2) > g.size(-1)
    if tall:  # iterate on the wide orientation so the Gram matrix is the small one
        x = x.mT
    # Frobenius norm >= spectral norm, so this puts every singular value in [0, 1].
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):  # baddbmm: torch's addmm form per matrix (bit-identical to it on CPU)
        gram = x @ x.mT
        poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.baddbmm(x, poly, x, beta=a)
    return (x.mT if tall else x).reshape(g.shape)


def adjusted_lr(lr: float, shape: torch.Size, layout: str, adjust_lr_fn: str) -> float:
    """Scale Muon's lr for the matrix shape (last two dims) so updates are comparable.

    "original" (Keller Jordan): lr * sqrt(max(1, fan_out / fan_in)), which makes the update's
    RMS entry lr / sqrt(fan_in) for every shape, the same scaling as the init.
    "match_rms_adamw" (Moonshot, "Muon is Scalable"): 0.2 * lr * sqrt(max(fan_in, fan_out)),
    an update RMS of 0.2 * lr like AdamW's, so an AdamW-tuned lr can be reused.
    """
    rows, cols = shape[-2], shape[-1]
    fan_in, fan_out = (rows, cols) if layout == "in_out" else (cols, rows)
    if adjust_lr_fn == "original":
        return lr * math.sqrt(max(1.0, fan_out / fan_in))
    return lr * 0.2 * math.sqrt(max(fan_in, fan_out))


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer: Muon on groups with kind="muon", AdamW on groups with kind="adamw".

    Every group must carry "kind". Muon groups take lr, momentum, nesterov, weight_decay,
    layout ("in_out" for `x @ W` params such as BDH's, "out_in" for nn.Linear weights),
    adjust_lr_fn, ns_steps; AdamW groups take lr, betas, eps, weight_decay. Missing keys get
    the defaults below. Weight decay is decoupled in both: p *= 1 - lr * weight_decay.
    """

    def __init__(self, param_groups: list[dict]):
        super().__init__(param_groups, {})

    def add_param_group(self, param_group: dict) -> None:
        """Validate and default a group by its kind (also used by __init__ for every group)."""
        kind = param_group.get("kind")
        if kind not in ("muon", "adamw"):
            raise ValueError(f'every param group needs kind "muon" or "adamw", got {kind!r}')
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        param_group = {**(self._muon_defaults() if kind == "muon" else self._adamw_defaults()),
                       **param_group, "params": params}
        if kind == "muon":
            if param_group["layout"] not in LAYOUTS:
                raise ValueError(f"muon layout must be one of {LAYOUTS}, got {param_group['layout']!r}")
            if param_group["adjust_lr_fn"] not in ADJUST_LR_FNS:
                raise ValueError(f"adjust_lr_fn must be one of {ADJUST_LR_FNS}, got {param_group['adjust_lr_fn']!r}")
            for p in params:
                if p.ndim < 2:
                    raise ValueError(f"muon params must have ndim >= 2, got shape {tuple(p.shape)}")
        super().add_param_group(param_group)

    @staticmethod
    def _muon_defaults() -> dict:
        return dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0, layout="in_out",
                    adjust_lr_fn="original", ns_steps=NS_STEPS)

    @staticmethod
    def _adamw_defaults() -> dict:
        return dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_group(group)
            else:
                self._adamw_group(group)
        return loss

    def _with_grads(self, group: dict):
        """(parameter, its gradient, its optimizer state) for each parameter of the group that has a gradient."""
        for p in group["params"]:
            if p.grad is not None:
                yield p, p.grad, self.state[p]

    def _muon_group(self, group: dict) -> None:
        lr, momentum, wd = group["lr"], group["momentum"], group["weight_decay"]
        for p, grad, state in self._with_grads(group):
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(grad)
            buf = state["momentum_buffer"]
            buf.lerp_(grad, 1 - momentum)
            update = grad.lerp(buf, momentum) if group["nesterov"] else buf
            update = zeropower_via_newtonschulz(update, steps=group["ns_steps"])
            p.mul_(1 - lr * wd)
            p.add_(update.to(p.dtype), alpha=-adjusted_lr(lr, p.shape, group["layout"], group["adjust_lr_fn"]))

    def _adamw_group(self, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p, grad, state in self._with_grads(group):
            if "step" not in state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            step = state["step"]
            exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
            p.mul_(1 - lr * wd)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias1 = 1 - beta1**step
            bias2_sqrt = math.sqrt(1 - beta2**step)
            denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
            p.addcdiv_(exp_avg, denom, value=-lr / bias1)
