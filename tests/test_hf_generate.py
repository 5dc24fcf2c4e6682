"""transformers' generate on a bdh-scale model (model/hf/modeling_bdh.py): its cache is the carried
BDH state, so after the prompt every step reads one token; a batch of prompts, padded on the left
to one length, generates and scores row by row exactly as each prompt alone (BDH, with the
previous-token path too, whose last inputs the cache carries; GPT, BDH-HRM);
padding the state would read is refused in one line; the loss of labels is bdh-scale's; a cache
reordered for beam search continues each row as that row's own state does."""
import pytest
import torch

from bdh_scale.utils.tree import tensors
from tests.helpers.tiny_models import tiny_model

OPTIONS = {"bdh": dict(forget_mode="data", diff_attn=True), "bdh_window": dict(attn_window=4),
           "bdh_shift": dict(token_shift="layer", token_shift_kernel=3, forget_mode="scalar"),
           "gpt": dict(arch="gpt", block_size=64),
           "gpt_shift": dict(arch="gpt", block_size=64, token_shift="layer", token_shift_kernel=3), "bdh_hrm": dict(arch="bdh_hrm", token_shift="embed")}
STATEFUL = ["bdh", "bdh_window", "bdh_shift"]
PROMPTS = ["ROMEO:", "KING RICHARD III:"]


@pytest.fixture(scope="module")
def load(tmp_path_factory):
    """name -> (bdh-scale model, the same directory loaded by transformers, its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    made = {}

    def get(name):
        if name not in made:
            model = tiny_model(**OPTIONS[name])
            d = tmp_path_factory.mktemp(name)
            model.save_pretrained(d, tokenizer="bytes")
            made[name] = (model, AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval(),
                          AutoTokenizer.from_pretrained(d, trust_remote_code=True))
        return made[name]

    return get


def cache_of(out):
    return out.get("cache") or out.get("past_key_values")


@pytest.mark.parametrize("name", STATEFUL)
def test_after_the_prompt_every_step_reads_one_token_into_the_state(load, name):
    model, hf, tok = load(name)
    seen = []
    hook = hf.model.register_forward_pre_hook(lambda m, args, kwargs: seen.append(tuple(args[0].shape)),
                                              with_kwargs=True)
    prompt = tok(PROMPTS[:1], return_tensors="pt")
    try:
        out = hf.generate(**prompt, max_new_tokens=12, do_sample=False, return_dict_in_generate=True)
    finally:
        hook.remove()
    n = prompt["input_ids"].size(1)
    assert seen == [(1, n)] + [(1, 1)] * 11  # the prompt once, then only the newest token
    assert out.sequences.tolist() == model.generate(prompt["input_ids"], 12, temperature=0).tolist()
    # the cache is the state bdh-scale carries after the text read (all but the last token)
    cache = cache_of(out)
    assert type(cache.state).__name__ == "BDHState" and cache.get_seq_length() == n + 11
    with torch.no_grad():
        want = model(out.sequences[:, :-1], return_state=True).state.state_dict()
    got = cache.state.state_dict()
    assert got["pos"] == want["pos"]
    for a, b in zip(tensors(got), tensors(want), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_a_left_padded_batch_generates_and_scores_each_row_as_alone(load, name):
    model, hf, tok = load(name)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"][0] == 0).any()  # the short prompt is padded, on the left
    together = hf.generate(**batch, max_new_tokens=10, do_sample=False)
    with torch.no_grad():
        logits = hf(**batch, use_cache=False).logits
    for row, text in enumerate(PROMPTS):
        ids = torch.tensor([tok.encode(text)])
        alone = model.generate(ids, 10, temperature=0)
        assert together[row, -alone.size(1):].tolist() == alone[0].tolist()
        with torch.no_grad():
            torch.testing.assert_close(logits[row, -ids.size(1):], model(ids).logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", STATEFUL)
def test_sampling_with_a_seed_draws_bdh_scales_tokens(load, name):
    model, hf, tok = load(name)
    ids = torch.tensor([tok.encode(PROMPTS[0])] * 2)  # two prompts of one length: one batch
    torch.manual_seed(3)
    theirs = hf.generate(ids, max_new_tokens=16, do_sample=True, temperature=0.7, top_k=20)
    ours = model.generate(ids, 16, temperature=0.7, top_k=20, generator=torch.Generator().manual_seed(3))
    assert theirs.tolist() == ours.tolist()


def test_padding_the_state_would_read_and_ids_it_cannot_read_are_one_clear_error(load):
    _, hf, tok = load("bdh")
    tok.padding_side = "right"
    right = tok(PROMPTS, return_tensors="pt", padding=True)
    tok.padding_side = "left"
    gap = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 0, 1]])}
    cases = [(lambda: hf.generate(**right, max_new_tokens=2), "pad on the left"),
             (lambda: hf(**gap), "gap inside a row"),
             (lambda: hf(right["input_ids"]), "outside the model's 256 tokens"),
             (lambda: hf(inputs_embeds=torch.zeros(1, 2, 16)), "pass input_ids")]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            call()
        assert "\n" not in str(e.value)
    with torch.no_grad():  # right padding without a state: the real tokens' logits are unaffected
        logits = hf(**right, use_cache=False).logits
        ids = torch.tensor([tok.encode(PROMPTS[0])])
        torch.testing.assert_close(logits[0, :ids.size(1)], hf.model(ids).logits[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(OPTIONS))
def test_the_loss_of_labels_is_bdh_scales_next_token_loss(load, name):
    model, hf, _ = load(name)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = model(ids[:, :-1], ids[:, 1:]).loss
        got = hf(ids, labels=ids, use_cache=False).loss
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("name", STATEFUL)
def test_a_reordered_cache_continues_every_row_from_its_own_state(load, name):
    """Beam search reorders the cache: every tensor of the state (whatever its fields) moves with
    its row, so the next step gives each row the logits of the row it now is."""
    _, hf, _ = load(name)
    gen = torch.Generator().manual_seed(1)
    ids, nxt = torch.randint(0, 256, (3, 9), generator=gen), torch.randint(0, 256, (3, 1), generator=gen)
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        cache = cache_of(hf(ids, use_cache=True))
        before = [t.clone() for t in tensors(cache.state.state_dict())]
        cache.reorder_cache(order)
        after = list(tensors(cache.state.state_dict()))
        assert len(after) == len(before) and all(torch.equal(a, b[order]) for a, b in zip(after, before))
        stepped = hf(nxt[order], cache=cache, past_key_values=cache, use_cache=True).logits
        fresh = hf(torch.cat([ids[order], nxt[order]], dim=1), use_cache=False).logits[:, -1:]
    torch.testing.assert_close(stepped, fresh, rtol=1e-5, atol=1e-5)
