"""The model registry: what ``--model`` accepts, and which backend serves it.

``--model`` takes an alias (the paper's Qwen3 models, or the embedded ``smollm2-135m``), a
Hugging Face model id (``org/name``), a local model directory, ``openai:<name>`` (any
OpenAI-compatible server), or ``<prefix>:<name>`` for a backend another package registers under
the ``pytest_instrumental.backends`` entry-point group (docs/extending.md). ``NAME@REVISION`` pins
a revision.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from pytest_instrumental.backends.interventions import Interventions
from pytest_instrumental.backends.protocol import Backend
from pytest_instrumental.config import (
    EMBEDDED_MAX_NEW_TOKENS,
    MODEL,
    EngineConfig,
    GenerationConfig,
    ServerConfig,
)
from pytest_instrumental.decoding import Decoding, model_generation_config, resolve
from pytest_instrumental.errors import InputError
from pytest_instrumental.registered import BACKENDS, open_registered, prefix_of, registered

if TYPE_CHECKING:
    from pytest_instrumental.backends.served import Attacks
    from pytest_instrumental.backends.transformers import TransformersBackend

EMBEDDED = "smollm2-135m"
OPENAI_PREFIX = "openai:"

# alias -> (Hugging Face id, is a thinking model)
ALIASES: dict[str, tuple[str, bool]] = {
    "qwen3-4b-base": ("Qwen/Qwen3-4B-Base", False),
    "qwen3-4b-instruct": ("Qwen/Qwen3-4B-Instruct-2507", False),
    "qwen3-4b-thinking": ("Qwen/Qwen3-4B-Thinking-2507", True),
    "qwen3-30b-a3b-base": ("Qwen/Qwen3-30B-A3B-Base", False),
    "qwen3-30b-a3b-instruct": ("Qwen/Qwen3-30B-A3B-Instruct-2507", False),
    "qwen3-30b-a3b-thinking": ("Qwen/Qwen3-30B-A3B-Thinking-2507", True),
}
KNOWN_ALIASES = (*ALIASES, EMBEDDED)

# PROTOCOL.md's token budgets.
PROTOCOL_MAX_NEW_TOKENS = 1024
PROTOCOL_MAX_NEW_TOKENS_THINKING = 8096

_HUB_ID = re.compile(r"[\w.-]+/[\w.-]+\Z")

Engine = Literal["transformers", "embedded", "openai", "registered"]


class BackendFactory(Protocol):
    """What a ``pytest_instrumental.backends`` entry point loads: a callable that opens the backend
    of ``--model <prefix>:<name>``, given ``name`` and the run's configs."""

    def __call__(
        self, name: str, *, generation: GenerationConfig, server: ServerConfig, max_new_tokens: int, decoding: Decoding
    ) -> Backend: ...


@dataclass(frozen=True)
class ModelSpec:
    """``name`` is what item ids and tables show; ``source`` is what the engine loads."""

    name: str
    engine: Engine
    source: str
    revision: str | None
    thinking: bool

    @property
    def protocol_max_new_tokens(self) -> int:
        return PROTOCOL_MAX_NEW_TOKENS_THINKING if self.thinking else PROTOCOL_MAX_NEW_TOKENS


