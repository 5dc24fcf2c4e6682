"""Hugging Face Hub sources, read with `datasets` streaming.

`load_dataset(name, hub_config, split=hub_split, streaming=True)` opens the dataset without
downloading it; rows are pulled as the token stream is built, and data.max_tokens stops the
pull early, so a web-scale corpus can feed a short run. When the Hub cannot be reached
(offline machine, firewall, HF_HUB_OFFLINE=1) `datasets` raises ConnectionError/OSError, at
open time or on the first row; both are turned into one DataError that names the offline
alternatives.
"""

from __future__ import annotations

from typing import Iterator

from bdh_scale.data.config import DataConfig
from bdh_scale.errors import DataError
from bdh_scale.data.catalog import OFFLINE_ALTERNATIVES
from bdh_scale.data.rows import rows_of


def _hub_error(cfg: DataConfig, e: Exception) -> DataError:
    from datasets.exceptions import DatasetNotFoundError

    what = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    if isinstance(e, DatasetNotFoundError) and "offline" not in what.lower():
        problem = f"hub dataset '{cfg.source}' was not found ({what})"
    else:
        problem = f"the Hugging Face Hub is unreachable, so '{cfg.source}' cannot be streamed ({what})"
    return DataError(f"data.source: {problem}; offline alternatives: {OFFLINE_ALTERNATIVES}")


def open_hub_dataset(cfg: DataConfig):
    """The (Iterable)Dataset for data.source on the Hub; DataError if it cannot be opened."""
    from datasets import load_dataset

    try:
        return load_dataset(cfg.source, cfg.hub_config, split=cfg.hub_split,
                            streaming=cfg.streaming, **cfg.load_kwargs)
    except (ConnectionError, OSError) as e:  # requests/hub errors subclass these
        raise _hub_error(cfg, e) from e
    except ValueError as e:  # unknown config or split names
        raise DataError(f"data.hub_config/hub_split: '{cfg.source}' rejected config "
                        f"{cfg.hub_config!r} split {cfg.hub_split!r} ({e})") from e


def hub_batches(cfg: DataConfig) -> Iterator[list[str]]:
    """Batches of text rows from the hub dataset (column checks as for local files)."""
    ds = open_hub_dataset(cfg)
    rows = rows_of(ds, cfg, f"hub dataset '{cfg.source}'", cfg.text_column, cfg.doc_separator)
    while True:
        try:
            batch = next(rows)
        except StopIteration:
            return
        except (ConnectionError, OSError) as e:  # streaming opens remote files lazily
            raise _hub_error(cfg, e) from e
        yield batch


def hub_revision(cfg: DataConfig) -> str | None:
    """The commit the Hub serves for data.source (at load_kwargs' revision, if any); None when
    it cannot be asked (offline)."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(cfg.source, revision=cfg.load_kwargs.get("revision")).sha
    except Exception:  # offline, gated, unknown: the revision is then simply not recorded
        return None
