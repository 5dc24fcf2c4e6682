"""bdh-eval and its lm-evaluation-harness adapter: a document scored in chunks through BDH's carried
state has the log-likelihood of one forward over all of it (the model's own loss), a continuation
gets its log-probability and greedy flag, generation stops at the stop string, and bdh-eval runs
local task files offline, reporting the bits per byte of the model's own loss."""
import json
import math
import sys

import pytest
import torch
import yaml
from lm_eval.api.instance import Instance

from bdh_scale.harness import cli
from bdh_scale.harness.lm import BDHLM
from bdh_scale.model import ModelConfig, build_model
from bdh_scale.rundir import load_run

TEXT = ("ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun.\n"
        "Arise, fair sun, and kill the envious moon, who is already sick and pale with grief.") * 2
DOCS = [TEXT, "KING: A short document.", "To be, or not to be, that is the question:\n" * 3]


def request(kind: str, *arguments) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=arguments, idx=0)


def model_loglikelihood(model, ids: list[int]) -> float:
    """-(sum of the model's own losses) over ids[1:], one forward over the whole text."""
    ids = torch.tensor([ids])
    with torch.no_grad():
        out = model(ids[:, :-1], ids[:, 1:])
    return -out.loss.item() * (ids.size(1) - 1)


@pytest.fixture(params=["byte_run", "bpe_run"])
def run_model(request):
    model, tokenizer = load_run(request.getfixturevalue(request.param))
    return model.eval(), tokenizer


def test_rolling_loglikelihood_in_chunks_equals_the_model_loss_on_the_text(run_model):
    model, tokenizer = run_model
    lm = BDHLM(model, tokenizer, window=16, carry=True, batch_size=2)
    ids = tokenizer.encode(TEXT)
    assert len(ids) > 8 * 16  # many chunks, each continuing the state of the one before
    scored = lm.loglikelihood_rolling([request("loglikelihood_rolling", doc) for doc in DOCS])
    for doc, got in zip(DOCS, scored):
        want = model_loglikelihood(model, [lm.prefix_id] + tokenizer.encode(doc))
        assert abs(got - want) <= 1e-4 * abs(want), (got, want)


def test_in_windows_a_text_shorter_than_the_window_scores_as_through_the_state(run_model):
    model, tokenizer = run_model
    doc = DOCS[1]
    window = BDHLM(model, tokenizer, window=64, carry=False).loglikelihood_rolling([request("r", doc)])[0]
    carried = BDHLM(model, tokenizer, window=4, carry=True).loglikelihood_rolling([request("r", doc)])[0]
    assert abs(window - carried) <= 1e-4 * abs(carried)


def test_loglikelihood_is_the_continuation_log_probability_and_greedy_flag(run_model):
    model, tokenizer = run_model
    lm = BDHLM(model, tokenizer, window=8, carry=True)
    context, continuation = "ROMEO: But soft, what light", " through yonder window"
    (logp, greedy), = lm.loglikelihood([request("loglikelihood", context, continuation)])
    ctx, cont = tokenizer.encode(context), tokenizer.encode(context + continuation)[len(tokenizer.encode(context)):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids[:, :-1]).logits.float(), dim=-1)[0, -len(cont):]
    targets = torch.tensor(cont)
    assert math.isclose(logp, lp[torch.arange(len(cont)), targets].sum().item(), rel_tol=1e-4)
    assert greedy == bool((lp.argmax(-1) == targets).all())


def test_a_greedy_continuation_is_flagged_greedy_and_a_changed_one_is_not(byte_run):
    model, tokenizer = load_run(byte_run)
    lm = BDHLM(model, tokenizer, window=8, carry=True)
    context = "ROMEO: But soft, what light"
    ids = torch.tensor([tokenizer.encode(context)])
    greedy_ids = model.eval().generate(ids, 6, temperature=0)[0, ids.size(1):].tolist()
    changed = greedy_ids[:3] + [(greedy_ids[3] + 1) % 256] + greedy_ids[4:]
    as_text = [bytes(c).decode("utf-8", errors="surrogateescape") for c in (greedy_ids, changed)]  # any bytes
    flags = [flag for _, flag in lm.loglikelihood([request("loglikelihood", context, t) for t in as_text])]
    assert flags == [True, False]


