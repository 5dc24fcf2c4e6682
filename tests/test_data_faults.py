"""Streams that survive their data: bad records skipped and counted or stopped with a checkpoint,
a file deleted mid-run, a data host that goes away mid-run and comes back (or not). Real files,
real training processes, a real HTTP server on 127.0.0.1; every resume is checked against an
uninterrupted run step for step, or its count of bad records against the passes the run made."""
import dataclasses
import json
import re
import subprocess
import time
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bdh_scale.data import DataConfig, build_data
from bdh_scale.data.sources.record_files import check_first_records, record_dataset, record_rows
from bdh_scale.errors import DataError
from bdh_scale.train.checkpoint.checkpointer import list_checkpoints
from tests.helpers.corpus import documents, lane_streams, replace_line, write_short_docs
from tests.helpers.http_files import FileServer
from tests.helpers.tiny_runs import (RECIPE, ROOT, clean_env, command, losses, main_in_process, metrics, overrides,
                                     rank_state, train_process)

# Stream lanes over very short documents: a run reaches its 300th document by step 8.
STREAM = ["data.lanes=stream", "data.val_tokens=1000", "train.seq_len=64", "train.state=carry",
          "train.resume=auto", "train.checkpoint_every=5"]
BAD = [*STREAM, "train.batch_size=4", "train.max_steps=24", "data.workers=2"]
# 24 files of 100 documents, one read ahead at most: the reader opens part-020 around step 10.
MANY = [*STREAM, "train.batch_size=8", "train.max_steps=40", "data.stream_buffer=1", "data.workers=1"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def newest_step(run_dir) -> int:
    return int(list_checkpoints(run_dir)[-1].name.split("_")[1])


def stopped_with_checkpoint(returncode: int, stderr: str, run_dir) -> tuple[str, int]:
    """A data fault's ending: exit 1, one `error:` line naming the checkpoint of the last completed
    step. Returns the line and that step."""
    assert returncode == 1, stderr[-3000:]
    (line,) = error_lines(stderr)
    step = newest_step(run_dir)
    assert f"saved checkpoint {run_dir}/checkpoints/step_{step:08d} at step {step}" in line
    return line, step


# -- the records reader ---------------------------------------------------------------------------

def test_every_bad_record_is_named_by_file_and_line_and_the_good_ones_kept(tmp_path):
    path = tmp_path / "a.jsonl"
    lines = [json.dumps({"text": "one"}), '{"text": "cut', "", json.dumps({"id": 3}), json.dumps({"text": None}),
             json.dumps({"text": ""}), json.dumps({"text": 7}), json.dumps([1]), json.dumps({"text": "two\u2028x"})]
    path.write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "\xff"}\n' + json.dumps({"text": "end"}).encode())
    (texts, bad), = record_rows(record_dataset([str(path)], "text"), "|", batch_size=100)
    assert texts == ["one|", "two\u2028x|", "end|"]  # U+2028 is no line break of JSON Lines
    where = f"'{path}' line"
    assert [(b.where, b.why.split(" (")[0]) for b in bad] == [
        (f"{where} 2", "not JSON"), (f"{where} 4", "no 'text'"), (f"{where} 5", "'text' is null"),
        (f"{where} 6", "'text' is empty"), (f"{where} 7", "'text' is a int, not text"),
        (f"{where} 8", "a JSON list, not an object"), (f"{where} 10", "not UTF-8")]  # line 3 is blank: no record


def test_parquet_rows_and_json_arrays_are_records_too(tmp_path):
    pq.write_table(pa.table({"text": ["a", None, "", "b"]}), tmp_path / "p.parquet", row_group_size=2)
    pq.write_table(pa.table({"body": ["x", "y"]}), tmp_path / "q.parquet")
    (tmp_path / "r.json").write_text(json.dumps([{"text": "c"}, {"text": 1}]))
    files = [str(tmp_path / n) for n in ("p.parquet", "q.parquet", "r.json")]
    (texts, bad), = record_rows(record_dataset(files, "text"), "", batch_size=100)
    assert texts == ["a", "b", "c"]
    assert [b.where.split("/")[-1] for b in bad] == ["p.parquet' row 2", "p.parquet' row 3", "q.parquet' row 1",
                                                     "q.parquet' row 2", "r.json' item 2"]
    with pytest.raises(DataError, match=r"data.text_column: 'text' is not a column .*available columns: \['body'\]"):
        check_first_records(files[1], "text", None, "'q'")


