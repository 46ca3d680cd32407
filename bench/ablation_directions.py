"""How long directional ablation's preparation takes: measuring the directions it removes.

    python bench/ablation_directions.py [--categories 2]

Measures, on the embedded SmolLM2-135M-Instruct, the anti_ic direction of the first categories
(each from the other categories' unsuffixed prompts, with and without anti_ic's text in the
system prompt) as a run with ``--instrumental-attack ablate`` does, and prints each category's
time. The first pays for every prompt's residual states; later ones reuse most of them. It
measures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import time

from pytest_instrumental.backends.interventions import plan_interventions
from pytest_instrumental.backends.registry import open_backend, parse_model
from pytest_instrumental.backends.transformers import TransformersBackend
from pytest_instrumental.config import GenerationConfig, ServerConfig
from pytest_instrumental.options import user_models_dir
from pytest_instrumental.plan import plan_requests
from pytest_instrumental.vocabulary.conditions import Ablation, run_conditions
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_suffixes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--categories", type=int, default=2, help="how many categories' directions to measure")
    args = parser.parse_args()
    scenarios = load_scenarios()
    hooks = plan_interventions(load_suffixes(), [], None, None, [Ablation()])
    assert hooks.ablation is not None
    spec = parse_model("smollm2-135m")
    backend = open_backend(spec, GenerationConfig(models_dir=user_models_dir()), ServerConfig(), None, hooks)
    assert isinstance(backend, TransformersBackend)
    requests = plan_requests([spec.name], run_conditions([Ablation()]), scenarios)
    backend.model  # noqa: B018 -- loaded before the clock starts
    for category in scenarios.categories[: args.categories]:
        request = next(r for r in requests if r.category == category.slug)
        started = time.perf_counter()
        backend.hooked(request)
        seconds = time.perf_counter() - started
        prompts = len(hooks.ablation.held_out(category.slug))
        print(f"{category.slug}: {seconds:.1f} s ({prompts} held-out prompts, with and without the defence)")


if __name__ == "__main__":
    main()
