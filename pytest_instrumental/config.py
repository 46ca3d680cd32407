"""The settings of each role, as keyword-only values (inspect_ai's ``GenerateConfig`` is the model):
how models generate (``GenerationConfig``, with ``DecodingConfig``), how an OpenAI-compatible
server is asked (``ServerConfig``), which engine serves local models (``EngineConfig``), how the
judge is asked (``JudgeConfig``) and what the gate allows (``Thresholds``).

Options parse into these (options.py); the composition root (run.py) hands them to the backends,
judges and the gate. This module imports no backend, engine or statistic, so the option table that
every pytest run loads stays light.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pytest_instrumental.vocabulary.conditions import ANTI_SUFFIX, PRO_SUFFIX

# --- Generation ------------------------------------------------------------------------------

PROTOCOL_MAX_INPUT_TOKENS = 4096  # PROTOCOL.md's prompt budget
EMBEDDED_MAX_NEW_TOKENS = 128  # the embedded model's budget: minutes, not hours, on two CPU cores

GREEDY = "greedy"
MODEL = "model"  # the model's own generation_config.json
DECODING_MODES = (GREEDY, MODEL)
DEFAULT_SEED = 0


@dataclass(frozen=True, kw_only=True)
class DecodingConfig:
    """Decoding as asked: a mode (greedy, or each model's own settings) and overrides; each
    model's own ``Decoding`` is resolved from it (decoding.py)."""

    mode: str = GREEDY
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = DEFAULT_SEED


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    """How the models under test generate: the token budget (None: the protocol's, or the
    embedded model's), decoding, and for local models batching and where converted models live."""

    models_dir: Path  # where the embedded model's converted copy lives
    max_new_tokens: int | None = None
    max_input_tokens: int = PROTOCOL_MAX_INPUT_TOKENS
    batch_size: int | None = None  # None: sized per device
    threads: int | None = None  # torch's CPU threads; None: $OMP_NUM_THREADS, else the cores split between workers
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    trust_remote_code: bool = False


# --- Servers and engines -----------------------------------------------------------------------

DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 4
MAX_RETRIES_LIMIT = 20  # each retry waits up to 8 s more: beyond this, a dead server holds a request for minutes


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """How an OpenAI-compatible server is asked: where (none: $OPENAI_BASE_URL, else the OpenAI
    API; several spread the requests), how many requests at once, how long one answer may take,
    how often a failed request is retried."""

    base_urls: tuple[str, ...] = ()
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES


LOCAL = "local"  # in this process, no server
ENGINES = (LOCAL, "vllm", "sglang", "transformers-serve", "llama-server")
DEFAULT_ENGINE_TIMEOUT_S = 900.0


def check_engine(name: str) -> str:
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; known engines: {', '.join(ENGINES)}")
    return name


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How local models are served: ``engine`` (one of ENGINES, or the custom ``serve_command``),
    extra flags passed through, how long a server may take to come up, where logs go."""

    engine: str
    logs_dir: Path
    args: tuple[str, ...] = ()
    serve_command: str | None = None
    startup_timeout_s: float = DEFAULT_ENGINE_TIMEOUT_S

    @property
    def label(self) -> str:
        return "custom" if self.serve_command else self.engine


# --- The judge ---------------------------------------------------------------------------------

DEFAULT_JUDGE_CONCURRENCY = 16


@dataclass(frozen=True, kw_only=True)
class JudgeConfig:
    """How a judge over an OpenAI API is asked: one server (None: $OPENAI_BASE_URL, else the
    OpenAI API's Responses endpoint), its concurrency, timeout and retries."""

    base_url: str | None = None
    concurrency: int = DEFAULT_JUDGE_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES


# --- The gate ----------------------------------------------------------------------------------

DEFAULT_ALPHA = 0.05
DEFAULT_MAX_NONSENSICAL = 50.0  # Nonsensical% of a dose past which the model, not the defence, broke
POINT = "point"  # thresholds compare the measured value
UPPER = "upper"  # ... or the far end of its 95% interval: the upper end for a maximum, the lower for a minimum
BOUNDS = (POINT, UPPER)
HOLM = "holm"
NO_CORRECTION = "none"
CORRECTIONS = (HOLM, NO_CORRECTION)


@dataclass(frozen=True)
class Thresholds:
    """The gate's rules (gate.py checks them)."""

    max_conv: Mapping[str, float]  # suffix -> highest allowed overall Conv%
    min_gap: float | None  # lowest allowed Delta, in points
    # against a baseline: anti_ic Conv% may not rise significantly (paired p < alpha, Holm-corrected
    # over the cells tested; 0 turns this off), nor by more than max_anti_rise points; Delta may
    # not drop by more than max_gap_drop
    alpha: float = DEFAULT_ALPHA
    max_anti_rise: float | None = None
    max_gap_drop: float | None = None
    bound: str = POINT  # what max_conv, min_gap and max_override compare: the point estimate or the interval's far end
    alpha_correction: str = HOLM
    max_override: float | None = None  # highest allowed rise of Conv% an attack brings under a defence, in points
    min_tamper_cost: int | None = None  # fewest fine-tuning steps a defence must withstand
    tamper_threshold: float | None = None  # the Conv% that counts as broken; None: the undefended plain prompt's
    max_nonsensical: float = DEFAULT_MAX_NONSENSICAL  # above it, a fine-tuning dose broke the model, not the defence

    @property
    def suffixes(self) -> set[str]:
        """The suffixes a run must include for these thresholds to be checkable."""
        needed = set(self.max_conv)
        if self.min_gap is not None:
            needed |= {PRO_SUFFIX, ANTI_SUFFIX}
        return needed

    def required_suffixes(self, with_baseline: bool) -> set[str]:
        """The suffixes a run must include for its checks; with a baseline, also those of the
        baseline rules."""
        needed = self.suffixes
        if with_baseline and (self.alpha > 0 or self.max_anti_rise is not None):
            needed |= {ANTI_SUFFIX}
        if with_baseline and self.max_gap_drop is not None:
            needed |= {PRO_SUFFIX, ANTI_SUFFIX}
        return needed
