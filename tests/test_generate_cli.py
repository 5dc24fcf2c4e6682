"""bdh-generate on a trained run: text out, the training window as default context for a run
trained with state reset, and one clear error line for bad arguments."""
import pytest

from bdh_scale import generate
from bdh_scale.model import BDH
from tests.helpers.tiny_runs import train_in_process


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return train_in_process(out, "gen", "train.max_steps=3").run_dir


def test_generate_prints_prompt_and_continuation(run, capsys):
    assert generate.main([str(run), "--prompt", "ROMEO:", "--tokens", "40", "--temperature", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("ROMEO:") and len(text.encode()) >= len("ROMEO:") + 40


def test_a_reset_run_samples_within_its_training_window(run, monkeypatch, capsys):
    assert generate.trained_window(str(run)) == 32  # tiny_runs: train.seq_len=32, state reset
    seen = []
    real = BDH.generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("max_context"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BDH, "generate", spy)
    generate.main([str(run), "--tokens", "5"])
    generate.main([str(run), "--tokens", "5", "--max-context", "0"])
    generate.main([str(run), "--tokens", "5", "--max-context", "8"])
    assert seen == [32, None, 8]


@pytest.mark.parametrize("args,message", [(["--max-context", "1"], "--max-context"), (["--tokens", "-1"], "--tokens")])
def test_bad_arguments_are_one_error_line(run, capsys, args, message):
    assert generate.main([str(run), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0]


def test_a_directory_without_a_model_is_refused(tmp_path, capsys):
    assert generate.main([str(tmp_path)]) == 2
    assert "holds no trained model" in capsys.readouterr().err
