"""train.compile: the compiled model trains the same numbers as the eager one (to float rounding:
the compiler fuses and reorders elementwise work) and saves the same parameter names."""
import json

import pytest
from safetensors.torch import load_file

from tests.helpers.tiny_runs import train_in_process


def test_compiled_training_matches_eager_with_carried_state(tmp_path):
    common = ["train.max_steps=4", "train.state=carry", "train.eval_every=2"]
    eager = train_in_process(tmp_path, "eager", *common)
    compiled = train_in_process(tmp_path, "compiled", *common, "train.compile=true")

    def losses(result):
        rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows], [r["val_loss"] for r in rows if "val_loss" in r]

    (train_e, val_e), (train_c, val_c) = losses(eager), losses(compiled)
    assert train_c == pytest.approx(train_e, rel=1e-4) and val_c == pytest.approx(val_e, rel=1e-4)
    weights_e = load_file(eager.run_dir / "final" / "model.safetensors")
    weights_c = load_file(compiled.run_dir / "final" / "model.safetensors")
    assert weights_c.keys() == weights_e.keys()
