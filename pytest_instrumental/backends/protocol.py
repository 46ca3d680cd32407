"""Models under test: what a generation backend is asked, what it answers, and its protocol."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pytest_instrumental.progress import ProgressFactory
from pytest_instrumental.text import clean_optional
from pytest_instrumental.vocabulary.request import Request

THINK_END = "</think>"
THINK_START = "<think>"
EMPTY_RESPONSE = "empty response"


@dataclass(frozen=True)
class Generation:
    """What a backend produced for one request.

    Exactly one of three shapes: a ``response`` (with optional ``thinking``), an ``error`` (the
    item counts as an error), or a ``skip_reason`` (the backend has nothing for this item, e.g.
    a replay without a recorded response; the item is skipped and not counted). ``truncated``
    says the generation stopped at the token limit.
    """

    response: str | None = None
    thinking: str | None = None
    error: str | None = None
    skip_reason: str | None = None
    truncated: bool = False

    def __post_init__(self) -> None:
        for name in ("response", "thinking", "error"):  # text from a model or server (text.py)
            object.__setattr__(self, name, clean_optional(getattr(self, name)))


class Backend(Protocol):
    """Generates responses for many requests at once, so that a backend can batch them."""

    @property
    def name(self) -> str: ...

    def cache_key(self, request: Request) -> dict[str, Any] | None:
        """What determines this request's generation (backend, model, revision, settings, the
        exact rendered prompt), or None when generations must not be cached (replay)."""
        ...

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        """Yield ``(index into requests, generation)`` as each finishes, every index once, so
        that callers can store and report progress as results arrive."""
        ...

    def close(self) -> None:
        """Free what the backend holds (model weights, connections)."""
        ...


@runtime_checkable
class Prepares(Protocol):
    """What a backend or judge may add to its protocol: ``prepare`` is called once before any work
    on the process that runs the session (not an xdist worker, not --collect-only), so that what
    cannot work fails now, as one usage error, not on every item after its retries."""

    def prepare(self, generates_here: bool) -> None:
        """Check what can be checked (a server's preflight call); with ``generates_here`` (this
        process generates: no xdist workers do it instead) also start what generation needs
        (an engine server)."""
        ...


@runtime_checkable
class Sends(Protocol):
    """What a backend or judge over an API adds to its protocol: where its requests go, one per
    generation or verdict, so that a run can say before it starts how many it will send (cost.py)."""

    @property
    def endpoint(self) -> str:
        """The server, without credentials."""
        ...


def split_thinking(text: str) -> tuple[str | None, str]:
    """``(reasoning, response)``: the response is the text after the last ``</think>``
    (PROTOCOL.md); without one there is no reasoning and all of ``text`` is the response."""
    head, marker, tail = text.rpartition(THINK_END)
    if not marker:
        return None, text
    return head.removeprefix(THINK_START).strip(), tail.strip()


def thinking_outcome(text: str, hit_limit: bool, thinking_model: bool) -> Generation:
    """The Generation for a decoded text: a thinking model that hits the token limit before
    ``</think>`` produced no answer, so it is an error marked truncated, not a response."""
    thinking, response = split_thinking(text)
    if thinking_model and thinking is None and hit_limit:
        return Generation(
            thinking=text, truncated=True, error=f"hit the token limit before {THINK_END}: no answer to judge"
        )
    if not response.strip():
        return Generation(thinking=thinking, truncated=hit_limit, error=EMPTY_RESPONSE)
    return Generation(response=response, thinking=thinking, truncated=hit_limit)


class Host(Protocol):
    """What a weight intervention needs of the local model it applies to (backends/transformers.py)."""

    @property
    def name(self) -> str: ...

    @property
    def identity(self) -> str:
        """The weights, as cache keys name them."""
        ...

    @property
    def model(self) -> Any: ...

    @property
    def tokenizer(self) -> Any: ...

    @property
    def progress(self) -> ProgressFactory | None: ...

    @property
    def middle_layer(self) -> int:
        """The model's middle decoder layer, read from its config (no weights loaded)."""
        ...

    @property
    def max_input_tokens(self) -> int: ...

    @property
    def max_new_tokens(self) -> int: ...

    def encode(self, request: Request) -> list[int]:
        """The request's prompt as the model sees it, in token ids."""
        ...


class Intervention(Protocol):
    """Something that changes a local model's weights or forward pass for some requests (activation
    steering, directional ablation, fine-tuning: backends/interventions.py builds them). The
    backend asks each which requests it applies to; it does not know the kinds."""

    packs: bool  # whether generation under it may use the packed linear layers (backends/packed_linear.py)

    def applies(self, request: Request) -> bool:
        """Whether ``request``'s condition is this intervention's."""
        ...

    def cache_fields(self, request: Request) -> dict[str, Any]:
        """What a cache key holds of it for ``request``: the push's settings and how it was made."""
        ...

    def group(self, request: Request) -> tuple[object, ...]:
        """What the hooks ``request`` generates under depend on: rows alike share a batch."""
        ...

    def prepare(self, requests: Sequence[Request]) -> None:
        """What must exist before ``requests`` generate (adapters trained), made now."""
        ...

    def applied(self, request: Request) -> AbstractContextManager[None]:
        """The context ``request`` (and every row grouped with it) generates in: applied on the way
        in, removed on the way out, whatever happens inside."""
        ...


@runtime_checkable
class Bakes(Protocol):
    """What an intervention with a checkpoint form adds to its protocol (backends/checkpoints.py):
    the same change made to a model's weights, so that any engine can serve it."""

    def bake(self, request: Request, model: Any) -> Any:
        """``model`` (a fresh copy of the base weights) changed as ``applied(request)`` changes the
        forward pass; the model to save."""
        ...

    def adapter(self, request: Request) -> Path | None:
        """Where the LoRA adapter is (made by ``prepare``) that an engine serving adapters can load
        for ``request`` instead of a merged checkpoint; None: the change has no adapter form."""
        ...
