"""Stream lanes in real processes: two ranks read disjoint documents that together make the
corpus, and a streamed training run killed with SIGKILL resumes token for token, on 1 and 2
processes (tokenizer worker processes included)."""
import json
import subprocess
import sys

import pytest
import torch

from bdh_scale.analysis.inputs import val_tokens
from bdh_scale.data import DataConfig, build_data
from tests.helpers.corpus import write_corpus
from tests.helpers.tiny_runs import ROOT, clean_env, losses, metrics, rank_state, train_process

# What each rank deals to its lanes over one epoch, printed as the document ids of every lane.
RANK_SCRIPT = """
import json, sys
from bdh_scale.data import DataConfig, build_data
from tests.helpers.corpus import documents, doc_ids, lane_streams
source, rank = sys.argv[1], int(sys.argv[2])
data = build_data(DataConfig(source=source, lanes="stream", val_tokens=500, workers=1), batch_size=3,
                  world_size=2, rank=rank, seq_len=32)
batches = []
while data.train.epoch == 0:
    batches.append(data.train.next_batch(32))
lanes = [doc_ids(documents(x, s, data.tokenizer.decode)) for x, s in lane_streams(data.train, batches)]
data.close()
print(json.dumps({"lanes": lanes, "epoch1": data.train.position.taken}))  # documents of epoch 1 dealt
"""


@pytest.mark.parametrize("shards", [4, 3])  # 4: whole shards per rank; 3: every other document
def test_two_ranks_read_disjoint_documents_that_make_the_whole_corpus(tmp_path, shards):
    texts = write_corpus(tmp_path / "c", shards=shards, per_shard=24, kind="parquet")
    procs = [subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(tmp_path / "c"), str(rank)], cwd=ROOT,
                              env=clean_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        assert p.returncode == 0, stderr[-2000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    per_rank = []
    for result in out:  # a rank's epoch: its documents once each, then the first of its next epoch
        ids = [i for lane in result["lanes"] for i in lane]
        n_again = result["epoch1"]
        assert len(ids) - len(set(ids)) == n_again
        per_rank.append(set(ids))
    assert not per_rank[0] & per_rank[1]  # disjoint
    held = set(range(len(texts))) - per_rank[0] - per_rank[1]
    assert held == set(range(len(held))) and 0 < len(held) < 10  # together: all but the held-out head


STREAM = ["data.lanes=stream", "data.val_tokens=3000", "data.workers=1", "train.max_steps=8",
          "train.checkpoint_every=3", "train.state=carry", "train.batch_size=2", "train.resume=auto"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "c"
    write_corpus(root, shards=4, per_shard=80)
    return root


def same_lanes(a: dict, b: dict) -> bool:
    if {k: v for k, v in a.items() if not k.startswith("pending")} != \
            {k: v for k, v in b.items() if not k.startswith("pending")}:
        return False
    return all(torch.equal(u, v) for key in ("pending", "pending_starts") for u, v in zip(a[key], b[key]))


@pytest.mark.parametrize("processes", [1, 2])
def test_streamed_run_killed_with_sigkill_resumes_token_for_token(tmp_path, corpus, processes):
    run = [f"data.source={corpus}", *STREAM]
    ref = train_process(processes, tmp_path / "ref", "s", *run)
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = train_process(processes, tmp_path, "s", *run, env={"BDH_KILL_AT": "after_step:5"})
    assert killed.returncode != 0
    if processes == 1:
        assert killed.returncode == -9  # SIGKILL: no clean-up ran
    resumed = train_process(processes, tmp_path, "s", *run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_00000003 at step 3" in resumed.stdout
    run_dir, ref_dir = tmp_path / "s", tmp_path / "ref" / "s"
    assert losses(run_dir) == losses(ref_dir)  # bit for bit: the same tokens at every step
    for rank in range(processes):  # and the lanes end at the same place, holding the same tokens
        end, ref_end = (rank_state(d / "checkpoints/step_00000008", rank)["lanes"] for d in (run_dir, ref_dir))
        assert end["kind"] == "stream" and end["docs_dealt"] > 2 * 2
        assert same_lanes(end, ref_end)
    val = [[r["val_loss"] for r in metrics(d) if "val_loss" in r] for d in (run_dir, ref_dir)]
    assert val[0] == val[1] != []  # the held-out set read back from the run directory
    held = json.loads((run_dir / "held_out/meta.json").read_text())
    assert held["read_from"] == "the first documents" and held["val_tokens"] == 3000
    # bdh-analyze reads the run's held-out set from the run directory: the source's first 3000 tokens
    fresh = build_data(DataConfig(source=str(corpus), lanes="stream", val_tokens=3000, workers=0), batch_size=2)
    fresh.close()
    assert torch.equal(val_tokens(run_dir, fresh.tokenizer, 3000), torch.from_numpy(fresh.val.read(0, 3000)))
