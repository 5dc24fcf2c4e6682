"""Resume on another number of processes (train.world_size_change): a reset run keeps its global
batch and deals the same lanes anew, so every token of the epoch is still read exactly once; a
carry run resets its states and says so, or is refused."""
import pytest

from bdh_scale.errors import CheckpointError
from tests.helpers.tiny_runs import TWO, losses, metrics, rank_state, train_in_process, train_process

# A constant lr: the segments of the resumed run stop at other max_steps than the uninterrupted one.
RESET = ["train.state=reset", "train.batch_size=4", "train.checkpoint_every=2", "train.keep_checkpoints=5",
         "data.prefetch=0", "train.resume=auto", "train.warmup_steps=0", "train.min_lr=0.005"]


def positions(checkpoint, ranks: int) -> list[int]:
    """Where every lane of every rank reads next (global stream indices)."""
    return sorted(p for r in range(ranks) for p in rank_state(checkpoint, r)["lanes"]["positions"])


def test_a_reset_run_goes_from_one_process_to_two_and_back_reading_every_token_once(tmp_path, capsys):
    ref = train_in_process(tmp_path, "ref", *RESET, "train.max_steps=6").run_dir
    train_in_process(tmp_path, "r", *RESET, "train.max_steps=2")
    two = train_process(2, tmp_path, "r", *RESET, "train.max_steps=4")  # 4 lanes: 2 processes x 2
    assert two.returncode == 0, two.stderr[-3000:]
    assert ("number of processes: checkpoint 1, this run 2: the global batch of 4 lanes is kept as 2 x 2 lanes x 1 "
            "micro-batch(es) (train.batch_size 4 -> 2, grad_accum_steps 1 -> 1)") in two.stdout
    capsys.readouterr()
    train_in_process(tmp_path, "r", *RESET, "train.batch_size=2", "train.max_steps=6")  # back: 1 x 2 lanes x 2
    assert "kept as 1 x 2 lanes x 2 micro-batch(es)" in capsys.readouterr().out
    run = tmp_path / "r"
    for step, ranks in [(2, 1), (4, 2), (6, 1)]:  # every lane where the uninterrupted run's is: none ahead, none behind
        ckpt = f"checkpoints/step_{step:08d}"
        assert positions(run / ckpt, ranks) == positions(ref / ckpt, 1), step
    assert [r["tokens"] for r in metrics(run) if "loss" in r] == [s * 4 * 32 for s in range(1, 7)]
    for (s, a), (t, b) in zip(losses(run), losses(ref), strict=True):  # the same tokens, fp32 reduction order
        assert s == t and abs(a - b) < 1e-5, (s, a, b)


def test_a_carry_run_on_another_number_of_processes_resets_its_states_or_is_refused(two_process_run, tmp_path, capsys):
    ref, _ = two_process_run  # 2 processes x 2 lanes x 2 micro-batches, state carried
    ckpt = ref / "checkpoints/step_00000008"
    with pytest.raises(CheckpointError, match="number of processes: checkpoint 2, this run 1; train.world_size_change=refuse"):
        train_in_process(tmp_path, "fork", *TWO, f"train.resume={ckpt}", "train.world_size_change=refuse")
    capsys.readouterr()
    result = train_in_process(tmp_path, "fork", *TWO, f"train.resume={ckpt}", "train.max_steps=9")
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("number of processes")]
    assert len(said) == 1 and "kept as 1 x 2 lanes x 4 micro-batch(es)" in said[0]
    assert said[0].endswith("the carried TBPTT states are reset (train.world_size_change=relay)")
    assert result.steps == 9 and [r["step"] for r in metrics(result.run_dir) if "loss" in r] == [9]
    after = rank_state(result.run_dir / "checkpoints/step_00000009")["lanes"]["positions"]
    assert sorted(after) == sorted(p + 32 for p in positions(ckpt, 2))  # every lane one window on
