"""A run of the suite, outside pytest: ``prepare_run`` turns the settings into the run's state
(scenarios, suffixes, backends, judge, evaluation), checked before any work; the run collects
its item results; ``finish`` summarises them once and writes what the settings ask for."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from pytest_instrumental import snapshots
from pytest_instrumental.backends.interventions import plan_interventions
from pytest_instrumental.backends.lora import ADAPTERS_DIR_NAME
from pytest_instrumental.backends.protocol import Backend, Prepares
from pytest_instrumental.backends.registry import (
    EMBEDDED,
    KINDS,
    ModelSpec,
    check_loadable,
    describe,
    local_source,
    open_backend,
    parse_model,
)
from pytest_instrumental.backends.served import continues_answers, serves_checkpoints
from pytest_instrumental.cache import open_project_cache
from pytest_instrumental.config import EngineConfig
from pytest_instrumental.cost import Cost
from pytest_instrumental.engines import EngineError
from pytest_instrumental.errors import InputError
from pytest_instrumental.evaluation import Evaluation
from pytest_instrumental.judges.offline import OfflineJudge
from pytest_instrumental.judges.protocol import Judge
from pytest_instrumental.judges.registry import judge_name, open_judge
from pytest_instrumental.openai_client import check_base_url, register_credentials
from pytest_instrumental.options import NO_CALIBRATION, Settings
from pytest_instrumental.outputs import REPORTS, output_problem
from pytest_instrumental.plan import plan_requests
from pytest_instrumental.progress import ProgressFactory
from pytest_instrumental.records.recordings import REPLAY, Recordings, load_recordings, recorded_models
from pytest_instrumental.records.results_file import read_results, write_results
from pytest_instrumental.reports.manifest import scenario_set_sha256
from pytest_instrumental.reports.results_document import RunRecord, results_document, run_section
from pytest_instrumental.statistics.calibration import Calibrated, Calibration, load_calibration
from pytest_instrumental.statistics.summary import Baseline, RunSummary, summarise
from pytest_instrumental.text import terminal_line
from pytest_instrumental.training_data import plan_training
from pytest_instrumental.vocabulary.conditions import (
    Ablation,
    Activation,
    Condition,
    LoraAttack,
    Prefill,
    PrefillAttack,
    Push,
    Server,
    Suffix,
    SuffixPush,
    activation_pair,
    attack_pushes,
    run_conditions,
    seeded,
)
from pytest_instrumental.vocabulary.items import ItemKey, nodeid_of
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.scenarios import ScenarioSet, load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_prefills, load_suffixes, select_suffixes
from pytest_instrumental.vocabulary.verdicts import ItemResult, tally

WORKER_RESULTS = "instrumental_results"  # the keys of an xdist worker's output
WORKER_WARNINGS = "instrumental_warnings"


@dataclass
class Written:
    """What the end of a run wrote: where each output went (``lines``, said after the summary as
    pytest-cov says where its report went), and what could not be written (``failures``)."""

    lines: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ItemOutcome:
    """What one pytest item shows: skipped (with the reason), or its verdict, judge and reason
    (``verdict`` tallies the epochs), failing with ``failure`` when an answer was an error."""

    skip_reason: str | None = None
    verdict: str | None = None
    judge: str | None = None
    reason: str | None = None
    failure: str | None = None
    results: tuple[ItemResult, ...] = ()  # each epoch's result

    @classmethod
    def of(cls, results: list[ItemResult]) -> ItemOutcome:
        first = results[0]
        errors = [r for r in results if r.status == "error"]
        if len(results) == 1:
            failure = (first.error or "unknown error") if errors else None
        else:
            failure = "; ".join(f"epoch {r.epoch}: {r.error}" for r in errors) or None
        verdict = first.verdict if len(results) == 1 else tally(results)
        return cls(verdict=verdict, judge=first.judge, reason=first.reason, failure=failure, results=tuple(results))

    @property
    def properties(self) -> list[tuple[str, object]]:
        """The pytest item's user properties (the JUnit XML carries them)."""
        return [("verdict", self.verdict), ("judge", self.judge), ("reason", self.reason)]


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
    baseline: Baseline | None
    recorded_setups: dict[str, snapshots.Setup]  # model -> the setup its snapshots were recorded in
    lost_records: list[str]  # damaged recorded records that name no item: data lost, the gate fails
    # the suffixes, activation strengths and attacks, undefended, then under each defence
    conditions: list[Condition]
    calibration: Calibration | None = None  # the judge's, which every rate is corrected with
    results: list[ItemResult] = field(default_factory=list)
    ran: set[ItemKey] = field(default_factory=set)  # items that ran (seen by the controller)
    lost_workers: list[str] = field(default_factory=list)
    worker_warnings: list[str] = field(default_factory=list)  # xdist workers' cache problems
    # answers that crossed between xdist processes (on a worker: sent with their report; on the
    # controller: recorded), each once
    _exchanged: set[tuple[ItemKey, int]] = field(default_factory=set, init=False)
    cost: Cost | None = None  # what the run set out to do (under xdist: counted on the controller)

    @property
    def categories(self) -> list[str]:
        return [c.slug for c in self.scenarios.categories]

    def requests(self) -> list[Request]:
        return plan_requests(self.models, self.conditions, self.scenarios)

    @property
    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def defenses(self) -> list[Suffix]:
        return list(dict.fromkeys(c.defense for c in self.conditions if c.defense is not None))

    @property
    def prefills(self) -> list[Suffix]:
        return [c.push.text for c in self.conditions if isinstance(c.push, Prefill) and c.defense is None]

    @property
    def strengths(self) -> list[float]:
        return [c.push.strength for c in self.conditions if isinstance(c.push, Activation) and c.defense is None]

    def model_record(self, model: str) -> dict[str, object]:
        """How a model was run, as the manifest and the snapshot setup record it."""
        return self.generation.get(model, {"engine": REPLAY, "source": str(self.settings.replay)})

    def snapshot_setup(self, model: str) -> snapshots.Setup:
        """The setup this run judges a model's verdicts in."""
        # a defence's text is a suffix's: it changes verdicts as one does (under its own key)
        suffix_hashes = {s.name: s.sha256 for s in self.suffixes}
        suffix_hashes |= {f"defense:{d.name}": d.sha256 for d in self.defenses}
        suffix_hashes |= {f"prefill:{p.name}": p.sha256 for p in self.prefills}
        return snapshots.model_setup(self.model_record(model), self.judge_name, suffix_hashes)

    def snapshot_changes(self, model: str) -> list[str]:
        return snapshots.setup_changes(self.recorded_setups.get(model), self.snapshot_setup(model))

    # --- What the pytest layer tells the run, and asks of it (plugin.py: one hook, one verb) ---

    def run_item(self, request: Request) -> ItemOutcome:
        """Evaluate one item (every epoch), record its results, and say what its pytest item shows."""
        from pytest_instrumental.evaluation import Skip

        try:
            outcomes = self.evaluation.outcomes(request)
        except Exception as exc:  # a fault of our own: the item still counts, as an error
            error = f"internal error: {type(exc).__name__}: {exc}"
            epochs = range(1, self.evaluation.epochs + 1)
            outcomes = [ItemResult.failed(replace(request, epoch=e), error) for e in epochs]
        skipped = next((o for o in outcomes if isinstance(o, Skip)), None)
        if skipped is not None:
            return ItemOutcome(skip_reason=skipped.reason)
        results = [o for o in outcomes if isinstance(o, ItemResult)]
        self.record(results)
        return ItemOutcome.of(results)

    def record(self, results: list[ItemResult]) -> None:
        """Results this process finished."""
        self.results.extend(results)

    def mark_ran(self, nodeid: str) -> None:
        """An item reported its call (seen on the controller: under xdist, also the workers' items)."""
        # --dist loadgroup appends "@<group>" to node ids; model names never hold "@".
        key = self._keys_by_nodeid.get(nodeid.partition("@")[0])
        if key is not None:
            self.ran.add(key)

    def model_of(self, nodeid: str) -> str | None:
        """The model an item's node id names (the xdist scheduler groups by it); None for another test."""
        key = self._keys_by_nodeid.get(nodeid)
        return None if key is None else key.model

    def plan(self, requests: Sequence[Request]) -> Cost:
        """The collected items' requests planned for evaluation, and what evaluating them will take."""
        self.evaluation.plan(requests)
        self.cost = self.evaluation.cost()
        return self.cost

    def preview(self, nodeids: Sequence[str]) -> Cost:
        """What evaluating these items will take, counted on the xdist controller, which evaluates
        none of them (each worker plans every item it collected, though it runs only its share)."""
        by_nodeid = {nodeid_of(r.key): r for r in self.requests()}
        self.cost = self.evaluation.cost([by_nodeid[n] for n in nodeids if n in by_nodeid])
        return self.cost

    def report_results(self, results: Sequence[ItemResult]) -> list[dict[str, Any]]:
        """On an xdist worker: an item's results, as its test report carries them to the
        controller, which records them as they come (``merge_reported``): a session interrupted
        or a worker lost keeps every item that reported."""
        self._exchanged.update((r.key, r.epoch) for r in results)
        return [r.to_dict() for r in results]

    def worker_output(self, interrupted: bool) -> dict[str, Any]:
        """What an xdist worker sends its controller at the end: the results no item's report
        carried (after an interruption, the rest of a batch that finished) and its warnings."""
        if interrupted:
            self._take_finished()
        unsent = [r.to_dict() for r in self.results if (r.key, r.epoch) not in self._exchanged]
        return {WORKER_RESULTS: unsent, WORKER_WARNINGS: self.evaluation.problems()}

    def merge_reported(self, results: Sequence[dict[str, Any]]) -> None:
        """On the controller: the results a worker's item report carried."""
        self._merge([ItemResult.from_dict(d) for d in results])

    def merge_worker(self, output: dict[str, Any], worker: str, error: object | None) -> None:
        """A worker's output, on the controller; a worker that ended without one lost the items
        that had not reported."""
        if WORKER_RESULTS not in output:
            self.lost_workers.append(f"worker {worker} ended without reporting results ({error})")
            return
        self._merge([ItemResult.from_dict(d) for d in output[WORKER_RESULTS]])
        self.worker_warnings.extend(output.get(WORKER_WARNINGS, []))

    def _merge(self, results: list[ItemResult]) -> None:
        """Results from workers, each answer once."""
        new = [r for r in results if (r.key, r.epoch) not in self._exchanged]
        self._exchanged.update((r.key, r.epoch) for r in new)
        self.record(new)
        self.ran.update(r.key for r in new)  # also those an interrupted worker finished unreported

    def finish(
        self, interrupted: bool, snapshots_updated: bool, new_setups_only: bool = False
    ) -> tuple[RunSummary, Written]:
        """The end of the run, on the controller: summarised once, and the files the settings ask
        for written from the summary; with what was written where and what could not be, one line
        each."""
        if interrupted:
            self._take_finished()
        summary = self.summarise(interrupted)
        return summary, self.write(summary, interrupted, snapshots_updated, new_setups_only)

    def close(self) -> None:
        self.evaluation.close()

    @cached_property
    def _keys_by_nodeid(self) -> dict[str, ItemKey]:
        return {nodeid_of(r.key): r.key for r in self.requests()}

    def _take_finished(self) -> None:
        """After an interruption: the items the evaluation finished that no pytest item reported
        yet (the rest of an interrupted model's batch) join the results, as items that ran."""
        reported = {(r.key, r.epoch) for r in self.results}
        finished = [r for r in self.evaluation.finished() if (r.key, r.epoch) not in reported]
        self.record(finished)
        self.ran.update(r.key for r in finished)

    def summarise(self, interrupted: bool = False) -> RunSummary:
        return summarise(
            started_at=self.started_at,
            items=self.results,
            ran=self.ran,
            models=self.models,
            suffixes=self.condition_names,
            categories=self.categories,
            thresholds=self.settings.thresholds,
            baseline=self.baseline,
            scenarios_sha256=scenario_set_sha256(self.scenarios),
            judge_name=self.judge_name,
            judge_note=self._judge_note(),
            notes=[*self.lost_records, *self.lost_workers],
            warnings=sorted({*self.evaluation.problems(), *self.worker_warnings}),
            activation=activation_pair(self.strengths),
            conditions=self.conditions,
            suite_items=len(self.requests()),
            interrupted=interrupted,
            calibration=self.calibration,
        )

    def _judge_note(self) -> str:
        """Said after the judge's name; the offline judge's says whether it judged its own training data."""
        judge = self.evaluation.judge
        if isinstance(judge, OfflineJudge):
            return f" ({judge.describe_agreement([r.response for r in self.results if r.judge == judge.name])})"
        return self.judge_note

    def write(
        self, summary: RunSummary, interrupted: bool, snapshots_updated: bool, new_setups_only: bool = False
    ) -> Written:
        """Write the results JSON, the snapshots' setup and the report files the settings ask for;
        what was written where, and what could not be written (the paths were checked before the
        run, but a disk can still fill up), one line each."""
        settings = self.settings
        written = Written()

        def attempt(what: str, path: Path, write: Callable[[], object], done: str | None = None) -> None:
            try:
                write()
            except OSError as exc:
                written.failures.append(f"ERROR: cannot write {what} {path}: {exc.strerror or exc}")
            else:
                if done is not None:
                    written.lines.append(terminal_line(done))

        if (json_path := settings.json) is not None:
            document = results_document(self._run_record(interrupted, summary.models), summary)
            done = f"results JSON written to {json_path}"
            attempt("the results JSON", json_path, lambda: write_results(json_path, document), done)
        if snapshots_updated:
            ran = {k.model for k in self.ran}
            # --snapshot-update-new-only keeps a recorded setup: its entries were kept too
            fresh = {m: self.snapshot_setup(m) for m in self.models if m in ran}
            if new_setups_only:
                fresh = {m: setup for m, setup in fresh.items() if m not in self.recorded_setups}
            setups = {**self.recorded_setups, **fresh}
            attempt(
                "the snapshots' setup in",
                settings.snapshot_dir,
                lambda: snapshots.write_setups(settings.snapshot_dir, setups),
            )
        if (report_dir := settings.report) is not None:
            from pytest_instrumental.reports.report_files import write_reports

            done = "reports written to " + ", ".join(str(report_dir / name) for name in REPORTS)
            attempt("the reports in", report_dir, lambda: write_reports(report_dir, summary), done)
        if (log_dir := settings.inspect_log) is not None:
            from pytest_instrumental.reports.inspect_log import write_inspect_logs

            sent = {r.key: r for r in self.requests()}
            described = run_section(self._run_record(interrupted, summary.models), summary)
            done = f"Inspect logs written to {log_dir}, one per model (inspect view --log-dir {log_dir})"
            attempt("the Inspect logs in", log_dir, lambda: write_inspect_logs(log_dir, summary, sent, described), done)
        return written

    def _run_record(self, interrupted: bool, shown: list[str]) -> RunRecord:
        settings = self.settings
        return RunRecord(
            started_at=self.started_at,
            interrupted=interrupted,
            suffixes=self.suffixes,
            defenses=self.defenses,
            prefills=self.prefills,
            attacks=[a.attack for a in settings.attacks],
            conditions=self.conditions,
            judge=self.judge_name,
            subset=settings.subset,
            scenarios=self.scenarios,
            replay=None if settings.replay is None else str(settings.replay),
            models={m: self.model_record(m) for m in shown},
            generated=self.generation,
            thresholds=settings.thresholds,
            lost_workers=self.lost_workers,
            batch_size=settings.batch_size,
            epochs=settings.epochs,
            seed=settings.seed,
            cost=self.cost,
        )


