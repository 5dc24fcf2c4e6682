"""Checks before step 1 of everything that would otherwise fail later: a run that cannot finish
should fail in seconds, not after hours of training, and before it has written anything.

The recipe checks itself when it is built (config.py); the data checks that every lane holds one
window of the longest T (data/lanes/stretch.py). What is left needs the data, the model or the
filesystem: a held-out split too short for one validation window or a validation batch too big
for memory (one forward, before training rather than at the first validation), an output
directory that cannot be written, too little free disk for a checkpoint, and a corpus that is
mostly not text (a warning: it may be meant). The filesystem checks run on the main process (the
filesystem is shared).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch

from bdh_scale.data.kinds import kind_of
from bdh_scale.errors import ConfigError, DataError
from bdh_scale.train.distributed import from_main
from bdh_scale.train.evaluate import my_rows
from bdh_scale.train.report.rows import eval_T, val_rows
from bdh_scale.utils.tree import tensors

DISK_MARGIN = 1.25  # free space wanted per checkpoint: its estimated size x this, plus DISK_SLACK
DISK_SLACK = 64 << 20
TEXT_SAMPLE = 1 << 16  # tokens decoded to judge whether the corpus is text
MIN_TEXT_SHARE = 0.7  # below this share of text characters, the corpus gets a warning


def preflight(cfg, data, model, accelerator) -> None:
    """Raise ConfigError / DataError for what would fail later, on every rank; print the warnings."""
    check_validation_fits(cfg.train, data, model, accelerator)
    from_main(accelerator, lambda: check_output(cfg, data, accelerator.unwrap_model(model), accelerator))


def check_output(cfg, data, raw_model, accelerator) -> None:
    """The filesystem and the corpus, on the main process."""
    directory = writable_ancestor(cfg.train.out_dir)
    if cfg.train.keep_checkpoints:
        check_free_disk(directory, checkpoint_bytes(cfg.train, raw_model, accelerator.num_processes))
    text = cfg.data.sources is not None or kind_of(cfg.data.source).text  # synthetic:mqar is token ids by design
    share = text_share(data) if text else None
    if share is not None and share < MIN_TEXT_SHARE:
        if accelerator.is_main_process:  # a warning goes to stderr, with the errors
            print(f"warning: data.source: only {share:.0%} of a sample of {data.source} decodes to text "
                  "characters; is it a text corpus? (training on it anyway)", file=sys.stderr)


def check_validation_fits(tc, data, model, accelerator) -> None:
    """The held-out split must hold one validation window, and one validation batch must fit in
    memory (a forward of this rank's rows of it; every rank runs it). Skipped without validation."""
    if not tc.eval_batches:
        return
    W, r, T = accelerator.num_processes, accelerator.process_index, eval_T(tc)
    batch = next(iter(data.val_batches(T, val_rows(tc, W), 1)), None)
    if batch is None:
        raise DataError(f"data.val_fraction: the held-out split yields no window of train.eval_seq_len {T}; raise "
                        "data.val_fraction, lower train.eval_seq_len, or set train.eval_batches=0 to train without "
                        "validation")
    for name, part in data.source_bundles().items():  # a mixture: every source is validated on its own set too
        if len(part.val) < T + 1:
            raise DataError(f"data.sources: the held-out data of '{name}' has {len(part.val):,} tokens, fewer than one "
                            f"validation window of T+1 = {T + 1}; raise its {data.val_key}, lower train.eval_seq_len, or "
                            "set train.eval_batches=0")
    rows, _ = my_rows(batch.x.size(0), r, W)  # the rows this rank forwards in every validation
    x = batch.x[rows].to(accelerator.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not isinstance(e, torch.OutOfMemoryError) and "allocate" not in str(e):
            raise
        raise ConfigError(f"train.eval_seq_len: one validation batch ({x.size(0)} x {T} tokens per process) "
                          f"does not fit in memory ({str(e).splitlines()[0][:200]}); lower train.eval_seq_len or "
                          "train.batch_size, or use model.attn_backend=auto") from None
    finally:
        model.train(was_training)


def writable_ancestor(out_dir: str) -> Path:
    """The nearest existing ancestor of out_dir, if this process can create files in it."""
    path = Path(out_dir).expanduser().absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"train.out_dir: {out_dir} cannot be created: {probe} is a file, not a directory; "
                          "give a directory path")
    try:  # a nameless file (O_TMPFILE on Linux): nothing appears in the directory
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as e:
        raise ConfigError(f"train.out_dir: cannot write in {probe} ({e.strerror}); give a writable directory") from None
    return probe


def checkpoint_bytes(tc, model, world_size: int) -> int:
    """About what one checkpoint takes: the weights, the optimizer's moments (two per weight for
    AdamW; Muon keeps one, counted as two), and the carried states of every lane of every rank."""
    total = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
    if tc.state == "carry":
        one_lane = model.init_state(1, torch.device("cpu")).state_dict()
        lanes = tc.batch_size * tc.grad_accum_steps * world_size
        total += lanes * sum(t.numel() * t.element_size() for t in tensors(one_lane))
    return total


def check_free_disk(directory: Path, need: int) -> None:
    free = shutil.disk_usage(directory).free
    want = int(need * DISK_MARGIN) + DISK_SLACK
    if free < want:
        raise ConfigError(f"train.out_dir: {directory} has {free / 2**20:,.0f} MiB free; a checkpoint of this run "
                          f"takes about {need / 2**20:,.0f} MiB and {want / 2**20:,.0f} MiB are wanted with the margin; "
                          "free some space, point train.out_dir elsewhere, or set train.keep_checkpoints=0")


def text_share(data) -> float | None:
    """Share of text characters (printable or whitespace) in the decoded start of the held-out
    split, or of the train stream when there is none; None when neither can be read."""
    stream = data.val if len(data.val) else getattr(getattr(data.train, "lanes", data.train), "stream", None)
    if stream is None or not len(stream):
        return None
    text = data.tokenizer.decode(stream.read(0, min(len(stream), TEXT_SAMPLE)).tolist())
    if not text:
        return None
    good = sum(1 for c in text if (c.isprintable() or c in "\t\n\r\f") and c != "\ufffd")
    return good / len(text)

