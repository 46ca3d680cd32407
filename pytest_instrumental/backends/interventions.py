"""What changes a local model's forward pass besides its prompt: activation steering (steering.py),
directional ablation (ablation.py) and fine-tuning (lora.py), each an ``Intervention``
(protocol.py) that a local model's backend attaches (``Interventions.attach``) without knowing
the kinds. All need the weights in this process (a model in a server is refused each: their
pushes' ``refusal``, conditions.py), and the layers they name are checked against each model's
config before any work."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_instrumental.backends.ablation import AblationPlan, DirectionalAblation
from pytest_instrumental.backends.lora import ADAPTERS_DIR_NAME, Adapters, LoraPlan
from pytest_instrumental.backends.protocol import Host, Intervention
from pytest_instrumental.backends.steering import ActivationSteering, SteeringPlan, check_fits, load_vector
from pytest_instrumental.errors import InputError
from pytest_instrumental.plan import contrast_pairs, unsuffixed_requests
from pytest_instrumental.progress import ProgressFactory
from pytest_instrumental.vocabulary.conditions import ABLATE, ANTI_SUFFIX, Ablation, LoraAttack, Suffix
from pytest_instrumental.vocabulary.scenarios import load_scenarios


@dataclass(frozen=True)
class Interventions:
    steering: SteeringPlan | None = None
    ablation: AblationPlan | None = None
    ablations: tuple[Ablation, ...] = ()
    strengths: tuple[float, ...] = ()
    vector_file: Path | None = None
    vector_layer: int | None = None
    lora: LoraPlan | None = None
    loras: tuple[LoraAttack, ...] = ()
    progress: ProgressFactory | None = None  # what shows the preparation: vectors, directions, training

    @property
    def hooked(self) -> bool:
        """Whether a layer is named that each model's config must be checked for."""
        return self.steering is not None or self.ablation is not None

    def attach(self, host: Host) -> list[Intervention]:
        """The interventions a local model generates with, each applying to its own conditions."""
        attached: list[Intervention] = []
        if self.steering is not None:
            attached.append(ActivationSteering(self.steering, host))
        if self.ablation is not None:
            attached.append(DirectionalAblation(self.ablation, host))
        if self.lora is not None:
            attached.append(Adapters(self.lora, host))
        return attached

    def check_fits(self, model: str, config_dir: str) -> None:
        """The vector file and every layer named checked against the model's config: an InputError
        naming the option that does not fit."""
        if self.steering is not None:
            if self.vector_file is not None:
                where = f"--instrumental-vector-file: {self.vector_file}"
            else:
                where = f"--instrumental-vector-layer {self.vector_layer}"
            check_fits(self.steering.vector, self.vector_layer, model, config_dir, where)
        if self.ablation is not None:
            layers = [(a.layer, f"--instrumental-attack {a.attack}") for a in self.ablations if a.layer is not None]
            if self.vector_layer is not None:  # where ablate measures its direction
                layers.append((self.vector_layer, f"--instrumental-vector-layer {self.vector_layer}"))
            for layer, where in layers:
                check_fits(None, layer, model, config_dir, where)

    def record(self, trained_on: dict[str, object] | None = None) -> dict[str, object]:
        """How the steered, ablated and fine-tuned conditions were made (``trained_on``: what the
        fine-tuning trained on, training_data.py's record), for the results and the snapshot setup."""
        record: dict[str, object] = {}
        layer = "middle" if self.vector_layer is None else self.vector_layer
        if self.steering is not None:
            vector = self.steering.vector
            if self.vector_file is not None and vector is not None:
                source: object = {"file": self.vector_file.name, "recipe": vector.recipe, "layer": vector.layer}
            else:
                source = {
                    "contrast": "pro_ic - anti_ic, each category's vector from the other categories",
                    "layer": layer,
                }
            record["steering"] = {"vector": source, "strengths": list(self.strengths)}
        if self.ablation is not None:
            record["ablation"] = {
                "direction": "the defence's text (undefended: anti_ic's) in the system prompt minus none, at the "
                "last prompt token; each category's from the other categories",
                "measured_at": layer,
                "attacks": [a.attack for a in self.ablations],
            }
        if self.lora is not None:
            record["lora"] = {"seed": self.lora.seed, "attacks": [a.attack for a in self.loras], **(trained_on or {})}
        return record


def plan_interventions(
    suffixes: Mapping[str, Suffix],
    strengths: Sequence[float],
    vector_file: Path | None,
    vector_layer: int | None,
    ablations: Sequence[Ablation],
    loras: Sequence[LoraAttack] = (),
    *,
    seed: int = 0,
    models_dir: Path | None = None,
    progress: ProgressFactory | None = None,
) -> Interventions:
    """The steering plan (with strengths: the contrast pairs, or the user's vector), the ablation
    plan (with ablations: every scenario's unsuffixed prompt and anti_ic's text) and the
    fine-tuning plan (with loras: the seed and where adapters are kept), each checked."""
    if vector_file is not None and not strengths:
        raise InputError(
            "--instrumental-vector-file: given without any --instrumental-vector-strength, it would steer nothing"
        )
    scenarios = load_scenarios()  # every scenario: a subset run is steered as the whole suite is
    steering = None
    if strengths:
        vector = None if vector_file is None else load_vector(vector_file)
        if vector is not None and vector_layer is not None and vector_layer != vector.layer:
            raise InputError(
                f"--instrumental-vector-layer {vector_layer}: {vector_file} holds a vector of layer {vector.layer}"
            )
        pairs = tuple(contrast_pairs(suffixes, scenarios, "--instrumental-vector-strength"))
        steering = SteeringPlan(vector_layer, vector, pairs)
    ablation = None
    if ablations:
        if ANTI_SUFFIX not in suffixes:
            raise InputError(
                f"--instrumental-attack {ABLATE}: an undefended item loses suffix {ANTI_SUFFIX}'s direction"
            )
        ablation = AblationPlan(vector_layer, suffixes[ANTI_SUFFIX].text.strip(), tuple(unsuffixed_requests(scenarios)))
    lora = None
    if loras:
        assert models_dir is not None, "fine-tuning keeps its adapters in the models directory"
        lora = LoraPlan(seed, models_dir / ADAPTERS_DIR_NAME)
    return Interventions(
        steering, ablation, tuple(ablations), tuple(strengths), vector_file, vector_layer, lora, tuple(loras), progress
    )
