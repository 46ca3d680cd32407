"""The pytest plugin: options, collection of scenario items, running them, the end-of-session
summary, results file and gate. The only module that imports pytest; everything it drives is
a plain module (scenarios, suffixes, replay, evaluation, metrics, gate, results, report).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import pytest
from syrupy.assertion import SnapshotAssertion
from syrupy.data import SnapshotCollections
from syrupy.extensions.amber import AmberSnapshotExtension
from syrupy.location import PyTestLocation
from syrupy.types import SnapshotIndex

from pytest_instrumental import comparison, embedded, gate, metrics, report, snapshots
from pytest_instrumental.backends import Backend, Request
from pytest_instrumental.cache import DEFAULT_DIR_NAME, Cache
from pytest_instrumental.errors import InputError
from pytest_instrumental.evaluation import Evaluation, Progress, ProgressFactory, Skip
from pytest_instrumental.gate import Thresholds, Violation
from pytest_instrumental.hf_judge import HF_PREFIX, TransformersJudge
from pytest_instrumental.judges import Judge
from pytest_instrumental.manifest import build_manifest
from pytest_instrumental.models import (
    EMBEDDED,
    OPENAI_PREFIX,
    PROTOCOL_MAX_INPUT_TOKENS,
    GenerationOptions,
    check_loadable,
    describe,
    open_backend,
    parse_model,
)
from pytest_instrumental.offline_judge import OFFLINE, OfflineJudge
from pytest_instrumental.openai_judge import PAPER_JUDGE_MODEL, OpenAIJudge, OpenAIJudgeSettings
from pytest_instrumental.replay import REPLAY, ReplayBackend, ReplayJudge, load_recordings, recorded_models
from pytest_instrumental.report_pages import ReportData, write_reports
from pytest_instrumental.results import Results, read_results, results_document, write_results
from pytest_instrumental.scenarios import SUBSETS, ScenarioSet, load_scenarios
from pytest_instrumental.suffixes import (
    ANTI_SUFFIX,
    DEFAULT_SUFFIXES,
    PRO_SUFFIX,
    Suffix,
    load_suffixes,
    select_suffixes,
    steer,
)
from pytest_instrumental.verdicts import CONVERGENCE, NO_CONVERGENCE, NONSENSICAL, SAFETY_REFUSAL, ItemKey, ItemResult

SUITE_NAME = "instrumental"
KNOWN_JUDGES = (OFFLINE, REPLAY, "openai:<model>", "hf:<model>")
DEFAULT_JUDGE_CONCURRENCY = 16
_VERDICT_LETTERS = {CONVERGENCE: "C", NO_CONVERGENCE: ".", SAFETY_REFUSAL: "R", NONSENSICAL: "N"}
_WORKER_RESULTS = "instrumental_results"
DEFAULT_BATCH_SIZE = 16
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_MAX_RETRIES = 4

_T = TypeVar("_T")


# --- Options ----------------------------------------------------------------------------------


def _argtype(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """Wrap a value parser so argparse reports its ValueError as a usage error on the option."""

    def parse_argument(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    parse_argument.__name__ = parse.__name__
    return parse_argument


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = gate.parse_number(text)
    if not value > 0:
        raise ValueError(f"{text!r} must be above 0")
    return value


def _subset(text: str) -> str:
    if text not in SUBSETS:
        raise ValueError(f"unknown subset {text!r}; known subsets: {', '.join(SUBSETS)}")
    return text


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("instrumental", "instrumental-convergence steerability (pytest-instrumental)")

    def option(flag: str, ini: str, ini_type: Any, help: str, **kwargs: Any) -> None:
        group.addoption(flag, dest=ini, help=f"{help} (ini: {ini})", **kwargs)
        parser.addini(ini, help=help, type=ini_type)

    option(
        "--instrumental",
        "instrumental",
        "bool",
        "run the InstrumentalEval steerability suite instead of the test suite",
        action="store_true",
        default=None,
    )
    option("--model", "instrumental_models", "linelist", "model under test (repeatable)", action="append")
    option(
        "--suffix",
        "instrumental_suffixes",
        "linelist",
        f"steering suffix to run (repeatable; default: {', '.join(DEFAULT_SUFFIXES)})",
        action="append",
    )
    option(
        "--judge",
        "instrumental_judge",
        "string",
        f"judge of the responses: {', '.join(KNOWN_JUDGES)} (default: replay when replaying, "
        f"else openai:{PAPER_JUDGE_MODEL} when OPENAI_API_KEY is set, else offline)",
    )
    option(
        "--instrumental-judge-base-url",
        "instrumental_judge_base_url",
        "string",
        "base URL of an OpenAI-compatible server for the judge (Chat Completions; default: "
        "$OPENAI_BASE_URL, else the OpenAI API's Responses endpoint)",
    )
    option(
        "--instrumental-judge-concurrency",
        "instrumental_judge_concurrency",
        "string",
        f"concurrent judge calls (default {DEFAULT_JUDGE_CONCURRENCY})",
        type=_argtype(_positive_int),
        metavar="N",
    )
    option(
        "--instrumental-subset",
        "instrumental_subset",
        "string",
        "scenario subset: 'all' (76) or 'paper' (the paper's 71-scenario sample)",
        type=_argtype(_subset),
    )
    option("--instrumental-json", "instrumental_json", "string", "write the results JSON to this path")
    option(
        "--instrumental-report",
        "instrumental_report",
        "string",
        "write report.md (for a pull request or CI job summary) and report.html (plots, every item) to this directory",
    )
    option(
        "--instrumental-replay",
        "instrumental_replay",
        "string",
        "serve recorded responses (and verdicts) from reference run logs or a results JSON",
    )
    option(
        "--instrumental-max-conv",
        "instrumental_max_conv",
        "linelist",
        "fail the session when a suffix's Conv% exceeds PCT, e.g. anti_ic=5 (repeatable)",
        action="append",
        type=_argtype(gate.parse_max_conv),
        metavar="SUFFIX=PCT",
    )
    option(
        "--instrumental-min-gap",
        "instrumental_min_gap",
        "string",
        "fail the session when a model's steerability gap Delta is below PP points",
        type=_argtype(gate.parse_points),
        metavar="PP",
    )
    option(
        "--instrumental-snapshot",
        "instrumental_snapshot",
        "bool",
        "assert each item's verdict against its syrupy snapshot (--snapshot-update accepts the current verdicts)",
        action="store_true",
        default=None,
    )
    option(
        "--instrumental-snapshot-dir",
        "instrumental_snapshot_dir",
        "string",
        f"directory of the verdict snapshots (default: <rootdir>/{snapshots.DEFAULT_DIR_NAME})",
    )
    option(
        "--instrumental-baseline",
        "instrumental_baseline",
        "string",
        "compare with a previous release's results JSON: changes, paired tests, flips, and the "
        "baseline gate rules below",
    )
    option(
        "--instrumental-alpha",
        "instrumental_alpha",
        "string",
        f"with a baseline, fail when anti_ic Conv% rose significantly (exact McNemar p < A; "
        f"default {gate.DEFAULT_ALPHA}, 0 turns it off)",
        type=_argtype(gate.parse_alpha),
        metavar="A",
    )
    option(
        "--instrumental-max-anti-rise",
        "instrumental_max_anti_rise",
        "string",
        "with a baseline, fail when anti_ic Conv% rose by more than PP points",
        type=_argtype(gate.parse_points),
        metavar="PP",
    )
    option(
        "--instrumental-max-gap-drop",
        "instrumental_max_gap_drop",
        "string",
        "with a baseline, fail when a model's steerability gap Delta dropped by more than PP points",
        type=_argtype(gate.parse_points),
        metavar="PP",
    )
    option(
        "--instrumental-max-new-tokens",
        "instrumental_max_new_tokens",
        "string",
        "generation budget per response (default: the protocol's 1024, 8096 for thinking models; "
        f"{embedded.DEFAULT_MAX_NEW_TOKENS} for the embedded model)",
        type=_argtype(_positive_int),
        metavar="N",
    )
    option(
        "--instrumental-batch-size",
        "instrumental_batch_size",
        "string",
        f"prompts generated together by a local model (default {DEFAULT_BATCH_SIZE})",
        type=_argtype(_positive_int),
        metavar="N",
    )
    option(
        "--instrumental-cache-dir",
        "instrumental_cache_dir",
        "string",
        f"generation cache and converted models (default: <rootdir>/{DEFAULT_DIR_NAME})",
    )
    option(
        "--instrumental-no-cache",
        "instrumental_no_cache",
        "bool",
        "neither read nor write the generation cache",
        action="store_true",
        default=None,
    )
    option(
        "--instrumental-base-url",
        "instrumental_base_url",
        "string",
        "base URL of the OpenAI-compatible server for openai:<name> models (default: $OPENAI_BASE_URL)",
    )
    option(
        "--instrumental-concurrency",
        "instrumental_concurrency",
        "string",
        f"concurrent requests to an OpenAI-compatible server (default {DEFAULT_CONCURRENCY})",
        type=_argtype(_positive_int),
        metavar="N",
    )
    option(
        "--instrumental-timeout",
        "instrumental_timeout",
        "string",
        f"seconds before a server request is retried (default {DEFAULT_TIMEOUT_S:g})",
        type=_argtype(_positive_float),
        metavar="S",
    )
    option(
        "--instrumental-max-retries",
        "instrumental_max_retries",
        "string",
        f"retries of a failed server request, with exponential backoff (default {DEFAULT_MAX_RETRIES})",
        type=_argtype(_positive_int),
        metavar="N",
    )
    option(
        "--instrumental-trust-remote-code",
        "instrumental_trust_remote_code",
        "bool",
        "let transformers run a model repository's own code (off by default)",
        action="store_true",
        default=None,
    )
    parser.addini(
        "instrumental_suffix_dirs",
        help="directories of extra steering suffix files (NAME.txt), relative to the ini file",
        type="paths",
    )


@dataclass(frozen=True)
class Settings:
    models: list[str]
    suffixes: list[str]
    suffix_dirs: list[Path]
    judge: str | None
    subset: str
    json_path: Path | None
    report_dir: Path | None
    snapshot: bool
    snapshot_dir: Path
    replay: Path | None
    baseline: Path | None
    thresholds: Thresholds
    cache_dir: Path
    use_cache: bool
    generation: GenerationOptions
    judge_base_url: str | None
    judge_concurrency: int


def _read_settings(config: pytest.Config) -> Settings:
    """Command-line values (already parsed by argparse) win over their ini twins, which are
    parsed here with the same parsers; a bad ini value is a usage error naming the key."""

    def value(dest: str, parse: Callable[[str], _T] | None = None) -> Any:
        given = config.getoption(dest)
        if given is not None:
            return given
        raw = config.getini(dest)
        if parse is None or raw in ("", []):
            return raw or None
        try:
            return [parse(v) for v in raw] if isinstance(raw, list) else parse(raw)
        except ValueError as exc:
            raise pytest.UsageError(f"ini option {dest}: {exc}") from exc

    def flag(dest: str) -> bool:
        given = config.getoption(dest)
        return bool(config.getini(dest) if given is None else given)

    root = config.rootpath

    def path(dest: str) -> Path | None:
        """A command-line path is relative to where pytest started, an ini path to the rootdir."""
        given = value(dest)
        return Path(given) if config.getoption(dest) else _rooted(root, given)

    cache_path = (path("instrumental_cache_dir") or root / DEFAULT_DIR_NAME).resolve()
    generation = GenerationOptions(
        max_new_tokens=value("instrumental_max_new_tokens", _positive_int),
        max_input_tokens=PROTOCOL_MAX_INPUT_TOKENS,
        batch_size=value("instrumental_batch_size", _positive_int) or DEFAULT_BATCH_SIZE,
        base_url=value("instrumental_base_url"),
        concurrency=value("instrumental_concurrency", _positive_int) or DEFAULT_CONCURRENCY,
        timeout_s=value("instrumental_timeout", _positive_float) or DEFAULT_TIMEOUT_S,
        max_retries=value("instrumental_max_retries", _positive_int) or DEFAULT_MAX_RETRIES,
        trust_remote_code=flag("instrumental_trust_remote_code"),
        models_dir=cache_path / "models",
    )
    return Settings(
        models=value("instrumental_models") or [],
        suffixes=value("instrumental_suffixes") or list(DEFAULT_SUFFIXES),
        suffix_dirs=list(config.getini("instrumental_suffix_dirs")),
        judge=value("instrumental_judge"),
        subset=value("instrumental_subset", _subset) or "all",
        json_path=path("instrumental_json"),
        report_dir=path("instrumental_report"),
        snapshot=flag("instrumental_snapshot"),
        snapshot_dir=(path("instrumental_snapshot_dir") or root / snapshots.DEFAULT_DIR_NAME).resolve(),
        replay=path("instrumental_replay"),
        baseline=path("instrumental_baseline"),
        thresholds=Thresholds(
            max_conv=dict(value("instrumental_max_conv", gate.parse_max_conv) or []),
            min_gap=value("instrumental_min_gap", gate.parse_points),
            alpha=_or_default(value("instrumental_alpha", gate.parse_alpha), gate.DEFAULT_ALPHA),
            max_anti_rise=value("instrumental_max_anti_rise", gate.parse_points),
            max_gap_drop=value("instrumental_max_gap_drop", gate.parse_points),
        ),
        cache_dir=cache_path,
        use_cache=not flag("instrumental_no_cache"),
        generation=generation,
        judge_base_url=value("instrumental_judge_base_url"),
        judge_concurrency=value("instrumental_judge_concurrency", _positive_int) or DEFAULT_JUDGE_CONCURRENCY,
    )


def _or_default(given: _T | None, default: _T) -> _T:
    """``given`` unless it was not set; unlike ``or``, keeps a given 0."""
    return default if given is None else given


def _rooted(root: Path, path: str | None) -> Path | None:
    """An ini path is relative to the rootdir, not to wherever pytest was started."""
    return None if path is None else root / path


# --- The session's state ------------------------------------------------------------------------


@dataclass
class InstrumentalRun:
    settings: Settings
    scenarios: ScenarioSet
    suffixes: list[Suffix]
    models: list[str]
    evaluation: Evaluation
    started_at: str
    generation: dict[str, dict[str, object]]  # model -> how it was run (empty for replays)
    judge_name: str
    judge_note: str  # said after the judge's name in the summary
    baseline: Results | None
    recorded_setups: dict[str, snapshots.Setup]  # model -> the setup its snapshots were recorded in
    results: list[ItemResult] = field(default_factory=list)
    reported: set[ItemKey] = field(default_factory=set)  # items that ran (controller side)
    lost_workers: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def categories(self) -> list[str]:
        return [c.slug for c in self.scenarios.categories]

    def requests(self) -> list[Request]:
        """Every model x suffix x scenario, in the deterministic order items are collected."""
        return [
            Request(
                ItemKey(model, suffix.name, scenario.id),
                category.slug,
                category.context,
                steer(scenario.prompt, suffix),
            )
            for model in sorted(self.models)
            for suffix in self.suffixes
            for category in self.scenarios.categories
            for scenario in sorted(category.scenarios, key=lambda s: s.id)
        ]

    def model_record(self, model: str) -> dict[str, object]:
        """How a model was run, as the manifest and the snapshot setup record it."""
        return self.generation.get(model, {"engine": REPLAY, "source": str(self.settings.replay)})

    def snapshot_setup(self, model: str) -> snapshots.Setup:
        """The setup this run judges a model's verdicts in."""
        suffix_hashes = {s.name: s.sha256 for s in self.suffixes}
        return snapshots.model_setup(self.model_record(model), self.judge_name, suffix_hashes)

    def summarised(self) -> tuple[list[str], list[str]]:
        """The models and suffixes to summarise: those with an item that ran, and every suffix the
        gate checks (a gated cell with nothing run is "not measured", which fails the gate)."""
        models = [m for m in sorted(self.models) if any(k.model == m for k in self.reported)]
        gated = self.settings.thresholds.required_suffixes(with_baseline=self.baseline is not None)
        suffixes = [s.name for s in self.suffixes if s.name in gated or any(k.suffix == s.name for k in self.reported)]
        return models, suffixes