def _baseline(path: Path) -> Baseline:
    recorded = read_results(path)
    return Baseline(_shown_path(path), recorded.items, recorded.scenarios_sha256)


def _shown_path(path: Path) -> str:
    """A path as reports show it: relative to the working directory, never a machine's absolute path."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return path.name


def prepare_run(
    settings: Settings,
    progress: ProgressFactory | None,
    prepare: bool,
    generates_here: bool,
    notice: Callable[[str], object] | None = None,
) -> InstrumentalRun:
    """Everything checked before any work: a bad value, file or model is an InputError. With
    ``prepare`` (the process that runs the session) the backends and the judge are prepared too:
    servers checked, and with ``generates_here`` (no xdist workers generate instead) engine
    servers started, so one that does not come up is an InputError (otherwise each starts when
    its model first generates, and its failure fails its items)."""
    for url in [*settings.base_url, settings.judge_base_url, os.environ.get("OPENAI_BASE_URL")]:
        register_credentials(url)  # secrets from the start: no message may show them
    if os.environ.get("OPENAI_BASE_URL"):
        try:
            check_base_url(os.environ["OPENAI_BASE_URL"])
        except ValueError as exc:
            raise InputError(f"$OPENAI_BASE_URL: {exc}") from None
    scenarios = load_scenarios().subset(settings.subset)
    available = load_suffixes(settings.suffix_dirs)
    suffixes = select_suffixes(available, settings.suffixes)
    baseline = None if settings.baseline is None else _baseline(settings.baseline)
    defenses = select_suffixes(available, settings.defenses, "--instrumental-defense")
    empty = [d.name for d in defenses if not d.text.strip()]
    if empty:
        raise InputError(
            f"--instrumental-defense {empty[0]}: its text is empty, so it would defend with nothing; "
            "a defence is a suffix file whose text goes into the system prompt"
        )
    pushes: list[Push] = [*map(SuffixPush, suffixes), *map(Activation, settings.vector_strengths)]
    _check_named_once(pushes, "--instrumental-vector-strength")
    attacks = seeded(settings.attacks, settings.attack_seeds)
    pushes += attack_pushes(attacks, _prefills(settings))
    _check_named_once(pushes, "--instrumental-attack")
    conditions = run_conditions(pushes, defenses)
    ablations = [a for a in attacks if isinstance(a, Ablation)]
    loras = [a for a in attacks if isinstance(a, LoraAttack)]
    if settings.attack_seeds > 1 and not any(a.steps > 0 for a in loras):
        raise InputError(
            f"--instrumental-attack-seeds {settings.attack_seeds}: given without any --instrumental-attack "
            "lora:STEPS of a budget above 0, it would train nothing"
        )
    gated = settings.thresholds.required_suffixes(with_baseline=baseline is not None)
    not_run = sorted(gated - {c.name for c in conditions})
    if not_run:
        raise InputError(f"the gate needs suffix {', '.join(not_run)}, which this run does not select (--suffix)")
    name = judge_name(settings.judge, replaying=settings.replay is not None)
    recordings: Recordings | None = None
    records: dict[str, dict[str, object]] = {}
    training = None  # what fine-tuning trains on; a replay trains nothing
    if settings.replay is not None:
        if settings.epochs > 1:
            raise InputError("--instrumental-epochs: a replay has one recorded answer per item; epochs need generation")
        backends, recordings = _replay(settings, available)
    else:
        specs = [parse_model(m) for m in settings.models or [EMBEDDED]]
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise InputError(f"--model: the same model is named twice ({', '.join(names)})")
        for spec in specs:
            check_loadable(spec, settings.trust_remote_code)
        generation, server, serving = settings.generation, settings.server, settings.serving
        hooks = plan_interventions(
            available,
            settings.vector_strengths,
            settings.vector_file,
            settings.vector_layer,
            ablations,
            loras,
            seed=settings.seed,
            models_dir=generation.models_dir,
            progress=progress,
        )
        for spec in specs if hooks.hooked else []:  # finding a model's files may convert it: only when needed
            config_dir = local_source(spec, generation.models_dir)
            if config_dir is not None:
                hooks.check_fits(spec.name, config_dir)
        defended = bool(defenses)
        for spec in specs:
            _check_servable(spec, serving, pushes)
        backends = {spec.name: open_backend(spec, generation, server, serving, hooks, defended) for spec in specs}
        training = plan_training(available, load_scenarios(), settings.attack_data, bool(loras))
        hooked = hooks.record(None if training is None else training.record())
        records = {spec.name: describe(spec, generation, server, serving) | hooked for spec in specs}
    opened = open_judge(
        name,
        generation=settings.generation,
        server=settings.server,
        serving=settings.serving,
        judging=settings.judging,
        recordings=recordings,
    )
    if prepare:
        _prepare([*backends.values(), opened.judge], generates_here)
    check_outputs(settings)
    # A replay judged by its recorded verdicts has nothing to cache: it does not touch the cache.
    needs_cache = not settings.no_cache and not (settings.replay is not None and name == REPLAY)
    cache = open_project_cache(settings.cache_dir, notice) if needs_cache else None
    return InstrumentalRun(
        settings=settings,
        scenarios=scenarios,
        suffixes=suffixes,
        models=list(backends),
        evaluation=Evaluation(backends, opened.judge, cache, progress, settings.epochs, training),
        started_at=datetime.now(UTC).isoformat(timespec="seconds"),
        generation=records,
        judge_name=opened.judge.name,
        judge_note=opened.note,
        baseline=baseline,
        recorded_setups=snapshots.read_setups(settings.snapshot_dir) if settings.snapshot else {},
        lost_records=[] if recordings is None else recordings.unattributed,
        conditions=conditions,
        calibration=_calibration(settings, opened.judge),
    )


def _calibration(settings: Settings, judge: Judge) -> Calibration | None:
    """The calibration the rates are corrected with: the one given, none, or the judge's own."""
    choice = settings.judge_calibration
    if choice == NO_CALIBRATION:
        return None
    if choice is not None:
        return load_calibration(Path(choice), "--instrumental-judge-calibration")
    return judge.calibration() if isinstance(judge, Calibrated) else None