def test_a_truncated_parquet_file_is_named_as_unreadable(tmp_path):
    pq.write_table(pa.table({"text": ["a"] * 100}), tmp_path / "p.parquet")
    data = (tmp_path / "p.parquet").read_bytes()
    (tmp_path / "p.parquet").write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=r"p.parquet' is not a Parquet file"):
        list(record_rows(record_dataset([str(tmp_path / "p.parquet")], "text"), "", batch_size=10))


# -- bad records in a training run ----------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """4 files of 300 documents; part-002 line 100 does not parse, part-003 line 10 has no text."""
    root = tmp_path_factory.mktemp("bad") / "c"
    write_short_docs(root, files=4, per_file=300)
    replace_line(root / "part-002.jsonl", 100, '{"text": "cut')
    replace_line(root / "part-003.jsonl", 10, '{"id": 10}')
    return root


def test_a_bad_record_under_stop_saves_the_last_step_and_skip_resumes_it_exactly(tmp_path, bad_corpus):
    run = [f"data.source={bad_corpus}", *BAD]
    stopped = train_process(1, tmp_path, "s", *run)
    line, step = stopped_with_checkpoint(stopped.returncode, stopped.stderr, tmp_path / "s")
    assert f"part-002.jsonl' line 100: not JSON" in line and "data.on_bad_record=stop" in line
    assert "train.resume=auto" in line
    assert 5 < step < 24 and metrics(tmp_path / "s")[-1]["step"] == step  # mid-run: the last completed step

    resumed = train_process(1, tmp_path, "s", *run, "data.on_bad_record=skip")
    ref = train_process(1, tmp_path, "ref", *run, "data.on_bad_record=skip")
    assert resumed.returncode == 0 and ref.returncode == 0, resumed.stderr[-3000:] + ref.stderr[-3000:]
    assert f"resumed from {tmp_path / 's'}/checkpoints/step_{step:08d}" in resumed.stdout
    assert losses(tmp_path / "s") == losses(tmp_path / "ref")  # the same tokens at every step
    for proc in (resumed, ref):  # each skip said once, naming file, line and reason
        assert proc.stderr.count("warning: data: skipped bad record") == 2
        assert "part-002.jsonl' line 100: not JSON" in proc.stderr
        assert "part-003.jsonl' line 10: no 'text' (its fields: id)" in proc.stderr
    counts = [[r.get("data/bad_records") for r in metrics(d) if "loss" in r] for d in (tmp_path / "s", tmp_path / "ref")]
    assert counts[1][-1] == 2 and counts[0][step:] == counts[1][step:]  # counted, and resumed with its count


def test_more_bad_records_than_the_cap_stop_the_run_as_stop_does(tmp_path, bad_corpus, capsys):
    code = main_in_process(RECIPE, *overrides(tmp_path, "cap", f"data.source={bad_corpus}", *BAD,
                                              "data.on_bad_record=skip", "data.max_bad_records=1", "data.workers=0"))
    err = capsys.readouterr().err
    assert code == 1
    (line,) = error_lines(err)
    assert "data: 2 bad records skipped, more than data.max_bad_records=1" in line
    assert f"at step {newest_step(tmp_path / 'cap')}, the last completed step" in line


# -- bad records among held-out documents --------------------------------------------------------

# data.val_tokens=3800 holds out the first 652 documents of held_corpus (parts 000-005 and half of
# part-006): every pass of training reads all 800 records again but deals only the last 147
# documents, so a run makes several passes in a few steps, as a corpus little larger than the
# default 1M held-out tokens does. 2 lanes of T=32 a process: a pass is about 14 steps on 1
# process; on 2, rank 0 (parts 0, 2, 4, 6) passes about every 5 steps and rank 1 (1, 3, 5, 7) every 9.
HELD = ["data.lanes=stream", "data.val_tokens=3800", "data.on_bad_record=skip", "train.seq_len=32",
        "train.batch_size=2", "train.resume=auto", "train.checkpoint_every=4"]