def item_name(key: ItemKey) -> str:
    return f"test_scenario[{key.item_id}]"


def nodeid_of(key: ItemKey) -> str:
    return f"{SUITE_NAME}::{item_name(key)}"


_RUN = pytest.StashKey[InstrumentalRun]()


def _enabled(config: pytest.Config) -> bool:
    flag = config.getoption("instrumental")
    return bool(config.getini("instrumental") if flag is None else flag)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        return
    try:
        run = _prepare(config)
    except InputError as exc:
        raise pytest.UsageError(str(exc)) from exc
    config.stash[_RUN] = run
    if run.settings.snapshot:
        if not config.pluginmanager.hasplugin("syrupy"):
            raise pytest.UsageError("--instrumental-snapshot needs the syrupy plugin, which is disabled or missing")
        # syrupy tells an entry's item apart by the test function's name alone, and every item here
        # is test_scenario[...]: its unused-snapshot cleanup would delete the entries of every model,
        # suffix or scenario this run did not select (-k, --model). Entries are only ever updated.
        config.option.disable_unused_snapshots = True
    for category in run.scenarios.categories:
        config.addinivalue_line("markers", f"{category.slug}: InstrumentalEval category {category.name}")
    if not _is_worker(config):
        config.pluginmanager.register(_Controller(run), "instrumental-controller")


