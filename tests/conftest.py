"""Shared fixtures: one Ray for the whole session (ray.init costs ~2.5 s), real data location."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Tests never touch the network: make any accidental hub access fail loudly, in workers too
# (huggingface_hub reads this when first imported; Ray workers inherit the driver's environment).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# A hang (e.g. the 2-core scheduling deadlock of docs/notes.md) must fail a test in seconds, not 30 minutes.
NO_PROGRESS_TIMEOUT_S = 300


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    """Each session's tmp dirs under a base of its own, removed when the session ends, failed or not: tests
    leave no multi-MB outputs behind, and two sessions on one machine never clean up each other's dirs (as
    pytest's numbered-dir retention does). --basetemp still chooses it explicitly (then it is kept)."""
    if config.option.basetemp is None:
        config.option.basetemp = tempfile.mkdtemp(prefix="chatsieve-tests-")
        config.stash[_OWN_BASETEMP] = config.option.basetemp


def pytest_unconfigure(config):
    own = config.stash.get(_OWN_BASETEMP, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)


_OWN_BASETEMP = pytest.StashKey[str]()


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from ray.data import DataContext

    # address="local": always a fresh cluster, never one another process on this machine started.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    context = DataContext.get_current()
    context.execution_no_progress_timeout_s = NO_PROGRESS_TIMEOUT_S
    context.enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def data_context(ray_local):
    """Ray Data's context with a short no-progress timeout, restored after the test."""
    from ray.data import DataContext

    context = DataContext.get_current()
    saved = copy.deepcopy(context)
    context.execution_no_progress_timeout_s = NO_PROGRESS_TIMEOUT_S
    context.enable_progress_bars = False
    yield context
    DataContext._set_current(saved)


@pytest.fixture(scope="session")
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture
def chatml_tokenizer_dir(tmp_path):
    """A local ChatML tokenizer directory (Qwen's layout: no generation block), built offline from the
    built-in Mistral vocabulary with <|im_start|> / <|im_end|> added."""
    from operators.tokens import TokenizerConfig, load_tokenizer

    tokenizer = load_tokenizer(TokenizerConfig())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    directory = tmp_path / "chatml"
    tokenizer.save_pretrained(directory)
    return directory