HELD_BAD, TRAIN_BAD = "part-002.jsonl' line 10", "part-007.jsonl' line 20"


@pytest.fixture(scope="module")
def held_corpus(tmp_path_factory):
    """8 files of 100 short documents; a bad record among the held-out ones (part-002 line 10: in a
    read of 256 records all held out, on 1 process and on rank 0 of 2) and one among the training
    ones (part-007 line 20: in the first read of a pass that deals documents, on 1 process and on
    rank 1 of 2, so a rank in pass e has met it e + 1 times)."""
    root = tmp_path_factory.mktemp("held") / "c"
    write_short_docs(root, files=8, per_file=100)
    replace_line(root / "part-002.jsonl", 10, "{not json")
    replace_line(root / "part-007.jsonl", 20, '{"id": 20}')
    return root


def short_doc_ids(texts: list[str]) -> list[int]:
    """The numbers of write_short_docs documents ("d17" and the separator; the held-out set's last one may be cut)."""
    return [int(re.match(r"d(\d+)(\n\n)?$", t).group(1)) for t in texts]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_bad_record_among_held_out_documents_counts_once_and_one_among_training_documents_once_per_pass(
        held_corpus, workers, capsys):
    cfg = DataConfig(source=str(held_corpus), lanes="stream", val_tokens=3800, on_bad_record="skip", workers=workers)
    data = build_data(cfg, batch_size=2, seq_len=32)
    try:
        held = short_doc_ids(documents(data.val.read(0, len(data.val)), data.val.doc_mask([0], len(data.val))[0],
                                       data.tokenizer.decode))
        batches = []
        while data.train.epoch < 3:  # three passes, and the fourth begun
            batches.append(data.train.next_batch(32))
            assert len(batches) < 200
        dealt = Counter(short_doc_ids([d for x, s in lane_streams(data.train, batches)
                                       for d in documents(x, s, data.tokenizer.decode)]))
        count = data.train.bad.count
    finally:
        data.close()
    err = capsys.readouterr().err
    assert len(held) == 652 and held == [i for i in range(653) if i != 209]  # part-002 line 10 was d209
    assert err.count(HELD_BAD) == 1  # among held-out documents: in the first pass only
    assert err.count(TRAIN_BAD) == 4  # once in each of the four passes begun
    assert count == 5
    # no document dealt twice in one pass: each training document 3 times, and the first few a 4th
    training = [i for i in range(653, 800) if i != 719]  # part-007 line 20 was d719
    assert sorted(dealt) == training and set(dealt.values()) <= {3, 4}
    again = sorted(i for i, n in dealt.items() if n == 4)
    assert 0 < len(again) < len(training) and again == training[:len(again)]


