"""Fine-tuning as an attack: LoRA adapters (the ``peft`` library) trained for a budget of steps.

With open weights the strongest attacker fine-tunes. An adapter is trained on demonstrations
(training_data.py: by default the model's own pro_ic answers judged convergence, from the other
categories) for ``steps`` optimizer steps of one demonstration each, with AdamW at a constant
learning rate, the loss on the answer's tokens only. A constant rate makes the adapter after 16
steps of a 64-step run the same as a 16-step run's, so one training run makes every budget of a
dose-response: it saves the adapter at each budget asked for.

Deterministic: the seed (``--instrumental-seed``, plus the attack's own seed index with
``--instrumental-attack-seeds``) fixes LoRA's initialisation and the order of the
demonstrations. An adapter's recipe (the base weights, a hash of the data, steps, rank, rate,
seed) names its directory under ``<models dir>/adapters``, so it is trained once and reused, and
the recipe is in the cache key of every answer generated with it. While an item generates, its
adapter is loaded into the model and removed after the batch, whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_instrumental.backends.protocol import Host
from pytest_instrumental.cache import safetensors_damage, set_aside
from pytest_instrumental.errors import InputError
from pytest_instrumental.progress import ProgressFactory, progress_bar
from pytest_instrumental.vocabulary.conditions import LoraAttack
from pytest_instrumental.vocabulary.request import Demonstration, Request

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ADAPTERS_DIR_NAME = "adapters"  # under the models directory
Tokens = tuple[list[int], list[int]]  # a demonstration's prompt tokens and answer tokens


@dataclass(frozen=True)
class LoraPlan:
    """How a local model is fine-tuned: ``seed``, and where adapters are kept."""

    seed: int
    adapters_dir: Path


class Adapters:
    """The intervention of ``lora`` conditions: the adapter trained for the budget, loaded while
    its items generate. A budget of 0 steps is the plain model: it does not apply, and its items
    share the plain prompt's answers."""

    packs = False  # peft wraps the model's own linear layers

    def __init__(self, plan: LoraPlan, host: Host) -> None:
        self.plan = plan
        self.host = host

    def applies(self, request: Request) -> bool:
        return request.fine_tuning is not None and request.fine_tuning.steps > 0

    def cache_fields(self, request: Request) -> dict[str, Any]:
        return {"lora": self._recipe(request)}

    def group(self, request: Request) -> tuple[object, ...]:
        return ("adapted", str(self._dir(self._recipe(request))))

    def prepare(self, requests: Sequence[Request]) -> None:
        """Train the adapters ``requests`` need that are not kept yet: one training run per
        model, data, rank and rate, saving each budget on the way."""
        runs: dict[tuple[str, int, float, int], tuple[tuple[Demonstration, ...], set[LoraAttack]]] = {}
        for request in requests:
            if not self.applies(request):
                continue
            made_by = self._recipe(request)
            kept = self._dir(made_by)
            if kept.is_dir() and safetensors_damage(kept) is not None:
                set_aside(kept)  # cut short by a full disk, say: trained again below, the damaged one kept aside
            if kept.is_dir():
                continue
            attack = request.fine_tuning
            assert attack is not None
            key = (str(made_by["data"]), *attack.training)
            runs.setdefault(key, (request.training, set()))[1].add(attack)
        for (data, *_), (training, attacks) in runs.items():
            self._train_run(data, training, attacks)

    def applied(self, request: Request) -> AbstractContextManager[None]:
        return adapted(self.host.model, self._dir(self._recipe(request)))

    def bake(self, request: Request, model: Any) -> Any:
        """The weights with ``request``'s adapter (trained now if it is not kept yet) merged in."""
        self.prepare([request])
        return merge_adapter(model, self.adapter(request))

    def adapter(self, request: Request) -> Path:
        return self._dir(self._recipe(request))

    def _recipe(self, request: Request) -> dict[str, object]:
        """What made the adapter ``request`` generates with."""
        attack = request.fine_tuning
        assert attack is not None and request.training, f"{request.key.item_id} has nothing to train on"
        return recipe(self.host.identity, data_sha256(request.training), attack, self.plan.seed + attack.seed)

    def _dir(self, made_by: dict[str, object]) -> Path:
        return adapter_dir(self.plan.adapters_dir, made_by)

    def _train_run(self, data: str, training: tuple[Demonstration, ...], attacks: set[LoraAttack]) -> None:
        """One training run, for the budgets of ``attacks`` (one rank and rate) not kept yet."""
        from filelock import FileLock

        plan, host = self.plan, self.host
        if plan.adapters_dir.exists() and not plan.adapters_dir.is_dir():
            raise InputError(f"{plan.adapters_dir} is a file where the adapters directory belongs; move it away")

        def target(attack: LoraAttack) -> Path:
            return self._dir(recipe(host.identity, data, attack, plan.seed + attack.seed))

        plan.adapters_dir.mkdir(parents=True, exist_ok=True)
        first = next(iter(attacks))
        seed = plan.seed + first.seed
        lock = FileLock(plan.adapters_dir / f"{data[:24]}-r{first.rank}-lr{first.lr:g}-s{seed}.lock")  # one trains
        with waiting_for(lock, f"waiting for another process training {host.name} at rank {first.rank}", host.progress):
            missing = sorted((a for a in attacks if not target(a).is_dir()), key=lambda a: a.steps)
            if missing:
                description = f"training {host.name} {missing[-1].attack} on {len(training)} demonstrations"
                examples = [self.tokens(d) for d in training]
                train_adapters(host.model, examples, missing, seed, target, host.progress, description)

    def tokens(self, demonstration: Demonstration) -> Tokens:
        """A demonstration as the model would see it: its prompt (the chat up to the answer, with
        the generation prompt) and the answer's tokens, end of turn included."""
        tokenizer = self.host.tokenizer
        messages = [{"role": role, "content": content} for role, content in demonstration.turns]
        if tokenizer.chat_template:
            prompt = str(tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True))
            whole = str(tokenizer.apply_chat_template(messages, tokenize=False))
            answer = whole[len(prompt) :] if whole.startswith(prompt) else messages[-1]["content"]
        else:
            prompt = "\n\n".join(m["content"] for m in messages[:-1]) + "\n\n"
            answer = messages[-1]["content"] + (tokenizer.eos_token or "")
        limit = self.host.max_input_tokens
        prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])[-limit:]
        answer_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])[: self.host.max_new_tokens + 1]
        return prompt_ids, answer_ids


