"""Models that travel: a run's final/ (and each checkpoint) is a self-contained model directory whose
weights give identical logits wherever they are loaded from, whose tokenizer.json gives the same ids
in tokenizers and transformers, whose card says what the model is and how it was made, and which
goes to the Hub and back (a Hub on the local disk: tests/helpers/mock_hub.py)."""
import json
import shutil

import pytest
import torch
import yaml
from huggingface_hub import ModelCard
from tokenizers import Tokenizer

from bdh_scale.data.tokenize.tokenizer import ByteTokenizer, load_tokenizer
from bdh_scale.errors import ModelError
from bdh_scale.model import BDH, ModelConfig, build_model, load_pretrained
from bdh_scale.model.gpt.gpt import GPT
from bdh_scale.model.hf.codegen import generate as generate_code
from bdh_scale.model.hrm.hrm import BDHHRM
from bdh_scale.rundir import load_run
from bdh_scale.train.checkpoint.checkpointer import list_checkpoints
from bdh_scale.train.final import push_final
from tests.helpers import mock_hub
from tests.helpers.tiny_runs import metrics, train_in_process

TEXT = "ROMEO: But soft, what light through yonder window breaks?\n  naïve café — 東京 🐉\tend"
# and the same model for transformers: its code (generated from the package) and tokenizer / generation settings
TRANSFORMERS_FILES = {s.filename for s in generate_code()} | {"tokenizer_config.json", "generation_config.json"}
FILES = {"config.json", "model.safetensors", "tokenizer.json", "README.md", "recipe.yaml"} | TRANSFORMERS_FILES


def logits(model, vocab: int) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randint(0, vocab, (2, 24))).logits


@pytest.mark.parametrize("run_fixture", ["byte_run", "bpe_run"])
def test_runs_round_trip_through_final_with_identical_logits(run_fixture, request, tmp_path):
    run_dir = request.getfixturevalue(run_fixture)
    final = run_dir / "final"
    assert {p.name for p in final.iterdir()} == FILES
    model = load_pretrained(final)
    vocab = model.config.vocab_size
    # the last checkpoint holds the same weights and loads as a model directory too
    from_checkpoint = load_pretrained(list_checkpoints(run_dir)[-1])
    assert torch.equal(logits(model, vocab), logits(from_checkpoint, vocab))
    model.save_pretrained(tmp_path / "copy")  # its tokenizer, card and recipe go along
    again = BDH.from_pretrained(tmp_path / "copy")
    assert torch.equal(logits(model, vocab), logits(again, vocab))
    assert again.tokenizer.same_as(load_tokenizer(run_dir / "tokenizer")) and again.recipe == model.recipe
    assert (tmp_path / "copy" / "tokenizer.json").read_bytes() == (final / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("run_fixture", ["byte_run", "bpe_run"])
def test_tokenizer_json_gives_the_same_ids_in_tokenizers_and_transformers(run_fixture, request):
    from transformers import PreTrainedTokenizerFast

    run_dir = request.getfixturevalue(run_fixture)
    ours = load_tokenizer(run_dir / "tokenizer")  # what the run trained with
    path = str(run_dir / "final" / "tokenizer.json")
    ids = ours.encode(TEXT)
    assert Tokenizer.from_file(path).encode(TEXT).ids == ids
    fast = PreTrainedTokenizerFast(tokenizer_file=path)
    assert fast.encode(TEXT) == ids and fast.decode(ids) == TEXT == ours.decode(ids)
    if run_fixture == "byte_run":
        assert isinstance(ours, ByteTokenizer) and ids == list(TEXT.encode("utf-8"))  # ids are the bytes
    else:
        assert len(ids) < len(TEXT.encode("utf-8")) and ours.vocab_size == 320


def test_the_byte_tokenizer_file_of_older_runs_still_loads(byte_run, tmp_path):
    old = tmp_path / "old_run"
    shutil.copytree(byte_run, old)
    for name in ("tokenizer.json", "README.md", "recipe.yaml"):  # final/ as older runs wrote it
        (old / "final" / name).unlink()
    (old / "tokenizer" / "tokenizer.json").write_text(json.dumps({"type": "bdh_scale.bytes", "vocab_size": 256}))
    model, tokenizer = load_run(old)
    assert isinstance(tokenizer, ByteTokenizer) and model.recipe["train"]["seq_len"] == 32  # from config.yaml
    assert torch.equal(logits(model, 256), logits(load_pretrained(byte_run / "final"), 256))


def test_model_card_says_what_the_model_is_and_how_it_was_made(byte_run):
    card = ModelCard.load(byte_run / "final" / "README.md")
    model = load_pretrained(byte_run / "final")
    last = [r for r in metrics(byte_run) if "val_loss" in r][-1]
    assert card.data.library_name == "bdh-scale" and card.data.pipeline_tag == "text-generation"
    for fact in ("BDH (`model.arch: bdh`): 2 layers", f"{model.num_params():,}", "bytes (vocab 256)",
                 "tinyshakespeare", "| steps | 3 |", f"| tokens | {last['tokens']:,} |",
                 f"{last['val_loss']:.4f} nats/token", f"{last['val_bpb']:.4f} bits/byte", "```yaml"):
        assert fact in card.text, fact
    # where the validation figure comes from: the held-out tokens the last row counted, its window and step
    assert last["val_tokens"] > 0 and last["val_T"] == 32
    assert (f"the mean over {last['val_tokens']:,} held-out tokens, read in windows of T = 32 as independent "
            "windows, after step 3") in card.text
    # transformers first (nothing but transformers needed), then bdh-scale
    assert card.text.index("AutoModelForCausalLM.from_pretrained") < card.text.index("load_pretrained(")
    assert "prefix_token_id=10" in card.text and "max_length=32" in card.text  # the byte run's newline and window
    recipe = yaml.safe_load(card.text.split("```yaml\n")[1].split("```")[0])
    assert recipe == model.recipe == yaml.safe_load((byte_run / "config.yaml").read_text())


@pytest.mark.parametrize("cls,arch", [(BDH, "bdh"), (GPT, "gpt"), (BDHHRM, "bdh_hrm")])
def test_push_to_hub_and_load_by_hub_id(cls, arch, tmp_path, monkeypatch):
    hub = mock_hub.install(monkeypatch, tmp_path)
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, n_layer=2, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4,
                                  dropout=0.0))
    model.tokenizer = ByteTokenizer()
    model.push_to_hub(f"me/tiny-{arch}")
    assert hub.calls[0] == ("create_repo", f"me/tiny-{arch}", None)
    assert set(hub.calls[1][2]) == {"config.json", "model.safetensors", "tokenizer.json", "README.md"} | TRANSFORMERS_FILES
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # read back from the Hub cache only
    pulled = cls.from_pretrained(f"me/tiny-{arch}")
    assert type(pulled) is cls and isinstance(pulled.tokenizer, ByteTokenizer)
    assert torch.equal(logits(model, 256), logits(pulled, 256))
    assert f"`model.arch: {arch}`" in pulled.card.text