def parse_model(text: str) -> ModelSpec:
    """Resolve ``--model`` text; anything unrecognised is an error listing the aliases."""
    name, _, revision = text.partition("@")
    pin = revision or None
    if name == EMBEDDED:
        return ModelSpec(EMBEDDED, "embedded", EMBEDDED, pin, thinking=False)
    if prefix_of(name, BACKENDS) is not None:
        return ModelSpec(name, "registered", name, pin, thinking="thinking" in name.lower())
    if name.startswith(OPENAI_PREFIX) and len(name) > len(OPENAI_PREFIX):
        served = name.removeprefix(OPENAI_PREFIX)
        return ModelSpec(name, "openai", served, pin, thinking="thinking" in served.lower())
    if name in ALIASES:
        hub_id, thinking = ALIASES[name]
        return ModelSpec(name, "transformers", hub_id, pin, thinking)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise InputError(
                f"--model {text!r}: {path} is not a model directory (no config.json); "
                f"known aliases: {', '.join(KNOWN_ALIASES)}"
            )
        return ModelSpec(path.resolve().name, "transformers", str(path.resolve()), pin, "thinking" in name.lower())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise InputError(f"--model {text!r}: no such model directory {path}; known aliases: {', '.join(KNOWN_ALIASES)}")
    if _HUB_ID.match(name):
        return ModelSpec(name.rsplit("/", 1)[1], "transformers", name, pin, "thinking" in name.lower())
    raise InputError(
        f"--model {text!r}: not a known alias, a local model directory, a Hugging Face id (org/name), "
        f"openai:<name> or a registered backend's <prefix>:<name> ({_registered_prefixes()}); "
        f"known aliases: {', '.join(KNOWN_ALIASES)}"
    )


def _registered_prefixes() -> str:
    prefixes = sorted(registered(BACKENDS))
    return f"registered: {', '.join(prefixes)}" if prefixes else "none registered"


def check_loadable(spec: ModelSpec, trust_remote_code: bool) -> None:
    """Fail before any generation when a transformers model cannot be loaded (e.g. a hub id
    with no network and nothing in the local Hugging Face cache), within seconds: the hub is only
    asked when it can be reached, so its client's retries (half a minute offline) never start."""
    if spec.engine != "transformers":
        return
    from transformers import AutoConfig

    kwargs = {"revision": spec.revision, "trust_remote_code": trust_remote_code}
    try:
        AutoConfig.from_pretrained(spec.source, local_files_only=True, **kwargs)
        return
    except Exception as exc:
        problem = _first_line(exc)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    unreachable = None if offline else _unreachable_hub()
    if not offline and unreachable is None:
        try:
            AutoConfig.from_pretrained(spec.source, **kwargs)
            return
        except Exception as exc:
            problem = _first_line(exc)
    elif unreachable is not None:
        problem = f"not in the local Hugging Face cache, and {unreachable}"
    if not trust_remote_code and _holds_custom_code(spec.source):
        raise InputError(
            f"--model {spec.name!r}: cannot load {spec.source}: {problem}. Its config.json names custom model "
            "code (auto_map), which runs only with --instrumental-trust-remote-code (off by default: that code "
            "runs on this machine; pass it only for a directory you trust)"
        )
    raise InputError(
        f"--model {spec.name!r}: cannot load {spec.source} (revision {spec.revision or 'default'}): {problem}. "
        f"Download it into the Hugging Face cache or pass a local directory; "
        f"known aliases: {', '.join(KNOWN_ALIASES)}"
    )


def _holds_custom_code(source: str) -> bool:
    """Whether ``source`` is a local model directory whose config names custom code (``auto_map``)."""
    config = Path(source) / "config.json"
    try:
        return config.is_file() and "auto_map" in json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError, RecursionError):
        return False


