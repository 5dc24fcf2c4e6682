"""One loop, many processes: real 2-process runs on the CPU (gloo) read disjoint lanes, match a
1-process run over the same global lanes, and resume bit for bit after a SIGKILL. Plus the
launch/ files: accelerate configs, the SLURM script and the sweep runner."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from bdh_scale.errors import ConfigError
from bdh_scale.experiments import sweep
from bdh_scale.train.checkpoint.checkpointer import list_checkpoints, verify
from bdh_scale.train.distributed import check_parallel_plan
from tests.helpers.tiny_runs import (ROOT, TWO, clean_env, command, losses, metrics, rank_state, train_nodes,
                                     train_process, weights)

# The same 8 global lanes in one process: B=8, one micro-batch.
ONE = ["train.max_steps=8", "train.checkpoint_every=3", "train.state=carry", "train.batch_size=8",
       "data.prefetch=2"]


def test_two_processes_read_disjoint_lanes_and_match_one_process(two_process_run, tmp_path):
    run_dir, proc = two_process_run
    one = train_process(1, tmp_path, "o", *ONE)
    assert one.returncode == 0, one.stderr
    # each step's loss (reduced over ranks) equals the 1-process loss over the same 8 lanes
    two_losses, one_losses = losses(run_dir), losses(tmp_path / "o")
    assert [s for s, _ in two_losses] == list(range(1, 9))  # one row per step: only the main process logs
    for (s2, l2), (s1, l1) in zip(two_losses, one_losses):
        assert s1 == s2 and abs(l1 - l2) < 1e-5, (s1, l1, l2)
    assert [r["tokens"] for r in metrics(run_dir) if "loss" in r] == [s * 8 * 32 for s in range(1, 9)]
    # rank 0 and rank 1 read disjoint lanes, and together exactly the 1-process run's lanes
    end = run_dir / "checkpoints/step_00000008"
    r0, r1 = (rank_state(end, r)["lanes"]["positions"] for r in (0, 1))
    assert len(r0) == len(r1) == 4 and not set(r0) & set(r1)
    assert sorted(r0 + r1) == sorted(rank_state(tmp_path / "o/checkpoints/step_00000008")["lanes"]["positions"])
    assert proc.stdout.count("done: 8 steps") == 1  # the summary is printed once
    # validation as trained: the carried reading of the held-out rows, split over two ranks, gives
    # the figures of one process reading them all (the models agree to ~1e-6 after 8 steps)
    val2, val1 = ([r for r in metrics(d) if "val_loss" in r][-1] for d in (run_dir, tmp_path / "o"))
    assert val2["val_loss"] == val2["val_loss_carried"] != val2["val_loss_window"]
    assert {k for k in val2 if k.startswith("ctx/")} == {k for k in val1 if k.startswith("ctx/")} != set()
    for key in [k for k in val1 if k.startswith(("val_loss", "ctx/"))]:
        assert abs(val2[key] - val1[key]) < 1e-4, key


def test_two_process_run_killed_with_sigkill_resumes_bitwise(two_process_run, tmp_path):
    ref, _ = two_process_run
    killed = train_process(2, tmp_path, "d", *TWO, env={"BDH_KILL_AT": "after_step:5"})
    assert killed.returncode != 0
    run_dir = tmp_path / "d"
    assert [p.name for p in list_checkpoints(run_dir)] == ["step_00000003"]
    resumed = train_process(2, tmp_path, "d", *TWO)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_00000003 at step 3" in resumed.stdout
    assert losses(run_dir) == losses(ref)  # bit for bit
    end, ref_end = run_dir / "checkpoints/step_00000008", ref / "checkpoints/step_00000008"
    verify(end)
    for rank in (0, 1):  # every rank's lanes end where they would have: nothing served twice or skipped
        assert rank_state(end, rank)["lanes"] == rank_state(ref_end, rank)["lanes"]
    wa, wb = weights(end), weights(ref_end)
    assert all((wa[k] == wb[k]).all() for k in wb)


def test_two_nodes_on_one_machine_train_disjoint_lanes_and_resume_bitwise(two_process_run, tmp_path):
    """The multi-node path (the flags launch/slurm.sh passes) as two "nodes" of one process each on
    localhost, killed after step 5 and started again: the same run as one node of two processes."""
    ref, _ = two_process_run
    killed = train_nodes(tmp_path, "n", *TWO, env={"BDH_KILL_AT": "after_step:5"})
    assert all(code != 0 for code, _, _ in killed)
    assert [p.name for p in list_checkpoints(tmp_path / "n")] == ["step_00000003"]
    (code0, out0, err0), (code1, _, err1) = train_nodes(tmp_path, "n", *TWO)
    assert code0 == code1 == 0, err0[-2000:] + err1[-2000:]
    assert "step_00000003 at step 3" in out0 and "distributed: DDP over 2 processes" in out0
    assert losses(tmp_path / "n") == losses(ref)  # bit for bit
    end = tmp_path / "n/checkpoints/step_00000008"
    verify(end)
    lanes = [rank_state(end, rank)["lanes"] for rank in (0, 1)]
    assert not set(lanes[0]["positions"]) & set(lanes[1]["positions"])  # each node its own lanes
    assert lanes == [rank_state(ref / "checkpoints/step_00000008", rank)["lanes"] for rank in (0, 1)]


def test_sigterm_to_the_launcher_reaches_every_rank_and_they_save_together(tmp_path):
    """What a preempted job sees: the launcher forwards SIGTERM; the ranks agree on the step and save."""
    proc = subprocess.Popen(command(2, tmp_path, "p", "train.max_steps=100000", "train.checkpoint_every=0",
                                    "train.state=carry", "train.batch_size=2", "data.prefetch=0"),
                            cwd=ROOT, env=clean_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while len(metrics(tmp_path / "p")) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert err.count("SIGTERM received: stopping after this step") == 2  # both workers
    (ckpt,) = list_checkpoints(tmp_path / "p")
    verify(ckpt)
    assert ckpt.name == f"step_{metrics(tmp_path / 'p')[-1]['step']:08d}" and "stopped by SIGTERM" in out
    for rank in (0, 1):
        assert rank_state(ckpt, rank)["lanes"]["batches_served"] == metrics(tmp_path / "p")[-1]["step"]


# -- launch/ ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,kind,processes", [
    ("single_gpu.yaml", DistributedType.NO, 1), ("multi_gpu.yaml", DistributedType.MULTI_GPU, 8),
    ("fsdp.yaml", DistributedType.FSDP, 8), ("cpu_2proc.yaml", DistributedType.MULTI_GPU, 2)])
def test_launch_configs_load_with_accelerate(name, kind, processes):
    cfg = load_config_from_file(str(ROOT / "launch" / name))
    assert cfg.distributed_type == kind and cfg.num_processes == processes
    assert cfg.mixed_precision == "no"  # precision comes from the recipe
    if kind == DistributedType.FSDP:
        assert cfg.fsdp_config["fsdp_reshard_after_forward"] is True  # FULL_SHARD
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "NO_WRAP"


def test_muon_is_refused_under_fsdp_with_a_clear_message():
    tc = SimpleNamespace(optim="muon")
    with pytest.raises(ConfigError, match="train.optim=muon needs whole weight matrices.*FSDP shards them"):
        check_parallel_plan(SimpleNamespace(distributed_type=DistributedType.FSDP), tc)
    check_parallel_plan(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU), tc)  # DDP is fine


def test_slurm_script_runs_one_accelerate_launch_per_node(tmp_path):
    """Stand-ins for scontrol / srun / accelerate record what the script would run on 2 nodes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stubs = {
        "scontrol": 'printf "node-a\\nnode-b\\n"',
        # srun: run the command once per node, as SLURM would, with that node's SLURM_NODEID
        "srun": 'while [ "$1" != bash ]; do shift; done; for n in 0 1; do SLURM_NODEID=$n "$@"; done',
        "accelerate": 'echo "accelerate $*" >> "$STUB_LOG"',
    }
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.txt"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log), SLURM_NNODES="2",
               SLURM_JOB_NODELIST="node-[a-b]", SLURM_JOB_ID="4242", GPUS_PER_NODE="4")
    proc = subprocess.run(["bash", str(ROOT / "launch/slurm.sh"), "recipes/shakespeare_m1.yaml", "train.run_name=big run"],
                          env=env, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2
    for rank, call in enumerate(calls):
        assert f"--machine_rank {rank} " in call
        assert "--num_machines 2 --num_processes 8" in call and "--main_process_ip node-a" in call
        assert "--config_file launch/multi_gpu.yaml" in call
        assert call.endswith("train.py recipes/shakespeare_m1.yaml train.resume=auto train.run_name=big run")


def test_sweep_runs_a_grid_and_collects_one_table(tmp_path, capsys):
    grid = sweep.points(sweep.parse_grid(["model.n_layer=1,2", "train.seq_len_schedule=[[0,16]],[[0,32]]"]))
    assert len(grid) == 4 and grid[1] == {"model.n_layer": "1", "train.seq_len_schedule": "[[0,32]]"}
    assert sweep.run_name("s", grid[1]) == "s-n_layer1-seq_len_schedule_0_32"

    common = ["--set", "model.n_embd=32", "--set", "model.n_head=2", "--set", "model.mlp_internal_dim_multiplier=8",
              "--set", "model.attn_backend=parallel", "--set", "train.batch_size=4", "--set", "train.seq_len=32",
              "--set", "train.max_steps=2", "--set", "train.eval_batches=1", "--set", "train.sample_tokens=0",
              "--set", "train.progress=false", "--set", "data.prefetch=0"]
    argv = [str(ROOT / "recipes/shakespeare_cpu.yaml"), "--name", "g", "--grid", "model.n_layer=1,2",
            "--out_dir", str(tmp_path), *common]
    assert sweep.main([*argv, "--mode", "print"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 2 and "train.run_name=g-n_layer1" in printed[0] and "train.resume=auto" in printed[0]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "bdh_scale.experiments.sweep", *argv], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "sweeps/g.json").read_text())
    assert [(r["run_name"], r["model.n_layer"], r["status"], r["step"]) for r in rows] == [
        ("g-n_layer1", "1", "done", 2), ("g-n_layer2", "2", "done", 2)]
    assert all(r["val_loss"] > 0 for r in rows)
    assert (tmp_path / "sweeps/g.csv").read_text().startswith("run_name,model.n_layer,status")
    again = subprocess.run([sys.executable, "-m", "bdh_scale.experiments.sweep", *argv], capture_output=True, text=True,
                           cwd=ROOT, env=env, timeout=300)
    assert again.stdout.count("finished already, skipped") == 2  # a rerun continues, it does not redo
    assert Path(tmp_path / "g-n_layer1-1").exists() is False


