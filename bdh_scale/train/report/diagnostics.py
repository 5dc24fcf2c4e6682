"""What the dashboards show beyond the loss: MFU, how many neurons fire, how large the synaptic
state grows, and what the model writes. All of it is read on the main process from the unwrapped
model, outside the gradient and without touching the global RNG, so logging it cannot change a
run (resume stays bit-identical with or without it).

Keys use W&B's section/name convention so they group into panels: mfu, act/*, state/*.
"""
from __future__ import annotations

import sys

import torch

from bdh_scale.model.bdh.probes import bdh_layers, capture_codes
from bdh_scale.model.flops import flops_per_token
from bdh_scale.model.registry import is_stateful
from bdh_scale.utils.perf import compute_dtype, device_peak_flops, matmul_peak_flops


class MFU:
    """Model FLOPs utilisation: model FLOP/s over the processes' summed matmul peak.

    The peak is tracking.peak_tflops per device when given (a datasheet figure), else
    perf.device_peak_flops (a known GPU's datasheet peak, or the fastest of several timed GEMMs).
    A utilisation above 1 cannot be: the first time one appears against a measured peak, the
    peak is measured again, longer, and the higher of the two kept (the start-up measurement was
    slowed by something else). One still above 1 is logged as null, with one warning: the FLOP
    count or the given peak is wrong, and no number is better than an impossible one."""

    def __init__(self, model_cfg, device, mixed_precision: str, num_processes: int, peak_tflops: float | None):
        self.model_cfg, self.device, self.num_processes = model_cfg, device, num_processes
        self.dtype = compute_dtype(mixed_precision)
        self.given = bool(peak_tflops)
        self.per_device = peak_tflops * 1e12 if peak_tflops else device_peak_flops(str(device), self.dtype)
        self.remeasured = self.warned = False

    @property
    def peak(self) -> float:
        return self.per_device * self.num_processes

    def __call__(self, T: int, tokens_per_s: float) -> dict:
        flops = flops_per_token(self.model_cfg, T) * tokens_per_s
        if flops > self.peak and not self.given and not self.remeasured:
            self.remeasured = True
            self.per_device = max(self.per_device, matmul_peak_flops(self.device, self.dtype))
        mfu = flops / self.peak
        if mfu > 1:
            if not self.warned:
                self.warned = True
                print(f"warning: mfu: {mfu:.2f} of the peak {self.per_device / 1e12:.3g} TFLOP/s per device "
                      f"({'tracking.peak_tflops' if self.given else 'measured twice'}) is impossible; logged as "
                      "null (set tracking.peak_tflops to the device's dense peak)", file=sys.stderr)
            mfu = None
        return {"model_tflops": flops / 1e12, "mfu": mfu}


@torch.no_grad()
def activation_and_state(model, x: torch.Tensor) -> dict:
    """One forward of x (eval mode, no dropout) from an empty state: per layer, the fraction of
    (token, neuron) pairs with x_sparse > 0, y_sparse > 0 and both, and ||rho||_F at the end of the
    window (mean over lanes and heads). {} for a model without BDH layers (the gpt baseline)."""
    try:
        names = [name for name, _ in bdh_layers(model)]
    except ValueError:
        return {}
    active: dict[str, list[torch.Tensor]] = {name: [] for name in names}

    def sink(name, x_sparse, y_sparse):
        active[name].append(torch.stack([(x_sparse > 0).float().mean(), (y_sparse > 0).float().mean(),
                                         (x_sparse * y_sparse > 0).float().mean()]))

    was_training = model.training
    model.eval()
    try:
        with capture_codes(model, sink):
            out = model(x, return_state=True) if is_stateful(model) else model(x)
    finally:
        model.train(was_training)
    record = {}
    for i, name in enumerate(names):
        if not active[name]:
            continue
        x_act, y_act, xy_act = torch.stack(active[name]).mean(0).tolist()  # HRM layers: mean over cycles
        record.update({f"act/x_active_l{i}": x_act, f"act/y_active_l{i}": y_act, f"act/xy_active_l{i}": xy_act})
    xy = [v for k, v in record.items() if k.startswith("act/xy_active_l")]
    if xy:
        record["act/xy_active"] = sum(xy) / len(xy)
    record.update(rho_norms(getattr(out, "state", None), "state/rho_norm"))
    return record


def rho_norms(state, prefix: str) -> dict:
    """{prefix_l<i>: mean over lanes and heads of ||rho||_F} for a BDHState with unwindowed layers."""
    layers = getattr(state, "layers", None) or []
    return {f"{prefix}_l{i}": s.rho.float().norm(dim=(-2, -1)).mean().item()
            for i, s in enumerate(layers) if getattr(s, "rho", None) is not None}


def carried_rho_norms(states: list) -> dict:
    """The TBPTT states carried between training windows (train.state=carry), averaged over the
    micro-batch groups: how large rho grows over a long stream."""
    rows = [rho_norms(s, "state/carried_rho_norm") for s in states if s is not None]
    if not rows:
        return {}
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
