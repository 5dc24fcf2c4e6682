"""Hugging Face Hub sources, read with `datasets` streaming.

Before anything is streamed, one request asks the Hub which commit data.source is at
(`hub_commit`): offline (no network, a firewall, HF_HUB_OFFLINE=1) that fails at once, rather
than after the minute of retries a first download would spend, and a misspelled name is "not
found". Every rank then reads that commit, and stream lanes keep it in their checkpoints, so a
resumed run reads the same data even if the dataset has been updated since.

`load_dataset(name, hub_config, split=..., revision=commit, streaming=True)` opens the dataset
without downloading it; rows are pulled as they are needed. Errors that still come later
(`datasets` opens remote files lazily, on the first row) are turned into the same one-line
DataError naming the offline alternatives.
"""

from __future__ import annotations

from typing import Iterator

from bdh_scale.data.config import DataConfig
from bdh_scale.data.sources.dataset_rows import ROWS_PER_BATCH, rows_of
from bdh_scale.data.sources.names import OFFLINE_ALTERNATIVES
from bdh_scale.data.sources.retry import is_network_error
from bdh_scale.errors import DataError

HUB_TIMEOUT_S = 10  # the one request of hub_commit


def _unreachable(cfg: DataConfig, what: str) -> DataError:
    return DataError(f"data.source: the Hugging Face Hub is unreachable, so '{cfg.source}' cannot be "
                     f"streamed ({what}); offline alternatives: {OFFLINE_ALTERNATIVES}")


def _hub_error(cfg: DataConfig, e: Exception) -> DataError:
    from datasets.exceptions import DatasetNotFoundError

    what = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    if isinstance(e, DatasetNotFoundError) and "offline" not in what.lower():
        return DataError(f"data.source: hub dataset '{cfg.source}' was not found ({what}); "
                         f"offline alternatives: {OFFLINE_ALTERNATIVES}")
    return _unreachable(cfg, what)


def hub_commit(cfg: DataConfig) -> str:
    """The commit the Hub serves for data.source (at load_kwargs' revision, if any), asked once,
    with a timeout and no retries; DataError when the Hub cannot be reached or has no such dataset."""
    import huggingface_hub.constants
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise _unreachable(cfg, "HF_HUB_OFFLINE is set")
    try:
        info = HfApi().dataset_info(cfg.source, revision=cfg.load_kwargs.get("revision"), timeout=HUB_TIMEOUT_S)
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        what = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        raise DataError(f"data.source: hub dataset '{cfg.source}' was not found ({what}); check the name "
                        f"(and load_kwargs.revision), or use a local source: {OFFLINE_ALTERNATIVES}") from None
    except Exception as e:  # httpx / OS errors: no network, DNS, proxy, timeout
        raise _unreachable(cfg, f"{type(e).__name__}: {e}".splitlines()[0][:300]) from None
    return info.sha


def open_hub_dataset(cfg: DataConfig, split: str | None = None, revision: str | None = None):
    """The (Iterable)Dataset for data.source on the Hub (split: data.hub_split by default);
    DataError if it cannot be opened."""
    from datasets import load_dataset

    split = split or cfg.hub_split
    kwargs = dict(cfg.load_kwargs, **({"revision": revision} if revision else {}))
    try:
        return load_dataset(cfg.source, cfg.hub_config, split=split, streaming=cfg.streaming, **kwargs)
    except (ConnectionError, OSError) as e:  # requests/hub errors subclass these
        raise _hub_error(cfg, e) from e
    except ValueError as e:  # unknown config or split names
        key = "data.val_split" if split != cfg.hub_split else "data.hub_config/hub_split"
        raise DataError(f"{key}: '{cfg.source}' rejected config {cfg.hub_config!r} split {split!r} "
                        f"({str(e).splitlines()[0][:300]})") from e


def hub_rows(cfg: DataConfig, ds, batch_size: int = ROWS_PER_BATCH) -> Iterator[tuple[list[str], list]]:
    """(rows of text, bad records) of an opened hub dataset (column checks as for text files). A
    dropped connection is raised as it is, for the stream to retry (retry.py)."""
    rows = rows_of(ds, cfg, f"hub dataset '{cfg.source}'", cfg.text_column, cfg.doc_separator,
                   batch_size=batch_size)
    while True:
        try:
            batch = next(rows)
        except StopIteration:
            return
        except (ConnectionError, OSError) as e:  # streaming opens remote files lazily
            if is_network_error(e):
                raise
            raise _hub_error(cfg, e) from e
        yield batch