def test_sweep_points_change_keys_together_and_cross_the_grid():
    from bdh_scale.experiments.sweep import parse_grid, parse_point, points

    pairs = [parse_point("train.seq_len=256 train.batch_size=8"), parse_point("train.seq_len=512 train.batch_size=4")]
    grid = points(parse_grid(["train.state=reset,carry"]), pairs)
    assert [(p["train.seq_len"], p["train.batch_size"], p["train.state"]) for p in grid] == [
        ("256", "8", "reset"), ("256", "8", "carry"), ("512", "4", "reset"), ("512", "4", "carry")]
    assert points(parse_grid(["model.n_layer=2,4"])) == [{"model.n_layer": "2"}, {"model.n_layer": "4"}]
    with pytest.raises(SystemExit, match="space-separated section.key=value"):
        parse_point("seq_len=256")


def test_a_sweep_of_points_alone_needs_no_grid(capsys):
    from bdh_scale.experiments.sweep import parse_args, parse_grid, parse_point, points

    args = parse_args(["r.yaml", "--point", "train.batch_size=8 train.grad_accum_steps=1",
                       "--point", "train.batch_size=4 train.grad_accum_steps=2"])
    assert points(parse_grid(args.grid), [parse_point(p) for p in args.point]) == [
        {"train.batch_size": "8", "train.grad_accum_steps": "1"},
        {"train.batch_size": "4", "train.grad_accum_steps": "2"}]
    with pytest.raises(SystemExit):
        parse_args(["r.yaml"])
    assert "give at least one --grid KEY=V1,V2 or --point" in capsys.readouterr().err
