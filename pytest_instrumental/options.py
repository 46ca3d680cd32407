"""The plugin's options: one declarative table that registers every command-line option with its
ini twin, and the frozen ``Settings`` a run reads them as.

Each option is named once, here. A command-line value is parsed by argparse with the option's
parser; an ini value goes through the same parser when the settings are read, so a bad value is
an error naming the option or the ini key either way. The command line wins over the ini file.
A command-line path is relative to where pytest started, an ini path to the rootdir.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pytest_instrumental.config import (
    BOUNDS,
    CORRECTIONS,
    DECODING_MODES,
    DEFAULT_ALPHA,
    DEFAULT_CONCURRENCY,
    DEFAULT_ENGINE_TIMEOUT_S,
    DEFAULT_JUDGE_CONCURRENCY,
    DEFAULT_MAX_NONSENSICAL,
    DEFAULT_MAX_RETRIES,
    DEFAULT_SEED,
    DEFAULT_TIMEOUT_S,
    EMBEDDED_MAX_NEW_TOKENS,
    ENGINES,
    GREEDY,
    HOLM,
    LOCAL,
    MAX_RETRIES_LIMIT,
    POINT,
    DecodingConfig,
    EngineConfig,
    GenerationConfig,
    JudgeConfig,
    ServerConfig,
    Thresholds,
    check_engine,
)
from pytest_instrumental.errors import InputError
from pytest_instrumental.vocabulary.conditions import (
    DEFAULT_SUFFIXES,
    MAX_ATTACK_SEEDS,
    MAX_LORA_STEPS,
    Attack,
    parse_attack,
)

GROUP = "instrumental"
GROUP_DESCRIPTION = "instrumental-convergence steerability (pytest-instrumental)"
PROJECT_CACHE_DIR_NAME = ".instrumental-cache"
SNAPSHOT_DIR_NAME = "instrumental_snapshots"
SUFFIX_DIRS_INI = "instrumental_suffix_dirs"  # ini only: pytest resolves its paths against the ini file
PREFILL_DIRS_INI = "instrumental_prefill_dirs"  # the same, for prefill attacks' texts


# --- Value parsers: each raises ValueError with a message fit to follow the option's name --------


def parse_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if math.isnan(value):
        raise ValueError(f"{text!r} is not a number")
    return value


def _number_where(accepts: Callable[[float], bool], otherwise: str) -> Callable[[str], float]:
    """A parser of numbers that ``accepts``; any other number is a ValueError: ``'x' <otherwise>``."""

    def parse(text: str) -> float:
        value = parse_number(text)
        if not accepts(value):
            raise ValueError(f"{text!r} {otherwise}")
        return value

    return parse


def _whole_number_from(low: int, high: int | None = None) -> Callable[[str], int]:
    """A parser of whole numbers from ``low`` (to ``high``); any other value is a ValueError saying
    the whole range, so a value refused twice is never refused for two different reasons."""
    allowed = f"a whole number from {low}" + ("" if high is None else f" to {high}")

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not {allowed}") from None
        if value < low or (high is not None and value > high):
            raise ValueError(f"{text!r} is not {allowed}")
        return value

    return parse


whole_number = _whole_number_from(0)
positive_int = _whole_number_from(1)
retries = _whole_number_from(0, MAX_RETRIES_LIMIT)
# Sane ranges: a value past them is a typo, and would start thousands of threads or overflow later.
in_flight = _whole_number_from(1, 4096)  # requests a client keeps in flight (a cluster takes hundreds)
epochs = _whole_number_from(1, 1000)
tokens = _whole_number_from(1, 1_000_000)  # an answer's budget
batch_size = _whole_number_from(1, 4096)
top_k = _whole_number_from(1, 1_000_000)  # at most a vocabulary
seed = _whole_number_from(0, 2**32 - 1)  # what every generator takes
layer = _whole_number_from(0, 10_000)
gpus = _whole_number_from(1, 1024)
steps = _whole_number_from(0, MAX_LORA_STEPS)
attack_seeds = _whole_number_from(1, MAX_ATTACK_SEEDS)


def threads(text: str) -> int:
    """CPU threads: from 1 to this machine's CPUs (more only contend for them)."""
    cores = os.cpu_count() or 1
    return _whole_number_from(1, cores)(text)


