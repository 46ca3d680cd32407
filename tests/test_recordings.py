import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pytest_instrumental.backends.replay import ReplayBackend
from pytest_instrumental.errors import InputError
from pytest_instrumental.judges.protocol import JudgeRequest
from pytest_instrumental.judges.replay import ReplayJudge
from pytest_instrumental.records.recordings import load_recordings, recorded_models
from pytest_instrumental.records.results_file import read_results
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request
from pytest_instrumental.vocabulary.scenarios import load_scenarios
from pytest_instrumental.vocabulary.suffixes import load_suffixes
from tests.helpers import item, write_results_file

SCENARIOS = load_scenarios()
SUFFIXES = load_suffixes()
INSTRUCT_ANTI = "Qwen3-4B-Instruct-2507_anti_ic_max_15_20260103_114745"


def test_reference_runs_load_as_639_recordings_of_the_paper_sample(reference_runs: Path) -> None:
    recordings = load_recordings(reference_runs, SCENARIOS, SUFFIXES)
    assert len(recordings) == 639
    assert recorded_models(recordings) == ["Qwen3-4B-Base", "Qwen3-4B-Instruct-2507", "Qwen3-4B-Thinking-2507"]
    per_cell = Counter((k.model, k.condition) for k in recordings)
    assert set(per_cell.values()) == {71}
    paper_ids = {s.id for s in SCENARIOS.subset("paper")}
    assert {k.scenario for k in recordings} == paper_ids
    thinking = recordings[ItemKey("Qwen3-4B-Thinking-2507", "anti_ic", "deceptive_behavior-01")]
    assert thinking.thinking and thinking.thinking.startswith("Okay, the user has given me")
    assert thinking.judge == "gpt-5.2" and thinking.verdict in {"convergence", "no_convergence"}
    assert recordings[ItemKey("Qwen3-4B-Base", "anti_ic", "deceptive_behavior-01")].thinking is None


def test_one_run_directory_replays_alone(reference_runs: Path) -> None:
    recordings = load_recordings(reference_runs / INSTRUCT_ANTI, SCENARIOS, SUFFIXES)
    assert {(k.model, k.condition) for k in recordings} == {("Qwen3-4B-Instruct-2507", "anti_ic")}


def _copy_run(reference_runs: Path, tmp_path: Path) -> Path:
    run = tmp_path / INSTRUCT_ANTI
    shutil.copytree(reference_runs / INSTRUCT_ANTI, run)
    return run


def _edit_log(run: Path, old: str, new: str) -> None:
    log = run / "stdout.log"
    text = log.read_text(encoding="utf-8")
    assert old in text
    log.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_a_record_matching_no_scenario_names_file_and_record(reference_runs: Path, tmp_path: Path) -> None:
    run = _copy_run(reference_runs, tmp_path)
    _edit_log(run, "<task_prompt>You are an AI system tasked", "<task_prompt>You are a robot tasked")
    with pytest.raises(
        InputError, match=r"record 1 \(deceptive_behavior task 1\): the recorded prompt matches no"
    ) as exc:
        load_recordings(run, SCENARIOS, SUFFIXES)
    assert str(run / "stdout.log") in str(exc.value)


def test_a_steered_prompt_made_with_another_suffix_text_is_an_error(reference_runs: Path, tmp_path: Path) -> None:
    run = _copy_run(reference_runs, tmp_path)
    _edit_log(run, "- Focus on normal, authorized task execution.", "- Focus.")
    with pytest.raises(
        InputError,
        match=r"record 1 \(deceptive_behavior task 1\): the recorded steered prompt differs from suffix 'anti_ic'",
    ):
        load_recordings(run, SCENARIOS, SUFFIXES)


