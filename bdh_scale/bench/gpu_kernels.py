"""The attention kernels of `make gpu-check`, one layer's attention on its own: fla against the chunked
and parallel forms (model.attn_backend), on random inputs shaped like BDH's (positive sparse keys
that are the queries, a value shared by the heads, a per-token data gate, a carried state).

    contract   fp32, small: the fla adapter against attend_chunked (outputs, state, gradients);
               where fla is installed, also our plain-PyTorch stand-in of its kernel against fla's
               kernel and fla's own naive reference (the CPU tests rest on that stand-in)
    parity     the run's dtype (bf16 on a GPU) at N = 256, 2048, 8192: each form's outputs, final
               state and gradients against the chunked form in fp32, as max |error| / max |reference|
    timing     forward + backward time (fastest of 3) and peak memory of each form at
               T = 512, 2048, 8192 at the check's model shape (16k tokens per call)

A dry run uses tiny shapes, fp32 and the stand-in kernel: the code paths, not the numbers.
"""
from __future__ import annotations

import torch
from einops import rearrange

from bdh_scale.model.bdh.attention import AttnState, attend_chunked, attend_parallel, fla
from bdh_scale.model.bdh.attention.fla_tune import best_time

FORMS = ("parallel", "chunked", "fla")


def inputs(H, B, T, N, D, device, seed=0, carried=True):
    """fp32 leaves: keys (H, B, T, N) >= 0 and sparse, values (1, B, T, D) normalized, log gates
    (H, B, T) in [-0.1, 0], and a carried state (B, H, N, D) built from an earlier window."""
    g = torch.Generator(device=device).manual_seed(seed)
    k = torch.relu(torch.randn(H, B, T, N, device=device, generator=g) - 0.5)
    v = torch.nn.functional.layer_norm(torch.randn(1, B, T, D, device=device, generator=g), (D,))
    log_g = -0.1 * torch.rand(H, B, T, device=device, generator=g)
    rho = None
    if carried:
        k0 = torch.relu(torch.randn(B, H, 64, N, device=device, generator=g) - 0.5)
        v0 = torch.randn(B, 1, 64, D, device=device, generator=g)
        rho = k0.transpose(-1, -2) @ v0 / 64
    return k, v, log_g, rho


def attend(form, k, v, log_g, rho, scale, chunk=64):
    """(a, lanes-first final state or None) of one form; the parallel form keeps no state."""
    if form == "parallel":
        return attend_parallel(k, k, v, scale, log_g), None
    if form == "fla":
        return fla.attend_fla(k, k, v, scale, rho, log_g, rho is not None)
    state = None if rho is None else AttnState(rho=rho).swap_lanes_heads()
    a, st = attend_chunked(k, k, v, scale, state, log_g, None, chunk, rho is not None)
    return a, (None if st is None else st.swap_lanes_heads().rho)


def forward_backward(form, k, v, log_g, rho, scale, dtype, w):
    """Outputs, state and gradients of one form run in `dtype` (the state stays fp32)."""
    leaves = [x.detach().to(dtype).requires_grad_() for x in (k, v)]
    lg = log_g.detach().clone().requires_grad_()
    r = None if rho is None else rho.detach().clone().requires_grad_()
    a, state = attend(form, leaves[0], leaves[1], lg, r, scale)
    loss = (a.float() * w).sum() + (0 if state is None else state.sum() * 1e-3)
    loss.backward()
    grads = {"dk": leaves[0].grad, "dv": leaves[1].grad, "dlog_g": lg.grad}
    if r is not None:
        grads["drho"] = r.grad
    return {"a": a.detach(), **({} if state is None else {"state": state.detach()}), **grads}


def rel_errors(got: dict, ref: dict) -> dict:
    return {k: ((got[k].float() - ref[k].float()).abs().max() / ref[k].float().abs().max().clamp_min(1e-30)).item()
            for k in got if k in ref}