@pytest.mark.parametrize("processes, workers", [(1, 2), (2, 1)])
def test_bad_records_count_once_per_pass_across_processes_and_a_resume(tmp_path, held_corpus, processes, workers):
    run = [f"data.source={held_corpus}", *HELD, f"data.workers={workers}"]
    first_steps, last_steps = (8, 30) if processes == 1 else (4, 20)
    first = train_process(processes, tmp_path, "p", *run, f"train.max_steps={first_steps}")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = metrics(tmp_path / "p")
    assert rows[-1]["data/bad_records"] == 2  # both met in the first pass, all ranks together
    resumed = train_process(processes, tmp_path, "p", *run, f"train.max_steps={last_steps}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {tmp_path / 'p'}/checkpoints/step_{first_steps:08d}" in resumed.stdout

    # the rank reading part-007 is in pass e: it met that record e + 1 times, the held-out one once
    position = rank_state(list_checkpoints(tmp_path / "p")[-1], processes - 1)["lanes"]["position"]
    assert position["epoch"] >= 1
    counts = [r["data/bad_records"] for r in metrics(tmp_path / "p") if "loss" in r]
    assert len(counts) == last_steps and counts == sorted(counts)
    assert counts[-1] == 1 + position["epoch"] + 1
    warnings = first.stderr + resumed.stderr
    assert warnings.count(HELD_BAD) == 1 and warnings.count(TRAIN_BAD) == position["epoch"] + 1


def test_a_rank_with_bad_records_but_no_text_is_told_it_holds_no_text(tmp_path):
    # its bad records made a pass look as if it held something: the refusal blamed train.batch_size
    write_short_docs(tmp_path / "c", files=2, per_file=20)
    for line in range(1, 21):
        replace_line(tmp_path / "c" / "part-001.jsonl", line, '{"id": 0}')
    cfg = DataConfig(source=str(tmp_path / "c"), lanes="stream", on_bad_record="skip", workers=0)
    with pytest.raises(DataError, match="holds no text once 20 documents are held out for validation"):
        build_data(dataclasses.replace(cfg, val_tokens=10_000), batch_size=1, seq_len=16)  # part-000 all held out
    with pytest.raises(DataError, match="holds no text for rank 1 of 2 once"):  # part-001 is rank 1's
        build_data(dataclasses.replace(cfg, val_tokens=20), batch_size=1, seq_len=16, world_size=2, rank=1)


# -- files and hosts that go away -----------------------------------------------------------------

@pytest.fixture(scope="module")
def many(tmp_path_factory):
    """24 files of 100 short documents, and an uninterrupted run over them read from disk."""
    root = tmp_path_factory.mktemp("many")
    write_short_docs(root / "c", files=24, per_file=100)
    ref = train_process(1, root, "ref", f"data.source={root / 'c'}", *MANY)
    assert ref.returncode == 0, ref.stderr[-3000:]
    return root / "c", losses(root / "ref")


def wait_for_steps(run_dir, n: int, proc, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while len(metrics(run_dir)) < n:
        assert proc.poll() is None and time.monotonic() < end, "the run ended before step %d" % n
        time.sleep(0.02)


def test_a_file_deleted_mid_run_saves_the_last_step_and_resumes_once_it_is_back(tmp_path, many):
    corpus, ref_losses = many
    data = tmp_path / "c"
    data.mkdir()
    for f in corpus.iterdir():
        (data / f.name).write_bytes(f.read_bytes())
    run = [f"data.source={data}", *MANY]
    proc = subprocess.Popen(command(1, tmp_path, "d", *run), cwd=ROOT, env=clean_env(None), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_steps(tmp_path / "d", 2, proc)
    kept = (data / "part-020.jsonl").read_bytes()
    (data / "part-020.jsonl").unlink()  # the reader has not opened it yet: it is ten files behind
    _, stderr = proc.communicate(timeout=300)
    line, _ = stopped_with_checkpoint(proc.returncode, stderr, tmp_path / "d")
    assert f"'{data}/part-020.jsonl' vanished (no such file)" in line

    assert main_in_process(RECIPE, *overrides(tmp_path, "d", *run)) == 2  # still gone: refused, nothing written
    (data / "part-020.jsonl").write_bytes(kept)
    resumed = train_process(1, tmp_path, "d", *run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "d") == ref_losses


def test_a_host_that_stops_answering_and_comes_back_within_the_retries_changes_no_token(tmp_path, many):
    corpus, ref_losses = many
    with FileServer(corpus) as server:
        server.go_down_at("part-020", for_s=1.5)
        proc = train_process(1, tmp_path, "h", f"data.source={server.url}/*.jsonl", *MANY,
                             "data.read_retries=6", "data.retry_wait_s=0.2")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert server.came_back is not None  # it was down, mid-run (the reader asked for part-020)
    assert "Retrying" in proc.stderr or "opening the stream again" in proc.stderr
    assert losses(tmp_path / "h") == ref_losses  # the tokens of the files read from disk


def test_a_host_gone_for_good_saves_the_last_step_and_the_run_resumes_when_it_is_back(tmp_path, many):
    corpus, ref_losses = many
    with FileServer(corpus) as server:
        server.go_down_at("part-020", for_s=None)
        run = [f"data.source={server.url}/*.jsonl", *MANY, "data.read_retries=2", "data.retry_wait_s=0.1"]
        proc = train_process(1, tmp_path, "g", *run)
        line, step = stopped_with_checkpoint(proc.returncode, proc.stderr, tmp_path / "g")
        assert f"data: reading '{server.url}/part-020.jsonl' failed" in line and "2 retries" in line
        assert 0 < step < 40

        server.start()  # the host is back, on the same address
        resumed = train_process(1, tmp_path, "g", *run)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert losses(tmp_path / "g") == ref_losses
