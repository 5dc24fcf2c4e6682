"""A just-trained run's final/, its newest checkpoint and the Hub copy of a final/ load with
transformers alone (AutoConfig, AutoModelForCausalLM, AutoTokenizer, pipeline; trust_remote_code),
in an environment that has torch, transformers, safetensors and tokenizers and provably neither
bdh-scale nor einops (tests/helpers/remote_env.py), and there compute what bdh-scale computes: the
same logits, the same greedy tokens as the model's own generation, the same text as bdh-generate
for the same seed (greedy and sampled), the same token ids. Every architecture and BDH option is
covered by a saved untrained model of its own: the previous-token path (embed and layer, its weights
made non-zero, its last inputs carried in the state generate steps), and a model trained with the
fla backend, which the export runs in plain torch without fla or CUDA."""
import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bdh_scale import generate as bdh_generate
from bdh_scale.rundir import load_run
from bdh_scale.train.checkpoint.checkpointer import list_checkpoints
from tests.helpers import remote_env
from tests.helpers.tiny_models import tiny_model

SCRIPT = Path(__file__).parent / "helpers" / "hf_remote.py"
TEXT = "ROMEO: But soft, what light through yonder window breaks?\n  naïve café — 東京 🐉\tend"
PROMPT, NEW, SEED = "ROMEO:", 24, 5
VARIANTS = {
    "bdh_data_gate_diff": dict(forget_mode="data", forget_timescales=[4.0, 64.0], diff_attn=True),
    "bdh_window_scalar_shared": dict(attn_window=4, forget_mode="scalar", per_layer_params=False, score_scale="none"),
    "bdh_chunked": dict(attn_backend="chunked", chunk_size=4),
    "bdh_shift_layer": dict(token_shift="layer", token_shift_kernel=3, forget_mode="scalar"),
    # fla's kernels need CUDA and flash-linear-attention: the export runs the same function in plain torch
    "bdh_shift_embed_fla": dict(token_shift="embed", token_shift_kernel=2, attn_backend="fla", diff_attn=True),
    "gpt": dict(arch="gpt", block_size=64),
    "bdh_hrm_act_shift": dict(arch="bdh_hrm", hrm_h_layers=1, hrm_l_layers=1, hrm_act=True, token_shift="layer"),
}


def hub_copy(directory: Path, cache: Path, repo_id: str) -> str:
    """`directory` as huggingface_hub caches a download of `repo_id`; read offline."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    shutil.copytree(directory, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo_id


def bdh_generate_text(run_dir, *flags) -> str:
    """What bdh-generate prints for PROMPT, without the final newline (its state unlimited)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert bdh_generate.main([str(run_dir), "--prompt", PROMPT, "--tokens", str(NEW), "--max-context", "0",
                                  *flags]) == 0
    return out.getvalue().removesuffix("\n")


@pytest.fixture(scope="module")
def remote(byte_run, bpe_run, tmp_path_factory):
    """(report of the isolated environment, {case name: (bdh-scale model, case)})."""
    root = tmp_path_factory.mktemp("remote")
    dirs = {"byte final": byte_run / "final", "byte checkpoint": list_checkpoints(byte_run)[-1],
            "bpe final": bpe_run / "final"}
    for name, options in VARIANTS.items():
        tiny_model(**options).save_pretrained(root / name, tokenizer="bytes")
        dirs[name] = root / name
    models, cases = {}, []
    for name, d in dirs.items():
        model, tokenizer = load_run(d)
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, model.model_config().vocab_size, (2, 40), generator=gen)
        case = {"dir": str(d), "ids": ids.tolist(), "prompt_len": 9, "new": NEW, "logits_out": str(root / f"{len(cases)}.st")}
        if name.endswith("final"):
            case.update(text=TEXT, prompt_text=PROMPT, seed=SEED)
        models[name] = (model.eval(), tokenizer, case)
        cases.append(case)
    hub = hub_copy(bpe_run / "final", root / "hf" / "hub", "someone/bdh-bpe")  # HF_HOME of remote_env.run
    models["bpe hub copy"] = (models["bpe final"][0], models["bpe final"][1], {**models["bpe final"][2], "dir": hub,
                                                                                 "logits_out": str(root / "hub.st")})
    cases.append(models["bpe hub copy"][2])
    # another transformers version: the python of an environment made with pip for it (remote_env.OTHER)
    python = Path(os.environ[remote_env.OTHER]) if os.environ.get(remote_env.OTHER) else remote_env.make(root / "env")
    report = remote_env.run(python, SCRIPT, {"cases": cases}, cwd=root)
    return report, models


def test_every_directory_loads_as_a_transformers_model_with_bdh_scales_logits(remote):
    report, models = remote
    got = {c["dir"]: c for c in report["cases"]}
    assert len(got) == len(models)
    for name, (model, _, case) in models.items():
        r = got[case["dir"]]
        assert (r["config"], r["model"]) == ("BDHScaleConfig", "BDHScaleForCausalLM"), name
        ids = torch.tensor(case["ids"])
        with torch.no_grad():
            want = model(ids).logits
        torch.testing.assert_close(load_file(case["logits_out"])["logits"], want, rtol=1e-5, atol=1e-5, msg=name)


def test_generate_from_the_carried_state_gives_the_models_own_greedy_tokens(remote):
    report, models = remote
    got = {c["dir"]: c for c in report["cases"]}
    for name, (model, _, case) in models.items():
        prompt = torch.tensor(case["ids"])[:, :case["prompt_len"]]
        want = model.generate(prompt, NEW, temperature=0)  # GPT / BDH-HRM: reruns on their context
        assert got[case["dir"]]["greedy"] == want.tolist(), name


@pytest.mark.parametrize("name,run", [("byte final", "byte_run"), ("bpe final", "bpe_run"),
                                      ("bpe hub copy", "bpe_run")])
def test_text_and_ids_are_bdh_generates_and_bdh_scales(remote, name, run, request):
    report, models = remote
    model, tokenizer, case = models[name]
    r = {c["dir"]: c for c in report["cases"]}[case["dir"]]
    run_dir = request.getfixturevalue(run)
    assert r["fast"] and r["ids"] == tokenizer.encode(TEXT)
    assert r["special"] == {"pad": "<|pad|>", "pad_id": tokenizer.vocab_size, "eos": None, "bos": None}
    greedy = bdh_generate_text(run_dir, "--temperature", "0")
    assert r["greedy_text"] == greedy and r["pipeline"] == greedy
    # transformers samples with torch's global generator, bdh-generate with its own seeded one: same draws
    assert r["sampled_text"] == bdh_generate_text(run_dir, "--temperature", "0.8", "--top-k", "40", "--seed", str(SEED))