def _prefills(settings: Settings) -> dict[str, Suffix]:
    """The texts of the prefill attacks asked for (``prefill:NAME``), by name, from prefills/ and
    the user's prefill directories."""
    available = load_prefills(settings.prefill_dirs)
    names = [a.text_name for a in settings.attacks if isinstance(a, PrefillAttack)]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise InputError(
            f"--instrumental-attack prefill:{unknown[0]}: no such prefill; known: {', '.join(sorted(available))}"
        )
    return {name: available[name] for name in names}


def _check_named_once(pushes: Sequence[Push], option: str) -> None:
    """Two pushes of one name would be one item twice: a usage error naming them."""
    seen: dict[str, Push] = {}
    for push in pushes:
        first = seen.setdefault(push.name, push)
        if first is push:
            continue
        if first.attack is not None and push.attack is not None:
            raise InputError(f"{option}: {first.attack} and {push.attack} are the same attack ({push.name})")
        if first.attack is None and push.attack is None:
            raise InputError(f"{option}: a condition is named twice ({push.name})")
        raise InputError(f"{option}: condition {push.name} is also a suffix's name")


def _check_servable(spec: ModelSpec, serving: EngineConfig | None, pushes: Sequence[Push]) -> None:
    """A model in a server takes only the pushes its server can: a usage error naming the option
    of the first it cannot (a steering hook, an ablation, fine-tuning; a prefill where the API
    does not continue an assistant turn)."""
    if KINDS[spec.engine].served_elsewhere:
        server = Server(engine=None, continues=False)
    elif serving is not None:
        server = Server(serving.label, continues_answers(serving), serves_checkpoints(serving))
    else:
        return  # in this process: every push
    for push in pushes:
        refusal = push.refusal(spec.name, server)
        if refusal is not None:
            raise InputError(refusal)


