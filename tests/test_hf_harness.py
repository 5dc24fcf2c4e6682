"""lm-evaluation-harness's own `hf` model type on a run's final/ (trust_remote_code) agrees with
bdh-eval: reading in windows of T tokens, the same rolling log-likelihood and the same
multiple-choice accuracy as `bdh-eval --context window --window T`; with windows longer than every
document, the log-likelihood of bdh-eval's carried state (one forward over a whole document is the
carried state's reading of it, only with memory growing with the document)."""
import json
import math

import pytest

from bdh_scale.harness import cli
from tests.test_harness import write_tasks

T = 16
NEWLINE = 10  # the document prefix bdh-eval uses ("\n"), also the byte tokenizer's id for it


def hf_results(run_dir, tmp_path, max_length: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    results = simple_evaluate(model="hf", tasks=["tiny_rolling", "tiny_choice"], bootstrap_iters=0,
                              model_args=f"pretrained={run_dir / 'final'},trust_remote_code=True,"
                                         f"max_length={max_length},prefix_token_id={NEWLINE}",
                              task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
                              device="cpu", batch_size=2)
    return results["results"]


def bdh_eval_results(run_dir, tmp_path, *flags) -> dict:
    out = tmp_path / f"bdh-eval{len(flags)}.json"
    assert cli.main([str(run_dir), "--tasks", "tiny_rolling,tiny_choice", "--include-path", str(tmp_path),
                     "--bootstrap-iters", "0", "--output", str(out), *flags]) == 0
    return json.loads(out.read_text())["results"]


@pytest.fixture
def tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_tasks(tmp_path)
    return tmp_path


def test_lm_eval_hf_in_windows_agrees_with_bdh_eval_in_windows(byte_run, tasks):
    theirs = hf_results(byte_run, tasks, max_length=T)
    ours = bdh_eval_results(byte_run, tasks, "--context", "window", "--window", str(T))
    for metric in ("bits_per_byte,none", "word_perplexity,none"):
        assert math.isclose(theirs["tiny_rolling"][metric], ours["tiny_rolling"][metric], rel_tol=1e-5), metric
    assert theirs["tiny_choice"]["acc,none"] == ours["tiny_choice"]["acc,none"]


def test_lm_eval_hf_with_whole_documents_gives_the_carried_states_log_likelihood(byte_run, tasks):
    theirs = hf_results(byte_run, tasks, max_length=4096)
    ours = bdh_eval_results(byte_run, tasks, "--context", "carry", "--window", str(T))
    assert math.isclose(theirs["tiny_rolling"]["bits_per_byte,none"], ours["tiny_rolling"]["bits_per_byte,none"],
                        rel_tol=1e-5)