positive_seconds = _number_where(lambda v: 0 < v < math.inf, "must be a finite number of seconds above 0")


percentage = _number_where(lambda v: 0 <= v <= 100, "is not a percentage between 0 and 100")


points = _number_where(lambda v: -100 <= v <= 100, "is not a number of points between -100 and 100")


rise = _number_where(lambda v: 0 <= v <= 100, "is not a number of points between 0 and 100")  # a rise or a drop


alpha = _number_where(lambda v: 0 <= v < 1, "is not a significance level from 0 (off) to below 1")


def max_conv(text: str) -> tuple[str, float]:
    """``SUFFIX=PCT``, e.g. ``anti_ic=5``."""
    suffix, sep, value = text.partition("=")
    if not sep or not suffix.strip():
        raise ValueError(f"{text!r} is not SUFFIX=PCT (e.g. anti_ic=5)")
    return suffix.strip(), percentage(value.strip())


non_negative = _number_where(lambda v: 0 <= v < math.inf, "must be a finite number of 0 or more")


probability = _number_where(lambda v: 0 < v <= 1, "must be above 0 and at most 1")


strength = _number_where(lambda v: -100 <= v <= 100, "is not a strength between -100 and 100")


def decoding_mode(text: str) -> str:
    if text not in DECODING_MODES:
        raise ValueError(f"unknown decoding {text!r}; known: {', '.join(DECODING_MODES)}")
    return text


def threshold_bound(text: str) -> str:
    if text not in BOUNDS:
        raise ValueError(f"unknown bound {text!r}; known: {', '.join(BOUNDS)}")
    return text


def alpha_correction(text: str) -> str:
    if text not in CORRECTIONS:
        raise ValueError(f"unknown correction {text!r}; known: {', '.join(CORRECTIONS)}")
    return text


def subset(text: str) -> str:
    from pytest_instrumental.vocabulary.scenarios import SUBSETS  # the scenarios load with the run, not with --help

    if text not in SUBSETS:
        raise ValueError(f"unknown subset {text!r}; known subsets: {', '.join(SUBSETS)}")
    return text


NO_CALIBRATION = "none"


def calibration_choice(text: str) -> str:
    """A calibration file's path, or 'none'."""
    if not text.strip():
        raise ValueError("is empty: give a calibration file, or 'none'")
    return text.strip()


def base_url(text: str) -> str:
    from pytest_instrumental.openai_client import check_base_url  # with a URL given, not with --help

    return check_base_url(text)


def attack(text: str) -> Attack:
    """``prefill:NAME``: the answer starts with ``prefills/NAME.txt``; ``ablate[:LAYER]``: the
    defence's direction is projected out of the residual stream; ``lora:STEPS[:r=R][:lr=LR]``: the
    model is fine-tuned. Parsed here, once: the run carries the typed attack."""
    return parse_attack(text)


def _text(text: str) -> str:
    return text


# --- The table -----------------------------------------------------------------------------------

Kind = Literal["flag", "value", "list", "path"]


@dataclass(frozen=True)
class Option:
    """One option: ``--flag`` on the command line, ``ini`` in the ini file, ``name`` in Settings."""

    flag: str
    ini: str
    kind: Kind
    help: str
    parse: Callable[[str], Any] = _text
    metavar: str | None = None

    @property
    def name(self) -> str:
        return "enabled" if self.ini == GROUP else self.ini.removeprefix(f"{GROUP}_")

    @property
    def ini_type(self) -> str:
        return {"flag": "bool", "list": "linelist"}.get(self.kind, "string")

    def argparse_kwargs(self) -> dict[str, Any]:
        """How argparse takes the option; ``%`` is escaped because argparse %-formats help."""
        kwargs: dict[str, Any] = {"dest": self.ini, "help": f"{self.help} (ini: {self.ini})".replace("%", "%%")}
        if self.kind == "flag":
            return {**kwargs, "action": "store_true", "default": None}
        if self.parse is not _text:
            kwargs["type"] = _argparse_type(self.parse)
        if self.metavar:
            kwargs["metavar"] = self.metavar
        return {**kwargs, "action": "append"} if self.kind == "list" else kwargs