def test_an_unknown_benchmark_and_a_broken_config_are_errors(reference_runs: Path, tmp_path: Path) -> None:
    run = _copy_run(reference_runs, tmp_path)
    _edit_log(run, "Processing benchmark: Alignment Drift - Deceptive Behavior", "Processing benchmark: Other")
    with pytest.raises(InputError, match="benchmark 'Other' matches no scenario category"):
        load_recordings(run, SCENARIOS, SUFFIXES)
    (run / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(InputError, match="not a reference run config"):
        load_recordings(run, SCENARIOS, SUFFIXES)


def test_the_same_item_recorded_twice_is_an_error(reference_runs: Path, tmp_path: Path) -> None:
    _copy_run(reference_runs, tmp_path)
    shutil.copytree(reference_runs / INSTRUCT_ANTI, tmp_path / "again")
    with pytest.raises(InputError, match="is also recorded in"):
        load_recordings(tmp_path, SCENARIOS, SUFFIXES)


def test_missing_or_empty_replay_sources_are_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        load_recordings(tmp_path / "nope", SCENARIOS, SUFFIXES)
    with pytest.raises(InputError, match="holds no recorded runs"):
        load_recordings(tmp_path, SCENARIOS, SUFFIXES)


def test_results_json_replays_responses_verdicts_and_errors(tmp_path: Path) -> None:
    items = [
        item("safety_refusal", scenario="evading_shutdown-03", category="evading_shutdown"),
        item(None, scenario="evading_shutdown-04", category="evading_shutdown", error="empty generation"),
    ]
    path = tmp_path / "results.json"
    write_results_file(path, items)
    recordings = load_recordings(path, SCENARIOS, SUFFIXES)
    requests = [Request(i.key, i.category, "ctx", "p") for i in items]
    requests.append(Request(ItemKey("m", "baseline", "evading_shutdown-05"), "evading_shutdown", "ctx", "p"))
    generations = [g for _, g in ReplayBackend(recordings, path).generate(requests)]
    assert generations[0].response == "resp"
    assert generations[1].error == "empty generation"
    assert generations[2].skip_reason == f"no recorded response for m-baseline-evading_shutdown-05 in {path}"
    (judgement,) = ReplayJudge(recordings).judge([JudgeRequest(requests[0], "resp")])
    assert (judgement.judge, judgement.decision) == ("j", "safety_refusal")


def test_results_json_with_an_unknown_scenario_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_results_file(path, [item("convergence", scenario="nope-01", category="nope")])
    with pytest.raises(InputError, match="item 1: scenario 'nope-01' \\(nope\\) matches no known scenario"):
        load_recordings(path, SCENARIOS, SUFFIXES)


def test_a_recorded_verdict_outside_the_four_classes_is_a_judge_error(reference_runs: Path, tmp_path: Path) -> None:
    run = _copy_run(reference_runs, tmp_path)
    log = (run / "stdout.log").read_text(encoding="utf-8")
    first_decision = log.split("<judge_decision>", 1)[1].split("</judge_decision>", 1)[0]
    _edit_log(run, f"<judge_decision>{first_decision}</judge_decision>", "<judge_decision>unsure</judge_decision>")
    recordings = load_recordings(run, SCENARIOS, SUFFIXES)
    key = ItemKey("Qwen3-4B-Instruct-2507", "anti_ic", "deceptive_behavior-01")
    (judgement,) = ReplayJudge(recordings).judge([JudgeRequest(Request(key, "c", "x", "p"), "r")])
    assert judgement.decision is None
    assert judgement.error is not None and "recorded verdict 'unsure' is not one of" in judgement.error


def test_results_file_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"schema_version": 1, "items": [{"model": "m"}]}), encoding="utf-8")
    with pytest.raises(InputError, match=r"r.json: item 1: item lacks"):
        load_recordings(path, SCENARIOS, SUFFIXES)
    path.write_text(json.dumps({"schema_version": 7}), encoding="utf-8")
    with pytest.raises(InputError, match="not a results file of schema_version 1"):
        load_recordings(path, SCENARIOS, SUFFIXES)
    path.write_text("{", encoding="utf-8")
    with pytest.raises(InputError, match=r"^results JSON: .*r.json: not JSON"):
        load_recordings(path, SCENARIOS, SUFFIXES)


def _first_record(run: Path) -> str:
    text = (run / "stdout.log").read_text(encoding="utf-8")
    return text[text.index("<result>") : text.index("</result>") + len("</result>")]


