"""Project-wide test configuration.

The plugin itself is loaded through its ``pytest11`` entry point; ``pytester`` (enabled in
pyproject's addopts) runs it in isolated temporary projects.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import scipy.stats  # noqa: F401

# Loaded once for the whole test session: pytester's in-process runs restore sys.modules after
# each run, and numpy, scipy and matplotlib (which the plugin loads when an option needs them)
# cannot be imported a second time in one process.
import pytest_instrumental.reports.report_files  # noqa: F401  (matplotlib, jinja2, numpy)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from transformers import PreTrainedTokenizerBase

    from tests.chat_server import ChatServer

TEST_DATA = Path(__file__).resolve().parent / "tests" / "data"


@pytest.fixture
def test_data() -> Path:
    """Copies of the read-only inputs: scenario CSVs, protocol, reference runs (tests/data/README.md)."""
    return TEST_DATA


@pytest.fixture
def reference_runs() -> Path:
    """The paper's published run logs: 9 runs x 71 scenarios with gpt-5.2 verdicts."""
    return TEST_DATA / "reference-runs"


@pytest.fixture
def replay_args(reference_runs: Path) -> list[str]:
    """A suite run replaying the reference runs."""
    return ["--instrumental", f"--instrumental-replay={reference_runs}"]


@pytest.fixture
def small_replay_args(replay_args: list[str]) -> list[str]:
    """The same, of 20 items (one model, one suffix, one category): for tests of what goes wrong."""
    return [*replay_args, "-k", "Base and anti_ic and evading_shutdown"]


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> "Iterator[ChatServer]":
    """A local OpenAI-compatible chat server (tests/chat_server.py), with the API key set."""
    from tests.chat_server import API_KEY, running_chat_server

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    with running_chat_server() as running:
        yield running


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted from its GGUF once per user into the shared
    models directory, as a user's first run converts it (43 s the first time here, then instant;
    xdist workers wait for one conversion)."""
    from pytest_instrumental.backends import embedded
    from pytest_instrumental.options import user_models_dir

    return embedded.converted_dir(user_models_dir())


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir: Path) -> "PreTrainedTokenizerBase":
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer: "PreTrainedTokenizerBase", tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen3 saved with the SmolLM2 tokenizer: a real local model directory."""
    import torch

    from tests.tiny_model import tiny_qwen3

    directory = tmp_path_factory.mktemp("tiny-qwen3")
    tiny_qwen3(tokenizer, torch.float32).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
