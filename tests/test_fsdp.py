"""FSDP2 through Accelerate on 2 CPU processes over gloo (launch/fsdp.yaml): it really shards,
checkpoints its shards with torch distributed checkpoint, resumes bit for bit after SIGKILL,
exports the gathered weights, and trains as DDP does up to fp32 reduction order."""
import json
import os
import pickle
from types import SimpleNamespace

import pytest
import torch
import torch.distributed.checkpoint as dcp
from accelerate.utils import DistributedType

from bdh_scale.bench import shard_memory
from bdh_scale.errors import CheckpointError, ConfigError
from bdh_scale.model import BDH
from bdh_scale.train.checkpoint.checkpointer import list_checkpoints, verify
from bdh_scale.train.checkpoint.files import SafeLoadPlanner, SafeReader, distributed_checkpoint_errors
from bdh_scale.train.distributed import shard_cpu_processes
from tests.helpers.tiny_runs import RECIPE, TWO, losses, rank_state, train_process, weights


def validations(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k == "step" or k.startswith(("val_", "ctx/"))} for r in rows if "val_loss" in r]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    proc = train_process(2, out, "f", *TWO, config="fsdp.yaml")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out / "f", proc


def test_fsdp_says_so_first_shards_its_checkpoints_and_matches_ddp(fsdp_run, two_process_run):
    run_dir, proc = fsdp_run
    assert proc.stdout.splitlines()[0].startswith("distributed: FSDP2 (FULL_SHARD) over 2 processes on cpu (gloo)")
    end = run_dir / "checkpoints/step_00000008"
    verify(end)
    names = {p.name for p in (end / "sharded").iterdir()}
    assert names == {".metadata", "__0_0.distcp", "__1_0.distcp"} and not (end / "model.safetensors").exists()
    index = SafeReader(end / "sharded").read_metadata().state_dict_metadata
    params = {k: v for k, v in index.items() if k.startswith("model.")}
    moments = {k: v for k, v in index.items() if k.startswith("optimizer.state.") and k.endswith(("exp_avg", "exp_avg_sq"))}
    assert params and len(moments) == 2 * len(params)
    for key, meta in {**params, **moments}.items():  # every weight and moment: one half per rank, on dim 0
        halves = sorted(chunk.offsets[0] for chunk in meta.chunks)
        assert len(meta.chunks) == 2 and halves == [0, -(-meta.size[0] // 2)], key
    ddp_dir, _ = two_process_run
    for (s, a), (t, b) in zip(losses(run_dir), losses(ddp_dir), strict=True):  # the same lanes, the same init
        assert s == t and abs(a - b) < 1e-5, (s, a, b)
    # validation as trained under FSDP: the carried and window readings, and every context bucket, as DDP's
    fsdp_val, ddp_val = (validations(d) for d in (run_dir, ddp_dir))
    assert [r["step"] for r in fsdp_val] == [4, 8] and all(set(a) == set(b) for a, b in zip(fsdp_val, ddp_val))
    for a, b in zip(fsdp_val, ddp_val):
        assert "val_loss_window" in a and any(k.startswith("ctx/carried_") for k in a)
        assert all(abs(a[k] - b[k]) < 1e-5 for k in a), (a, b)


def test_fsdp_run_killed_with_sigkill_resumes_bitwise(fsdp_run, tmp_path):
    ref, _ = fsdp_run
    killed = train_process(2, tmp_path, "f", *TWO, config="fsdp.yaml", env={"BDH_KILL_AT": "after_step:5"})
    assert killed.returncode != 0
    assert [p.name for p in list_checkpoints(tmp_path / "f")] == ["step_00000003"]
    resumed = train_process(2, tmp_path, "f", *TWO, config="fsdp.yaml")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_00000003 at step 3" in resumed.stdout
    assert losses(tmp_path / "f") == losses(ref)  # bit for bit
    end, ref_end = tmp_path / "f/checkpoints/step_00000008", ref / "checkpoints/step_00000008"
    for rank in (0, 1):
        assert rank_state(end, rank)["lanes"] == rank_state(ref_end, rank)["lanes"]
    wa, wb = weights(end), weights(ref_end)
    assert all(torch.equal(wa[k], wb[k]) for k in wb)


def test_the_final_export_is_the_unsharded_model(fsdp_run):
    run_dir, _ = fsdp_run
    final = BDH.from_pretrained(run_dir / "final").state_dict()  # gathered on the main process
    shards = weights(run_dir / "checkpoints/step_00000008")  # the last shards, put together in one process
    assert final.keys() == shards.keys()
    assert all(torch.equal(final[k], shards[k]) for k in final)


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_sharded_checkpoint_never_unpickles_code(tmp_path):
    """torch.distributed.checkpoint reads its index and plain values with plain pickle; ours do not."""
    marker = tmp_path / "pwned"
    index_dir = tmp_path / "index"
    index_dir.mkdir()
    (index_dir / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(CheckpointError, match="refusing"):
        SafeReader(index_dir).read_metadata()
    values = tmp_path / "values"
    dcp.save({"x": torch.zeros(2), "setting": Payload(marker)}, checkpoint_id=values, no_dist=True)
    with pytest.raises(CheckpointError, match="setting.*refusing.*posix.system"), distributed_checkpoint_errors():
        dcp.load({"x": torch.zeros(2), "setting": None}, storage_reader=SafeReader(values),
                 planner=SafeLoadPlanner(), no_dist=True)
    assert not marker.exists()


def test_each_fsdp_rank_holds_half_the_parameters_gradients_and_optimizer_state_of_ddp(tmp_path):
    """bdh_scale.bench.shard_memory on a tiny model: tracked tensor by tensor on every rank."""
    out = tmp_path / "memory.json"
    assert shard_memory.main([str(RECIPE), "model.n_layer=1", "model.n_embd=32", "model.n_head=2",
                              "train.batch_size=2", "train.seq_len=16", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["ddp"]["distributed"], result["fsdp"]["distributed"]) == ("MULTI_CPU", "FSDP")
    for kind in ("parameters", "gradients", "optimizer_state"):
        ddp = [rank["held_mb"][kind] for rank in result["ddp"]["ranks"]]
        fsdp = [rank["held_mb"][kind] for rank in result["fsdp"]["ranks"]]
        assert len(ddp) == len(fsdp) == 2 and ddp[0] > 0
        assert sum(fsdp) == pytest.approx(ddp[0], rel=0.05) and max(fsdp) <= 0.55 * ddp[0], (kind, ddp, fsdp)


def test_an_fsdp_launch_that_cannot_shard_is_refused_not_run_as_ddp(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    cpu_processes = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="fsdp_version: 1 on CPU processes; FSDP on CPUs runs as FSDP2 only"):
        shard_cpu_processes(cpu_processes)
    monkeypatch.setenv("FSDP_VERSION", "2")
    alone = SimpleNamespace(distributed_type=DistributedType.NO, device=torch.device("cpu"))
    with pytest.raises(ConfigError, match="asks for FSDP, but Accelerate set up NO.*refusing rather than training unsharded"):
        shard_cpu_processes(alone)