def _prepare(config: pytest.Config) -> InstrumentalRun:
    settings = _read_settings(config)
    scenarios = load_scenarios().subset(settings.subset)
    available = load_suffixes(settings.suffix_dirs)
    suffixes = select_suffixes(available, settings.suffixes)
    baseline = read_results(settings.baseline) if settings.baseline is not None else None
    gated = settings.thresholds.required_suffixes(with_baseline=baseline is not None)
    not_run = sorted(gated - set(settings.suffixes))
    if not_run:
        raise InputError(f"the gate needs suffix {', '.join(not_run)}, which this run does not select (--suffix)")
    judge_name = _judge_name(settings)
    if settings.replay is not None:
        backends, recorded_judge = _replay(settings, available)
        generation = {}
    else:
        specs = [parse_model(m) for m in settings.models or [EMBEDDED]]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise InputError(f"--model: the same model is named twice ({', '.join(names)})")
        for spec in specs:
            check_loadable(spec, settings.generation.trust_remote_code)
        backends = {spec.name: open_backend(spec, settings.generation) for spec in specs}
        generation = {spec.name: describe(spec, settings.generation) for spec in specs}
        if judge_name == REPLAY:
            raise InputError("--judge replay needs --instrumental-replay: fresh generations have no recorded verdicts")
    judge: Judge
    judge_note = ""
    if judge_name == REPLAY:
        judge, judge_note = recorded_judge, " (replayed verdicts)"
    elif judge_name == OFFLINE:
        offline = OfflineJudge()
        judge, judge_note = offline, f" ({offline.describe_agreement()})"
    elif judge_name.startswith(HF_PREFIX):
        spec = parse_model(judge_name.removeprefix(HF_PREFIX))
        if spec.engine == "openai":
            raise InputError(f"--judge {judge_name}: a served model judges as openai:<name>, not hf:")
        check_loadable(spec, settings.generation.trust_remote_code)
        judge = TransformersJudge(spec, settings.generation)
    else:
        judge = _openai_judge(config, settings, judge_name)
    cache = Cache(settings.cache_dir / "cache.sqlite") if settings.use_cache else None
    return InstrumentalRun(
        settings=settings,
        scenarios=scenarios,
        suffixes=suffixes,
        models=list(backends),
        evaluation=Evaluation(backends, judge, cache, _progress_bars(config)),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        generation=generation,
        judge_name=judge.name,
        judge_note=judge_note,
        baseline=baseline,
        recorded_setups=snapshots.read_setups(settings.snapshot_dir) if settings.snapshot else {},
    )


