"""Nested containers of tensors (state dicts of carried states, optimizer states): visit or map
every tensor inside dicts, lists and tuples."""
from __future__ import annotations

from typing import Callable, Iterator

import torch


def tensors(x) -> Iterator[torch.Tensor]:
    """Every tensor in x, depth first."""
    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from tensors(v)


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], x):
    """x with every tensor replaced by fn(tensor); other values kept."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, dict):
        return {k: map_tensors(fn, v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(map_tensors(fn, v) for v in x)
    return x
