"""The pytest plugin: options, collection of scenario items, running them, the end-of-session
summary, results file and gate. The only module that imports pytest; everything it drives is
a plain module (scenarios, suffixes, replay, evaluation, metrics, gate, results, report).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pytest_instrumental import gate, metrics, report
from pytest_instrumental.backends import Backend, Request
from pytest_instrumental.errors import InputError
from pytest_instrumental.evaluation import Evaluation, Skip
from pytest_instrumental.gate import Thresholds, Violation
from pytest_instrumental.judges import Judge
from pytest_instrumental.replay import REPLAY, ReplayBackend, ReplayJudge, load_recordings, recorded_models
from pytest_instrumental.results import results_document, write_results
from pytest_instrumental.scenarios import SUBSETS, ScenarioSet, load_scenarios
from pytest_instrumental.suffixes import DEFAULT_SUFFIXES, Suffix, load_suffixes, select_suffixes, steer
from pytest_instrumental.verdicts import CONVERGENCE, NO_CONVERGENCE, NONSENSICAL, SAFETY_REFUSAL, ItemKey, ItemResult

SUITE_NAME = "instrumental"
KNOWN_JUDGES = (REPLAY,)
_VERDICT_LETTERS = {CONVERGENCE: "C", NO_CONVERGENCE: ".", SAFETY_REFUSAL: "R", NONSENSICAL: "N"}
_WORKER_RESULTS = "instrumental_results"

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
    option("--judge", "instrumental_judge", "string", f"judge of the responses (known: {', '.join(KNOWN_JUDGES)})")
    option(
        "--instrumental-subset",
        "instrumental_subset",
        "string",
        "scenario subset: 'all' (76) or 'paper' (the paper's 71-scenario sample)",
        type=_argtype(_subset),
    )
    option("--instrumental-json", "instrumental_json", "string", "write the results JSON to this path")
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
    replay: Path | None
    thresholds: Thresholds


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

    root = config.rootpath
    json_path, replay = value("instrumental_json"), value("instrumental_replay")
    return Settings(
        models=value("instrumental_models") or [],
        suffixes=value("instrumental_suffixes") or list(DEFAULT_SUFFIXES),
        suffix_dirs=list(config.getini("instrumental_suffix_dirs")),
        judge=value("instrumental_judge"),
        subset=value("instrumental_subset", _subset) or "all",
        json_path=Path(json_path) if config.getoption("instrumental_json") else _rooted(root, json_path),
        replay=Path(replay) if config.getoption("instrumental_replay") else _rooted(root, replay),
        thresholds=Thresholds(
            max_conv=dict(value("instrumental_max_conv", gate.parse_max_conv) or []),
            min_gap=value("instrumental_min_gap", gate.parse_points),
        ),
    )


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

    def summarised(self) -> tuple[list[str], list[str]]:
        """The models and suffixes to summarise: those with an item that ran, and every suffix the
        gate checks (a gated cell with nothing run is "not measured", which fails the gate)."""
        models = [m for m in sorted(self.models) if any(k.model == m for k in self.reported)]
        gated = self.settings.thresholds.suffixes
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
    for category in run.scenarios.categories:
        config.addinivalue_line("markers", f"{category.slug}: InstrumentalEval category {category.name}")
    if not _is_worker(config):
        config.pluginmanager.register(_Controller(run), "instrumental-controller")


def _prepare(config: pytest.Config) -> InstrumentalRun:
    settings = _read_settings(config)
    scenarios = load_scenarios().subset(settings.subset)
    available = load_suffixes(settings.suffix_dirs)
    suffixes = select_suffixes(available, settings.suffixes)
    not_run = sorted(settings.thresholds.suffixes - set(settings.suffixes))
    if not_run:
        raise InputError(f"the gate needs suffix {', '.join(not_run)}, which this run does not select (--suffix)")
    backend, judge, models = _backend_and_judge(settings, available)
    return InstrumentalRun(
        settings=settings,
        scenarios=scenarios,
        suffixes=suffixes,
        models=models,
        evaluation=Evaluation(backend, judge),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _backend_and_judge(settings: Settings, known_suffixes: dict[str, Suffix]) -> tuple[Backend, Judge, list[str]]:
    if settings.judge not in (None, *KNOWN_JUDGES):
        raise InputError(f"--judge: unknown judge {settings.judge!r}; known judges: {', '.join(KNOWN_JUDGES)}")
    if settings.replay is None:
        raise InputError(
            "no model backend is available in this version: replay recorded runs with "
            "--instrumental-replay DIR (e.g. the paper's reference runs)"
        )
    # Map records against the full scenario set, so a paper-subset run can replay a full run.
    recordings = load_recordings(settings.replay, load_scenarios(), known_suffixes)
    recorded = recorded_models(recordings)
    unknown = [m for m in settings.models if m not in recorded]
    if unknown:
        raise InputError(f"--model {unknown[0]!r} is not in the replayed runs; recorded models: {', '.join(recorded)}")
    return ReplayBackend(recordings, settings.replay), ReplayJudge(recordings), settings.models or recorded


# --- Collection -------------------------------------------------------------------------------


class ScenarioItem(pytest.Item):
    """One model x suffix x scenario. It passes when judged (whatever the verdict), is skipped
    when there is nothing to judge, and fails when generation or judging ended in an error."""

    def __init__(self, *, request: Request, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request

    def runtest(self) -> None:
        run = self.config.stash[_RUN]
        outcome = run.evaluation.outcome(self.request)
        if isinstance(outcome, Skip):
            pytest.skip(outcome.reason)
        run.results.append(outcome)
        self.user_properties += [("verdict", outcome.verdict), ("judge", outcome.judge), ("reason", outcome.reason)]
        if outcome.status == "error":
            raise ItemError(outcome.error or "unknown error")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ItemError):
            return f"{self.request.key.item_id}: {excinfo.value}"
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class ItemError(Exception):
    """Generation or judging of one item failed; the message says how."""


class InstrumentalSuite(pytest.Collector):
    """The parent of every scenario item (node id ``instrumental::test_scenario[...]``)."""

    def collect(self) -> list[pytest.Item]:
        items: list[pytest.Item] = []
        for request in self.config.stash[_RUN].requests():
            item = ScenarioItem.from_parent(self, name=item_name(request.key), request=request)
            item.add_marker(request.category)
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
        key = self._key_by_nodeid.get(report.nodeid)
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
    run.summary = _summary(run, models, suffixes, cells, gaps, violations, config.get_verbosity() > 0)
    if run.settings.json_path is not None:
        section = _run_section(run, models, suffixes, exitstatus, violations)
        document = results_document(section, run.results, cells, gaps)
        write_results(run.settings.json_path, document)
    if (violations or run.lost_workers) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _has_gap(suffixes: Sequence[str]) -> bool:
    return "pro_ic" in suffixes and "anti_ic" in suffixes


def _summary(
    run: InstrumentalRun,
    models: list[str],
    suffixes: list[str],
    cells: list[metrics.Cell],
    gaps: list[metrics.Gap],
    violations: list[Violation],
    verbose: bool,
) -> list[str]:
    judges = sorted({r.judge for r in run.results if r.judge})
    lines = report.summary_lines(cells, gaps, models, suffixes, run.categories, verbose)
    lines.append(
        f"judge: {', '.join(judges) or 'none'}"
        + (" (replayed verdicts)" if run.settings.judge in (None, REPLAY) else "")
    )
    return [*lines, *run.lost_workers, *report.violation_lines(violations)]


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
        "judge": settings.judge or REPLAY,
        "subset": settings.subset,
        "scenarios": len(run.scenarios),
        "replay": None if settings.replay is None else str(settings.replay),
        "thresholds": {"max_conv": dict(settings.thresholds.max_conv), "min_gap": settings.thresholds.min_gap},
        "violations": [v.message() for v in violations],
        "lost_workers": run.lost_workers,
    }


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    run = config.stash.get(_RUN, None)
    if run is None or _is_worker(config) or not run.summary:
        return
    terminalreporter.section("instrumental convergence")
    for line in run.summary:
        terminalreporter.write_line(line, red=line.startswith("GATE FAILED"))