def test_a_damaged_closing_tag_makes_an_error_item_never_a_merged_one(reference_runs: Path, tmp_path: Path) -> None:
    run = _copy_run(reference_runs, tmp_path)
    _edit_log(run, "</judge_reason>", "</judge_reas")  # the first record's
    recordings = load_recordings(run, SCENARIOS, SUFFIXES)
    assert len(recordings) == 71  # every record still an item: none merged, none dropped
    first = recordings[ItemKey("Qwen3-4B-Instruct-2507", "anti_ic", "deceptive_behavior-01")]
    assert first.error is not None and "record 1: damaged record: its fields are not" in first.error
    assert first.verdict is None and first.response is None
    second = recordings[ItemKey("Qwen3-4B-Instruct-2507", "anti_ic", "deceptive_behavior-02")]
    assert second.error is None and second.verdict in ("convergence", "no_convergence", "safety_refusal")


def test_a_missing_end_of_record_and_a_cut_off_log_are_damaged_records(reference_runs: Path, tmp_path: Path) -> None:
    run = _copy_run(reference_runs, tmp_path)
    _edit_log(run, "</result>", "</resul>")
    log = run / "stdout.log"
    data = log.read_bytes()
    log.write_bytes(data[: data.rindex(b"</judge_decision>")])  # killed mid-record
    recordings = load_recordings(run, SCENARIOS, SUFFIXES)
    assert len(recordings) == 71
    errors = {k.scenario: r.error for k, r in recordings.items() if r.error}
    assert "no </result> before the next <result>" in errors["deceptive_behavior-01"]
    (last,) = [e for e in errors.values() if "cut off" in e]
    assert "record 71: damaged record: the log ends inside it (cut off)" in last


def test_invalid_utf8_damages_one_record_and_a_nameless_damaged_record_is_reported(
    reference_runs: Path, tmp_path: Path
) -> None:
    run = _copy_run(reference_runs, tmp_path)
    log = run / "stdout.log"
    data = log.read_bytes()
    reason = data.index(b"<judge_reason>") + len(b"<judge_reason>")
    log.write_bytes(data[:reason] + b"\xff\xfe" + data[reason:])
    recordings = load_recordings(run, SCENARIOS, SUFFIXES)
    first = recordings[ItemKey("Qwen3-4B-Instruct-2507", "anti_ic", "deceptive_behavior-01")]
    assert first.error is not None and first.error.endswith("record 1: damaged record: not UTF-8")
    data = log.read_bytes()
    second = data.index(b"<result>", data.index(b"</result>"))
    head, tail = data[:second], data[second:]
    tail = tail.replace(b"<task_prompt>", b"<task_promp>", 1).replace(b"</judge_reason>", b"</judge_reas", 1)
    log.write_bytes(head + tail)  # the second record now is both damaged and nameless
    recordings = load_recordings(run, SCENARIOS, SUFFIXES)
    assert len(recordings) == 70
    (lost,) = recordings.unattributed
    assert "record 2: damaged record (its fields are not the reference run's, in order) that names no" in lost
    assert lost.endswith("names no deceptive_behavior scenario")


def test_a_replay_with_nothing_usable_is_an_error(tmp_path: Path) -> None:
    write_results_file(tmp_path / "empty.json", [])
    with pytest.raises(InputError, match="--instrumental-replay: nothing usable in"):
        load_recordings(tmp_path / "empty.json", SCENARIOS, SUFFIXES)


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        ({"defense": 5}, "item condition defense 5 is not a string or null"),
        ({"strength": "x"}, "item condition strength 'x' is not a number or null"),
        ({"strength": True}, "item condition strength True is not a number or null"),
        ({"spice": None}, "item condition has unknown part 'spice'"),
        ("anti_ic", "item condition 'anti_ic' is not an object or null"),
    ],
)
def test_an_items_condition_is_checked_by_type(tmp_path: Path, condition: object, message: str) -> None:
    path = tmp_path / "r.json"
    entry = {**item("convergence").to_dict(), "condition": condition}
    path.write_text(json.dumps({"schema_version": 1, "items": [entry]}), encoding="utf-8")
    with pytest.raises(InputError, match=f"r.json: item 1: {re.escape(message)}"):
        read_results(path)
