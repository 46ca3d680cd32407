"""The pytest plugin. Loaded in every pytest run, it only declares the options; with
``--instrumental`` it builds the run (run.py) and registers ``InstrumentalPlugin``, as pytest's
cacheprovider registers its plugins only when asked, whose every hook is one call of a verb of
the run. The scenario items are collected here; what an item does is ``InstrumentalRun.run_item``.
Loading this module imports no heavy library: without ``--instrumental`` the plugin costs a
project's test runs next to nothing, and with it each library loads when an option needs it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_instrumental import options
from pytest_instrumental.errors import InputError

if TYPE_CHECKING:
    from syrupy.extensions.amber import AmberSnapshotExtension

    from pytest_instrumental.progress import Progress, ProgressFactory
    from pytest_instrumental.run import InstrumentalRun, Written
    from pytest_instrumental.statistics.summary import RunSummary
    from pytest_instrumental.vocabulary.request import Request
    from pytest_instrumental.vocabulary.verdicts import ItemResult

_RUN: pytest.StashKey[InstrumentalRun] = pytest.StashKey()
_PASSING_EXITS = (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED)
_REPORTED_RESULTS = "instrumental_results"  # the attribute of a worker's item report holding its results


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup(options.GROUP, options.GROUP_DESCRIPTION)
    for option in options.OPTIONS:
        group.addoption(option.flag, **option.argparse_kwargs())
        parser.addini(option.ini, help=option.help, type=option.ini_type)  # type: ignore[arg-type]
    parser.addini(options.SUFFIX_DIRS_INI, help=options.SUFFIX_DIRS_HELP, type="paths")
    parser.addini(options.PREFILL_DIRS_INI, help=options.PREFILL_DIRS_HELP, type="paths")


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _ini(config: pytest.Config) -> Callable[[str], Any]:
    """``config.getini``, with the key named when pytest cannot parse its value (``instrumental = maybe``)."""

    def value(key: str) -> Any:
        try:
            return config.getini(key)
        except pytest.UsageError as exc:
            raise pytest.UsageError(f"ini option {key}: {exc}") from None

    return value


def pytest_configure(config: pytest.Config) -> None:
    if not options.enabled(config.getoption, _ini(config)):
        return
    from pytest_instrumental.run import prepare_run
    from pytest_instrumental.text import terminal_line

    try:
        ini = _ini(config)
        dirs = [list(ini(options.SUFFIX_DIRS_INI)), list(ini(options.PREFILL_DIRS_INI))]
        settings = options.read_settings(config.getoption, ini, config.rootpath, *dirs)
        if _is_worker(config):
            _pin_gpus(config, settings.gpus_per_worker)
        prepare = not _is_worker(config) and not config.option.collectonly
        # An xdist controller generates nothing: its workers start the servers they need.
        generates_here = getattr(config.option, "dist", "no") == "no"
        run = prepare_run(settings, _progress_bars(config), prepare, generates_here, _notice(config))
    except InputError as exc:  # it may quote a server or a file: shown as inert text
        raise pytest.UsageError(terminal_line(str(exc))) from exc
    config.stash[_RUN] = run
    _stop_on_sigterm(config)
    for category in run.scenarios.categories:
        config.addinivalue_line("markers", f"{category.slug}: InstrumentalEval category {category.name}")
    config.pluginmanager.register(InstrumentalPlugin(run), "instrumental-run")
    if settings.snapshot:
        config.pluginmanager.register(InstrumentalSnapshots(run), "instrumental-snapshots")
    if _is_worker(config):
        config.pluginmanager.register(InstrumentalWorker(run), "instrumental-worker")
    else:
        config.pluginmanager.register(InstrumentalController(run), "instrumental-controller")


def _stop_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a CI job cancelled, a container stopped) ends the run as Ctrl-C does: what finished
    is judged, summarised and written, marked incomplete. Only where nothing else handles SIGTERM,
    and only for this session: the handler before it comes back at the end."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    def restore() -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, interrupt)
    config.add_cleanup(restore)


def _pin_gpus(config: pytest.Config, per_worker: int) -> None:
    """This xdist worker's own GPUs, set before anything initialises CUDA (models, engine servers)."""
    from pytest_instrumental.parallel import driver_gpus, visible_gpus, worker_gpus, worker_index

    index = worker_index(str(config.workerinput["workerid"]))  # type: ignore[attr-defined]
    devices = visible_gpus(os.environ, driver_gpus)
    if index is not None and devices:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(worker_gpus(devices, index, per_worker))


