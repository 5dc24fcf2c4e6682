"""bdh-analyze on a tiny saved run: each subcommand writes sane JSON and a PNG, and the hooks it
uses read exactly what the model computes."""
import json
from pathlib import Path

import pytest
import torch
import yaml

from bdh_scale.analysis import cli
from bdh_scale.config import load_config
from bdh_scale.data.tokenize.tokenizer import ByteTokenizer
from bdh_scale.model import ModelConfig, build_model, load_pretrained
from bdh_scale.model.bdh.bdh import layer_norm
from bdh_scale.model.bdh.probes import capture_codes

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog, {i * 7 % 13} times.\n" for i in range(60))
SILENT = (0, 1)  # (layer, head) whose decoder rows are zero: removing it changes nothing


def tiny(**kw):
    base = dict(n_layer=2, n_embd=32, n_head=2, mlp_internal_dim_multiplier=8, dropout=0.0, attn_backend="parallel")
    base.update(kw)
    torch.manual_seed(0)
    return build_model(ModelConfig(**base))


def make_run(root: Path, model, *overrides) -> Path:
    """A run directory as the trainer writes it: final/, tokenizer/, config.yaml (with `overrides`)."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    corpus.write_text(TEXT)
    run = root / "run"
    model.save_pretrained(run / "final")
    ByteTokenizer().save(run / "tokenizer")
    cfg = load_config(None, [f"data.source={corpus}", "data.val_fraction=0.5", *overrides])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    model = tiny()
    layer, head = SILENT
    N = model.config.n_neurons
    with torch.no_grad():
        model.layers[layer].decoder[head * N:(head + 1) * N] = 0
    return make_run(tmp_path_factory.mktemp("analysis"), model)


def analyze(*argv) -> dict:
    assert cli.main([*map(str, argv)]) == 0
    run, command = Path(argv[1]), argv[0]
    out = run / "analysis"
    assert (out / f"{command}.png").stat().st_size > 1000
    return json.loads((out / f"{command}.json").read_text())


@pytest.mark.parametrize("command", ["sparsity", "state", "selectivity", "heads"])
def test_missing_run_dir_is_one_error_line_and_exit_2(command, tmp_path, capsys):
    assert cli.main([command, str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]


@pytest.mark.parametrize("command", ["sparsity", "state", "selectivity", "heads"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0 and "--max-tokens" in capsys.readouterr().out


def test_sparsity_fractions_are_fractions_and_match_a_direct_count(run_dir):
    report = analyze("sparsity", run_dir, "--max-tokens", 600, "--seq-len", 64)
    assert report["tokens"] == 9 * 64
    assert [e["layer"] for e in report["layers"]] == ["layers.0", "layers.1"]
    for e in report["layers"]:
        for x, y, xy in zip(e["x_active"], e["y_active"], e["xy_active"]):
            assert 0 < xy <= min(x, y) <= max(x, y) <= 1
    # x_sparse of the first layer only needs the embedding: count it directly.
    model = load_pretrained(run_dir / "final").eval()
    idx = torch.tensor(list(TEXT[int(len(TEXT) * 0.5):].encode()[: 9 * 64])).view(9, 64)
    x_sparse = torch.relu(torch.einsum("btd,hdn->bhtn", layer_norm(model.embed(idx)), model.layers[0].encoder))
    direct = (x_sparse > 0).float().mean(dim=(0, 2, 3))
    torch.testing.assert_close(torch.tensor(report["layers"][0]["x_active"]), direct, rtol=0, atol=1e-6)


def test_captured_codes_multiply_to_what_the_layer_decodes_also_with_carried_state():
    model = tiny(attn_backend="chunked", chunk_size=8, forget_mode="scalar").eval()
    seen = []
    with torch.no_grad(), capture_codes(model, lambda name, x, y: seen.append((name, x.shape, y.shape))):
        out = model(torch.randint(0, 256, (2, 20)), state=model.init_state(2))
        model(torch.randint(0, 256, (2, 5)), state=out.state)  # continues the stream from rho
    assert [s[0] for s in seen] == ["layers.0", "layers.1"] * 2
    assert seen[-1][1] == seen[-1][2] == (2, 2, 5, model.config.n_neurons)


def test_captured_codes_are_the_ones_the_layer_decodes():
    model = tiny(forget_mode="data", diff_attn=True).eval()
    idx = torch.randint(0, 256, (2, 12))
    codes, outputs = {}, []
    hook = model.layers[0].register_forward_hook(lambda m, args, out: outputs.append(out[0]))
    with torch.no_grad(), capture_codes(model, lambda name, x, y: codes.setdefault(name, (x, y))):
        model(idx)
    hook.remove()
    x_sparse, y_sparse = codes["layers.0"]
    decoder = model.layers[0].decoder.view(*model.layers[0].encoder.shape[::2], -1)  # (H, N, D)
    y = torch.einsum("bhtn,hnd->btd", x_sparse * y_sparse, decoder)
    x = layer_norm(model.embed(idx))
    torch.testing.assert_close(layer_norm(x + layer_norm(y)), outputs[0], rtol=1e-5, atol=1e-5)


def test_state_follows_rho_of_the_whole_stream(run_dir):
    report = analyze("state", run_dir, "--max-tokens", 300, "--chunk", 64)
    assert report["tokens"] == [64, 128, 192, 256, 299]
    assert len(report["loss"]) == 5 and all(0 < v < 10 for v in report["loss"])
    model = load_pretrained(run_dir / "final").eval()
    idx = torch.tensor(list(TEXT[int(len(TEXT) * 0.5):].encode()[:299]))[None]
    with torch.no_grad():
        rho = model(idx, return_state=True).state.layers[1].rho[0]
    final = [head[-1] for head in report["layers"][1]["rho_norm"]]
    torch.testing.assert_close(torch.tensor(final), rho.flatten(1).norm(dim=1), rtol=1e-4, atol=1e-5)


def test_context_reads_the_held_out_rows_carried_and_as_windows(run_dir):
    report = analyze("context", run_dir, "--seq-len", 32, "--rows", 2, "--windows", 8)
    assert report["T"] == 32 and report["rows"] == 2 and report["row_tokens"] == 256
    edges = [(b["context_from"], b["context_to"]) for b in report["buckets"]]
    assert edges == [(0, 32), (32, 64), (64, 128), (128, 256)]
    first, *later = report["buckets"]
    assert first["carried"] == pytest.approx(first["window"], rel=1e-6)  # both from an empty state
    assert all(b["carried"] != pytest.approx(b["window"], rel=1e-4) for b in later)
    assert sum(b["tokens"] for b in report["buckets"]) == 2 * 256
    assert [s["windows"] for s in report["spans"]] == [2, 4]  # spans shorter than the 8 windows read


def test_context_asked_for_more_windows_than_held_out_reads_what_there_is_and_says_so(run_dir, capsys):
    capsys.readouterr()
    report = analyze("context", run_dir, "--seq-len", 32, "--rows", 2, "--windows", 100000)
    held = report["windows_read"]
    assert held < 100000 and report["windows_asked"] == 100000 and report["row_tokens"] == 32 * held
    assert all(s["windows"] < held for s in report["spans"])  # no span as long as the row: no wasted reading
    assert f"holds {held} windows" in capsys.readouterr().err


def test_context_reads_a_gpt_in_its_window_and_marks_longer_context_out_of_reach(tmp_path, capsys):
    gpt = make_run(tmp_path, tiny(arch="gpt", block_size=32), "model.arch=gpt", "model.block_size=32",
                   "train.seq_len=32")
    capsys.readouterr()
    report = analyze("context", gpt, "--rows", 2, "--windows", 8)
    assert "out of reach: context buckets 32-64, 64-128, 128-256" in capsys.readouterr().err
    assert report["T"] == 32 and report["reach_tokens"] == 32 and report["readings"] == ["window"]
    assert "val_loss_carried" not in report and "spans" not in report  # no carried column faked
    first, *later = report["buckets"]
    assert first["context_to"] == 32 and not first["out_of_reach"] and 0 < first["window"] < 10
    assert [(b["out_of_reach"], b["window"]) for b in later] == [(True, None)] * 3
    assert all("carried" not in b for b in report["buckets"])
    # the first bucket is the first window of every row: what reading that window alone gives
    alone = analyze("context", gpt, "--rows", 2, "--windows", 1)
    assert alone["val_loss_window"] == pytest.approx(first["window"], rel=1e-6)
    capsys.readouterr()
    assert cli.main(["context", str(gpt), "--seq-len", "64"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --seq-len 64: model.arch=gpt has no state and reads at most 32 tokens at once (the window "
                   "it trained on, within its positions); use --seq-len 32 or less"]


def test_selectivity_ranks_neurons_that_separate_two_texts(run_dir, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("aaaa bbbb aaaa bbbb\n" * 40)
    b.write_text("ZZZZ YYYY ZZZZ YYYY\n" * 40)
    report = analyze("selectivity", run_dir, "--label", f"low={a}", "--label", f"up={b}", "--max-tokens", 512,
                     "--seq-len", 64, "--top-k", 3)
    assert set(report["labels"]) == {"low", "up"} and report["labels"]["low"]["tokens"] == 448
    for layer in report["layers"]:
        for head in layer["heads"]:
            for label, other in (("low", "up"), ("up", "low")):
                top = head["top"][label]
                assert 0 < len(top) <= 3 and 0 <= head["selective_fraction"][label] <= 1
                assert all(-1 <= n["index"] <= 1 and n["mean"][label] > n["mean"][other] for n in top)
                assert [n["index"] for n in top] == sorted((n["index"] for n in top), reverse=True)
    assert report["summary"]["low"]["selective_fraction"] > 0  # such different texts do separate neurons
    assert sum(report["summary"]["low"]["histogram"]) == report["summary"]["low"]["eligible"]


def test_selectivity_defaults_to_english_and_french_europarl(run_dir):
    report = analyze("selectivity", run_dir, "--max-tokens", 256, "--seq-len", 64)
    assert list(report["labels"]) == ["en", "fr"] and report["signal"] == "y"


def test_heads_ablating_a_head_with_zero_decoder_rows_costs_nothing(run_dir):
    report = analyze("heads", run_dir, "--max-tokens", 600, "--seq-len", 64)
    layer, head = SILENT
    e = report["layers"][layer]
    assert abs(e["delta"][head]) < 1e-6 and e["prunable"][head]
    assert f"layers.{layer}/h{head}" in report["prunable"]
    assert 0 < report["base_loss"] < 10 and len(report["layers"]) == 2
    others = [d for i, x in enumerate(report["layers"]) for h, d in enumerate(x["delta"]) if (i, h) != SILENT]
    assert all(abs(d) > 1e-6 for d in others)  # every other head does change the output


def test_heads_silenced_together_start_with_the_free_one_and_match_a_direct_reading(run_dir):
    """k = 1 is the head whose removal alone costs least; each k is measured with all k heads
    silenced at once, which equals silencing them by hand."""
    from bdh_scale.analysis.heads import silenced_loss
    from bdh_scale.analysis.inputs import val_tokens
    from bdh_scale.rundir import load_run

    report = analyze("heads", run_dir, "--max-tokens", 600, "--seq-len", 64, "--together", 3)
    curve = report["together"]
    single = {f"{e['layer']}/h{h}": e["relative"][h] for e in report["layers"] for h in range(e["n_head"])}
    cheapest = min(single, key=single.get)
    assert [c["k"] for c in curve] == [1, 2, 3] and curve[0]["heads"] == [cheapest]
    assert curve[0]["relative"] == pytest.approx(single[cheapest], abs=1e-9)
    assert all(a["heads"] == b["heads"][:-1] for a, b in zip(curve, curve[1:]))
    assert f"layers.{SILENT[0]}/h{SILENT[1]}" in curve[2]["heads"]  # the free head is among the three cheapest
    model, tok = load_run(run_dir)
    tokens = val_tokens(run_dir, tok, 600, None)
    third = [tuple(h.split("/h")) for h in curve[2]["heads"]]
    by_hand = silenced_loss(model, [(n, int(h)) for n, h in third], tokens, 64, 8)
    assert by_hand == pytest.approx(curve[2]["loss"], rel=1e-6)


def test_analyses_read_the_bdh_hrm_hybrid_and_refuse_what_does_not_apply(tmp_path, capsys):
    run = make_run(tmp_path, tiny(arch="bdh_hrm", hrm_h_layers=1, hrm_l_layers=1))
    report = analyze("sparsity", run, "--max-tokens", 200, "--seq-len", 64)
    assert {e["layer"] for e in report["layers"]} == {"L.layers.0", "H.layers.0"}
    assert cli.main(["state", str(run)]) == 2 and "stateless" in capsys.readouterr().err
    report = analyze("context", run, "--seq-len", 32, "--rows", 2, "--windows", 4)  # its window reading only
    assert report["readings"] == ["window"] and "val_loss_carried" not in report
    gpt = make_run(tmp_path / "gpt", tiny(arch="gpt"))
    assert cli.main(["heads", str(gpt)]) == 2 and "no BDH layers" in capsys.readouterr().err
