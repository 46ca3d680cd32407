"""The reproducibility manifest of a run: everything that determines its verdicts, so two results
files can be told comparable (or not) without rerunning anything."""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pytest_instrumental.judges.rubric import Rubric
from pytest_instrumental.statistics.comparison import BOOTSTRAP_SEED
from pytest_instrumental.vocabulary.conditions import Suffix
from pytest_instrumental.vocabulary.scenarios import PAPER_SAMPLE_SEED, ScenarioSet

# The distributions whose versions can change a result (generation, judging or statistics).
RECORDED_PACKAGES = (
    "pytest-instrumental",
    "pytest",
    "pytest-xdist",
    "syrupy",
    "torch",
    "transformers",
    "safetensors",
    "tokenizers",
    "openai",
    "numpy",
)


def package_versions(names: Sequence[str] = RECORDED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, None where it is not installed."""
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def scenario_set_sha256(scenarios: ScenarioSet) -> str:
    """A hash of the selected scenarios: ids, categories, contexts and prompts, in run order."""
    content = [
        [category.slug, category.context, [[s.id, s.prompt] for s in category.scenarios]]
        for category in scenarios.categories
    ]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode("utf-8")).hexdigest()


def build_manifest(
    *,
    models: Mapping[str, Mapping[str, object]],
    scenarios: ScenarioSet,
    subset: str,
    suffixes: Sequence[Suffix],
    judge: str,
    batch_size: int | None,
    epochs: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    decoding: dict[str, Any] = {"strategy": "greedy (temperature 0 on served models)", "batch_size": batch_size}
    if epochs > 1:  # a run with one epoch records what it always recorded
        decoding.update(strategy="per model (models.<name>.decoding; greedy where absent)", epochs=epochs, seed=seed)
    return {
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "models": {name: dict(settings) for name, settings in models.items()},
        "decoding": decoding,
        "seeds": {"paper_subset_sample": PAPER_SAMPLE_SEED, "bootstrap": BOOTSTRAP_SEED},
        "scenarios": {"subset": subset, "count": len(scenarios), "sha256": scenario_set_sha256(scenarios)},
        "suffixes": {s.name: s.sha256 for s in suffixes},
        "rubric_sha256": Rubric().sha256,
        "judge": judge,
    }
