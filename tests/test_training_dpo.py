"""DPO objective: the reference is the adapter-free model, and training separates chosen from rejected."""

from __future__ import annotations

import json
import math
from pathlib import Path

from training_support import make_config, objective_for


def test_dpo_lowers_loss_and_raises_the_margin(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.run import train

    result = train(make_config(tiny_model_dir, tmp_path, algorithm="dpo", max_steps=12))
    rows = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert len(rows) == 12
    # A fresh LoRA (B = 0) is the reference itself: the first loss is exactly log 2, the margin 0.
    assert math.isclose(rows[0]["loss"], math.log(2), abs_tol=1e-4)
    assert abs(rows[0]["rewards/margins"]) < 1e-4
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.1
    assert rows[-1]["rewards/margins"] > 0.2
    assert rows[-1]["rewards/chosen"] > rows[-1]["rewards/rejected"]
    assert rows[-1]["rewards/accuracies"] == 1.0


def test_dpo_string_format_and_missing_field(tiny_model_dir: Path) -> None:
    import pytest

    from learnloop.errors import ValidationFailed

    obj, tok = objective_for(tiny_model_dir, "dpo")
    ex = obj.prepare({"prompt": "say hello", "chosen": "hello!", "rejected": "no."}, 1)
    ids, labels = ex.data["chosen"]
    assert tok.decode([t for t, lab in zip(ids, labels) if lab != -100]) == "hello!<|im_end|>\n"
    assert tok.decode(ids).startswith("<|im_start|>user\nsay hello<|im_end|>")
    batch = obj.collate([ex])
    assert batch["input_ids"].shape[0] == 2  # chosen row, then rejected row
    with pytest.raises(ValidationFailed, match=r"line 7.*'rejected'"):
        obj.prepare({"prompt": "x", "chosen": "y"}, 7)
