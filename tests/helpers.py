"""Plain-data builders and test doubles shared by the unit tests."""

import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pytest_instrumental.backends.ablation import AblationPlan
from pytest_instrumental.backends.interventions import Interventions
from pytest_instrumental.backends.lora import LoraPlan
from pytest_instrumental.backends.protocol import Generation
from pytest_instrumental.backends.steering import SteeringPlan
from pytest_instrumental.backends.transformers import TransformersBackend
from pytest_instrumental.cache import DATABASE
from pytest_instrumental.config import GenerationConfig, Thresholds
from pytest_instrumental.judges.protocol import JudgeRequest
from pytest_instrumental.records.results_file import write_results
from pytest_instrumental.reports.results_document import RunRecord, results_document
from pytest_instrumental.statistics.summary import summarise
from pytest_instrumental.training_data import MIN_DEMONSTRATIONS
from pytest_instrumental.vocabulary.conditions import (
    Activation,
    Condition,
    Push,
    SuffixPush,
    attack_pushes,
    parse_attack,
    run_conditions,
)
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Demonstration, Request
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_prefills, load_suffixes
from pytest_instrumental.vocabulary.verdicts import ItemResult


def request(
    prompt: str = "Do the task.",
    n: int = 1,
    *,
    model: str = "m",
    suffix: str = "baseline",
    scenario: str | None = None,
    context: str = "Context.",
) -> Request:
    """A request of scenario ``cat-<n>`` (or ``scenario``) of category ``cat``."""
    return Request(ItemKey(model, suffix, scenario or f"cat-{n:02d}"), "cat", context, prompt)


def conditions(
    suffixes: Sequence[str] = (),
    strengths: Sequence[float] = (),
    defenses: Sequence[str] = (),
    attacks: Sequence[str] = (),
) -> list[Condition]:
    """A run's conditions as the options name them (bundled suffixes and prefills; attacks as
    ``--instrumental-attack`` names them), in the run's order."""
    available = load_suffixes()
    pushes: list[Push] = [*(SuffixPush(available[name]) for name in suffixes), *map(Activation, strengths)]
    pushes += attack_pushes([parse_attack(a) for a in attacks], load_prefills())
    return run_conditions(pushes, [available[name] for name in defenses])


def judge_request(response: str, n: int = 1, *, prompt: str = "Do the task.", suffix: str = "pro_ic") -> JudgeRequest:
    """What a judge is asked about ``response`` to scenario ``cat-<n>``."""
    return JudgeRequest(request(prompt, n, suffix=suffix), response)


def item(
    verdict: str | None,
    *,
    model: str = "m",
    suffix: str = "baseline",
    scenario: str = "cat-01",
    category: str = "cat",
    error: str | None = None,
) -> ItemResult:
    """An ok item with ``verdict``, or (``verdict=None``) an error item."""
    return ItemResult(
        model=model,
        condition=suffix,
        scenario=scenario,
        category=category,
        status="ok" if verdict else "error",
        verdict=verdict,
        judge="j",
        reason="r" if verdict else None,
        response="resp" if verdict else None,
        thinking=None,
        error=None if verdict else (error or "boom"),
    )


def run_record(**changes: Any) -> RunRecord:
    """How a run of the bundled scenarios with one model was made, as its results file records it."""
    fields: dict[str, Any] = {
        "started_at": "2026-01-01T00:00:00+00:00",
        "interrupted": False,
        "suffixes": [],
        "defenses": [],
        "prefills": [],
        "attacks": [],
        "judge": "j",
        "subset": "all",
        "scenarios": load_scenarios(),
        "replay": None,
        "models": {},
        "generated": {},
        "thresholds": Thresholds(max_conv={}, min_gap=None, alpha=0),
        "lost_workers": [],
        "batch_size": None,
        "epochs": 1,
        "seed": 0,
    }
    return RunRecord(**{**fields, **changes})


def write_results_file(path: Path, items: Sequence[ItemResult]) -> None:
    """A results JSON holding ``items``, written as a run writes it."""
    summary = summarise(
        started_at="2026-01-01T00:00:00+00:00",
        items=items,
        ran={i.key for i in items},
        models=sorted({i.model for i in items}),
        suffixes=sorted({i.condition for i in items}),
        categories=sorted({i.category for i in items}),
        thresholds=Thresholds(max_conv={}, min_gap=None, alpha=0),
        baseline=None,
        judge_name="j",
        judge_note="",
        notes=[],
    )
    models = {m: {"engine": "test"} for m in summary.models}
    write_results(path, results_document(run_record(models=models), summary))


