"""Trackers: any tracker Accelerate supports, with the same metrics as metrics.jsonl; one W&B run
(offline here) across a resume, ending with the exact `wandb sync` command; the samples table
sent one new row at a time; a tracker that is unknown or not installed refused in one line."""
import contextlib
import io
import json
import math

import pytest

from bdh_scale.config import load_config
from bdh_scale.errors import ConfigError
from bdh_scale.train import cli
from tests.helpers.tiny_runs import RECIPE, metrics, overrides, train_in_process

TRACKED = ["tracking.backend=[wandb,tensorboard]", "tracking.wandb_mode=offline", "train.eval_every=2",
           "tracking.eval_sample_tokens=6", "tracking.diagnostics=false"]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A tracked run of 4 steps, stopped, then resumed to 6 steps: (run_dir, what each part printed)."""
    out, printed = tmp_path_factory.mktemp("tracked"), []
    for steps, extra in ((4, []), (6, ["train.resume=auto"])):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            result = train_in_process(out, "tracked", f"train.max_steps={steps}", *TRACKED, *extra)
        printed.append(buffer.getvalue())
    return result.run_dir, printed


def trainer_state(run_dir, step: int) -> dict:
    return json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())


def test_a_resumed_run_continues_the_same_wandb_run(resumed):
    run_dir, printed = resumed
    run_id = trainer_state(run_dir, 4)["trackers"]["wandb_run_id"]
    assert trainer_state(run_dir, 6)["trackers"]["wandb_run_id"] == run_id
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and all(p.name.endswith(f"-{run_id}") for p in parts)
    # each part ends with the command that uploads the whole run so far, parts in order
    assert f"upload it with: wandb sync --id {run_id} {parts[0]}\n" in printed[0]
    assert f"upload it with: wandb sync --id {run_id} {parts[0]} {parts[1]}\n" in printed[1]


def test_samples_table_gets_one_new_row_per_validation(resumed):
    run_dir, _ = resumed
    logged = [json.loads(f.read_text())["data"] for f in run_dir.glob("wandb/offline-run-*/files/media/table/samples_*")]
    expected = [[[r["step"], r["sample"]]] for r in metrics(run_dir) if "sample" in r]
    assert sorted(logged) == sorted(expected) and [row[0][0] for row in expected] == [2, 4, 6]


def test_tensorboard_receives_the_same_metrics_as_metrics_jsonl(resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = resumed
    events = EventAccumulator(str(run_dir / "logs" / "bdh-scale")).Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}
    rows = metrics(run_dir)
    compared = 0
    for row in rows:
        for key, value in row.items():
            if key in ("step", "sample"):
                continue
            assert math.isclose(scalars[key][row["step"]], value, rel_tol=1e-6, abs_tol=1e-12), (key, row["step"])
            compared += 1
    assert {"loss", "lr", "val_loss", "val_bpb", "tokens_per_s"} <= set(scalars) and compared > 6 * 8
    assert sorted(scalars["loss"]) == [r["step"] for r in rows]  # steps 1..6, both parts


@pytest.mark.parametrize("backend,message", [("wandbb", "unknown tracker 'wandbb'"),
                                             ("[tensorboard, nope]", "unknown tracker 'nope'"),
                                             ("[none, wandb]", "trackers each named once"),
                                             ("[wandb, wandb]", "trackers each named once")])
def test_a_bad_tracker_name_is_one_clear_error(backend, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, [f"tracking.backend={backend}"])
    assert str(e.value).startswith("tracking.backend:") and "\n" not in str(e.value)


def test_bdh_train_refuses_unknown_and_missing_trackers_in_one_line(tmp_path, monkeypatch, capsys):
    import accelerate.tracking

    assert cli.main([str(RECIPE), *overrides(tmp_path, "x", "tracking.backend=mlflw")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: tracking.backend: unknown tracker 'mlflw'")
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [])  # as if none were installed
    assert cli.main([str(RECIPE), *overrides(tmp_path, "x", "tracking.backend=[tensorboard]")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorboard not installed here; pip install tensorboard" in err[0]
    assert not any(tmp_path.iterdir())  # nothing written