def test_generate_until_stops_before_the_stop_string(byte_run):
    model, tokenizer = load_run(byte_run)
    lm = BDHLM(model, tokenizer, window=32, carry=False)
    free = lm.generate_one("ROMEO:", {"max_gen_toks": 40})
    stop = free[5:7]
    cut = lm.generate_one("ROMEO:", {"until": [stop], "max_gen_toks": 40})
    assert len(free.encode()) >= 40 - 3 and cut == free.split(stop)[0] and stop not in cut


def write_tasks(root):
    """Two local tasks: a rolling log-likelihood over DOCS, a two-way multiple choice."""
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS))
    choices = [{"q": "ROMEO: But soft, what", "a": [" light", " zebra"], "gold": 0},
               {"q": "To be, or not to", "a": [" be", " qq"], "gold": 0}]
    (root / "choice.jsonl").write_text("".join(json.dumps(c) + "\n" for c in choices))
    data = lambda name: {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(root / name)}},
                         "test_split": "test"}
    (root / "tiny_rolling.yaml").write_text(yaml.safe_dump({
        "task": "tiny_rolling", **data("docs.jsonl"), "output_type": "loglikelihood_rolling", "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")]}))
    (root / "tiny_choice.yaml").write_text(yaml.safe_dump({
        "task": "tiny_choice", **data("choice.jsonl"), "output_type": "multiple_choice", "doc_to_text": "{{q}}",
        "doc_to_choice": "{{a}}", "doc_to_target": "{{gold}}", "metric_list": [{"metric": "acc"}]}))


def test_bdh_eval_runs_local_tasks_offline_and_reports_the_bits_per_byte_of_the_model_loss(byte_run, tmp_path,
                                                                                           monkeypatch, capsys):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_tasks(tmp_path)
    out = tmp_path / "results.json"
    assert cli.main([str(byte_run), "--tasks", "tiny_rolling,tiny_choice", "--include-path", str(tmp_path),
                     "--context", "carry", "--window", "16", "--bootstrap-iters", "0", "--output", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    model, tokenizer = load_run(byte_run)
    prefix = tokenizer.encode("\n")[-1]
    nats = -sum(model_loglikelihood(model.eval(), [prefix] + tokenizer.encode(d)) for d in DOCS)
    bpb = nats / math.log(2) / sum(len(d.encode()) for d in DOCS)
    assert math.isclose(results["tiny_rolling"]["bits_per_byte,none"], bpb, rel_tol=1e-4)
    assert results["tiny_choice"]["acc,none"] in (0.0, 0.5, 1.0)
    assert "tiny_rolling" in capsys.readouterr().out  # the results table


def test_bad_inputs_are_one_error_line(byte_run, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    gpt = build_model(ModelConfig(arch="gpt", n_layer=1, n_embd=16, n_head=2))
    gpt.save_pretrained(tmp_path / "gpt", tokenizer="bytes")  # no recipe
    cases = [([str(byte_run), "--tasks", "no_such_task_anywhere", "--include-path", str(tmp_path)], "unknown task"),
             ([str(tmp_path / "gpt"), "--tasks", "x", "--context", "carry"], "no state to carry"),
             ([str(tmp_path / "gpt"), "--tasks", "x"], "pass --window"),
             ([str(byte_run), "--tasks", ","], "at least one task"),
             ([str(tmp_path / "none"), "--tasks", "x"], "no such directory")]
    for argv, message in cases:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error:") and message in err[0], (argv, err)
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the eval extra were not installed
    assert cli.main([str(byte_run), "--tasks", "x"]) == 2
    assert "pip install 'bdh-scale[eval]'" in capsys.readouterr().err