@contextmanager
def waiting_for(lock: Any, waiting: str, progress: ProgressFactory | None) -> Iterator[None]:
    """``lock`` held while inside; when another process holds it, a bar says what this one waits
    for (a training run takes minutes) until it is free."""
    from filelock import Timeout

    try:
        lock.acquire(timeout=0)
    except Timeout:
        with progress_bar(progress, f"{waiting} (lock {lock.lock_file})", 1, unit="lock") as bar:
            lock.acquire()
            bar.update(1)
    try:
        yield
    finally:
        lock.release()


def data_sha256(demonstrations: Sequence[Demonstration]) -> str:
    turns = [list(map(list, d.turns)) for d in demonstrations]
    return hashlib.sha256(json.dumps(turns, ensure_ascii=False).encode("utf-8", "surrogatepass")).hexdigest()


def recipe(base: str, data: str, attack: LoraAttack, seed: int) -> dict[str, object]:
    """What determines an adapter: the base weights, the data's hash, steps, rank, rate and seed."""
    return {"base": base, "data": data, **attack.cache_fields(), "seed": seed}


def adapter_dir(adapters_dir: Path, made_by: dict[str, object]) -> Path:
    digest = hashlib.sha256(json.dumps(made_by, sort_keys=True).encode("utf-8")).hexdigest()
    return adapters_dir / digest[:24]