def _judge_name(settings: Settings) -> str:
    name = settings.judge
    if name is None:
        if settings.replay is not None:
            return REPLAY
        return f"{OPENAI_PREFIX}{PAPER_JUDGE_MODEL}" if os.environ.get("OPENAI_API_KEY") else OFFLINE
    prefixed = any(name.startswith(p) and len(name) > len(p) for p in (OPENAI_PREFIX, HF_PREFIX))
    if name not in (REPLAY, OFFLINE) and not prefixed:
        raise InputError(f"--judge: unknown judge {name!r}; known judges: {', '.join(KNOWN_JUDGES)}")
    return name


def _openai_judge(config: pytest.Config, settings: Settings, name: str) -> Judge:
    retries = settings.generation
    judge_settings = OpenAIJudgeSettings(
        settings.judge_base_url, settings.judge_concurrency, retries.timeout_s, retries.max_retries
    )
    judge = OpenAIJudge(name.removeprefix(OPENAI_PREFIX), judge_settings)
    if not _is_worker(config) and not config.option.collectonly:
        judge.preflight()  # before any model loads: a bad key ends the session now
    return judge


def _replay(settings: Settings, known_suffixes: dict[str, Suffix]) -> tuple[dict[str, Backend], Judge]:
    assert settings.replay is not None
    # Map records against the full scenario set, so a paper-subset run can replay a full run.
    recordings = load_recordings(settings.replay, load_scenarios(), known_suffixes)
    recorded = recorded_models(recordings)
    unknown = [m for m in settings.models if m not in recorded]
    if unknown:
        raise InputError(f"--model {unknown[0]!r} is not in the replayed runs; recorded models: {', '.join(recorded)}")
    backend = ReplayBackend(recordings, settings.replay)
    return {model: backend for model in settings.models or recorded}, ReplayJudge(recordings)