def test_train_push_to_hub_uploads_final_at_the_end(tmp_path, monkeypatch, capsys):
    hub = mock_hub.install(monkeypatch, tmp_path, token="hf_secret")
    result = train_in_process(tmp_path / "runs", "pushed", "train.max_steps=2", "train.push_to_hub=me/pushed")
    assert f"pushed {result.run_dir / 'final'} to the Hugging Face Hub: me/pushed" in capsys.readouterr().out
    assert hub.calls[0][:2] == ("create_repo", "me/pushed")
    assert set(hub.calls[1][2]) == FILES
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_run("me/pushed")  # what bdh-generate and bdh-eval do with a Hub id
    assert torch.equal(logits(model, 256), logits(load_pretrained(result.run_dir / "final"), 256))
    assert isinstance(tokenizer, ByteTokenizer) and model.recipe["train"]["push_to_hub"] == "me/pushed"
    assert 'load_pretrained("me/pushed")' in model.card.text


def test_without_credentials_the_run_says_so_and_how_to_push_later(byte_run, monkeypatch):
    hub = mock_hub.install(monkeypatch, byte_run.parent, token=None)
    line = push_final(byte_run, "me/x")
    assert "not pushed, no Hugging Face credentials" in line and f"hf upload me/x {byte_run / 'final'}" in line
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "offline" in push_final(byte_run, "me/x") and hub.calls == []


def test_a_model_of_another_class_or_a_missing_one_is_one_clear_error(byte_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="holds a model.arch=bdh model, not gpt"):
        GPT.from_pretrained(byte_run / "final")
    with pytest.raises(ModelError, match="Hub is offline"):
        load_pretrained("someone/not-cached")
    with pytest.raises(ModelError, match="has no config.json"):
        load_pretrained(tmp_path)
    with pytest.raises(ModelError, match="holds no trained model"):
        load_run(tmp_path)