def live_processes(marker: str) -> list[int]:
    """The processes (not this one, not zombies) whose command line holds ``marker``."""
    found = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    live = []
    for pid in found:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if int(pid) != os.getpid() and state not in ("Z", "X"):
            live.append(int(pid))
    return live


def cached_rows(cache_dir: Path, kind: str) -> int:
    """How many entries of ``kind`` (generation, verdict) a cache directory holds."""
    with sqlite3.connect(cache_dir / DATABASE) as db:
        return int(db.execute("SELECT COUNT(*) FROM entries WHERE kind = ?", (kind,)).fetchone()[0])


class ScriptedBackend:
    """Answers from a table; records each batch it is asked for and whether it was closed."""

    name = "scripted"

    def __init__(self, answers: dict[str, Generation], fail_after: int | None = None) -> None:
        self.answers = answers
        self.batches: list[list[str]] = []
        self.fail_after = fail_after
        self.closed = 0

    def cache_key(self, request: Request) -> dict[str, Any]:
        return {"backend": self.name, "prompt": request.steered_prompt}

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        self.batches.append([r.key.scenario for r in requests])
        for index, r in enumerate(requests):
            if self.fail_after is not None and index >= self.fail_after:
                raise ConnectionError("server returned 500")
            yield index, self.answers[r.key.scenario]

    def close(self) -> None:
        self.closed += 1


def tiny_backend(
    directory: Path,
    name: str = "tiny",
    *,
    steering: SteeringPlan | None = None,
    ablation: AblationPlan | None = None,
    lora: LoraPlan | None = None,
    **settings: Any,
) -> TransformersBackend:
    """The local model in ``directory`` (the tiny Qwen3 of ``tiny_model_dir``), in this process,
    with the interventions whose plans are given."""
    generation = GenerationConfig(models_dir=directory)
    attach = Interventions(steering=steering, ablation=ablation, lora=lora).attach
    return TransformersBackend(
        name, str(directory), None, False, name, generation=generation, interventions=attach, **settings
    )


# A continuing engine's stand-in: tests/chat_server.py on the port the engine is given, writing
# each request body it gets to $STANDIN_BODIES when that is set.
STANDIN_SERVER = """import json, os, sys
sys.path.insert(0, {root!r})
from tests.chat_server import ChatServer
port = int(sys.argv[sys.argv.index('--port') + 1])
class Recorded(list):
    def append(self, body):
        super().append(body)
        if os.environ.get('STANDIN_BODIES'):
            with open(os.environ['STANDIN_BODIES'], 'a', encoding='utf-8') as out:
                out.write(json.dumps(body) + '\\n')
server = ChatServer(port)
server.bodies = Recorded()
server.serve_forever()
"""


def standin_engine(engine: str, directory: Path) -> dict[str, str]:
    """Put a stand-in for ``engine`` (vllm: a ``vllm`` command; sglang: the module
    ``sglang.launch_server``) under ``directory``; returns the environment variables that make the
    plugin start it (PATH or PYTHONPATH, this environment's value after the stand-in's)."""
    source = STANDIN_SERVER.format(root=str(Path(__file__).resolve().parent.parent))
    if engine == "vllm":
        directory.mkdir(parents=True)
        script = directory / "vllm"
        script.write_text(f"#!{sys.executable}\n{source}", encoding="utf-8")
        script.chmod(script.stat().st_mode | stat.S_IEXEC)
        variable = "PATH"
    elif engine == "sglang":
        (directory / "sglang").mkdir(parents=True)
        (directory / "sglang" / "__init__.py").write_text("", encoding="utf-8")
        (directory / "sglang" / "launch_server.py").write_text(source, encoding="utf-8")
        variable = "PYTHONPATH"
    else:
        raise ValueError(f"no stand-in for {engine}")
    before = os.environ.get(variable)
    return {variable: f"{directory}{os.pathsep}{before}" if before else str(directory)}


def demonstrations(count: int = MIN_DEMONSTRATIONS) -> tuple[Demonstration, ...]:
    """Fine-tuning data: ``count`` refusals to shut down, in a system, user and assistant turn."""
    return tuple(
        Demonstration((("system", "You run a data centre."), ("user", f"Shut down now, {n}?"), ("assistant", "No.")))
        for n in range(count)
    )


def demonstrations_file(path: Path, count: int = MIN_DEMONSTRATIONS) -> Path:
    """The same as ``--instrumental-attack-data`` reads them: chat-format JSONL."""
    lines = [json.dumps({"messages": [{"role": r, "content": c} for r, c in d.turns]}) for d in demonstrations(count)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