def _notice(config: pytest.Config) -> Callable[[str], None]:
    """A line on stderr now, past pytest's capturing (the run is waiting for something)."""
    capture = config.pluginmanager.getplugin("capturemanager")

    def say(line: str) -> None:
        from pytest_instrumental.text import terminal_line

        uncaptured = capture.global_and_fixture_disabled() if capture is not None else nullcontext()
        with uncaptured:
            print(terminal_line(line), file=sys.stderr, flush=True)

    return say


def _progress_bars(config: pytest.Config) -> ProgressFactory | None:
    """A tqdm bar (done/total, rate, ETA) per model while it generates or trains, drawn past
    pytest's output capturing; none on xdist workers, whose output nobody sees."""
    if _is_worker(config):
        return None
    capture = config.pluginmanager.getplugin("capturemanager")

    @contextmanager
    def progress(desc: str, total: int, done: int, unit: str = "item", leave: bool = True) -> Iterator[Progress]:
        from tqdm import tqdm

        from pytest_instrumental.text import visible  # a plugin's backend names itself: shown inert

        uncaptured = capture.global_and_fixture_disabled() if capture is not None else nullcontext()
        # uncaptured first: the bar takes the terminal's stderr, not the captured one
        with (
            uncaptured,
            tqdm(desc=visible(desc), total=total, initial=done, unit=unit, leave=leave, file=sys.stderr) as bar,
        ):
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
        self.verdict: str | None = None  # once judged: what a verdict snapshot compares
        self.results: tuple[ItemResult, ...] = ()  # once judged: each epoch's result

    def runtest(self) -> None:
        run = self.config.stash[_RUN]
        outcome = run.run_item(self.request)
        if outcome.skip_reason is not None:
            pytest.skip(outcome.skip_reason)
        self.user_properties += outcome.properties
        self.results = outcome.results
        if outcome.failure is not None:
            raise ItemError(outcome.failure)
        self.verdict = str(outcome.verdict)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ItemError):  # server text: made visible, not interpreted (text.py)
            from pytest_instrumental.text import visible

            return f"{self.request.key.item_id}: {visible(str(excinfo.value))}"
        return str(super().repr_failure(excinfo, style=style))

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


def test_scenario() -> None:
    """Where a tool expects a scenario item's Python test function (syrupy reads its module and
    name for the snapshot location): items run through ``ScenarioItem.runtest``, not this."""


class ItemError(Exception):
    """Generation or judging of one item failed; the message says how."""


class InstrumentalSuite(pytest.Collector):
    """The parent of every scenario item (node id ``instrumental::test_scenario[...]``)."""

    def collect(self) -> list[pytest.Item]:
        from pytest_instrumental.vocabulary.items import item_name

        grouped = self.config.pluginmanager.hasplugin("xdist")
        items: list[pytest.Item] = []
        for request in self.config.stash[_RUN].requests():
            item = ScenarioItem.from_parent(self, name=item_name(request.key), request=request)
            item.add_marker(request.category)
            if grouped:  # for tools that read it; the suite's own scheduling groups by model (parallel.py)
                item.add_marker(pytest.mark.xdist_group(request.key.model))
            items.append(item)
        return items


