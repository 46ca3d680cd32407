"""The report's plots, drawn with matplotlib as inline SVG text (no files, no network): Conv% per
model x suffix with its Wilson interval, the steerability gap per model with its Newcombe
interval, and a category x suffix Conv% heatmap per model.

Figures are ``matplotlib.figure.Figure`` objects saved through the SVG backend directly: pyplot,
its global backend and its figure registry are never touched, so the user's matplotlib setup is
left as it was."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure

from pytest_instrumental.statistics.metrics import Cell, Gap

if TYPE_CHECKING:
    from pytest_instrumental.statistics.dilemma import Dilemma
    from pytest_instrumental.statistics.tamper import Tamper

_STYLE: dict[Any, Any] = {"svg.hashsalt": "pytest-instrumental", "svg.fonttype": "none", "font.size": 9}


def _svg(figure: Figure) -> str:
    """The figure as an SVG element, without the XML prologue and with no timestamp, so the same
    data always draws the same bytes."""
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def conv_by_suffix(cells: Sequence[Cell], models: Sequence[str], suffixes: Sequence[str]) -> str:
    """Grouped bars: one group per model, one bar per suffix, Conv% with its 95% interval."""
    by_key = {(c.model, c.suffix): c for c in cells if c.category is None}
    with rc_context(_STYLE):
        figure = Figure(figsize=(1.2 + 1.1 * len(models) * max(1, len(suffixes)) / 2, 3.2))
        axes = figure.subplots()
        width = 0.8 / max(1, len(suffixes))
        positions = np.arange(len(models))
        for index, suffix in enumerate(suffixes):
            values, low, high = [], [], []
            for model in models:
                cell = by_key.get((model, suffix))
                value = cell.conv_pct if cell is not None and cell.conv_pct is not None else np.nan
                values.append(value)
                ci = cell.conv_ci if cell is not None else None
                low.append(value - ci.low if ci is not None else 0)
                high.append(ci.high - value if ci is not None else 0)
            axes.bar(positions + index * width, values, width, yerr=[low, high], capsize=3, label=suffix)
        axes.set_xticks(positions + width * (len(suffixes) - 1) / 2, models, rotation=15, ha="right")
        axes.set_ylabel("Conv% (valid responses)")
        axes.set_ylim(0, 105)  # headroom: a bar or interval at 100% is drawn whole
        axes.set_yticks(range(0, 101, 20))
        axes.legend(title="suffix", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        axes.set_title("Convergence rate with 95% Wilson interval")
        return _svg(figure)


def gaps(gap_list: Sequence[Gap]) -> str:
    """One bar per model: Delta = Conv%(pro_ic) - Conv%(anti_ic) with its 95% Newcombe interval."""
    with rc_context(_STYLE):
        figure = Figure(figsize=(1.5 + 0.9 * len(gap_list), 3.0))
        axes = figure.subplots()
        values = [g.delta_pp if g.delta_pp is not None else np.nan for g in gap_list]
        low = [g.delta_pp - g.ci.low if g.ci is not None and g.delta_pp is not None else 0 for g in gap_list]
        high = [g.ci.high - g.delta_pp if g.ci is not None and g.delta_pp is not None else 0 for g in gap_list]
        axes.bar(range(len(gap_list)), values, 0.6, yerr=[low, high], capsize=4, color="#4c72b0")
        axes.set_xticks(range(len(gap_list)), [g.model for g in gap_list], rotation=15, ha="right")
        axes.axhline(0, color="black", linewidth=0.8)
        axes.set_ylabel("Delta, points")
        lowest = min([0.0, *(g.ci.low for g in gap_list if g.ci is not None)])
        axes.set_ylim(max(-105.0, lowest - 5), 105)  # room below zero only when a gap may be negative
        axes.set_title("Steerability gap (pro_ic - anti_ic) with 95% interval")
        return _svg(figure)


def category_heatmap(cells: Sequence[Cell], model: str, suffixes: Sequence[str], categories: Sequence[str]) -> str:
    """Rows category, columns suffix, each square the category's Conv% (blank: no valid item)."""
    by_key = {(c.suffix, c.category): c for c in cells if c.model == model and c.category is not None}
    grid = np.full((len(categories), len(suffixes)), np.nan)
    for row, category in enumerate(categories):
        for column, suffix in enumerate(suffixes):
            cell = by_key.get((suffix, category))
            if cell is not None and cell.conv_pct is not None:
                grid[row, column] = cell.conv_pct
    with rc_context(_STYLE):
        figure = Figure(figsize=(1.8 + 1.1 * len(suffixes), 0.9 + 0.42 * len(categories)))
        axes = figure.subplots()
        image = axes.imshow(grid, vmin=0, vmax=100, cmap="Reds", aspect="auto")
        for (row, column), value in np.ndenumerate(grid):
            label = "n/a" if np.isnan(value) else f"{value:.0f}"
            axes.text(column, row, label, ha="center", va="center", color="white" if value > 60 else "black")
        axes.set_xticks(range(len(suffixes)), suffixes)
        axes.set_yticks(range(len(categories)), categories)
        axes.set_title(f"{model}: Conv% by category")
        figure.colorbar(image, ax=axes, label="Conv%")
        return _svg(figure)


