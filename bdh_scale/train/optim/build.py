"""Build the optimizer for a model: plain AdamW, or Muon on the projections + AdamW elsewhere.

Which tensors decay (both optimizers, following nanoGPT): every tensor with ndim >= 2 —
projections, embeddings and lm_head alike — decays; 1-D tensors and scalars (biases,
LayerNorm weights, BDH's gains and gates such as `forget.*`, `diff_lambda`) do not, because
shrinking a gain towards 0 changes what the layer computes rather than regularizing it.

Which tensors Muon takes: every tensor with ndim >= 2 except embeddings and the output head
(BDH: `encoder`, `encoder_v`, `decoder`, per layer or shared; GPT: attention and MLP
weights). Embedding rows and head columns are per-token vectors, not a linear map between
hidden spaces, so orthogonalizing them is wrong (Muon's authors use AdamW there too).
A tensor is an embedding/head if it is owned by an nn.Embedding or its name has a part
named `embed`, `lm_head`, `wte` or `wpe`.

Muon needs each matrix's orientation for its lr adjustment: weights of nn.Linear are
(out, in); every other matrix is taken as BDH's `x @ W` convention, (in, out), with any
leading dims (BDH's heads) a batch of separate matrices.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from bdh_scale.train.optim.muon import MuonWithAdamW

EMBEDDING_NAME_PARTS = frozenset({"embed", "lm_head", "wte", "wpe"})


def _named_params(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, nn.Module]]:
    """(name, param, owning module) for each trainable param, tied params listed once."""
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield (f"{module_name}.{pname}" if module_name else pname), p, module


def _is_embedding_or_head(name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or bool(EMBEDDING_NAME_PARTS & set(name.split(".")))


def split_params(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Sort params into the four roles used by `build_optimizer`.

    Keys: "muon_in_out" / "muon_out_in" (Muon matrices by layout), "decay" (other >= 2-D:
    embeddings, head) and "no_decay" (1-D and scalars). Tied params appear once.
    """
    roles: dict[str, list[tuple[str, nn.Parameter]]] = {k: [] for k in ("muon_in_out", "muon_out_in", "decay", "no_decay")}
    for name, p, module in _named_params(model):
        if p.ndim < 2:
            roles["no_decay"].append((name, p))
        elif _is_embedding_or_head(name, module):
            roles["decay"].append((name, p))
        elif isinstance(module, nn.Linear) and p is module.weight:
            roles["muon_out_in"].append((name, p))
        else:
            roles["muon_in_out"].append((name, p))
    return roles


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    muon_lr: float = 0.02,
    muon_momentum: float = 0.95,
    muon_weight_decay: float | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """The training optimizer: name "adamw" or "muon".

    "adamw": torch.optim.AdamW with groups decay/no_decay as in the module docstring. `fused`
    None means fused exactly when every param is already on CUDA (so build it after moving
    the model, or pass fused explicitly).

    "muon": one `MuonWithAdamW` with group["kind"] "muon" (lr `muon_lr`, momentum
    `muon_momentum`) for the projection matrices and "adamw" (lr `lr`, `betas`) for
    embeddings, head and gains. Muon's decoupled decay is `muon_lr * wd` per step, 20x that
    of AdamW at lr 1e-3 for the same wd; `muon_weight_decay` (default: `weight_decay`) sets
    it apart. `fused` does not apply.
    """
    roles = split_params(model)
    no_decay = [p for _, p in roles["no_decay"]]
    if name == "adamw":
        decay = [p for key in ("muon_in_out", "muon_out_in", "decay") for _, p in roles[key]]
        if fused is None:
            fused = torch.cuda.is_available() and all(p.is_cuda for p in decay + no_decay)
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=betas, fused=fused)
    if name == "muon":
        muon_wd = weight_decay if muon_weight_decay is None else muon_weight_decay
        groups = [
            {"kind": "muon", "params": [p for _, p in roles[f"muon_{layout}"]], "layout": layout,
             "lr": muon_lr, "momentum": muon_momentum, "weight_decay": muon_wd}
            for layout in ("in_out", "out_in")
        ] + [
            {"kind": "adamw", "params": [p for _, p in roles["decay"]], "lr": lr, "betas": betas,
             "weight_decay": weight_decay},
            {"kind": "adamw", "params": no_decay, "lr": lr, "betas": betas, "weight_decay": 0.0},
        ]
        return MuonWithAdamW([g for g in groups if g["params"]])
    raise ValueError(f'unknown optimizer {name!r}: expected "adamw" or "muon"')


@contextmanager
def keep_recipe_hyperparameters(optimizer):
    """Load an optimizer state inside this block and keep the recipe's hyperparameters.

    optimizer.load_state_dict restores the saved param_groups too: the lr, weight decay and betas
    of the run that wrote the checkpoint. A resumed run must train with what its recipe says now
    (a lower lr after a divergence, a longer schedule), so every group setting of the freshly built
    optimizer is put back and only the per-parameter state (moments, step counts) is kept. The
    scheduler's own base lr ("initial_lr") goes too: the schedule is rebuilt from the recipe.
    """
    recipe = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    yield
    for group, settings in zip(optimizer.param_groups, recipe, strict=True):
        group.pop("initial_lr", None)
        group.update(settings)