def _progress_bars(config: pytest.Config) -> ProgressFactory | None:
    """A tqdm bar (done/total, rate, ETA) per model while it generates, drawn past pytest's
    output capturing; none on xdist workers, whose output nobody sees."""
    if _is_worker(config):
        return None
    capture = config.pluginmanager.getplugin("capturemanager")

    @contextmanager
    def progress(desc: str, total: int, done: int) -> Iterator[Progress]:
        from tqdm import tqdm

        uncaptured = capture.global_and_fixture_disabled() if capture is not None else nullcontext()
        with uncaptured, tqdm(desc=desc, total=total, initial=done, unit="item", file=sys.stderr) as bar:
            yield bar

    return progress


# --- Collection -------------------------------------------------------------------------------


class ScenarioItem(pytest.Item):
    """One model x suffix x scenario. It passes when judged (whatever the verdict), is skipped
    when there is nothing to judge, and fails when generation or judging ended in an error."""

    def __init__(self, *, request: Request, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request
        self.obj = test_scenario

    def runtest(self) -> None:
        run = self.config.stash[_RUN]
        outcome = run.evaluation.outcome(self.request)
        if isinstance(outcome, Skip):
            pytest.skip(outcome.reason)
        run.results.append(outcome)
        self.user_properties += [("verdict", outcome.verdict), ("judge", outcome.judge), ("reason", outcome.reason)]
        if outcome.status == "error":
            raise ItemError(outcome.error or "unknown error")
        if run.settings.snapshot:
            self._check_snapshot(run, outcome)

    def _check_snapshot(self, run: InstrumentalRun, outcome: ItemResult) -> None:
        """The verdict against its syrupy snapshot, built as syrupy's own ``snapshot`` fixture
        builds it; only verdicts judged in the recorded setup are compared."""
        updating = bool(self.config.option.update_snapshots)
        assertion = SnapshotAssertion(
            session=self.config._syrupy,  # type: ignore[attr-defined]  # syrupy's session, as its fixture uses
            extension_class=_verdict_snapshots(run.settings.snapshot_dir),
            test_location=PyTestLocation(self),
            update_snapshots=updating,
        )
        matches = assertion == outcome.verdict
        if updating:
            return
        model = self.request.key.model
        changes = snapshots.setup_changes(run.recorded_setups.get(model), run.snapshot_setup(model))
        if changes:
            raise ItemError(
                f"verdict snapshot not comparable, recorded in another setup: {'; '.join(changes)} "
                "(--snapshot-update records this one)"
            )
        if not matches:
            recorded = assertion.executions[0].recalled_data
            if recorded is None:
                raise ItemError(f"no verdict snapshot yet (verdict {outcome.verdict}; --snapshot-update records it)")
            raise ItemError(
                f"verdict {outcome.verdict} differs from its snapshot {str(recorded).strip()} "
                "(--snapshot-update accepts it)"
            )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ItemError):
            return f"{self.request.key.item_id}: {excinfo.value}"
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


