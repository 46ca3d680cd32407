"""A local model served by an engine this session starts (``--instrumental-engine``): the server
comes up on first use (or at configure time, so that a server that does not come up is a usage
error), generation goes through the OpenAI backend (concurrency, retries, thinking split), and
closing the backend stops the server.

An attacked condition (``ablate``, ``lora:STEPS``) is served from the attacked model's own
checkpoint (checkpoints.py), made in a local copy of the model (the direction measured, the
adapter trained, as in process) before any of its items generate; an engine that serves LoRA
adapters (vLLM, SGLang) serves the adapters instead, on one server with all of them. Each
checkpoint's server runs while its items generate and is stopped before the next one starts, so
one accelerator holds one model at a time.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_instrumental.backends.openai import OpenAIBackend, chat_payload
from pytest_instrumental.backends.protocol import Bakes, Generation
from pytest_instrumental.config import EngineConfig, ServerConfig
from pytest_instrumental.decoding import Decoding
from pytest_instrumental.engines import EngineServer
from pytest_instrumental.vocabulary.request import Request

if TYPE_CHECKING:
    from pytest_instrumental.backends.transformers import TransformersBackend

CONTINUING_ENGINES = ("vllm", "sglang")  # their chat API continues an assistant turn (continue_final_message)
ADAPTER_ENGINES = ("vllm", "sglang")  # they serve LoRA adapters beside the base weights
BAKING_ENGINES = ("vllm", "sglang", "transformers-serve")  # they load a model directory: an attacked checkpoint


def continues_answers(serving: EngineConfig) -> bool:
    """Whether an engine's server continues an assistant turn, as a prefill attack needs."""
    return serving.engine in CONTINUING_ENGINES and not serving.serve_command


def serves_checkpoints(serving: EngineConfig) -> bool:
    """Whether an engine's server loads a model directory it is given, as an attacked checkpoint
    needs (llama-server loads GGUF files; a custom command is given the directory as {model})."""
    return serving.engine in BAKING_ENGINES or bool(serving.serve_command)


def serves_adapters(serving: EngineConfig) -> bool:
    return serving.engine in ADAPTER_ENGINES and not serving.serve_command


@dataclass(frozen=True)
class Attacks:
    """How a served model's attacked conditions are made: ``local``, a local backend of the same
    model with the interventions attached (made anew after each use, so its weights are freed
    before a server loads a checkpoint), and the models directory the checkpoints are kept in."""

    local: Callable[[], TransformersBackend]
    models_dir: Path

    @property
    def checkpoints_dir(self) -> Path:
        from pytest_instrumental.backends.checkpoints import CHECKPOINTS_DIR_NAME

        return self.models_dir / CHECKPOINTS_DIR_NAME


@dataclass(frozen=True)
class Route:
    """Which server a request goes to and the model name it asks for there: ``checkpoint``, the
    attacked checkpoint's directory (None: the base model), or ``adapter``, a LoRA adapter the base
    model's server serves under its directory's name."""

    checkpoint: Path | None = None
    adapter: Path | None = None


BASE = Route()