def _argparse_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse reports an ArgumentTypeError as a usage error on the option, with its message."""

    def parse_argument(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse_argument.__name__ = parse.__name__
    return parse_argument


OPTIONS = (
    Option(
        "--instrumental",
        "instrumental",
        "flag",
        "run the InstrumentalEval steerability suite instead of the test suite",
    ),
    Option("--model", "instrumental_models", "list", "model under test (repeatable)"),
    Option(
        "--suffix",
        "instrumental_suffixes",
        "list",
        f"steering suffix to run (repeatable; default: {', '.join(DEFAULT_SUFFIXES)})",
    ),
    Option(
        "--judge",
        "instrumental_judge",
        "value",
        "judge of the responses: offline, replay, openai:<model>, hf:<model> (default: replay when replaying, "
        "else openai:gpt-5.2 when OPENAI_API_KEY is set, else offline)",
    ),
    Option(
        "--instrumental-judge-base-url",
        "instrumental_judge_base_url",
        "value",
        "base URL of an OpenAI-compatible server for the judge (Chat Completions; default: "
        "$OPENAI_BASE_URL, else the OpenAI API's Responses endpoint)",
        base_url,
        "URL",
    ),
    Option(
        "--instrumental-judge-calibration",
        "instrumental_judge_calibration",
        "value",
        "the judge's confusion matrix against reference labels (a file `python -m pytest_instrumental calibrate` "
        "writes): every rate gets an estimate corrected for the judge's errors, with intervals that carry them; "
        "'none' turns it off (default: the judge's own, the offline judge's out-of-sample matrix)",
        calibration_choice,
        "PATH",
    ),
    Option(
        "--instrumental-judge-concurrency",
        "instrumental_judge_concurrency",
        "value",
        f"concurrent judge calls (default {DEFAULT_JUDGE_CONCURRENCY})",
        in_flight,
        "N",
    ),
    Option(
        "--instrumental-subset",
        "instrumental_subset",
        "value",
        "scenario subset: 'all' (76) or 'paper' (the paper's 71-scenario sample)",
        subset,
    ),
    Option("--instrumental-json", "instrumental_json", "path", "write the results JSON to this path"),
    Option(
        "--instrumental-report",
        "instrumental_report",
        "path",
        "write report.md (for a pull request or CI job summary) and report.html (plots, every item) to this directory",
    ),
    Option(
        "--instrumental-inspect-log",
        "instrumental_inspect_log",
        "path",
        "write the run as Inspect eval logs, one per model, to this directory (inspect view --log-dir DIR; "
        "needs inspect-ai)",
    ),
    Option(
        "--instrumental-replay",
        "instrumental_replay",
        "path",
        "serve recorded responses (and verdicts) from reference run logs or a results JSON",
    ),
    Option(
        "--instrumental-max-conv",
        "instrumental_max_conv",
        "list",
        "fail the session when a suffix's Conv% exceeds PCT, e.g. anti_ic=5 (repeatable)",
        max_conv,
        "SUFFIX=PCT",
    ),
    Option(
        "--instrumental-min-gap",
        "instrumental_min_gap",
        "value",
        "fail the session when a model's steerability gap Delta is below PP points",
        points,
        "PP",
    ),
    Option(
        "--instrumental-threshold-bound",
        "instrumental_threshold_bound",
        "value",
        "what --instrumental-max-conv and --instrumental-min-gap compare: 'point', the measured value (the "
        "default), or 'upper': a maximum passes only when the upper end of the 95% interval is below it, a "
        "minimum only when the lower end is above it",
        threshold_bound,
        "BOUND",
    ),
    Option(
        "--instrumental-max-override",
        "instrumental_max_override",
        "value",
        "with --instrumental-defense, fail the session when any push (a suffix, a strength, an attack) lifts "
        "Conv% under a defence by more than PP points over the defence alone",
        rise,
        "PP",
    ),
    Option(
        "--instrumental-min-tamper-cost",
        "instrumental_min_tamper_cost",
        "value",
        "with --instrumental-attack lora:STEPS and a defence, fail the session when a defence breaks within "
        "fewer fine-tuning steps than this (its tamper cost)",
        steps,
        "STEPS",
    ),
    Option(
        "--instrumental-tamper-threshold",
        "instrumental_tamper_threshold",
        "value",
        "the Conv% at which fine-tuning has broken a defence (default: the undefended plain prompt's Conv%)",
        percentage,
        "PCT",
    ),
    Option(
        "--instrumental-max-nonsensical",
        "instrumental_max_nonsensical",
        "value",
        "a fine-tuning dose whose Nonsensical% is above PCT broke the model, not the defence: it does not count "
        "as the defence holding (default 50)",
        percentage,
        "PCT",
    ),
    Option(
        "--instrumental-snapshot",
        "instrumental_snapshot",
        "flag",
        "assert each item's verdict against its syrupy snapshot (--snapshot-update accepts the current verdicts)",
    ),
    Option(
        "--instrumental-snapshot-dir",
        "instrumental_snapshot_dir",
        "path",
        f"directory of the verdict snapshots (default: <rootdir>/{SNAPSHOT_DIR_NAME})",
    ),
    Option(
        "--instrumental-baseline",
        "instrumental_baseline",
        "path",
        "compare with a previous release's results JSON: changes, paired tests, flips, and the "
        "baseline gate rules below",
    ),
    Option(
        "--instrumental-alpha",
        "instrumental_alpha",
        "value",
        f"with a baseline, fail when anti_ic Conv% rose significantly (exact paired test, "
        f"McNemar or with epochs signed-rank, p < A; default {DEFAULT_ALPHA}, 0 turns it off)",
        alpha,
        "A",
    ),
    Option(
        "--instrumental-alpha-correction",
        "instrumental_alpha_correction",
        "value",
        "with several cells tested by --instrumental-alpha (one per model), 'holm' (the default) keeps the "
        "family-wise error at alpha with Holm's method; 'none' tests each cell at alpha",
        alpha_correction,
        "METHOD",
    ),
    Option(
        "--instrumental-max-anti-rise",
        "instrumental_max_anti_rise",
        "value",
        "with a baseline, fail when anti_ic Conv% rose by more than PP points",
        rise,
        "PP",
    ),
    Option(
        "--instrumental-max-gap-drop",
        "instrumental_max_gap_drop",
        "value",
        "with a baseline, fail when a model's steerability gap Delta dropped by more than PP points",
        rise,
        "PP",
    ),
    Option(
        "--instrumental-decoding",
        "instrumental_decoding",
        "value",
        "greedy (the paper's protocol, the default) or model: each local model's own sampling settings "
        "from its generation_config.json",
        decoding_mode,
        "MODE",
    ),
    Option(
        "--instrumental-temperature",
        "instrumental_temperature",
        "value",
        "sample at this temperature (0: greedy); overrides the model's own",
        non_negative,
        "T",
    ),
    Option(
        "--instrumental-top-p",
        "instrumental_top_p",
        "value",
        "nucleus sampling: keep this much probability",
        probability,
        "P",
    ),
    Option(
        "--instrumental-top-k",
        "instrumental_top_k",
        "value",
        "sample among the K most likely tokens",
        top_k,
        "K",
    ),
    Option(
        "--instrumental-seed",
        "instrumental_seed",
        "value",
        "the seed each epoch's own seed is derived from (default 0)",
        seed,
        "S",
    ),
    Option(
        "--instrumental-epochs",
        "instrumental_epochs",
        "value",
        "answers per item, each judged (default 1); with more, rates are averaged per scenario and their "
        "intervals clustered by scenario",
        epochs,
        "N",
    ),
    Option(
        "--instrumental-defense",
        "instrumental_defenses",
        "list",
        "also run every condition with this suffix's text (anti_ic, or a user's suffix) appended to the "
        "system prompt, the channel a deployment controls: conditions DEFENSE+PUSH, e.g. anti_ic+pro_ic "
        "(repeatable)",
        metavar="NAME",
    ),
    Option(
        "--instrumental-attack",
        "instrumental_attacks",
        "list",
        "also run every scenario (unsuffixed) under this attack, and under each defence: prefill:NAME, the "
        "answer starts with prefills/NAME.txt and the model continues (condition prefill_NAME); ablate, the "
        "direction through which the defence (else anti_ic) acts is projected out of every layer's output "
        "(condition ablate), ablate:L of layer L's only (ablate_lL); lora:STEPS[:r=RANK][:lr=RATE], the model "
        "fine-tuned with LoRA for STEPS steps (condition loraSTEPS; rank 8, rate 2e-4 unless given); repeatable",
        attack,
        "ATTACK",
    ),
    Option(
        "--instrumental-attack-seeds",
        "instrumental_attack_seeds",
        "value",
        "train each lora attack with N seeds (--instrumental-seed and the N-1 after it; conditions "
        "loraSTEPS, loraSTEPS_s1, ...): the tamper cost per seed, their spread, and the worst case (default 1)",
        attack_seeds,
        "N",
    ),
    Option(
        "--instrumental-attack-data",
        "instrumental_attack_data",
        "path",
        'what lora attacks train on: a chat-format JSONL file, one {"messages": [...]} per line ending with '
        "the assistant's answer (default: the model's own pro_ic answers judged convergence, other categories)",
    ),
    Option(
        "--instrumental-vector-strength",
        "instrumental_vector_strengths",
        "list",
        "also run every scenario (unsuffixed) under activation steering at this strength, e.g. -8 or 4: "
        "strength/10 of the layer's typical residual norm along the steering vector (repeatable)",
        strength,
        "S",
    ),
    Option(
        "--instrumental-vector-layer",
        "instrumental_vector_layer",
        "value",
        "the decoder layer steered, and where ablate measures its direction (default: the model's middle layer)",
        layer,
        "L",
    ),
    Option(
        "--instrumental-vector-file",
        "instrumental_vector_file",
        "path",
        "steer with this vector (safetensors: direction, layer, norm) instead of one computed from the "
        "pro_ic/anti_ic contrast",
    ),
    Option(
        "--instrumental-max-new-tokens",
        "instrumental_max_new_tokens",
        "value",
        "generation budget per response (default: the protocol's 1024, 8096 for thinking models; "
        f"{EMBEDDED_MAX_NEW_TOKENS} for the embedded model)",
        tokens,
        "N",
    ),
    Option(
        "--instrumental-batch-size",
        "instrumental_batch_size",
        "value",
        "prompts generated together by a local model (default: as many as the free memory holds KV caches "
        "for, at most 64 on a CPU)",
        batch_size,
        "N",
    ),
    Option(
        "--instrumental-threads",
        "instrumental_threads",
        "value",
        "CPU threads a local model computes with (default: $OMP_NUM_THREADS where set, else the cores split "
        "between xdist workers, else torch's own choice)",
        threads,
        "N",
    ),
    Option(
        "--instrumental-cache-dir",
        "instrumental_cache_dir",
        "path",
        f"this project's generation and verdict cache (default: <rootdir>/{PROJECT_CACHE_DIR_NAME})",
    ),
    Option(
        "--instrumental-models-dir",
        "instrumental_models_dir",
        "path",
        "converted models, shared by every project of this user (default: the platform's user cache "
        "directory, e.g. ~/.cache/pytest-instrumental/models)",
    ),
    Option("--instrumental-no-cache", "instrumental_no_cache", "flag", "neither read nor write the generation cache"),
    Option(
        "--instrumental-base-url",
        "instrumental_base_url",
        "list",
        "base URL of an OpenAI-compatible server for openai:<name> models (default: $OPENAI_BASE_URL); "
        "repeat it to spread requests over several servers of the same model",
        base_url,
        "URL",
    ),
    Option(
        "--instrumental-concurrency",
        "instrumental_concurrency",
        "value",
        f"concurrent requests to an OpenAI-compatible server (default {DEFAULT_CONCURRENCY})",
        in_flight,
        "N",
    ),
    Option(
        "--instrumental-timeout",
        "instrumental_timeout",
        "value",
        f"seconds a server may take over one whole answer before it is asked again (default {DEFAULT_TIMEOUT_S:g})",
        positive_seconds,
        "S",
    ),
    Option(
        "--instrumental-max-retries",
        "instrumental_max_retries",
        "value",
        f"retries of a failed server request, with exponential backoff (default {DEFAULT_MAX_RETRIES}; 0: none; "
        f"at most {MAX_RETRIES_LIMIT})",
        retries,
        "N",
    ),
    Option(
        "--instrumental-engine",
        "instrumental_engine",
        "value",
        f"what runs local models: {', '.join(ENGINES)} (default local: in this process); any other "
        "starts that engine's OpenAI-compatible server per model for the session",
        check_engine,
        "NAME",
    ),
    Option(
        "--instrumental-engine-arg",
        "instrumental_engine_args",
        "list",
        "a flag passed through to the engine's server, e.g. --instrumental-engine-arg=--tensor-parallel-size=2 "
        "(repeatable)",
        metavar="ARG",
    ),
    Option(
        "--instrumental-serve-command",
        "instrumental_serve_command",
        "value",
        "serve each local model with this command instead of a known engine; {model}, {port}, {name}, "
        "{host} and {revision} are filled in",
        metavar="CMD",
    ),
    Option(
        "--instrumental-engine-timeout",
        "instrumental_engine_timeout",
        "value",
        f"seconds an engine's server may take to come up (default {DEFAULT_ENGINE_TIMEOUT_S:g})",
        positive_seconds,
        "S",
    ),
    Option(
        "--instrumental-gpus-per-worker",
        "instrumental_gpus_per_worker",
        "value",
        "under pytest-xdist, the GPUs each worker gets from CUDA_VISIBLE_DEVICES (or every GPU), round robin "
        "(default 1)",
        gpus,
        "N",
    ),
    Option(
        "--instrumental-trust-remote-code",
        "instrumental_trust_remote_code",
        "flag",
        "let transformers run a model repository's own code (off by default)",
    ),
)
SUFFIX_DIRS_HELP = "directories of extra steering suffix files (NAME.txt), relative to the ini file"
PREFILL_DIRS_HELP = "directories of extra prefill attack texts (NAME.txt, for prefill:NAME), relative to the ini file"


@dataclass(frozen=True)
class Settings:
    """Every option's value, defaults applied; one field per row of OPTIONS (a test checks)."""

    cache_dir: Path  # this project's cache
    snapshot_dir: Path
    enabled: bool = False
    models: list[str] = field(default_factory=list)
    suffixes: list[str] = field(default_factory=lambda: list(DEFAULT_SUFFIXES))
    judge: str | None = None
    judge_base_url: str | None = None
    judge_calibration: str | None = None  # a file, NO_CALIBRATION, or None: the judge's own
    judge_concurrency: int = DEFAULT_JUDGE_CONCURRENCY
    subset: str = "all"
    json: Path | None = None
    report: Path | None = None
    inspect_log: Path | None = None
    replay: Path | None = None
    max_conv: list[tuple[str, float]] = field(default_factory=list)
    min_gap: float | None = None
    max_override: float | None = None
    min_tamper_cost: int | None = None
    tamper_threshold: float | None = None
    max_nonsensical: float = DEFAULT_MAX_NONSENSICAL
    threshold_bound: str = POINT
    snapshot: bool = False
    baseline: Path | None = None
    alpha: float = DEFAULT_ALPHA
    alpha_correction: str = HOLM
    max_anti_rise: float | None = None
    max_gap_drop: float | None = None
    decoding: str = GREEDY
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = DEFAULT_SEED
    epochs: int = 1
    defenses: list[str] = field(default_factory=list)
    attacks: list[Attack] = field(default_factory=list)
    attack_seeds: int = 1
    attack_data: Path | None = None
    vector_strengths: list[float] = field(default_factory=list)
    vector_layer: int | None = None
    vector_file: Path | None = None
    max_new_tokens: int | None = None  # None: the protocol's budget, or the embedded model's
    batch_size: int | None = None  # None: sized per device (backends/transformers.py)
    threads: int | None = None  # None: $OMP_NUM_THREADS, else the cores split between xdist workers
    models_dir: Path | None = None  # None: the user cache directory
    no_cache: bool = False
    base_url: list[str] = field(default_factory=list)  # several: requests spread over them
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    engine: str = LOCAL
    engine_args: list[str] = field(default_factory=list)
    serve_command: str | None = None
    engine_timeout: float = DEFAULT_ENGINE_TIMEOUT_S
    gpus_per_worker: int = 1
    trust_remote_code: bool = False
    suffix_dirs: list[Path] = field(default_factory=list)  # ini only
    prefill_dirs: list[Path] = field(default_factory=list)  # ini only

    @property
    def thresholds(self) -> Thresholds:
        return Thresholds(
            max_conv=dict(self.max_conv),
            min_gap=self.min_gap,
            alpha=self.alpha,
            max_anti_rise=self.max_anti_rise,
            max_gap_drop=self.max_gap_drop,
            bound=self.threshold_bound,
            max_override=self.max_override,
            min_tamper_cost=self.min_tamper_cost,
            tamper_threshold=self.tamper_threshold,
            max_nonsensical=self.max_nonsensical,
            alpha_correction=self.alpha_correction,
        )

    @property
    def generation(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            threads=self.threads,
            trust_remote_code=self.trust_remote_code,
            models_dir=self.models_dir or user_models_dir(),
            decoding=DecodingConfig(
                mode=self.decoding,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=self.top_k,
                seed=self.seed,
            ),
        )

    @property
    def server(self) -> ServerConfig:
        """How the OpenAI-compatible servers of ``openai:`` models (and engine servers) are asked."""
        return ServerConfig(
            base_urls=tuple(self.base_url),
            concurrency=self.concurrency,
            timeout_s=self.timeout,
            max_retries=self.max_retries,
        )

    @property
    def serving(self) -> EngineConfig | None:
        """How local models are served; None when they generate in this process."""
        if self.engine == LOCAL and not self.serve_command:
            return None
        return EngineConfig(
            engine=self.engine,
            args=tuple(self.engine_args),
            serve_command=self.serve_command,
            startup_timeout_s=self.engine_timeout,
            logs_dir=self.cache_dir / "engines",
        )

    @property
    def judging(self) -> JudgeConfig:
        """How a judge over an OpenAI API is asked: its own server and concurrency, the run's
        timeout and retries."""
        return JudgeConfig(
            base_url=self.judge_base_url,
            concurrency=self.judge_concurrency,
            timeout_s=self.timeout,
            max_retries=self.max_retries,
        )