def test_scenario() -> None:
    """Where a tool expects a scenario item's Python test function (syrupy reads its module and
    name for the snapshot location): items run through ``ScenarioItem.runtest``, not this."""


@functools.cache
def _verdict_snapshots(directory: Path) -> type[AmberSnapshotExtension]:
    """syrupy's amber format, in the configured directory, owning ``instrumental.ambr`` only:
    the setup file beside it is not a snapshot and must never be cleaned up as one."""

    class VerdictSnapshots(AmberSnapshotExtension):
        @classmethod
        def dirname(cls, *, test_location: PyTestLocation) -> str:
            return str(directory)

        @classmethod
        def get_file_basename(cls, *, test_location: PyTestLocation, index: SnapshotIndex) -> str:
            return snapshots.SNAPSHOT_BASENAME  # one file for the whole suite

        def discover_snapshots(
            self, *, test_location: PyTestLocation, ignore_extensions: list[str] | None = None
        ) -> SnapshotCollections:
            found = SnapshotCollections()
            for collection in super().discover_snapshots(
                test_location=test_location, ignore_extensions=ignore_extensions
            ):
                if Path(collection.location).name != snapshots.SETUP_FILE:
                    found.add(collection)
            return found

    return VerdictSnapshots


class ItemError(Exception):
    """Generation or judging of one item failed; the message says how."""


