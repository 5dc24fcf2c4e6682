"""bdh-generate: text printed as it is drawn, from a run dir, a final/ dir or a Hub id, the prompt from
--prompt, a file or standard input, several seeded samples, the training window as default
context for a run trained with state reset, and one clear error line for every bad input."""
import io
import sys

import pytest
import torch

from bdh_scale import generate
from bdh_scale.data.tokenize.tokenizer import load_tokenizer
from bdh_scale.model import BDH, ModelConfig, build_model


def run_generate(capsys, *argv) -> tuple[int, str, str]:
    code = generate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def test_generate_prints_prompt_and_continuation(byte_run, capsys):
    code, text, _ = run_generate(capsys, byte_run, "--prompt", "ROMEO:", "--tokens", "40", "--temperature", "0")
    assert code == 0 and text.startswith("ROMEO:") and len(text.encode()) >= len("ROMEO:") + 40


def test_text_is_written_while_tokens_are_drawn(byte_run, monkeypatch):
    events = []
    real = BDH.stream

    def counting(self, *args, **kwargs):
        for token in real(self, *args, **kwargs):
            events.append("token")
            yield token

    class Out(io.StringIO):
        def write(self, s):
            events.append("write")
            return super().write(s)

    monkeypatch.setattr(BDH, "stream", counting)
    monkeypatch.setattr(sys, "stdout", Out())
    assert generate.main([str(byte_run), "--prompt", "ab", "--tokens", "20", "--temperature", "0"]) == 0
    # the first piece of text goes out long before the last token is drawn
    first_write_after_prompt = events.index("write", events.index("token"))
    assert events.count("token") == 20 and first_write_after_prompt < len(events) // 2


def test_bpe_run_prints_readable_text_from_the_run_and_from_final(bpe_run, capsys):
    outs = []
    for source in (bpe_run, bpe_run / "final"):
        code, text, _ = run_generate(capsys, source, "--prompt", "ROMEO:", "--tokens", "30", "--temperature", "0")
        assert code == 0
        outs.append(text)
    assert outs[0] == outs[1]
    text = outs[0]
    # BPE ids read as bytes (the old fallback) would be replacement characters and control bytes
    assert text.startswith("ROMEO:") and "\ufffd" not in text
    assert all(c.isprintable() or c.isspace() for c in text)
    tokenizer = load_tokenizer(bpe_run / "final")
    assert len(tokenizer.encode(text[len("ROMEO:"):])) >= 20  # about 30 tokens of continuation


def test_streamed_text_is_the_decoded_sample(bpe_run, capsys):
    from bdh_scale.rundir import load_run

    code, text, _ = run_generate(capsys, bpe_run, "--prompt", "To be", "--tokens", "25", "--seed", "4",
                                 "--temperature", "1.0")
    model, tokenizer = load_run(bpe_run)
    ids = tokenizer.encode("To be")
    gen = torch.Generator().manual_seed(4)
    out = model.generate(torch.tensor([ids]), 25, temperature=1.0, generator=gen,
                         max_context=generate.trained_window(model))
    assert code == 0 and text == "To be" + tokenizer.decode(out[0, len(ids):].tolist()) + "\n"


def test_prompt_from_a_file_or_stdin_equals_prompt_argument(byte_run, tmp_path, monkeypatch, capsys):
    common = ["--tokens", "15", "--temperature", "0"]
    _, direct, _ = run_generate(capsys, byte_run, "--prompt", "KING:\n", *common)
    (tmp_path / "p.txt").write_text("KING:\n")
    _, from_file, _ = run_generate(capsys, byte_run, "--prompt-file", tmp_path / "p.txt", *common)
    monkeypatch.setattr(sys, "stdin", io.StringIO("KING:\n"))
    _, from_stdin, _ = run_generate(capsys, byte_run, "--prompt-file", "-", *common)
    assert direct == from_file == from_stdin and direct.startswith("KING:\n")


