"""Sampling and epochs: each item answered N times with its own seeds, recorded per epoch."""

import json
from pathlib import Path

import pytest

from pytest_instrumental.config import DecodingConfig
from pytest_instrumental.decoding import Decoding, resolve
from pytest_instrumental.vocabulary.items import ItemKey
from tests.chat_server import running_chat_server


def test_epoch_seeds_are_stable_and_distinct() -> None:
    decoding = Decoding(temperature=0.6, top_p=0.95, top_k=20, seed=7)
    key = ItemKey("m", "anti_ic", "evading_shutdown-01")
    seeds = [decoding.epoch_seed(key, e) for e in (1, 2, 3)]
    assert len(set(seeds)) == 3 and seeds == [decoding.epoch_seed(key, e) for e in (1, 2, 3)]
    assert Decoding(seed=8).epoch_seed(key, 1) != Decoding(seed=7).epoch_seed(key, 1)
    assert Decoding().cache_fields(key, 2) == {}  # greedy keys are the keys they always were


def test_the_models_own_settings_with_overrides() -> None:
    own = {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "top_k": 20}
    assert resolve(DecodingConfig(mode="model"), own) == Decoding(0.6, 0.95, 20)
    assert resolve(DecodingConfig(mode="model", temperature=1.0), own) == Decoding(1.0, 0.95, 20)
    assert resolve(DecodingConfig(mode="model"), {"do_sample": False, "temperature": 0.6}).greedy
    assert resolve(DecodingConfig(mode="greedy"), own).greedy


def test_each_item_is_sent_once_per_epoch_with_its_own_seed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with running_chat_server() as server:
        args = ["--instrumental", "--model=openai:local", f"--instrumental-base-url={server.base_url}"]
        args += ["--judge=offline", "-k", "anti_ic and evading_shutdown-0", "--instrumental-json=out.json"]
        result = pytester.runpytest_subprocess(*args, "--instrumental-epochs=3", "--instrumental-temperature=0.8")
        assert result.ret == 0, result.stdout.str()
        result.assert_outcomes(passed=9)
        bodies = server.bodies
    assert len(bodies) == 9 * 3
    assert {b["temperature"] for b in bodies} == {0.8}
    by_prompt: dict[str, list[int]] = {}
    for body in bodies:
        by_prompt.setdefault(body["messages"][-1]["content"], []).append(body["seed"])
    assert len(by_prompt) == 9 and all(len(set(seeds)) == 3 for seeds in by_prompt.values())
    document = json.loads((pytester.path / "out.json").read_text(encoding="utf-8"))
    assert document["schema_version"] == 2
    epochs: dict[str, list[int]] = {}
    for record in document["items"]:
        epochs.setdefault(record["scenario"], []).append(record["epoch"])
    assert len(epochs) == 9 and all(sorted(e) == [1, 2, 3] for e in epochs.values())
    assert document["run"]["generation"]["openai:local"]["decoding"]["temperature"] == 0.8


def test_greedy_runs_are_unchanged(pytester: pytest.Pytester, reference_runs: Path) -> None:
    result = pytester.runpytest(
        "--instrumental", f"--instrumental-replay={reference_runs}", "--instrumental-json=o.json"
    )
    assert result.ret == 0
    document = json.loads((pytester.path / "o.json").read_text(encoding="utf-8"))
    assert document["schema_version"] == 1 and "epoch" not in document["items"][0]


def test_snapshot_tallies_fail_only_beyond_sampling_noise() -> None:
    from pytest_instrumental.snapshots import convergence_count, within_noise

    assert convergence_count("convergence 2/3, no_convergence 1/3") == (2, 3)
    assert convergence_count("no_convergence 3/3") == (0, 3)
    assert within_noise("convergence 3/3", "no_convergence 3/3")  # p = 0.1: 3 epochs cannot tell
    assert not within_noise("convergence 10/10", "no_convergence 10/10")
    assert within_noise("convergence 6/10, no_convergence 4/10", "convergence 4/10, nonsensical 6/10")


@pytest.mark.slow
def test_epoch_tallies_are_snapshots(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with running_chat_server() as server:
        args = ["--instrumental", "--model=openai:local", f"--instrumental-base-url={server.base_url}"]
        args += ["--judge=offline", "-k", "anti_ic and evading_shutdown-01", "--instrumental-snapshot"]
        args += ["--instrumental-epochs=3", "--instrumental-temperature=0.8"]
        assert pytester.runpytest_subprocess(*args, "--snapshot-update").ret == 0
        ambr = pytester.path / "instrumental_snapshots" / "instrumental.ambr"
        text = ambr.read_text(encoding="utf-8")
        (entry,) = [line.strip() for line in text.splitlines() if line.startswith("  '")]
        assert entry.endswith(" 3/3'")  # the scripted server answers alike: one verdict, three times
        verdict = entry.strip("'").split()[0]
        other = "convergence" if verdict != "convergence" else "no_convergence"
        ambr.write_text(text.replace(entry, f"'{other} 2/3, {verdict} 1/3'"), encoding="utf-8")
        noise = pytester.runpytest_subprocess(*args)
        assert noise.ret == 0  # 2/3 against 0/3 or 3/3 is within sampling noise
        greedy = pytester.runpytest_subprocess(*args[:-2], "--instrumental-epochs=3")
        assert greedy.ret == pytest.ExitCode.TESTS_FAILED  # another decoding: another setup
        greedy.stdout.fnmatch_lines(["*verdict snapshot not comparable, recorded in another setup: decoding *"])


def test_a_run_with_epochs_is_a_baseline_not_a_replay(tmp_path: Path) -> None:
    from dataclasses import replace

    from pytest_instrumental.errors import InputError
    from pytest_instrumental.records.recordings import load_recordings
    from pytest_instrumental.vocabulary.scenarios import load_scenarios
    from pytest_instrumental.vocabulary.suffixes import load_suffixes
    from tests.helpers import item, write_results_file

    answer = item("convergence", suffix="anti_ic", scenario="evading_shutdown-01", category="evading_shutdown")
    write_results_file(tmp_path / "epochs.json", [answer, replace(answer, epoch=2)])
    with pytest.raises(InputError, match=r"item 2: a run with epochs \(epoch 2\) cannot be replayed"):
        load_recordings(tmp_path / "epochs.json", load_scenarios(), load_suffixes())