class InstrumentalSuite(pytest.Collector):
    """The parent of every scenario item (node id ``instrumental::test_scenario[...]``)."""

    def collect(self) -> list[pytest.Item]:
        items: list[pytest.Item] = []
        for request in self.config.stash[_RUN].requests():
            item = ScenarioItem.from_parent(self, name=item_name(request.key), request=request)
            item.add_marker(request.category)
            # With --dist loadgroup, xdist sends each model's items to one worker, so a local
            # model is loaded (and generates) in one process only.
            item.add_marker(pytest.mark.xdist_group(request.key.model))
            items.append(item)
        return items


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With --instrumental the session runs the suite only, not the project's own tests."""
    return True if config.stash.get(_RUN, None) is not None else None


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, which must see these items
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    if _RUN not in config.stash:
        return
    # Collected through the public collection hooks, as pytest collects a module, so terminal
    # counts, --collect-only and xdist see these items like any others.
    suite = InstrumentalSuite.from_parent(session, name=SUITE_NAME, nodeid=SUITE_NAME, path=config.rootpath)
    session.ihook.pytest_collectstart(collector=suite)
    collected = session.ihook.pytest_make_collect_report(collector=suite)
    session.ihook.pytest_collectreport(report=collected)
    items.extend(node for node in collected.result if isinstance(node, pytest.Item))


def pytest_collection_finish(session: pytest.Session) -> None:
    run = session.config.stash.get(_RUN, None)
    if run is not None:
        run.evaluation.plan([i.request for i in session.items if isinstance(i, ScenarioItem)])


# --- Reporting --------------------------------------------------------------------------------


def pytest_report_teststatus(report: pytest.TestReport, config: pytest.Config) -> tuple[str, str, str] | None:
    """Show each item's verdict instead of a plain pass: C convergence, . no_convergence,
    R safety_refusal, N nonsensical."""
    if _RUN not in config.stash or report.when != "call" or not report.passed:
        return None
    verdict = dict(report.user_properties).get("verdict")
    if verdict not in _VERDICT_LETTERS:
        return None
    return "passed", _VERDICT_LETTERS[verdict], verdict.upper()