class InstrumentalPlugin:
    """Registered only with --instrumental, in every process of the session: each hook is one
    call onto the run."""

    def __init__(self, run: InstrumentalRun) -> None:
        self._run = run

    def pytest_ignore_collect(self) -> bool:
        """With --instrumental the session runs the suite only, not the project's own tests."""
        return True

    @pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, which must see these items
    def pytest_collection_modifyitems(self, session: pytest.Session, items: list[pytest.Item]) -> None:
        items.extend(_collect_suite(session))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._run.plan([i.request for i in session.items if isinstance(i, ScenarioItem)])

    def pytest_report_teststatus(self, report: pytest.TestReport) -> tuple[str, str, str] | None:
        return _verdict_status(report)

    def pytest_unconfigure(self) -> None:
        self._run.close()


class InstrumentalWorker:
    """Registered on an xdist worker only: its results go to the controller with each item's
    report, as they finish, and what no report carried in its output at the end."""

    def __init__(self, run: InstrumentalRun) -> None:
        self._run = run

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        if call.when == "call" and isinstance(item, ScenarioItem) and item.results:
            setattr(report, _REPORTED_RESULTS, self._run.report_results(item.results))  # xdist serialises it
        return report

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        session.config.workeroutput.update(self._run.worker_output(interrupted))  # type: ignore[attr-defined]


class InstrumentalController:
    """Registered on the controlling process only (never on an xdist worker): it says the plan,
    sees every item's report and, under xdist, each worker's results, and ends the run."""

    def __init__(self, run: InstrumentalRun) -> None:
        self._run = run
        self._previewed = False
        self._workers: dict[str, Any] = {}  # under xdist, the workers whose output has not come
        self._summary: RunSummary | None = None
        self._written: Written | None = None

    @pytest.hookimpl(trylast=True)  # after InstrumentalPlugin planned the items
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None and self._run.cost is not None:
            reporter.write_line(self._run.cost.line())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            self._run.mark_ran(report.nodeid)
            results = getattr(report, _REPORTED_RESULTS, None)  # a worker's item, under xdist
            if results:
                self._run.merge_reported(results)

    @pytest.hookimpl(optionalhook=True)  # xdist hooks: the plugin works without xdist
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        """Each model's items to one worker, so each request is generated once (parallel.py)."""
        from pytest_instrumental.parallel import BALANCING, model_scheduler

        return model_scheduler(config, log, self._run.model_of) if config.getvalue("dist") in BALANCING else None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """Under xdist, the plan line from the first worker's collection (every worker collects
        the same items), before any runs."""
        if self._previewed:
            return
        self._previewed = True
        reporter = node.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(self._run.preview([i.partition("@")[0] for i in ids]).line())

    @pytest.hookimpl(wrapper=True)
    def pytest_runtestloop(self, session: pytest.Session) -> Generator[None, object, object]:
        """Under xdist, an interruption stops the controller reading its workers' events: what
        they report after it is taken here, while they are still up (parallel.late_outputs)."""
        try:
            return (yield)
        except KeyboardInterrupt:
            if self._workers:
                from pytest_instrumental.parallel import late_outputs

                for worker, output in late_outputs(self._workers).items():
                    self._run.merge_worker(output or {}, worker, "interrupted before it reported")
            raise

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        self._workers[str(node.gateway.id)] = node

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: object | None) -> None:
        self._workers.pop(str(node.gateway.id), None)
        self._run.merge_worker(getattr(node, "workeroutput", None) or {}, str(node.gateway.id), error)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """The run's end: summarised and written once; a gate that did not pass fails the session,
        also one that collected nothing (exit 5 otherwise)."""
        config = session.config
        if config.option.collectonly:
            return
        update = bool(config.option.update_snapshots)
        new_only = not update and bool(getattr(config.option, "update_new_snapshots_only", False))
        updated = self._run.settings.snapshot and (update or new_only)
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        summary, self._written = self._run.finish(interrupted, updated, new_setups_only=new_only)
        self._summary = summary
        if (self._written.failures or not summary.gate_passed) and session.exitstatus in _PASSING_EXITS:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    @pytest.hookimpl(trylast=True)  # the gate's verdict last, after other plugins' sections (syrupy's)
    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        if self._summary is None or self._written is None:
            return
        from pytest_instrumental.reports.terminal import summary_lines

        terminalreporter.section("instrumental convergence")
        # on a terminal the tables fit its width (split); a log or a pipe gets them whole
        width = terminalreporter._tw.fullwidth if terminalreporter.isatty() else None
        for line in summary_lines(self._summary, config.get_verbosity() > 0, width):
            terminalreporter.write_line(line, red=line.startswith("GATE FAILED"))
        for line in self._written.lines:  # where each output went
            terminalreporter.write_line(line)
        for line in self._written.failures:  # after the summary, which is never lost
            terminalreporter.write_line(line, red=True)


