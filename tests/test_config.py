"""Config: defaults, YAML, flags over YAML, validation messages; the CLI surface. No Ray."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobs.cli import build_parser
from jobs.config import OPTIONS, PrepareConfig, config_from_args
from jobs.resources import plan_tokenize


def parse(argv):
    return config_from_args(build_parser().parse_args(["prepare", *argv]))


def test_defaults_are_the_documented_ones():
    config = parse([])
    assert config.inputs == ("sample",) and config.uses_sample
    assert config.length.max_tokens == 4096 and config.length.min_tokens == 0
    assert config.output.rows_per_shard == 100_000 and not config.output.overwrite
    assert config.tokenizer.name_or_path == "mistral-7b-v0.1"
    assert config.normalize.preference == "chosen" and config.normalize.turns == "all"


def test_yaml_fills_options_and_flags_override_it(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("input: [a/, b.jsonl]\nmax_tokens: 2048\nturns: first\nrows-per-shard: 10\noverwrite: true\n")
    config = parse(["--config", str(path), "--max-tokens", "1024", "--input", "c/", "d/"])
    assert config.inputs == ("c/", "d/")
    assert config.length.max_tokens == 1024  # the flag wins
    assert config.normalize.turns == "first" and config.output.rows_per_shard == 10 and config.output.overwrite
    assert parse(["--config", str(path)]).inputs == ("a/", "b.jsonl")


def test_unknown_yaml_option_and_bad_values_say_how_to_fix(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("max_token: 5\n")
    with pytest.raises(ValueError, match="unknown option 'max_token'.*max_tokens"):
        parse(["--config", str(path)])
    with pytest.raises(ValueError, match="--max-tokens"):
        parse(["--max-tokens", "0"])
    with pytest.raises(ValueError, match="--min-tokens"):
        parse(["--min-tokens", "5000"])
    with pytest.raises(ValueError, match="--rows-per-shard"):
        PrepareConfig.from_options({"rows_per_shard": 0})


def test_every_option_has_a_flag_with_help():
    help_text = build_parser()._subparsers._group_actions[0].choices["prepare"].format_help()
    for option in OPTIONS:
        assert "--" + option.name.replace("_", "-") in help_text
    assert "--config" in help_text


def test_tokenize_pool_leaves_cpus_for_io_tasks():
    # 2-core laptop: one actor per CPU, and read/filter/write tasks (0.25 each) still fit.
    plan = plan_tokenize(2.0, None)
    assert plan.actors == 2 and plan.actors * plan.cpus_per_actor + 0.75 <= 2.0
    assert plan_tokenize(2.0, 4).actors * plan_tokenize(2.0, 4).cpus_per_actor + 0.75 <= 2.0
    big = plan_tokenize(64.0, None)
    assert big.actors == 64 and big.cpus_per_actor <= 1.0
    with pytest.raises(ValueError, match="CPUs"):
        plan_tokenize(0.5, None)


def test_cli_reports_config_errors_with_exit_code_2():
    result = subprocess.run(
        [sys.executable, "-m", "jobs.prepare", "--max-tokens", "-3"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "--max-tokens" in result.stderr