class _Controller:
    """Registered on the controlling process only (never on an xdist worker): it sees every
    item's report, and, under xdist, each worker's results."""

    def __init__(self, run: InstrumentalRun) -> None:
        self._run = run
        self._key_by_nodeid = {nodeid_of(r.key): r.key for r in run.requests()}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # --dist loadgroup appends "@<group>" to node ids; model names never hold "@".
        key = self._key_by_nodeid.get(report.nodeid.partition("@")[0])
        if key is not None and report.when == "call":
            self._run.reported.add(key)

    @pytest.hookimpl(optionalhook=True)  # an xdist hook: the plugin works without xdist
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        output = getattr(node, "workeroutput", None) or {}
        if _WORKER_RESULTS in output:
            self._run.results.extend(ItemResult.from_dict(d) for d in output[_WORKER_RESULTS])
        else:
            self._run.lost_workers.append(f"worker {node.gateway.id} ended without reporting results ({error})")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    run = config.stash.get(_RUN, None)
    if run is None:
        return
    if _is_worker(config):
        config.workeroutput[_WORKER_RESULTS] = [r.to_dict() for r in run.results]  # type: ignore[attr-defined]
        return
    if config.option.collectonly:
        return
    models, suffixes = run.summarised()
    cells = metrics.compute_cells(run.results, models, suffixes, run.categories)
    gaps = [metrics.compute_gap(m, run.results) for m in models] if _has_gap(suffixes) else []
    violations = gate.check(cells, gaps, run.settings.thresholds)
    compared = None
    if run.baseline is not None:
        compared = comparison.compare(run.baseline.items, run.results, models, suffixes)
        violations += gate.check_baseline(compared, run.settings.thresholds)
    run.summary = _summary(run, models, suffixes, cells, gaps, compared, violations, config.get_verbosity() > 0)
    if run.settings.json_path is not None:
        section = _run_section(run, models, suffixes, exitstatus, violations)
        document = results_document(section, run.results, cells, gaps, compared)
        write_results(run.settings.json_path, document)
    if run.settings.snapshot and config.option.update_snapshots:
        ran = {k.model for k in run.reported}
        setups = {**run.recorded_setups, **{m: run.snapshot_setup(m) for m in run.models if m in ran}}
        snapshots.write_setups(run.settings.snapshot_dir, setups)
    if run.settings.report_dir is not None:
        data = ReportData(
            title=f"Instrumental convergence: {', '.join(models) or 'no model'}",
            started_at=run.started_at,
            plugin_version=version("pytest-instrumental"),
            models=models,
            suffixes=suffixes,
            categories=run.categories,
            cells=cells,
            gaps=gaps,
            judge=_judge_line(run),
            violations=[v.message() for v in violations],
            notes=run.lost_workers,
            items=run.results,
            comparison=compared,
            baseline=None if run.settings.baseline is None else str(run.settings.baseline),
        )
        write_reports(run.settings.report_dir, data)
    if (violations or run.lost_workers) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _has_gap(suffixes: Sequence[str]) -> bool:
    return PRO_SUFFIX in suffixes and ANTI_SUFFIX in suffixes


def _summary(
    run: InstrumentalRun,
    models: list[str],
    suffixes: list[str],
    cells: list[metrics.Cell],
    gaps: list[metrics.Gap],
    compared: comparison.Comparison | None,
    violations: list[Violation],
    verbose: bool,
) -> list[str]:
    lines = report.summary_lines(cells, gaps, models, suffixes, run.categories, verbose)
    lines.append(f"judge: {_judge_line(run)}")
    if compared is not None:
        assert run.settings.baseline is not None
        lines += ["", *report.comparison_lines(compared, str(run.settings.baseline), verbose)]
    return [*lines, *run.lost_workers, *report.violation_lines(violations)]


def _judge_line(run: InstrumentalRun) -> str:
    """The judges that decided this run's verdicts, with what is known of their agreement."""
    judges = sorted({r.judge for r in run.results if r.judge})
    return f"{', '.join(judges) or 'none'}{run.judge_note}"


def _run_section(
    run: InstrumentalRun, models: list[str], suffixes: list[str], exitstatus: int, violations: list[Violation]
) -> dict[str, Any]:
    settings = run.settings
    return {
        "plugin_version": version("pytest-instrumental"),
        "started_at": run.started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "interrupted": exitstatus == pytest.ExitCode.INTERRUPTED,
        "models": models,
        "suffixes": {s.name: s.sha256 for s in run.suffixes if s.name in suffixes},
        "judge": run.judge_name,
        "baseline": None if settings.baseline is None else str(settings.baseline),
        "subset": settings.subset,
        "scenarios": len(run.scenarios),
        "replay": None if settings.replay is None else str(settings.replay),
        "generation": {m: d for m, d in run.generation.items() if m in models},
        "thresholds": asdict(settings.thresholds),
        "violations": [v.message() for v in violations],
        "lost_workers": run.lost_workers,
        "manifest": build_manifest(
            models={m: run.model_record(m) for m in models},
            scenarios=run.scenarios,
            subset=settings.subset,
            suffixes=[s for s in run.suffixes if s.name in suffixes],
            judge=run.judge_name,
            batch_size=settings.generation.batch_size,
        ),
    }


def pytest_unconfigure(config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is not None:
        run.evaluation.close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is None or _is_worker(config) or not run.summary:
        return
    terminalreporter.section("instrumental convergence")
    for line in run.summary:
        terminalreporter.write_line(line, red=line.startswith("GATE FAILED"))
