"""Document starts reach the loop: rows of jsonl/parquet data are documents, their first tokens
are flagged in every batch (train and held-out), text sources flag nothing, and data.doc_reset
follows the source."""
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from bdh_scale.data import DataConfig, DataError, build_data
from bdh_scale.data.batch import make_batch
from bdh_scale.data.lanes.tokens import TokenStream

DOCS = [f"document {i}: " + "abc " * (3 + 5 * (i % 4)) for i in range(60)]


def write_jsonl(path, docs=DOCS):
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def test_rows_are_documents_and_their_first_tokens_are_flagged(tmp_path):
    data = build_data(DataConfig(source=str(write_jsonl(tmp_path / "d.jsonl")), prefetch=0, val_fraction=0.2),
                      batch_size=2)
    assert data.doc_reset  # null resolves to true for a source of documents
    batches = [data.train.next_batch(16) for _ in range(12)]
    for lane in range(2):  # bytes: token t is byte t, so flags and text positions compare directly
        text = data.tokenizer.decode(torch.cat([b.x[lane] for b in batches]).tolist())
        flagged = torch.cat([b.doc_start[lane] for b in batches]).nonzero().flatten().tolist()
        assert flagged == [m.start() for m in re.finditer("document ", text)] != []
    # the stream starts a document, so lane 0's first window is flagged at its first token
    assert batches[0].doc_start[0, 0]
    # held-out batches carry the document starts of the held-out tail
    val = list(data.val_batches(16, 2, 4))
    assert any(b.doc_start.any() for b in val)
    for b in val:
        for r, t in b.doc_start.nonzero().tolist():
            head = data.tokenizer.decode(b.x[r, t:].tolist())
            assert head.startswith("document ") or "document ".startswith(head)  # cut by the window end


def test_a_document_starting_exactly_at_a_window_start_is_flagged():
    stream = TokenStream([np.arange(40, dtype=np.uint8)], doc_starts=np.array([0, 10, 21]))
    view = stream.view(10, 40)  # a view shifts the index without copying it
    mask = view.doc_mask([0, 11, 5], 6)
    assert mask[0].tolist() == [True, False, False, False, False, False]  # token 10: window start
    assert mask[1].tolist() == [True, False, False, False, False, False]  # token 21
    assert not mask[2].any()
    assert view.num_documents() == 2 and stream.view(0, 10).num_documents() == 1
    batch = make_batch(view.read(0, 7)[None], True, view.doc_mask([0], 7))
    assert batch.doc_start.shape == batch.x.shape == (1, 6) and batch.doc_start[0, 0]


def test_text_sources_have_no_documents_and_doc_reset_true_is_refused(tmp_path):
    data = build_data(DataConfig(source="tinyshakespeare", prefetch=0), batch_size=2)
    assert not data.doc_reset
    batch = data.train.next_batch(32)
    assert batch.doc_start.dtype == torch.bool and batch.doc_start.shape == (2, 32) and not batch.doc_start.any()
    assert not next(data.val_batches(32, 2, 1)).doc_start.any()
    with pytest.raises(DataError, match="data.doc_reset: bundled 'tinyshakespeare' has no document boundaries"
                                        ".*set data.doc_reset=false or use a jsonl/parquet/hub source"):
        build_data(DataConfig(source="tinyshakespeare", prefetch=0, doc_reset=True), batch_size=2)
    jsonl = write_jsonl(tmp_path / "d.jsonl")
    assert not build_data(DataConfig(source=str(jsonl), prefetch=0, doc_reset=False), batch_size=2).doc_reset


def test_prefetched_batches_carry_the_same_document_starts(tmp_path):
    cfg = DataConfig(source=str(write_jsonl(tmp_path / "d.jsonl")), val_fraction=0.2)
    plain = build_data(dataclasses.replace(cfg, prefetch=0), batch_size=2)
    pre = build_data(dataclasses.replace(cfg, prefetch=3), batch_size=2)
    try:
        for T in (8, 8, 13):
            a, b = plain.train.next_batch(T), pre.train.next_batch(T)
            assert all(torch.equal(u, v) for u, v in zip(a, b))
    finally:
        pre.close()
