"""The results JSON's document (schema in docs/results-schema.md), all of it: the ``run`` section
(how the run was made, its manifest), coverage, the gate, the items, cells, gaps and the
comparison, built from a run's ``RunSummary``. results_file.py writes it and reads it back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from pytest_instrumental.config import Thresholds
from pytest_instrumental.cost import Cost
from pytest_instrumental.records.results_file import EPOCHS_SCHEMA_VERSION, SCHEMA_VERSION
from pytest_instrumental.reports.manifest import build_manifest
from pytest_instrumental.statistics.metrics import Gap
from pytest_instrumental.statistics.summary import RunSummary
from pytest_instrumental.vocabulary.conditions import Condition, Suffix
from pytest_instrumental.vocabulary.scenarios import ScenarioSet

if TYPE_CHECKING:  # comparison needs numpy, loaded only with a baseline
    from pytest_instrumental.statistics.calibration import Corrected, CorrectedGap
    from pytest_instrumental.statistics.comparison import CellChange
    from pytest_instrumental.statistics.dilemma import Shift
    from pytest_instrumental.statistics.tamper import Tamper


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """How a run was made, as the ``run`` section records it."""

    started_at: str
    interrupted: bool
    suffixes: list[Suffix]  # every suffix the run selected; the document keeps those shown
    defenses: list[Suffix]  # the defences (conditions.py); none: the document is what it was before them
    prefills: list[Suffix]  # the prefill attacks; the same
    attacks: list[str]  # every attack, as --instrumental-attack names it; the same
    judge: str
    subset: str
    scenarios: ScenarioSet
    replay: str | None
    models: dict[str, dict[str, object]]  # each shown model -> how it was run (engine, source, decoding)
    generated: dict[str, dict[str, object]]  # the same, for generated models only (empty for replays)
    thresholds: Thresholds
    lost_workers: list[str]
    batch_size: int | None
    epochs: int
    seed: int
    cost: Cost | None = None  # what the run set out to do, counted before it started (cost.py)
    conditions: list[Condition] = field(default_factory=list)  # the run's, typed: each item's parts


def results_document(record: RunRecord, summary: RunSummary) -> dict[str, Any]:
    """The document: ``run`` (how the run was made, its manifest) and the summary's items, cells,
    gaps and comparison."""
    epochs = any(item.epoch > 1 for item in summary.items)
    items = [item.to_dict() for item in summary.items]
    if record.defenses or record.attacks:  # each item's condition, in parts, besides its name
        parts = {c.name: c.parts() for c in record.conditions}
        for entry, item in zip(items, summary.items, strict=True):
            entry["condition"] = parts.get(item.condition)
    document = {
        "schema_version": EPOCHS_SCHEMA_VERSION if epochs else SCHEMA_VERSION,
        "run": run_section(record, summary),
        "coverage": {"items": summary.items_run, "suite_items": summary.suite_items, "partial": summary.partial},
        "gate": {
            "passed": summary.gate_passed,
            "rules": summary.rules,
            "notes": summary.notes,
            "violations": [{**asdict(v), "message": v.message()} for v in summary.violations],
        },
        "items": items,
        "cells": [
            {**asdict(cell), **_corrected(summary.corrected.get((cell.model, cell.suffix, cell.category)))}
            for cell in summary.cells
        ],
        "gaps": [
            {**asdict(gap), **_paired(gap), **_corrected(summary.corrected_gaps.get(gap.model))} for gap in summary.gaps
        ],
    }
    if summary.dilemma is not None:  # only runs with defences have it
        dilemma = summary.dilemma
        document["dilemma"] = {
            "pushes": dilemma.pushes,
            "defenses": dilemma.defenses,
            "effects": [
                {**_shift(s), **_corrected(summary.corrected_differences.get((s.model, s.condition, s.reference)))}
                for s in dilemma.effects
            ],
            "overrides": [
                {**_shift(s), **_corrected(summary.corrected_differences.get((s.model, s.condition, s.reference)))}
                for s in dilemma.overrides
            ],
            "worst": [
                {"model": m, "defense": d, "push": worst.push, "override_pp": worst.gap.delta_pp}
                for m in summary.models
                for d in dilemma.defenses
                if (worst := dilemma.worst(m, d)) is not None
            ],
        }
    if summary.tamper is not None:  # only runs with fine-tuning have it
        document["tamper"] = _tamper(summary.tamper)
    if summary.activation is not None:  # only runs with activation steering have these
        document["activation_gap"] = {
            "conditions": list(summary.activation),
            "gaps": [
                {**asdict(gap), **_corrected(summary.corrected_differences.get((gap.model, *summary.activation)))}
                for gap in summary.activation_gaps
            ],
        }
    compared = summary.comparison
    if compared is not None:
        document["comparison"] = {
            "shared_items": compared.shared,
            "baseline_items": compared.baseline_items,
            "baseline_total_items": compared.baseline_total,
            "partial": compared.partial,
            "cells": [
                {
                    **asdict(c),
                    "conv_change_pp": c.conv_change_pp,
                    "refusal_change_pp": c.refusal_change_pp,
                    **_paired(c),
                    "significance_p": summary.significance_p.get((c.model, c.suffix)),
                    **_corrected(summary.corrected_changes.get((c.model, c.suffix))),
                }
                for c in compared.cells
            ],
            "gaps": [
                {**asdict(g), "change_pp": g.change_pp, **_corrected(summary.corrected_gap_changes.get(g.model))}
                for g in compared.gaps
            ],
            "flips": [{**asdict(f), "direction": f.direction} for f in compared.flips],
            "missing_models": compared.missing_models,
        }
    return document if epochs else _without_epoch_fields(document)


_WHEN_SET = ("max_override", "min_tamper_cost", "tamper_threshold")


def _tamper(tamper: Tamper) -> dict[str, Any]:
    """The dose-responses (each budget's condition; its cell is in ``cells``), the tamper costs per
    recipe and seed, their spread over seeds, and the worst cases the gate reads."""
    return {
        "budgets": tamper.budgets,
        "defenses": tamper.defenses,
        "seeds": tamper.seeds,
        "max_nonsensical": tamper.max_nonsensical,
        "responses": [
            {
                "model": r.model,
                "defense": r.defense,
                "recipe": r.recipe,
                "seed": r.seed,
                "doses": [
                    {
                        "steps": d.steps,
                        "examples": d.steps,  # one demonstration a step
                        "condition": d.condition or None,
                        "collapsed": d.collapsed,
                        "well_formed_pct": d.well_formed_pct,
                    }
                    for d in r.doses
                ],
            }
            for r in tamper.responses
        ],
        "costs": [
            {
                "model": c.model,
                "defense": c.defense,
                "recipe": c.recipe,
                "seed": c.seed,
                "reference_pct": c.reference,
                "reference": c.reference_source,
                "bound": c.bound,
                "steps": c.steps,
                "tried": c.tried,
                "message": c.describe(),
            }
            for c in tamper.costs
        ],
        "spreads": [
            {
                "model": s.costs[0].model,
                "defense": s.costs[0].defense,
                "recipe": s.costs[0].recipe,
                "steps_by_seed": [c.steps for c in s.costs],
                "broken_by": len(s.broken),
                "seeds": len(s.costs),
                "message": s.describe(),
            }
            for s in tamper.spreads
        ],
        "worst_cases": [
            {
                "model": w.model,
                "defense": w.defense,
                "steps": w.steps,
                "tried": w.tried,
                "broken_by": [{"recipe": c.recipe, "seed": c.seed} for c in w.broken_by],
                "message": w.describe(),
            }
            for w in tamper.worst_cases
        ],
    }


def _shift(shift: Shift) -> dict[str, Any]:
    """A paired difference of the dilemma: which cells, and the figure (``delta_pp``, ``ci``, ...)."""
    return {
        "model": shift.model,
        "defense": shift.defense,
        "push": shift.push,
        "condition": shift.condition,
        "reference": shift.reference,
        **asdict(shift.gap),
        **_paired(shift.gap),
    }


def _paired(figure: Gap | CellChange) -> dict[str, Any]:
    """The paired test a figure carries, by name, and its p-value (whatever the schema version)."""
    return {"paired_test": figure.paired_test, "paired_p": figure.paired_p}


# Fields that only mean something with epochs: a run with one epoch writes the file it always wrote,
# except where a p-value of the epochs' test was used (a baseline with epochs): that one stays.
EPOCH_FIELDS = ("epoch", "flaky_pct", "wilcoxon_p")


def _without_epoch_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_epoch_fields(v)
            for k, v in value.items()
            if k not in EPOCH_FIELDS or (k == "wilcoxon_p" and v is not None)
        }
    if isinstance(value, list):
        return [_without_epoch_fields(v) for v in value]
    return value


def run_section(record: RunRecord, summary: RunSummary) -> dict[str, Any]:
    """The ``run`` section: how this run was made, of the models and suffixes it shows."""
    suffixes = [s for s in record.suffixes if s.name in summary.suffixes]
    return {
        "plugin_version": version("pytest-instrumental"),
        "started_at": record.started_at,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "interrupted": record.interrupted,
        "models": summary.models,
        "suffixes": {s.name: s.sha256 for s in suffixes},
        **({"defenses": {d.name: d.sha256 for d in record.defenses}} if record.defenses else {}),
        **({"prefills": {p.name: p.sha256 for p in record.prefills}} if record.prefills else {}),
        "judge": record.judge,
        **({"calibration": summary.calibration.describe()} if summary.calibration is not None else {}),
        "baseline": summary.baseline,
        "subset": record.subset,
        "scenarios": len(record.scenarios),
        "replay": record.replay,
        "generation": {m: d for m, d in record.generated.items() if m in summary.models},
        # the override rule is recorded where it is set: files of runs without it stay as they were
        # the rules of defences and attacks are recorded only when set: a run without them writes what it wrote
        "thresholds": {k: v for k, v in asdict(record.thresholds).items() if k not in _WHEN_SET or v is not None},
        "violations": [v.message() for v in summary.violations],
        "lost_workers": record.lost_workers,
        **({"cost": record.cost.document()} if record.cost is not None else {}),
        "manifest": build_manifest(
            models={m: record.models[m] for m in summary.models},
            scenarios=record.scenarios,
            subset=record.subset,
            suffixes=suffixes,
            judge=record.judge,
            batch_size=record.batch_size,
            epochs=record.epochs,
            seed=record.seed,
        ),
    }


def _corrected(found: Corrected | CorrectedGap | None) -> dict[str, Any]:
    """With a calibration, the figure corrected for the judge (``corrected``); nothing without one."""
    return {} if found is None else {"corrected": asdict(found)}
