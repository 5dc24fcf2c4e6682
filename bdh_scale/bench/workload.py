"""What every measured worker sets up: the device, the model of a variant, its optimizer, and
the median timer. Its own module so that the measures (cases.py, bptt.py) share it without
importing each other."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from bdh_scale.utils.host_memory import keep_freed_host_memory
from bdh_scale.utils.perf import synchronize

PLAIN = ("plain", "plain+reuse")


# The seed config: the model every sweep measures unless --recipe names another.
SEED = dict(n_layer=2, n_embd=256, n_head=4, mlp_internal_dim_multiplier=32, dropout=0.0)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--recipe and --override, which model_config reads."""
    p.add_argument("--recipe", help="take the model config from a recipe (default: the seed config)")
    p.add_argument("--override", nargs="*", default=[], help="section.key=value overrides of the recipe")


def model_config(args) -> dict:
    """The model section to measure: the recipe's (dropout off), or the seed config."""
    if args.recipe:
        import dataclasses

        from bdh_scale.config import load_config

        cfg = dataclasses.asdict(load_config(args.recipe, args.override).model)
        cfg["dropout"] = 0.0
        return cfg
    return dict(SEED)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(model_cfg: dict, variant: str, dev: torch.device):
    """(model, config) for a variant, on `dev`, seeded; the allocator set as the variant runs."""
    from bdh_scale.model import BDH, ModelConfig
    from bdh_scale.model.bdh.plain import PlainBDH

    if variant != "plain" and dev.type == "cpu":
        keep_freed_host_memory()
    backend = {"plain": "parallel", "plain+reuse": "parallel", "compiled": "auto"}.get(variant, variant)
    cfg = ModelConfig(**{**model_cfg, "attn_backend": backend})
    torch.manual_seed(0)
    model = BDH(cfg).to(dev)
    if variant == "compiled":
        model.compile()  # as train.compile does; the warm-up steps absorb the compilation
    return (PlainBDH(model) if variant in PLAIN else model), cfg


def optimizer(model, variant: str, dev: torch.device):
    """The reference's AdamW for the plain variants, the trainer's (fused on CPU/CUDA) otherwise."""
    if variant in PLAIN:
        return torch.optim.AdamW(model.parameters(), lr=1e-4)
    from bdh_scale.train.optim.build import build_optimizer

    return build_optimizer(model, name="adamw", lr=1e-4, weight_decay=0.1, fused=dev.type in ("cpu", "cuda"))


def median_time(fn, warmup: int, runs: int, dev: torch.device) -> float:
    """Median seconds of `runs` calls of fn after `warmup` untimed ones, the device synchronized."""
    times = []
    for i in range(warmup + runs):
        synchronize(dev)
        t0 = time.perf_counter()
        fn()
        synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)