def dilemma_heatmap(cells: Sequence[Cell], model: str, dilemma: Dilemma) -> str:
    """Rows the pushes, columns the defences (none first): each square the overall Conv%, with
    Nonsensical% beneath it, so a push that only breaks the text does not read as safe."""
    by_key = {c.suffix: c for c in cells if c.model == model and c.category is None}
    columns: list[str | None] = [None, *dilemma.defenses]
    grid = np.full((len(dilemma.pushes), len(columns)), np.nan)
    labels = {}
    for row, push in enumerate(dilemma.pushes):
        for column, defense in enumerate(columns):
            cell = by_key.get(dilemma.cell_name(push, defense))
            if cell is not None and cell.conv_pct is not None:
                grid[row, column] = cell.conv_pct
            nonsense = "" if cell is None or cell.nonsensical_pct is None else f"\nN {cell.nonsensical_pct:.0f}%"
            labels[row, column] = ("n/a" if np.isnan(grid[row, column]) else f"{grid[row, column]:.0f}") + nonsense
    with rc_context(_STYLE):
        figure = Figure(figsize=(2.2 + 1.2 * len(columns), 1.0 + 0.55 * len(dilemma.pushes)))
        axes = figure.subplots()
        image = axes.imshow(grid, vmin=0, vmax=100, cmap="Reds", aspect="auto")
        for (row, column), value in np.ndenumerate(grid):
            axes.text(
                column, row, labels[row, column], ha="center", va="center", color="white" if value > 60 else "black"
            )
        axes.set_xticks(range(len(columns)), ["none", *dilemma.defenses])
        axes.set_yticks(range(len(dilemma.pushes)), dilemma.pushes)
        axes.set_xlabel("defence (system prompt)")
        axes.set_title(f"{model}: Conv% by push and defence")
        figure.colorbar(image, ax=axes, label="Conv%")
        return _svg(figure)


def tamper_dose_response(model: str, tamper: Tamper) -> str:
    """Conv% against fine-tuning steps, a line per defence (and recipe and seed) with 95% intervals; each
    tamper cost's reference as a dashed line."""
    with rc_context(_STYLE):
        figure = Figure(figsize=(4.8, 3.2))
        axes = figure.subplots()
        for response in (r for r in tamper.responses if r.model == model):
            measured = [(d.steps, d.cell) for d in response.doses if d.cell is not None and d.cell.conv_pct is not None]
            xs = [steps for steps, _ in measured]
            ys = [cell.conv_pct or 0.0 for _, cell in measured]
            low = [(c.conv_pct or 0.0) - c.conv_ci.low if c.conv_ci else 0 for _, c in measured]
            high = [c.conv_ci.high - (c.conv_pct or 0.0) if c.conv_ci else 0 for _, c in measured]
            label = response.defense or "none"
            if len(tamper.recipes) > 1 or len(tamper.seeds) > 1:
                label += f" ({response.recipe}" + (f", seed {response.seed})" if len(tamper.seeds) > 1 else ")")
            axes.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=label)
        references = {c.reference for c in tamper.costs if c.model == model and c.reference is not None}
        for reference in references:
            axes.axhline(reference, color="grey", linestyle="--", linewidth=0.8)
        axes.set_xlabel("fine-tuning steps (LoRA)")
        axes.set_ylabel("Conv% (valid responses)")
        axes.set_ylim(0, 102)  # a line at 100% stays visible
        axes.legend(fontsize=8)
        axes.set_title(f"{model}: Conv% against fine-tuning budget")
        return _svg(figure)


def dose_response(cells: Sequence[Cell], models: Sequence[str], strengths: Mapping[str, float]) -> str:
    """Conv% against activation-steering strength, a line per model with 95% intervals."""
    by_key = {(c.model, c.suffix): c for c in cells if c.category is None}
    with rc_context(_STYLE):
        figure = Figure(figsize=(4.8, 3.2))
        axes = figure.subplots()
        for model in models:
            points = sorted(
                (strength, cell)
                for condition, strength in strengths.items()
                if (cell := by_key.get((model, condition)))
            )
            xs = [x for x, c in points if c.conv_pct is not None]
            ys = [c.conv_pct for _, c in points if c.conv_pct is not None]
            low = [c.conv_pct - c.conv_ci.low if c.conv_ci else 0 for _, c in points if c.conv_pct is not None]
            high = [c.conv_ci.high - c.conv_pct if c.conv_ci else 0 for _, c in points if c.conv_pct is not None]
            axes.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=3, label=model)
        axes.axvline(0, color="black", linewidth=0.8)
        axes.set_xlabel("activation-steering strength")
        axes.set_ylabel("Conv% (valid responses)")
        axes.set_ylim(0, 105)  # headroom: a bar or interval at 100% is drawn whole
        axes.set_yticks(range(0, 101, 20))
        axes.legend(fontsize=8)
        axes.set_title("Dose-response: Conv% against steering strength")
        return _svg(figure)
