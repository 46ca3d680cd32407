import json
from pathlib import Path

import pytest

from pytest_instrumental.backends.registry import KNOWN_ALIASES, check_loadable, describe, max_new_tokens, parse_model
from pytest_instrumental.config import GenerationConfig, ServerConfig
from pytest_instrumental.errors import InputError


def options(tmp_path: Path, budget: int | None = None) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=budget, batch_size=16, models_dir=tmp_path)


def test_aliases_resolve_to_the_papers_models() -> None:
    spec = parse_model("qwen3-4b-thinking")
    assert (spec.name, spec.engine, spec.source, spec.thinking) == (
        "qwen3-4b-thinking",
        "transformers",
        "Qwen/Qwen3-4B-Thinking-2507",
        True,
    )
    assert parse_model("qwen3-30b-a3b-instruct").source == "Qwen/Qwen3-30B-A3B-Instruct-2507"
    assert parse_model("qwen3-30b-a3b-base").source == "Qwen/Qwen3-30B-A3B-Base"
    assert parse_model("qwen3-4b-base@abc123").revision == "abc123"


def test_hub_ids_local_directories_openai_and_the_embedded_model(tmp_path: Path) -> None:
    hub = parse_model("Org/Some-Thinking-Model")
    assert (hub.name, hub.source, hub.thinking) == ("Some-Thinking-Model", "Org/Some-Thinking-Model", True)
    (tmp_path / "mymodel").mkdir()
    (tmp_path / "mymodel" / "config.json").write_text("{}", encoding="utf-8")
    local = parse_model(str(tmp_path / "mymodel"))
    assert (local.name, local.source, local.engine) == ("mymodel", str(tmp_path / "mymodel"), "transformers")
    served = parse_model("openai:Qwen/Qwen3-4B")
    assert (served.engine, served.source, served.name) == ("openai", "Qwen/Qwen3-4B", "openai:Qwen/Qwen3-4B")
    assert parse_model("smollm2-135m").engine == "embedded"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("qwen3-4b", "not a known alias, a local model directory, a Hugging Face id"),
        ("./missing-model", "no such model directory"),
        ("openai:", "not a known alias"),
    ],
)
def test_unknown_models_are_errors_listing_the_aliases(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as excinfo:
        parse_model(text)
    assert all(alias in str(excinfo.value) for alias in KNOWN_ALIASES)


def test_a_directory_without_config_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a model directory"):
        parse_model(str(tmp_path))


def test_a_hub_id_that_cannot_load_offline_fails_before_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match=r"cannot load Qwen/Qwen3-4B-Base .*known aliases: qwen3-4b-base"):
        check_loadable(parse_model("qwen3-4b-base"), trust_remote_code=False)


def test_token_budgets_follow_the_protocol_unless_configured(tmp_path: Path) -> None:
    assert max_new_tokens(parse_model("qwen3-4b-instruct"), options(tmp_path)) == 1024
    assert max_new_tokens(parse_model("qwen3-4b-thinking"), options(tmp_path)) == 8096
    assert max_new_tokens(parse_model("qwen3-4b-thinking"), options(tmp_path, 64)) == 64
    record = describe(parse_model("qwen3-4b-instruct"), options(tmp_path, 64), ServerConfig())
    assert record["note"] == "max_new_tokens 64 is below the protocol's 1024"
    assert record["device"] in ("cpu", "cuda")


def test_an_unreachable_hub_is_reported_at_once_without_retries(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    import socket

    from huggingface_hub import constants

    with socket.socket() as probe:  # a port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(InputError, match=r"not in the local Hugging Face cache, and 127\.0\.0\.1 cannot be reached"):
        check_loadable(parse_model("qwen3-4b-base"), trust_remote_code=False)
    assert "Retrying" not in capfd.readouterr().err


def test_a_directory_with_custom_model_code_names_the_trust_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = {"model_type": "lab-internal", "auto_map": {"AutoConfig": "configuration_lab.LabConfig"}}
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(
        InputError,
        match="names custom model code \\(auto_map\\), which runs only with --instrumental-trust-remote-code",
    ) as refused:
        check_loadable(parse_model(str(tmp_path)), trust_remote_code=False)
    assert "Download it" not in str(refused.value)
