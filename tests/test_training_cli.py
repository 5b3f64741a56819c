"""`learnloop train` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from learnloop.cli.main import cli
from training_support import adapter_weights, config_dict, write_jsonl


def test_train_run_with_config_file_and_overrides(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = config_dict(tiny_model_dir, tmp_path, out="from-file", max_steps=50)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    out = tmp_path / "cli-run"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "run",
            "--config",
            str(tmp_path / "cfg.json"),
            "--max-steps",
            "3",
            "--output-dir",
            str(out),
            "--checkpoint-every",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "done: 3 steps" in result.output
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3  # the flag beat the file's 50
    assert adapter_weights(out / "adapter")
    assert not (tmp_path / "from-file").exists()

    status = CliRunner().invoke(cli, ["train", "status", str(out), "--json"])
    assert status.exit_code == 0, status.output
    data = json.loads(status.output)
    assert data["checkpoint_step"] == 3 and data["last_metrics"]["step"] == 3 and data["control"] == "run"


def test_train_run_from_flags_as_json_lines_and_toml(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "say hello", "chosen": "hello!", "rejected": "no."}])
    out = tmp_path / "dpo"
    args = [
        "train",
        "run",
        "--algorithm",
        "dpo",
        "--base-model",
        str(tiny_model_dir),
        "--dataset",
        str(data),
        "--output-dir",
        str(out),
        "--max-steps",
        "2",
        "--device",
        "cpu",
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert [e["kind"] for e in events if e["kind"] == "step"] == ["step", "step"]
    assert "rewards/margins" in events[-1]["metrics"] and events[-1]["kind"] == "done"

    toml = tmp_path / "cfg.toml"
    toml.write_text(
        f'algorithm = "sft"\nbase_model = "{tiny_model_dir}"\ndataset = "{data}"\n'
        f'output_dir = "{tmp_path / "t"}"\nmax_steps = 1\n'
    )
    from learnloop.training.run import load_config

    assert load_config(toml).max_steps == 1


def test_train_run_reports_bad_input(tiny_model_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n{oops\n'
    )
    args = [
        "train",
        "run",
        "--algorithm",
        "sft",
        "--base-model",
        str(tiny_model_dir),
        "--dataset",
        str(bad),
        "--output-dir",
        str(tmp_path / "o"),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0 and "line 2" in result.output and "bad.jsonl" in result.output
    missing = CliRunner().invoke(cli, ["train", "run", "--algorithm", "sft", "--dataset", str(bad)])
    assert missing.exit_code != 0 and "base_model" in missing.output and "output_dir" in missing.output


def test_train_control_and_merge(tiny_model_dir: Path, tmp_path: Path) -> None:
    from learnloop.training.control import read_control

    out = tmp_path / "run"
    for command, state in [("pause", "pause"), ("resume", "run"), ("stop", "stop")]:
        result = CliRunner().invoke(cli, ["train", "control", str(out), command])
        assert result.exit_code == 0, result.output
        assert read_control(out) == state
    bad = CliRunner().invoke(cli, ["train", "control", str(out), "explode"])
    assert bad.exit_code != 0

    # A stop requested before the run starts is obeyed at once (nothing trained, nothing to resume).
    cfg = config_dict(tiny_model_dir, tmp_path, out="run", max_steps=2)
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    stopped = CliRunner().invoke(cli, ["train", "run", "--config", str(tmp_path / "cfg.json")])
    assert stopped.exit_code == 0 and "stopped at step 0" in stopped.output
    assert read_control(out) == "run"  # consumed: running again trains
    done = CliRunner().invoke(cli, ["train", "run", "--config", str(tmp_path / "cfg.json")])
    assert done.exit_code == 0 and "done: 2 steps" in done.output

    merged = tmp_path / "merged"
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "merge",
            "--base-model",
            str(tiny_model_dir),
            "--adapter",
            str(out / "adapter"),
            "--out",
            str(merged),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (merged / "config.json").exists() and (merged / "model.safetensors").exists()


def test_train_run_flags_come_from_train_config() -> None:
    from learnloop.training.config import TrainConfig

    for section in (
        TrainConfig,
        *(
            f.annotation
            for f in TrainConfig.model_fields.values()
            if isinstance(f.annotation, type) and hasattr(f.annotation, "model_fields")
        ),
    ):
        assert all(f.description for f in section.model_fields.values()), section.__name__
    help_text = CliRunner().invoke(cli, ["train", "run", "--help"], terminal_width=200).output
    for flag in (
        "--warmup-steps",
        "--lora-r",
        "--dpo-beta",
        "--grpo-num-generations",
        "--no-length-grouping",
    ):
        assert flag in help_text, flag
    assert TrainConfig.model_fields["warmup_steps"].description in help_text


def test_a_nested_flag_overrides_one_key_of_its_section(tmp_path: Path) -> None:
    from learnloop.cli.training import _overrides
    from learnloop.training.run import load_config

    cfg = tmp_path / "cfg.json"
    cfg.write_text(
        json.dumps(
            {
                "algorithm": "sft",
                "base_model": "m",
                "dataset": "d.jsonl",
                "output_dir": "o",
                "lora": {"r": 4, "alpha": 8},
            }
        )
    )
    config = load_config(cfg, _overrides({"lora__r": 2, "dpo__beta": None, "seed": 7}))
    assert (config.lora.r, config.lora.alpha, config.seed) == (2, 8, 7)
    bad = CliRunner().invoke(cli, ["train", "run", "--config", str(cfg), "--lora-r", "0"])
    assert bad.exit_code != 0 and "lora.r" in bad.output and "Traceback" not in bad.output
