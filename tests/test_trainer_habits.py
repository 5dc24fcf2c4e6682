"""What a researcher expects of a trainer: the config listed from its own classes (help, flags,
print-config), progress that a log file shows, LR schedules that resume exactly, a profiler trace,
and one clear line where a launch or a run directory is not what was asked for."""
import dataclasses
import json
import subprocess
import sys
import typing

import pytest
import yaml

from bdh_scale.config import load_config
from bdh_scale.config.cli import dotted_overrides, keys, sections
from bdh_scale.errors import ConfigError
from bdh_scale.train.distributed import launcher_processes
from bdh_scale.train.schedule import lr_at
from tests.helpers.tiny_runs import RECIPE, ROOT, TINY, clean_env, losses, main_in_process, train_process


def bdh_train(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT, env=clean_env(None),
                          capture_output=True, text=True, timeout=timeout)


# -- the config on the command line ---------------------------------------------------------------

def test_help_lists_every_section_and_key_with_its_type_default_and_meaning():
    out = bdh_train("--help").stdout
    leaves = []
    for name, cls in sections():
        assert f"\n{name}:\n" in out
        hints = typing.get_type_hints(cls)
        leaves += [(name, f) for f in dataclasses.fields(cls) if not dataclasses.is_dataclass(hints[f.name])]
    assert len(leaves) == len(keys()) > 100
    for section, f in leaves:
        kind, default, meaning = keys()[f"{section}.{f.name}"]
        assert meaning, f"{section}.{f.name} has no comment in its class"
        assert f"  {f.name} ({kind}) = " in out and meaning in out


def test_print_config_is_a_recipe_that_loads_back_to_the_same_config(tmp_path):
    proc = bdh_train(RECIPE, "--print-config", "--train.lr", "1e-3", "model.n_layer=4", f"train.out_dir={tmp_path}/x")
    assert proc.returncode == 0, proc.stderr
    printed = tmp_path / "printed.yaml"
    printed.write_text(proc.stdout)
    again = load_config(printed)
    assert again == load_config(RECIPE, ["train.lr=1e-3", "model.n_layer=4", f"train.out_dir={tmp_path}/x"])
    assert again.train.lr == 1e-3 and again.model.n_layer == 4
    assert list(tmp_path.iterdir()) == [printed]  # nothing written


def test_the_three_override_forms_are_the_same_thing():
    forms = [["train.lr=2e-3", "model.n_head=2"], ["--train.lr", "2e-3", "--model.n_head", "2"],
             ["--train.lr=2e-3", "--model.n_head=2"]]
    configs = [load_config(RECIPE, dotted_overrides(f)) for f in forms]
    assert configs[0] == configs[1] == configs[2] and configs[0].train.lr == 2e-3


@pytest.mark.parametrize("args,words", [(["--train.lrr", "1e-3"], "did you mean --train.lr"),
                                        (["--train.lr"], "needs a value"), (["--bogus"], "unknown option '--bogus'")])
def test_an_unknown_flag_is_one_line_with_the_nearest_keys(tmp_path, args, words):
    proc = bdh_train(RECIPE, *args, f"train.out_dir={tmp_path}/runs")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], proc.stderr
    assert not (tmp_path / "runs").exists()


def test_every_recipe_key_is_in_the_schema_the_help_is_read_from():
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        tree = yaml.safe_load(recipe.read_text())
        for section, values in tree.items():
            for key, value in values.items():
                dotted = f"{section}.{key}"
                assert dotted in keys() or isinstance(value, dict), f"{recipe.name}: {dotted}"


# -- progress in a log ----------------------------------------------------------------------------

def test_a_log_file_gets_plain_lines_every_log_every_steps_and_no_carriage_return(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as f:  # stdout and stderr to a file, as SLURM or nohup would
        proc = subprocess.run([sys.executable, str(ROOT / "train.py"), str(RECIPE), *TINY, "train.progress=true",
                               "train.max_steps=6", "train.log_every=2", f"train.out_dir={tmp_path}"],
                              cwd=ROOT, env=clean_env(None), stdout=f, stderr=subprocess.STDOUT, timeout=120)
    assert proc.returncode == 0
    text = log.read_text()
    assert "\r" not in text
    lines = [line for line in text.splitlines() if line.startswith("step ") and "/6" in line]
    assert [line.split()[1] for line in lines] == ["2/6", "4/6", "6/6"]
    for part in ("nats/token", "lr ", "tokens/s", "MFU", "elapsed 0:", "ETA 0:", "MiB resident"):
        assert all(part in line for line in lines), (part, lines)


# -- learning-rate schedules -------------------------------------------------------------------------

KW = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=100)