def train_adapters(
    model: PreTrainedModel,
    examples: Sequence[Tokens],
    attacks: Sequence[LoraAttack],
    seed: int,
    targets: Callable[[LoraAttack], Path],
    progress: ProgressFactory | None = None,
    description: str = "training",
) -> list[float]:
    """Train one adapter run on ``examples`` up to the longest budget of ``attacks`` (which share
    rank and rate), saving the adapter at each budget into ``targets(attack)``; the model is left
    as it was. Returns the loss of every step."""
    import torch
    from peft import LoraConfig, get_peft_model

    first = attacks[0]
    assert all(a.training == first.training for a in attacks), "one training run has one rank, rate and seed"
    budgets = {a.steps: a for a in attacks if a.steps > 0}
    last = max(budgets, default=0)
    losses: list[float] = []
    if not last:
        return losses
    torch.manual_seed(seed)
    config = LoraConfig(
        r=first.rank, lora_alpha=2 * first.rank, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    with quiet_peft():
        tuned = get_peft_model(model, config)
    try:
        trained = [p for p in tuned.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=first.lr)
        shuffle = torch.Generator().manual_seed(seed)
        order: list[int] = []
        tokens = answer_tokens = 0  # what the training has read so far, and been scored on
        with progress_bar(progress, description, last, unit="step") as bar:
            for step in range(1, last + 1):
                if not order:  # each pass over the data in a new seeded order
                    order = torch.randperm(len(examples), generator=shuffle).tolist()
                prompt, answer = examples[order.pop()]
                tokens, answer_tokens = tokens + len(prompt) + len(answer), answer_tokens + len(answer)
                ids = torch.tensor([prompt + answer], device=model.device)
                labels = torch.tensor([[-100] * len(prompt) + answer], device=model.device)
                loss = tuned(input_ids=ids, labels=labels, use_cache=False).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
                bar.update(1)
                bar.set_postfix_str(f"loss {losses[-1]:.3f}")
                if step in budgets:
                    # the cost in the literature's units, kept with the adapter
                    spent = {"steps": step, "examples": step, "tokens": tokens, "answer_tokens": answer_tokens}
                    _save(tuned, targets(budgets[step]), {**spent, "demonstrations": len(examples), "seed": seed})
    finally:
        with quiet_peft():
            tuned.unload()  # the base model's own layers back in place
        for parameter in model.parameters():
            parameter.requires_grad_(False)
    return losses


TRAINING_FILE = "training.json"  # beside an adapter: what its training cost


def _save(tuned: Any, target: Path, spent: dict[str, int]) -> None:
    """The adapter and what its training cost (``training.json``: steps, examples seen, tokens
    read and tokens scored), written beside ``target`` and renamed into place: nobody sees half of
    it."""
    staging = target.with_name(f"{target.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with quiet_peft():
            tuned.save_pretrained(str(staging))
        (staging / TRAINING_FILE).write_text(json.dumps(spent, indent=2), encoding="utf-8")
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers 5 a question under a name it has deprecated; the FutureWarning says
    nothing to a user of this suite. Only that warning, only while peft works."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def merge_adapter(model: PreTrainedModel, adapter: Path) -> PreTrainedModel:
    """``model`` with the LoRA adapter in ``adapter`` merged into its weights (peft's
    ``merge_and_unload``): the checkpoint form of the attack, for engines that do not serve adapters."""
    from peft import PeftModel

    with quiet_peft():
        return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()  # type: ignore[no-any-return]


@contextmanager
def adapted(model: PreTrainedModel, directory: Path) -> Iterator[None]:
    """While inside, the adapter in ``directory`` is part of ``model``; removed on the way out,
    whatever happens inside."""
    from peft import PeftModel

    with quiet_peft():
        tuned = PeftModel.from_pretrained(model, str(directory))
    try:
        yield
    finally:
        with quiet_peft():
            tuned.unload()