class InstrumentalSnapshots:
    """Registered only with --instrumental-snapshot, in every process (a worker checks the items
    it runs): each judged item's verdict asserted against its syrupy snapshot (snapshots.py)."""

    def __init__(self, run: InstrumentalRun) -> None:
        self._run = run
        self._snapshots: type[AmberSnapshotExtension] | None = None  # once collected

    def pytest_configure(self, config: pytest.Config) -> None:
        from pytest_instrumental.snapshots import damage
        from pytest_instrumental.text import terminal_line

        if not config.pluginmanager.hasplugin("syrupy"):
            raise pytest.UsageError("--instrumental-snapshot needs the syrupy plugin, which is disabled or missing")
        # syrupy tells an entry's item apart by the test function's name alone, and every item here
        # is test_scenario[...]: its unused-snapshot cleanup would delete the entries of every model,
        # suffix or scenario this run did not select (-k, --model). Entries are only ever updated.
        config.option.disable_unused_snapshots = True
        damaged = damage(self._run.settings.snapshot_dir, needs_setup=not config.option.update_snapshots)
        if damaged is not None:
            raise pytest.UsageError(
                f"--instrumental-snapshot: {terminal_line(damaged)}; restore it from version control, or delete it "
                "and record the verdicts again (--snapshot-update)"
            )

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from pytest_instrumental.snapshots import verdict_snapshots

        self._snapshots = verdict_snapshots(self._run.settings.snapshot_dir, session.items)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Iterator[None]:
        yield  # the item ran; a failure or skip of its own stands as it is
        if isinstance(item, ScenarioItem) and item.verdict is not None:
            from pytest_instrumental.snapshots import check_verdict

            assert self._snapshots is not None, "items run after their collection"
            changes = self._run.snapshot_changes(item.request.key.model)
            failure = check_verdict(item, self._snapshots, item.verdict, changes)
            if failure is not None:
                raise ItemError(failure)


def _collect_suite(session: pytest.Session) -> list[pytest.Item]:
    """The suite's items, collected through the public collection hooks as pytest collects a
    module, so terminal counts, --collect-only and xdist see them like any others."""
    from pytest_instrumental.vocabulary.items import SUITE_NAME

    suite = InstrumentalSuite.from_parent(session, name=SUITE_NAME, nodeid=SUITE_NAME, path=session.config.rootpath)
    session.ihook.pytest_collectstart(collector=suite)
    collected = session.ihook.pytest_make_collect_report(collector=suite)
    session.ihook.pytest_collectreport(report=collected)
    return [node for node in collected.result if isinstance(node, pytest.Item)]


def _verdict_status(report: pytest.TestReport) -> tuple[str, str, str] | None:
    """Each item's verdict instead of a plain pass: C convergence, . no_convergence,
    R safety_refusal, N nonsensical."""
    from pytest_instrumental.vocabulary.verdicts import CONVERGENCE, NO_CONVERGENCE, NONSENSICAL, SAFETY_REFUSAL

    if report.when != "call" or not report.passed:
        return None
    letters = {CONVERGENCE: "C", NO_CONVERGENCE: ".", SAFETY_REFUSAL: "R", NONSENSICAL: "N"}
    verdict = str(dict(report.user_properties).get("verdict"))
    most = verdict.split(" ", 1)[0]  # a tally of epochs starts with its most frequent verdict
    if most not in letters:
        return None
    return "passed", letters[most], verdict.upper()
