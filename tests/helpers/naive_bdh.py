"""A deliberately naive BDH forward written from the paper's equations, for tests only.

Token by token and head by head, with the attention as an explicit sum over earlier tokens:

    a_t = c * sum_{s<t, t-s<=w} (prod_{u=s+1}^{t-1} g_u) (q~_t . k~_s) x_s

and the previous-token path (model.token_shift) as an explicit sum over earlier inputs,
x_t + sum_{j=1}^{k-1} x_{t-j} W_j, before LayerNorm.

It shares nothing with the model's kernels, RoPE tables or einsums; it only reads its weights.
"""
import math

import torch
import torch.nn.functional as F


def _ln(v):
    return F.layer_norm(v, (v.shape[-1],))


def _rotate(v, t, theta):
    N = v.shape[-1]
    out = v.clone()
    for j in range(N // 2):
        angle = t / theta ** (2 * j / N)
        c, s = math.cos(angle), math.sin(angle)
        a, b = v[2 * j].item(), v[2 * j + 1].item()
        out[2 * j], out[2 * j + 1] = a * c - b * s, b * c + a * s
    return out


def _shift(module, v):
    """v (B, T, D) -> v_t + sum_{j>=1, t-j>=0} v_{t-j} W_j, one token and one tap at a time."""
    W = module.weight.double()
    out = v.clone()
    for t in range(v.shape[1]):
        for j in range(1, W.shape[0] + 1):
            if t - j >= 0:
                out[:, t] += v[:, t - j] @ W[j - 1]
    return out


def _gate(layer, x_t, h):
    mode = layer.forget.mode
    if mode == "scalar":
        return torch.sigmoid(layer.forget.logit[h].double()).item()
    if mode == "data":
        return torch.sigmoid(layer.forget.proj(x_t.float()).double()[h]).item()
    return 1.0


@torch.no_grad()
def naive_logits(model, idx, start_pos=0):
    c = model.config
    H, D, N = c.n_head, c.n_embd, c.n_neurons
    scale = 1 / math.sqrt(N) if c.score_scale == "inv_sqrt_n" else 1.0
    B, T = idx.shape
    x = model.embed.weight[idx].double()
    x = _ln(_shift(model.token_shift[0], x) if c.token_shift == "embed" else x)
    for i, layer in enumerate(model.layers):
        if c.token_shift == "layer":
            x = _ln(_shift(model.token_shift[i], x))
        enc, enc_v, dec = (p.double() for p in model.projections(i))
        out = torch.zeros_like(x)
        for b in range(B):
            keys = [[] for _ in range(H)]
            gates = [[] for _ in range(H)]
            for t in range(T):
                x_t = x[b, t]
                xy = []
                for h in range(H):
                    x_sparse = torch.relu(x_t @ enc[h])
                    k = _rotate(x_sparse, start_pos + t, c.rope_theta)
                    q = k.clone()
                    if c.diff_attn:
                        lam = layer.diff_lambda[h].double().item()
                        for n in range(N):
                            if (n // 2) % 2 == 1:
                                q[n] = -lam * k[n]
                    a = torch.zeros(D, dtype=torch.float64)
                    for s in range(t):
                        if c.attn_window is not None and t - s > c.attn_window:
                            continue
                        decay = math.prod(gates[h][s + 1:t])
                        a += scale * decay * (q @ keys[h][s]) * x[b, s]
                    keys[h].append(k)
                    gates[h].append(_gate(layer, x[b, t], h))
                    y_sparse = torch.relu(_ln(a) @ enc_v[h])
                    xy.append(x_sparse * y_sparse)
                y = torch.cat(xy) @ dec
                out[b, t] = _ln(x_t + _ln(y))
        x = out
    return x @ model.lm_head.double()