def test_sample_i_of_several_is_the_sample_of_seed_plus_i(byte_run, capsys):
    _, both, _ = run_generate(capsys, byte_run, "--prompt", "A", "--tokens", "30", "--num-samples", "2",
                              "--seed", "5", "--temperature", "1")
    _, second, _ = run_generate(capsys, byte_run, "--prompt", "A", "--tokens", "30", "--seed", "6",
                                "--temperature", "1")
    first_text, second_text = both.split("--- sample 2/2 (seed 6) ---\n")
    assert first_text.startswith("--- sample 1/2 (seed 5) ---\n")
    assert second_text == second and first_text.split("---\n", 1)[1] != second


def test_a_reset_run_samples_within_its_training_window(byte_run, monkeypatch, capsys):
    seen = []
    real = BDH.stream

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("max_context"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BDH, "stream", spy)
    for extra in ([], ["--max-context", "0"], ["--max-context", "8"]):
        assert generate.main([str(byte_run / "final"), "--tokens", "5", *extra]) == 0
    assert seen == [32, None, 8]  # tiny_runs: train.seq_len=32, state reset (final/recipe.yaml)


def test_a_model_without_tokenizer_is_refused_naming_what_to_pass(tmp_path, capsys):
    torch.manual_seed(0)
    build_model(ModelConfig(n_layer=1, n_embd=16, n_head=2, mlp_internal_dim_multiplier=4)).save_pretrained(tmp_path / "m")
    code, out, err = run_generate(capsys, tmp_path / "m", "--tokens", "5")
    assert code == 2 and out == "" and "--tokenizer bytes" in one_error_line(err)
    code, out, _ = run_generate(capsys, tmp_path / "m", "--tokens", "5", "--tokenizer", "bytes")
    assert code == 0 and out.startswith("\n") and len(out) > 2


@pytest.mark.parametrize("args,message", [(["--max-context", "1"], "--max-context"), (["--tokens", "-1"], "--tokens"),
                                          (["--num-samples", "0"], "--num-samples"),
                                          (["--prompt", ""], "prompt is empty"),
                                          (["--prompt-file", "/nonexistent/p.txt"], "--prompt-file"),
                                          (["--temperature", "nan"], "--temperature nan"),
                                          (["--device", "cuda:0" if not torch.cuda.is_available() else "nope"],
                                           "--device")])
def test_bad_arguments_are_one_error_line(byte_run, capsys, args, message):
    code, out, err = run_generate(capsys, byte_run, *args)
    assert code == 2 and out == "" and message in one_error_line(err)


def test_bad_models_are_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    cases = {tmp_path / "run": "holds no trained model", tmp_path / "missing": "no such directory",
             "someone/bdh-model": "offline"}
    for source, message in cases.items():
        code, out, err = run_generate(capsys, source)
        assert code == 2 and out == "" and message in one_error_line(err)


def test_damaged_weights_and_weights_of_another_config_are_one_error_line(byte_run, tmp_path, capsys):
    import json
    import shutil

    damaged, mismatched = tmp_path / "damaged", tmp_path / "mismatched"
    for d in (damaged, mismatched):
        shutil.copytree(byte_run / "final", d)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:100])
    config = json.loads((mismatched / "config.json").read_text())
    (mismatched / "config.json").write_text(json.dumps(dict(config, n_layer=config["n_layer"] + 1)))
    for source, message in ((damaged, "the weights cannot be read"), (mismatched, "do not match config.json")):
        code, out, err = run_generate(capsys, source)
        assert code == 2 and out == "" and message in one_error_line(err)


def test_a_hub_id_without_network_is_one_error_line(tmp_path, monkeypatch, capsys):
    """Without HF_HUB_OFFLINE: one request decides (no retries), then the cache is read."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    from bdh_scale.model import pretrained

    def no_network(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(pretrained.HfApi, "model_info", no_network)
    pretrained.hub_reachable.cache_clear()
    code, out, err = run_generate(capsys, "someone/bdh-model")
    assert code == 2 and out == "" and "could not be reached" in one_error_line(err)