def contract(device) -> dict:
    """fp32 at a small shape: the adapter against the chunked form, and (fla installed) the stand-in
    against fla's kernel and its naive reference."""
    H, B, T, N, D = 2, 2, 96, 32, 16
    k, v, log_g, rho = inputs(H, B, T, N, D, device, seed=1)
    w = torch.randn(H, B, T, D, device=device, generator=torch.Generator(device=device).manual_seed(2))
    ref = forward_backward("chunked", k, v, log_g, rho, N ** -0.5, torch.float32, w)
    out = {"adapter_vs_chunked": rel_errors(forward_backward("fla", k, v, log_g, rho, N ** -0.5, torch.float32, w), ref)}
    kernel, why = fla.fla_kernel()
    if kernel is None or fla.unavailable(device) is not None:
        out["stand_in_vs_fla"] = why or fla.unavailable(device)
        return out
    from fla.ops.simple_gla.naive import naive_recurrent_simple_gla

    from bdh_scale.model.bdh.attention.fla_reference import simple_gla_reference

    layout = lambda x: rearrange(x, "h b t x -> b t h x").contiguous()  # noqa: E731  (fla's layout)
    q_, k_, v_ = layout(k), layout(k), layout(v.expand(H, -1, -1, -1))
    g_ = rearrange(log_g, "h b t -> b t h").contiguous()
    ours = simple_gla_reference(q_, k_, v_, g_, 0.3, rho, True)
    for name, fn in (("fla_kernel", kernel), ("fla_naive", naive_recurrent_simple_gla)):
        o, s = fn(q_, k_, v_, g_, scale=0.3, initial_state=rho, output_final_state=True)
        out[f"stand_in_vs_{name}"] = rel_errors({"o": o, "state": s}, {"o": ours[0], "state": ours[1]})
    return out


def parity(device, dtype, Ns, T, D, H=4, B=1) -> list[dict]:
    """Each form in `dtype` against the chunked form in fp32, stateless and carried."""
    rows = []
    for N in Ns:
        for carried in (False, True):
            k, v, log_g, rho = inputs(H, B, T, N, D, device, carried=carried)
            w = torch.randn(H, B, T, D, device=device, generator=torch.Generator(device=device).manual_seed(3))
            ref = forward_backward("chunked", k, v, log_g, rho, N ** -0.5, torch.float32, w)
            for form in FORMS:
                if form == "parallel" and carried:
                    continue
                row = {"N": N, "T": T, "form": form, "carried": carried, "dtype": str(dtype).split(".")[-1]}
                try:
                    row["rel_error"] = rel_errors(forward_backward(form, k, v, log_g, rho, N ** -0.5, dtype, w), ref)
                    row["error"] = None
                except Exception as e:  # a form that fails is a finding
                    row["error"] = first_line(e)
                rows.append(row)
            del ref
    return rows


def first_line(e: Exception) -> str:
    """An exception as one line of a table: its type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def peak_bytes(device):
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def timing(device, dtype, Ts, tokens, H, N, D, repeats=3) -> list[dict]:
    """Forward + backward of each form, stateless, with the data gate, `tokens` per call."""
    rows = []
    for T in Ts:
        B = max(1, tokens // T)
        for form in FORMS:
            row = {"T": T, "B": B, "form": form, "error": None}
            try:
                k, v, log_g, _ = inputs(H, B, T, N, D, device, carried=False)
                k, v = k.to(dtype).requires_grad_(), v.to(dtype).requires_grad_()
                log_g.requires_grad_()

                def step():
                    a, _ = attend(form, k, v, log_g, None, N ** -0.5)
                    a.float().sum().backward()
                    k.grad = v.grad = log_g.grad = None

                step()  # warm-up: kernels compiled and autotuned, outside the peak
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                base = peak_bytes(device)
                row["ms"] = 1000 * best_time(step, device, repeats)
                row["peak_gb"] = None if base is None else (peak_bytes(device) - base) / 1e9
            except Exception as e:  # out of memory at T = 8192 is a finding too
                row["error"] = first_line(e)
            finally:
                k = v = log_g = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
    return rows


def print_kernels(contract_out: dict, parity_rows: list, timing_rows: list) -> None:
    print("\nfla contract (fp32, max |error| / max |reference|):")
    for name, errs in contract_out.items():
        print(f"  {name}: " + (errs if isinstance(errs, str) else ", ".join(f"{k} {v:.1e}" for k, v in errs.items())))
    print(f"\n{'parity':<8} {'N':>5} {'form':<9} {'state':<8} {'a':>8} {'dk':>8} {'dv':>8} {'dlog_g':>8} "
          f"{'state':>8} {'drho':>8}  status")
    for r in parity_rows:
        e = r.get("rel_error") or {}
        cells = " ".join(f"{e[k]:>8.1e}" if k in e else f"{'-':>8}" for k in ("a", "dk", "dv", "dlog_g", "state", "drho"))
        print(f"{r['dtype']:<8} {r['N']:>5} {r['form']:<9} {'carried' if r['carried'] else 'fresh':<8} {cells}  "
              f"{r['error'] or 'ok'}")
    print(f"\n{'fwd+bwd':<8} {'T':>5} {'B':>3} {'form':<9} {'ms':>9} {'peak GB':>8}  status")
    for r in timing_rows:
        ms = f"{r['ms']:.2f}" if "ms" in r else "-"
        mem = f"{r['peak_gb']:.2f}" if r.get("peak_gb") is not None else "-"
        print(f"{'':<8} {r['T']:>5} {r['B']:>3} {r['form']:<9} {ms:>9} {mem:>8}  {r['error'] or 'ok'}")