def test_wsd_holds_lr_then_decays_linearly_over_its_fraction_and_constant_holds():
    wsd = [lr_at(s, **KW, shape="wsd", decay_fraction=0.2) for s in range(KW["max_steps"] + 5)]
    assert wsd[10:80] == [KW["lr"]] * 70  # stable until the last 20 steps
    assert wsd[90] == pytest.approx((KW["lr"] + KW["min_lr"]) / 2) and wsd[100:] == [KW["min_lr"]] * 5
    assert all(a >= b for a, b in zip(wsd[80:], wsd[81:]))
    assert [lr_at(s, **KW, shape="constant") for s in (10, 100, 500)] == [KW["lr"]] * 3
    assert lr_at(3, **KW, shape="wsd") == lr_at(3, **KW) == lr_at(3, **KW, shape="constant")  # the same warmup


@pytest.mark.parametrize("shape", ["wsd", "constant"])
def test_a_resume_is_exact_under_every_schedule(tmp_path, shape):
    run = ["train.max_steps=8", "train.checkpoint_every=4", "train.warmup_steps=2", f"train.lr_schedule={shape}",
           "train.lr_decay_fraction=0.5", "train.resume=auto"]
    ref = train_process(1, tmp_path, "ref", *run)
    killed = train_process(1, tmp_path, "r", *run, env={"BDH_KILL_AT": "after_step:6"})
    resumed = train_process(1, tmp_path, "r", *run)
    assert ref.returncode == 0 and killed.returncode == -9 and resumed.returncode == 0, resumed.stderr
    assert losses(tmp_path / "r") == losses(tmp_path / "ref")
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "r/metrics.jsonl").read_text().splitlines()
           if '"lr"' in line]
    assert lrs == pytest.approx([lr_at(s, lr=0.005, min_lr=4e-4, warmup_steps=2, max_steps=8, shape=shape,
                                       decay_fraction=0.5) for s in range(8)])


# -- profiler, launches, run directories ----------------------------------------------------------

def test_profile_steps_writes_a_chrome_trace_into_the_run_directory(tmp_path, capsys):
    code = main_in_process(RECIPE, *TINY, "train.max_steps=5", "train.profile_steps=2", "train.profile_from=1",
                           f"train.out_dir={tmp_path}", "train.run_name=p")
    assert code == 0
    (trace,) = (tmp_path / "p/profile").glob("*.pt.trace.json")
    events = json.loads(trace.read_text())["traceEvents"]
    assert any("aten::" in e.get("name", "") for e in events)
    assert "profile: steps 2-3 traced into" in capsys.readouterr().out


def test_the_processes_an_accelerate_command_line_asked_for():
    assert launcher_processes(["accelerate", "launch", "--cpu", "--num_processes", "2", "train.py"]) == 2
    assert launcher_processes(["python", "-m", "accelerate.commands.launch", "--num_processes=4", "x"]) == 4
    assert launcher_processes(["accelerate", "launch", "train.py"]) is None
    assert launcher_processes(["python", "train.py", "--num_processes", "2"]) is None


def test_a_launch_that_asked_for_two_cpu_processes_and_got_one_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                           str(ROOT / "train.py"), str(RECIPE), *TINY, f"train.out_dir={tmp_path}/runs"],
                          cwd=ROOT, env=clean_env(None), capture_output=True, text=True, timeout=120)
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode != 0 and len(ours) == 1, proc.stderr[-2000:]
    assert "asked for 2 processes and started one" in ours[0] and "launch/cpu_2proc.yaml" in ours[0]
    assert not (tmp_path / "runs").exists()


def test_a_run_diverted_to_a_new_directory_says_so_and_how_to_continue_the_old_one(tmp_path, capsys):
    for _ in range(2):
        code = main_in_process(RECIPE, *TINY, "train.max_steps=1", f"train.out_dir={tmp_path}", "train.run_name=same",
                               "train.sample_tokens=0")
        assert code == 0
    out = capsys.readouterr().out
    note = [line for line in out.splitlines() if line.startswith("note:")]
    assert len(note) == 1 and f"{tmp_path / 'same'} holds another run" in note[0]
    assert f"writes {tmp_path / 'same-1'}" in note[0] and "train.resume=auto" in note[0]


def test_config_errors_name_the_key_for_seed_and_run_name():
    for override, key in [("train.seed=-1", "train.seed"), ("train.seed=99999999999999999999999", "train.seed"),
                          ('train.run_name="a\\nb"', "train.run_name"), ("train.run_name=" + "x" * 101, "train.run_name")]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config(RECIPE, [override])


@pytest.mark.parametrize("kind", ["dangling_link", "file"])
def test_a_run_path_that_is_not_a_directory_is_refused_in_one_line(tmp_path, capsys, kind):
    (tmp_path / "runs").mkdir()
    place = tmp_path / "runs/r"
    if kind == "file":
        place.write_text("not a run")
    else:
        place.symlink_to(tmp_path / "nowhere")
    capsys.readouterr()
    code = main_in_process(RECIPE, *TINY, "train.max_steps=1", f"train.out_dir={tmp_path / 'runs'}", "train.run_name=r")
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(err) == 1 and "train.run_name" in err[0], err
    assert ("does not exist" if kind == "dangling_link" else "is a file") in err[0]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"] and not (tmp_path / "nowhere").exists()