def _unreachable_hub(timeout_s: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (one connection attempt), or None when it can
    or when a proxy stands between (then only the hub's own client can tell)."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlsplit(constants.ENDPOINT)
    host, port = endpoint.hostname or "", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return None
    except OSError as exc:
        return f"{host} cannot be reached ({exc.strerror or exc})"


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)


# (spec, generation, server, token budget, decoding) -> the backend of a model served elsewhere
BackendOpener = Callable[[ModelSpec, GenerationConfig, ServerConfig, int, Decoding], Backend]


@dataclass(frozen=True)
class ModelKind:
    """What differs between the kinds of model ``--model`` names, in one place."""

    served_elsewhere: bool  # no weights or files here: an OpenAI-compatible server's, or a registered backend's
    files: Callable[[ModelSpec, Path], str | None]  # (spec, models dir) -> where its files are
    identity: Callable[[ModelSpec], str | None]  # the weights it runs, as cache keys name them
    default_budget: Callable[[ModelSpec], int]  # its token budget when none is given
    opens: BackendOpener | None = None  # how a model served elsewhere opens (local models: in open_backend)


def _protocol_budget(spec: ModelSpec) -> int:
    return spec.protocol_max_new_tokens


def _pinned(spec: ModelSpec) -> str:
    return spec.source if spec.revision is None else f"{spec.source}@{spec.revision}"


def _embedded_files(spec: ModelSpec, models_dir: Path) -> str:
    from pytest_instrumental.backends import embedded

    return str(embedded.converted_dir(models_dir))  # converted once per user, on first use


def _embedded_identity(spec: ModelSpec) -> str:
    from pytest_instrumental.backends import embedded

    return f"embedded:{EMBEDDED}@{embedded.revision()}"


def _open_openai(
    spec: ModelSpec, generation: GenerationConfig, server: ServerConfig, budget: int, decoding: Decoding
) -> Backend:
    from pytest_instrumental.backends.openai import OpenAIBackend

    return OpenAIBackend(spec.name, spec.source, spec.thinking, server, max_new_tokens=budget, decoding=decoding)


def _open_registered(
    spec: ModelSpec, generation: GenerationConfig, server: ServerConfig, budget: int, decoding: Decoding
) -> Backend:
    name = spec.name.partition(":")[2]

    def opened(factory: BackendFactory) -> Backend:
        return factory(name, generation=generation, server=server, max_new_tokens=budget, decoding=decoding)

    return open_registered(BACKENDS, spec.name, "--model", opened, ("cache_key", "generate", "close"))


def _no_files(spec: ModelSpec, models_dir: Path) -> None:
    return None


KINDS: dict[Engine, ModelKind] = {
    "transformers": ModelKind(False, lambda spec, _: spec.source, _pinned, _protocol_budget),
    "embedded": ModelKind(False, _embedded_files, _embedded_identity, lambda _: EMBEDDED_MAX_NEW_TOKENS),
    "openai": ModelKind(True, _no_files, lambda _: None, _protocol_budget, _open_openai),
    "registered": ModelKind(True, _no_files, lambda _: None, _protocol_budget, _open_registered),
}


def max_new_tokens(spec: ModelSpec, generation: GenerationConfig) -> int:
    if generation.max_new_tokens is not None:
        return generation.max_new_tokens
    return KINDS[spec.engine].default_budget(spec)


def model_decoding(spec: ModelSpec, generation: GenerationConfig) -> Decoding:
    """How this model decodes: greedy, given settings, or (``--instrumental-decoding model``) its
    own ``generation_config.json``, which only a local model has."""
    if generation.decoding.mode != MODEL:
        return resolve(generation.decoding, None)
    source = local_source(spec, generation.models_dir)
    if source is None:
        raise InputError(
            f"--instrumental-decoding model: {spec.name} is served elsewhere, its generation_config.json is not "
            "here; give --instrumental-temperature (and top-p, top-k) instead"
        )
    return resolve(generation.decoding, model_generation_config(source, spec.revision, generation.trust_remote_code))


def local_source(spec: ModelSpec, models_dir: Path) -> str | None:
    """Where a local model's files are (the embedded model's converted copy, converted once);
    None for a model served elsewhere."""
    return KINDS[spec.engine].files(spec, models_dir)


def open_backend(
    spec: ModelSpec,
    generation: GenerationConfig,
    server: ServerConfig,
    serving: EngineConfig | None = None,
    interventions: Interventions | None = None,
    defended: bool = False,
) -> Backend:
    """The backend for one model: an OpenAI-compatible server's, a local model in this process,
    or (``serving``) a local model in an engine server the session starts. Nothing heavy is
    loaded until it first generates."""
    kind = KINDS[spec.engine]
    budget, decoding = max_new_tokens(spec, generation), model_decoding(spec, generation)
    # a model served elsewhere with an intervention was refused before (run.py: its pushes' refusal)
    if kind.opens is not None:
        return kind.opens(spec, generation, server, budget, decoding)
    identity = kind.identity(spec)
    assert identity is not None  # a local model's weights have a name
    models_dir = generation.models_dir

    def files() -> str:  # a local kind always has them; the embedded model converts itself here
        found = kind.files(spec, models_dir)
        assert found is not None, f"a local model {spec.name} has no files"
        return found

    def local() -> TransformersBackend:
        from pytest_instrumental.backends.transformers import TransformersBackend

        return TransformersBackend(
            spec.name,
            files,
            None if spec.engine == "embedded" else spec.revision,
            spec.thinking,
            identity,
            generation=generation,
            max_new_tokens=budget,
            decoding=decoding,
            interventions=None if interventions is None else interventions.attach,
            defended=defended,
            progress=None if interventions is None else interventions.progress,
        )

    if serving is None:
        return local()
    attacks = None
    if interventions is not None and (interventions.ablation is not None or interventions.lora is not None):
        from pytest_instrumental.backends.served import Attacks

        attacks = Attacks(local, models_dir)
    return _served_backend(spec, generation, server, serving, budget, decoding, identity, attacks)


def _served_backend(
    spec: ModelSpec,
    generation: GenerationConfig,
    server: ServerConfig,
    serving: EngineConfig,
    budget: int,
    decoding: Decoding,
    identity: str,
    attacks: Attacks | None,
) -> Backend:
    """A local model served by the chosen engine: the embedded model as its converted directory
    (llama-server: its GGUF file), a hub id or directory as it is; its attacked conditions from
    their checkpoints (``attacks``)."""
    from pytest_instrumental.backends.served import ServedBackend
    from pytest_instrumental.engines import EngineServer

    model = spec.source
    if spec.engine == "embedded":
        from pytest_instrumental.backends import embedded

        llama = serving.engine == "llama-server" and not serving.serve_command
        model = str(embedded.gguf_file()) if llama else _embedded_files(spec, generation.models_dir)
    served_name = model if serving.engine == "transformers-serve" else spec.name
    engine_server = EngineServer(serving, model, served_name, spec.name, spec.revision)
    # its own server: no base URLs to spread over
    own = replace(server, base_urls=())
    return ServedBackend(
        spec.name,
        engine_server,
        spec.thinking,
        own,
        identity,
        max_new_tokens=budget,
        decoding=decoding,
        attacks=attacks,
    )


def describe(
    spec: ModelSpec, generation: GenerationConfig, server: ServerConfig, serving: EngineConfig | None = None
) -> dict[str, object]:
    """What the results JSON records about how a model was run."""
    budget = max_new_tokens(spec, generation)
    decoding = model_decoding(spec, generation)
    record: dict[str, object] = {
        "engine": spec.engine,
        "source": spec.source,
        "revision": spec.revision,
        "thinking": spec.thinking,
        "max_new_tokens": budget,
        "protocol_max_new_tokens": spec.protocol_max_new_tokens,
    }
    if not decoding.greedy:  # greedy runs keep their records as they were
        record["decoding"] = decoding.describe()
    if budget < spec.protocol_max_new_tokens:
        record["note"] = f"max_new_tokens {budget} is below the protocol's {spec.protocol_max_new_tokens}"
    if spec.engine == "registered":
        record["registered_by"] = registered(BACKENDS)[spec.name.partition(":")[0]].value
    elif spec.engine == "openai":
        from pytest_instrumental.backends.openai import resolved_base_urls
        from pytest_instrumental.openai_client import display_url

        urls = [display_url(u) for u in resolved_base_urls(server.base_urls)]
        record["base_url"] = urls[0] if len(urls) == 1 else urls
    elif serving is not None:
        record.update(served_by=serving.label, engine_args=list(serving.args))
    else:
        from pytest_instrumental.backends.transformers import choose_placement

        placement = choose_placement()
        record.update(device=placement.device, dtype=placement.dtype, max_input_tokens=generation.max_input_tokens)
    return record
