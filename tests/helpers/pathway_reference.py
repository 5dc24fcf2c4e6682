"""The public reference BDH (pathwaycom/bdh) transcribed in its own state-dict format, for tests.

Shared encoder / encoder_v / decoder across layers, RoPE frequencies as the float32 buffer
`attn.freqs`, phases in float32, scores masked with tril(-1), no score scale: everything the
compatibility loader has to reproduce.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def reference_freqs(n, theta=2**16):
    i = torch.arange(n, dtype=torch.float32)
    return 1.0 / (theta ** ((i / 2).floor() * 2 / n)) / (2 * math.pi)


class ReferenceAttention(nn.Module):
    def __init__(self, N):
        super().__init__()
        self.register_buffer("freqs", reference_freqs(N).view(1, 1, 1, N))

    def forward(self, Q, V):
        T = Q.size(2)
        phases = torch.arange(T, dtype=torch.float32).view(1, 1, -1, 1) * self.freqs
        phases = (phases % 1) * (2 * math.pi)
        rot = torch.stack((-Q[..., 1::2], Q[..., ::2]), dim=-1).view(*Q.size())
        QR = Q * torch.cos(phases) + rot * torch.sin(phases)
        return (QR @ QR.mT).tril(diagonal=-1) @ V


class ReferenceBDH(nn.Module):
    def __init__(self, n_layer=2, n_embd=32, n_head=2, multiplier=4, vocab_size=256):
        super().__init__()
        D, nh = n_embd, n_head
        N = multiplier * D // nh
        self.n_layer, self.nh, self.N, self.D = n_layer, nh, N, D
        self.decoder = nn.Parameter(torch.randn(nh * N, D) * 0.02)
        self.encoder = nn.Parameter(torch.randn(nh, D, N) * 0.02)
        self.encoder_v = nn.Parameter(torch.randn(nh, D, N) * 0.02)
        self.attn = ReferenceAttention(N)
        self.embed = nn.Embedding(vocab_size, D)
        self.lm_head = nn.Parameter(torch.randn(D, vocab_size) * 0.02)

    def forward(self, idx):
        B, T = idx.shape
        ln = lambda v: F.layer_norm(v, (self.D,))  # noqa: E731
        x = ln(self.embed(idx).unsqueeze(1))
        for _ in range(self.n_layer):
            x_sparse = F.relu(x @ self.encoder)
            yKV = ln(self.attn(x_sparse, x))
            y_sparse = F.relu(yKV @ self.encoder_v)
            xy = x_sparse * y_sparse
            yMLP = xy.transpose(1, 2).reshape(B, 1, T, self.N * self.nh) @ self.decoder
            x = ln(x + ln(yMLP))
        return x.view(B, T, self.D) @ self.lm_head
