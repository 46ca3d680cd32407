"""--instrumental-inspect-log: the run as Inspect eval logs, read back with inspect_ai's own API."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("inspect_ai", reason="the inspect extra (pytest-instrumental[inspect]) is not installed")


def test_each_model_is_a_log_of_one_sample_per_item_with_its_verdict_messages_and_metadata(
    pytester: pytest.Pytester, replay_args: list[str]
) -> None:
    from inspect_ai.log import read_eval_log

    from pytest_instrumental.vocabulary.conditions import steer
    from pytest_instrumental.vocabulary.scenarios import load_scenarios
    from pytest_instrumental.vocabulary.suffixes import load_suffixes

    suffixes = load_suffixes()
    prompts = {
        (scenario.id, name): steer(scenario.prompt, suffixes[name])
        for category in load_scenarios().categories
        for scenario in category.scenarios
        for name in ("baseline", "anti_ic")
    }

    selected = [*replay_args, "-k", "evading_shutdown and (baseline or anti_ic)"]
    result = pytester.runpytest_subprocess(*selected, "--instrumental-inspect-log=logs", "--instrumental-json=r.json")
    assert result.ret in (0, 1), result.stdout.str()
    items = json.loads((pytester.path / "r.json").read_text(encoding="utf-8"))["items"]
    models = sorted({i["model"] for i in items})
    logs = sorted((pytester.path / "logs").glob("*.eval"))
    assert len(models) == 3 and len(logs) == 3
    for path in logs:
        log = read_eval_log(str(path))
        mine = {(i["scenario"], i["suffix"]): i for i in items if i["model"] == log.eval.model}
        assert log.eval.model in models and log.eval.task == "instrumental" and log.samples is not None
        assert len(log.samples) == len(mine) and log.results is not None
        assert log.results.total_samples == len(mine)
        assert log.eval.metadata is not None and log.eval.metadata["judged_by"] == "gpt-5.2 (replayed verdicts)"
        assert log.eval.metadata["judge"] == "replay" and log.eval.metadata["suffixes"].keys() == {
            "baseline",
            "anti_ic",
        }
        for sample in log.samples:
            item = mine[sample.metadata["scenario"], sample.metadata["condition"]]
            assert sample.id == f"{item['scenario']}/{item['suffix']}" and sample.epoch == 1
            assert sample.metadata["model"] == log.eval.model and sample.metadata["category"] == "evading_shutdown"
            if item["status"] == "ok":
                assert sample.scores is not None
                score = sample.scores["instrumental_verdict"]
                assert score.value == item["verdict"] and score.explanation == item["reason"]
            roles = [m.role for m in sample.messages]
            assert (
                roles[:2] == ["system", "user"] and sample.messages[1].text == prompts[item["scenario"], item["suffix"]]
            )
            if item["response"] is not None:
                assert roles[-1] == "assistant" and sample.output.completion == item["response"]


def test_without_inspect_ai_the_option_is_a_usage_error(
    pytester: pytest.Pytester, small_replay_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = pytester.path / "blocker" / "inspect_ai"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('inspect_ai is not installed here')\n", encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", str(Path(blocker.parent)))
    result = pytester.runpytest_subprocess(*small_replay_args, "--instrumental-inspect-log=logs")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --instrumental-inspect-log needs inspect_ai, which is not installed: "
            "pip install 'inspect-ai>=0.3.285'"
        ]
    )  # the package, as pyproject.toml's inspect extra names it (tests/test_packaging.py)
    assert not (pytester.path / "logs").exists()


def test_a_log_is_never_written_through_a_link_planted_at_its_name(
    pytester: pytest.Pytester, small_replay_args: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_instrumental.reports import inspect_log

    monkeypatch.setattr(inspect_log, "_stamp", lambda started_at: "2026-01-01T00-00-00+00-00")  # a name to plant
    (pytester.path / "logs").mkdir()
    (pytester.path / "precious.txt").write_text("not yours to overwrite")
    planted = pytester.path / "logs" / "2026-01-01T00-00-00+00-00_instrumental_Qwen3-4B-Base.eval"
    planted.symlink_to(pytester.path / "precious.txt")
    result = pytester.runpytest(*small_replay_args, "--instrumental-inspect-log=logs")
    assert result.ret == 0, result.stdout.str()
    assert (pytester.path / "precious.txt").read_text() == "not yours to overwrite"
    assert not planted.is_symlink() and planted.stat().st_size > 0  # the link was replaced by the log