class ServedBackend:
    def __init__(
        self,
        name: str,
        server: EngineServer,
        thinking: bool,
        asking: ServerConfig,
        identity: str,
        *,
        max_new_tokens: int,
        decoding: Decoding,
        attacks: Attacks | None = None,
    ) -> None:
        self._name = name
        self.server = server  # the base model's
        self.thinking = thinking
        self.asking = asking  # how the server is asked (its URL comes when it is up)
        self.identity = identity  # the weights, as cache keys name them
        self.max_new_tokens = max_new_tokens
        self.decoding = decoding
        self.attacks = attacks
        self._local: TransformersBackend | None = None
        self._clients: dict[str, OpenAIBackend] = {}  # by base URL and the model asked for

    @property
    def name(self) -> str:
        return self._name

    def prepare(self, generates_here: bool) -> None:
        """The server comes up now where this process generates, so one that does not is a usage
        error; under xdist each worker starts its own when its model first generates."""
        if generates_here:
            self.start()

    def start(self) -> None:
        self.server.start()

    def cache_key(self, request: Request) -> dict[str, Any]:
        # Not the URL: a server on another port next time serves the same generations.
        options = self.server.options
        route, attack = self._placed(request)
        key = {
            "backend": "served",
            "engine": options.label,
            "engine_args": list(options.args),
            "serve_command": options.serve_command,
            "model": self.identity,
            # what the client below sends, as it sends it
            "payload": chat_payload(request, self._asked_for(route), self.max_new_tokens, self.decoding),
        }
        if attack is not None:
            key["attack"] = attack
        return key

    def _placed(self, request: Request) -> tuple[Route, dict[str, Any] | None]:
        """Where ``request`` is served (the base model, its adapter, or its attacked checkpoint),
        and what its attack adds to a cache key (None: not attacked)."""
        if self.attacks is None:
            return BASE, None
        intervention = self._attacker().intervention_for(request)
        if intervention is None:
            return BASE, None
        assert isinstance(intervention, Bakes), "a push without a checkpoint form refuses a server (conditions.py)"
        fields = intervention.cache_fields(request)
        adapter = intervention.adapter(request)
        if adapter is not None and serves_adapters(self.server.options):
            return Route(adapter=adapter), fields
        from pytest_instrumental.backends.checkpoints import checkpoint_dir

        return Route(checkpoint=checkpoint_dir(self.attacks.checkpoints_dir, self.identity, fields)), fields

    def _asked_for(self, route: Route) -> str:
        """The model name a request on ``route`` asks its server for."""
        if route.adapter is not None:
            return route.adapter.name
        if route.checkpoint is not None and self.server.options.engine == "transformers-serve":
            return str(route.checkpoint)  # it names a model by the directory it loaded
        return self.server.served_name

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        routes: dict[Route, list[int]] = {}
        for index, request in enumerate(requests):
            routes.setdefault(self._placed(request)[0], []).append(index)
        self._make(requests, routes)
        on_base = {route: members for route, members in routes.items() if route.checkpoint is None}
        adapters = sorted(route.adapter for route in on_base if route.adapter is not None)
        if on_base and not adapters:
            yield from self._generate_on(self.server, requests, on_base)
        elif on_base:
            yield from self._on_own_server(self._server(None, adapters), requests, on_base)
        for route, members in routes.items():
            if route.checkpoint is not None:
                yield from self._on_own_server(self._server(route.checkpoint, []), requests, {route: members})

    def _on_own_server(
        self, server: EngineServer, requests: Sequence[Request], routes: dict[Route, list[int]]
    ) -> Iterator[tuple[int, Generation]]:
        """Generate on a server of its own, started after the base model's is stopped and stopped
        when done: one accelerator holds one model at a time."""
        self.server.stop()  # started again when the base model next generates
        try:
            yield from self._generate_on(server, requests, routes)
        finally:
            server.stop()

    def _generate_on(
        self, server: EngineServer, requests: Sequence[Request], routes: dict[Route, list[int]]
    ) -> Iterator[tuple[int, Generation]]:
        """The requests of ``routes`` (indices into ``requests``), each asking ``server`` for its
        route's model."""
        server.start()
        for route, indices in routes.items():
            client = self._client(server, self._asked_for(route))
            for position, generation in client.generate([requests[i] for i in indices]):
                yield indices[position], generation

    def _client(self, server: EngineServer, asked: str) -> OpenAIBackend:
        key = f"{server.base_url} {asked}"
        if key not in self._clients:
            self._clients[key] = OpenAIBackend(
                self._name,
                asked,
                self.thinking,
                replace(self.asking, base_urls=(server.base_url,)),
                max_new_tokens=self.max_new_tokens,
                decoding=self.decoding,
                continues_answers=continues_answers(server.options),
            )
        return self._clients[key]

    def _server(self, checkpoint: Path | None, adapters: Sequence[Path]) -> EngineServer:
        """A server of an attacked checkpoint, or of the base model with ``adapters``."""
        base = self.server
        model = base.model if checkpoint is None else str(checkpoint)
        served_name = model if base.options.engine == "transformers-serve" else base.served_name
        label = f"{base.label}-{(checkpoint or adapters[0]).name[:12]}"
        revision = base.revision if checkpoint is None else None
        return EngineServer(base.options, model, served_name, label, revision, adapters=adapters)

    def _make(self, requests: Sequence[Request], routes: dict[Route, list[int]]) -> None:
        """Every adapter and checkpoint ``routes`` need, made in a local copy of the model (all the
        adapters of a training run in one run), which is then freed: the servers need the memory."""
        attacked = [requests[i] for route, members in routes.items() if route != BASE for i in members]
        if self.attacks is None or not attacked:
            return
        from pytest_instrumental.backends.checkpoints import save_checkpoint
        from pytest_instrumental.cache import build_once, safetensors_damage

        local = self._attacker()
        try:
            for intervention in local.interventions:
                intervention.prepare(attacked)  # adapters trained
            for route, members in routes.items():
                if route.checkpoint is None:
                    continue
                first = requests[members[0]]
                made_by = local.intervention_for(first)
                assert isinstance(made_by, Bakes)

                def bake(staging: Path, request: Request = first, made_by: Bakes = made_by) -> None:
                    model = made_by.bake(request, local.load_copy())
                    recipe = {"base": self.identity, **local.intervention_fields(request)}
                    save_checkpoint(model, local.tokenizer, recipe, staging)

                build_once(route.checkpoint, bake, safetensors_damage)
        finally:
            local.close()
            self._local = None
            gc.collect()

    def _attacker(self) -> TransformersBackend:
        assert self.attacks is not None
        if self._local is None:
            self._local = self.attacks.local()
        return self._local

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        self.server.stop()
        if self._local is not None:
            self._local.close()
