"""Run by tests/test_hf_isolated.py in the environment of tests/helpers/remote_env.py (torch,
transformers, safetensors, tokenizers, nothing of this project): load model directories the way a
transformers user does and report what they compute, as JSON on the last line of stdout.

argv[1]: {"cases": [{"dir", "ids", "prompt_len", "new", "logits_out", and for a directory with a
tokenizer "text", "prompt_text", "seed"}]}. Only the standard library, torch, transformers and
safetensors are imported here.
"""
import importlib.util
import json
import sys

for name in ("bdh_scale", "einops"):  # the guarantee the test rests on
    if importlib.util.find_spec(name) is not None:
        raise SystemExit(f"{name} is importable here: the environment is not isolated")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, pipeline  # noqa: E402

torch.set_num_threads(1)
args = json.loads(sys.argv[1])
report = {"transformers": transformers.__version__, "cases": []}
for case in args["cases"]:
    d = case["dir"]
    config = AutoConfig.from_pretrained(d, trust_remote_code=True)
    model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
    ids = torch.tensor(case["ids"])
    with torch.no_grad():
        save_file({"logits": model(ids).logits.contiguous()}, case["logits_out"])
    greedy = model.generate(ids[:, :case["prompt_len"]], max_new_tokens=case["new"], do_sample=False)
    got = {"dir": d, "config": type(config).__name__, "model": type(model).__name__, "greedy": greedy.tolist()}
    if "text" in case:
        tok = AutoTokenizer.from_pretrained(d, trust_remote_code=True)
        got["fast"] = isinstance(tok, PreTrainedTokenizerFast)
        got["ids"] = tok(case["text"])["input_ids"]
        got["special"] = {"pad": tok.pad_token, "pad_id": tok.pad_token_id, "eos": tok.eos_token, "bos": tok.bos_token}
        prompt = tok(case["prompt_text"], return_tensors="pt")
        got["greedy_text"] = tok.decode(model.generate(**prompt, max_new_tokens=case["new"], do_sample=False)[0])
        torch.manual_seed(case["seed"])
        sampled = model.generate(**prompt, max_new_tokens=case["new"], do_sample=True, temperature=0.8, top_k=40)
        got["sampled_text"] = tok.decode(sampled[0])
        generator = pipeline("text-generation", model=d, trust_remote_code=True)
        got["pipeline"] = generator(case["prompt_text"], max_new_tokens=case["new"], do_sample=False)[0]["generated_text"]
    report["cases"].append(got)
print(json.dumps(report))
