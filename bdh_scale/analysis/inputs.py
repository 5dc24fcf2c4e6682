"""What an analysis reads: the run's model and tokenizer, and token ids to run it on.

Validation text is, by default, the held-out tail of the run's own corpus (config.yaml's data
section, split as the trainer splits it), tokenized with the run's tokenizer; `--text FILE`
replaces it. A text corpus is tokenized whole to find its tail, so for a very large corpus give
--text, or a data_prep shard dir (memory-mapped, read lazily).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch

from bdh_scale.errors import AnalysisError, ModelError
from bdh_scale.rundir import load_run

EUROPARL = "europarl/fr-en"
BUNDLED = Path(__file__).resolve().parents[1] / "data" / "bundled" / EUROPARL
SHARED = Path("/work/shared/data") / EUROPARL  # where the sample lived before it was bundled


def load_model(run: str | Path, device: str = "cpu"):
    """(model in eval mode on device, tokenizer) of a run directory."""
    if not Path(run).is_dir():
        raise AnalysisError(f"run directory not found: {run}")
    try:
        model, tokenizer = load_run(str(run))
    except (FileNotFoundError, ModelError) as e:
        raise AnalysisError(str(e)) from None
    return model.to(device).eval(), tokenizer


def run_config(run: str | Path):
    """The RunConfig of a run directory (its config.yaml); AnalysisError if it has none."""
    from bdh_scale.config.recipe import run_config as read

    cfg = read(run)
    if cfg is None:
        raise AnalysisError(f"{run} has no config.yaml (not a run directory) to find its data; "
                            "give a run directory, or --text FILE where the analysis takes one")
    return cfg


def text_tokens(path: str | Path, tokenizer, max_tokens: int) -> torch.Tensor:
    """The first max_tokens token ids of a text file, 1-D long."""
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"text file not found: {path}")
    with path.open(encoding="utf-8", errors="surrogateescape") as f:
        text = f.read(max_tokens * 8)  # enough characters for max_tokens of any tokenizer
    return torch.tensor(tokenizer.encode(text)[:max_tokens], dtype=torch.long)


def val_tokens(run: str | Path, tokenizer, max_tokens: int, text: str | None = None) -> torch.Tensor:
    """The first max_tokens of the run's validation split (or of `text`), 1-D long."""
    if text is not None:
        return text_tokens(text, tokenizer, max_tokens)
    from bdh_scale.data.lanes.heldout import HELD_OUT
    from bdh_scale.data.sources.reader import tokenize_source
    from bdh_scale.data.sources.shards import is_shard_dir, open_shards

    held = Path(run) / HELD_OUT / "tokens.npy"
    if held.is_file():  # a streamed run kept its held-out set: never re-read a Hub corpus here
        import numpy as np

        return torch.from_numpy(np.load(held)[:max_tokens].astype(np.int64))
    data = run_config(run).data
    if data.sources is not None:  # a mixture: its sources' held-out sets one after the other, as the run validated
        from dataclasses import replace

        from bdh_scale.data.build import build_data

        bundle = build_data(replace(data, prefetch=0, workers=0), batch_size=1, held_out_dir=run)
        bundle.close()
        return torch.from_numpy(bundle.val.read(0, min(len(bundle.val), max_tokens)))
    if is_shard_dir(data.source):
        stream = open_shards(data.source, verify=False, tokenizer_spec=data.tokenizer)[0]
    else:
        stream = tokenize_source(data, tokenizer)[0]
    start = int(len(stream) * (1.0 - data.val_fraction))
    if len(stream) - start < 2:
        raise AnalysisError(f"the validation split of {data.source} is empty; pass --text FILE")
    return torch.from_numpy(stream.read(start, min(len(stream), start + max_tokens)))


def labelled_files(labels: list[str] | None) -> dict[str, Path]:
    """{label: text file} from NAME=PATH strings; default English and French Europarl lines."""
    if not labels:
        root = BUNDLED if (BUNDLED / "en.txt").is_file() else SHARED
        return {"en": root / "en.txt", "fr": root / "fr.txt"}
    out = {}
    for item in labels:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise AnalysisError(f"--label '{item}': expected NAME=PATH, e.g. en=europarl/en.txt")
        out[name] = Path(path)
    if len(out) < 2:
        raise AnalysisError("selectivity needs at least two labels (--label a=FILE --label b=FILE)")
    return out


def windows(tokens: torch.Tensor, seq_len: int, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive non-overlapping windows (x, y) of length <= seq_len, batch_size at a time."""
    if len(tokens) < 2:
        raise AnalysisError(f"only {len(tokens)} token(s) to analyse; give more text or a larger --max-tokens")
    T = min(seq_len, len(tokens) - 1)
    n = (len(tokens) - 1) // T
    x = tokens[: n * T].view(n, T)
    y = tokens[1: n * T + 1].view(n, T)
    for i in range(0, n, batch_size):
        yield x[i: i + batch_size], y[i: i + batch_size]


def out_dir(run: str | Path, out: str | None) -> Path:
    """Where the report goes; created only when it is written (figures.save), so a refused
    analysis leaves nothing behind."""
    return Path(out) if out else Path(run) / "analysis"