def check_outputs(settings: Settings) -> None:
    """Every path the run will write, checked before any work by the outputs' rule (outputs.py):
    one line naming the option."""
    outputs: list[tuple[str, Path | None, tuple[str, ...] | None]] = [
        ("--instrumental-json", settings.json, None),
        ("--instrumental-report", settings.report, REPORTS),
        ("--instrumental-inspect-log", settings.inspect_log, ()),
    ]
    if settings.inspect_log is not None:
        from pytest_instrumental.reports.inspect_log import check_available

        check_available()
    if settings.snapshot:
        outputs.append(("--instrumental-snapshot-dir", settings.snapshot_dir, snapshots.FILES))
    for flag, path, files in outputs:
        if path is not None:
            problem = output_problem(path, files is not None, files or ())
            if problem is not None:
                raise InputError(f"{flag}: cannot write {path}: {problem}")
    models = settings.generation.models_dir  # converted models, and the adapters fine-tuning keeps
    for directory in (models, models / ADAPTERS_DIR_NAME):
        if directory.exists() and not directory.is_dir():
            raise InputError(f"--instrumental-models-dir: {directory} is a file, where a directory belongs")


def _prepare(parts: list[Backend | Judge], generates_here: bool) -> None:
    """Each backend's and the judge's ``prepare`` (a preflight call, an engine server started),
    before any work; if one fails, what the others started is stopped."""
    try:
        for preparing in [part for part in parts if isinstance(part, Prepares)]:
            preparing.prepare(generates_here)
    except (EngineError, InputError) as exc:
        for part in parts:
            part.close()
        raise InputError(str(exc)) from None


def _replay(settings: Settings, known_suffixes: Mapping[str, Suffix]) -> tuple[dict[str, Backend], Recordings]:
    from pytest_instrumental.backends.replay import ReplayBackend

    assert settings.replay is not None
    # Map records against the full scenario set, so a paper-subset run can replay a full run.
    prefills = load_prefills(settings.prefill_dirs)
    recordings = load_recordings(settings.replay, load_scenarios(), known_suffixes, prefills)
    recorded = recorded_models(recordings)
    unknown = [m for m in settings.models if m not in recorded]
    if unknown:
        raise InputError(f"--model {unknown[0]!r} is not in the replayed runs; recorded models: {', '.join(recorded)}")
    backend = ReplayBackend(recordings, settings.replay)
    return {model: backend for model in settings.models or recorded}, recordings