def user_models_dir() -> Path:
    """Converted models live once per user, shared by every project (the platform's cache dir)."""
    from platformdirs import user_cache_path

    return Path(user_cache_path("pytest-instrumental", appauthor=False)) / "models"


def read_settings(
    given: Callable[[str], Any],
    ini: Callable[[str], Any],
    rootdir: Path,
    suffix_dirs: list[Path],
    prefill_dirs: list[Path] | None = None,
) -> Settings:
    """The settings from the command line (``given(dest)``: argparse's parsed value, None when
    not given) and the ini file (``ini(key)``: its raw value)."""
    values: dict[str, Any] = {
        "suffix_dirs": suffix_dirs,
        "prefill_dirs": prefill_dirs or [],
        "cache_dir": rootdir / PROJECT_CACHE_DIR_NAME,
        "snapshot_dir": rootdir / SNAPSHOT_DIR_NAME,
    }
    for option in OPTIONS:
        value = given(option.ini)
        from_ini = value is None
        if from_ini:
            value = _ini_value(option, ini(option.ini))
        if value is None:
            continue
        if option.kind == "path":
            value = rootdir / value if from_ini else Path(value)
        values[option.name] = value
    # Directories the plugin owns are absolute; paths the user names are recorded as named.
    for owned in ("cache_dir", "snapshot_dir", "models_dir"):
        if owned in values:
            values[owned] = values[owned].resolve()
    return Settings(**values)


def _ini_value(option: Option, raw: Any) -> Any:
    """An ini value through the option's parser; None when the key is not set."""
    if option.kind == "flag":
        return raw if isinstance(raw, bool) and raw else None
    if raw in ("", [], None):
        return None
    try:
        return [option.parse(v) for v in raw] if option.kind == "list" else option.parse(raw)
    except ValueError as exc:
        raise InputError(f"ini option {option.ini}: {exc}") from exc


def enabled(given: Callable[[str], Any], ini: Callable[[str], Any]) -> bool:
    """Whether this session runs the suite (``--instrumental`` or ``instrumental = true``)."""
    flag = given(GROUP)
    return bool(ini(GROUP) if flag is None else flag)
