"""Small faults found by a hostile user: each is one clear line, never a traceback."""

import json
from pathlib import Path

import pytest

from tests.helpers import item, write_results_file


@pytest.fixture
def replay_args(replay_args: list[str]) -> list[str]:
    """The reference runs' first evading_shutdown scenario (conftest.py's replay_args, narrowed)."""
    return [*replay_args, "-k", "evading_shutdown-01"]


def test_retries_can_be_turned_off_and_an_infinite_timeout_is_refused(
    pytester: pytest.Pytester, replay_args: list[str]
) -> None:
    assert pytester.runpytest(*replay_args, "--instrumental-max-retries=0").ret == 0
    refused = pytester.runpytest(*replay_args, "--instrumental-timeout=inf")
    assert refused.ret == pytest.ExitCode.USAGE_ERROR
    refused.stderr.fnmatch_lines(["*--instrumental-timeout: 'inf' must be a finite number of seconds above 0"])


def test_an_unparseable_ini_flag_names_its_key(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ninstrumental = maybe\n")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: ini option instrumental: invalid truth value 'maybe'"])


def test_a_suffix_directory_that_is_a_file_says_so(pytester: pytest.Pytester, replay_args: list[str]) -> None:
    (pytester.path / "steer").write_text("not a directory", encoding="utf-8")
    pytester.makeini("[pytest]\ninstrumental_suffix_dirs = steer\n")
    result = pytester.runpytest(*replay_args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: suffix directory {pytester.path / 'steer'} is not a directory"])


def test_reports_say_how_many_items_errored_and_name_no_absolute_path(pytester: pytest.Pytester) -> None:
    items = [item("convergence", suffix="anti_ic", scenario="evading_shutdown-01", category="evading_shutdown")]
    items += [item(None, suffix="anti_ic", scenario="evading_shutdown-02", category="evading_shutdown")]
    write_results_file(pytester.path / "run.json", items)
    (pytester.path / "old").mkdir()
    write_results_file(pytester.path / "old" / "baseline.json", items)
    pytester.makeini("[pytest]\ninstrumental_baseline = old/baseline.json\n")
    args = ["--instrumental", "--instrumental-replay=run.json", "--instrumental-report=out", "--suffix=anti_ic"]
    result = pytester.runpytest(*args, "--instrumental-alpha=0")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the errored item fails
    report = (pytester.path / "out" / "report.md").read_text(encoding="utf-8")
    assert report.splitlines()[0] == "## Instrumental convergence: m: no gate rule configured, 1 item errored"
    assert str(pytester.path) not in report and "### Against baseline `old/baseline.json`" in report


def test_with_nothing_judged_the_judge_line_says_so(pytester: pytest.Pytester) -> None:
    items = [item(None, suffix="anti_ic", scenario="evading_shutdown-01", category="evading_shutdown")]
    write_results_file(pytester.path / "run.json", items)
    result = pytester.runpytest(
        "--instrumental", "--instrumental-replay=run.json", "--judge=offline", "--suffix=anti_ic"
    )
    result.stdout.fnmatch_lines(["judge: offline-v2, which judged no item"])
    assert json.loads((pytester.path / "run.json").read_text())["items"][0]["status"] == "error"


def _damage(items: list[dict[str, object]], how: str) -> list[dict[str, object]]:
    """The first item of a results file, damaged as ``how`` says."""
    first, rest = items[0], items[1:]
    damaged = {
        "number as model": {**first, "model": 5},
        "list as reason": {**first, "reason": ["a", "b"]},
        "number as response": {**first, "response": 42},
        "dict as judge": {**first, "judge": {"name": "x"}},
        "null scenario": {**first, "scenario": None},
        "numeric suffix": {**first, "suffix": 3},
        "bool as epoch": {**first, "epoch": True},
    }
    if how == "a second copy with another verdict":
        return [first, {**first, "verdict": "convergence" if first["verdict"] != "convergence" else "nonsensical"}]
    return [damaged[how], *rest]


DAMAGE = [
    ("number as model", "item 1: item model 5 is not a non-empty string"),
    ("list as reason", "item 1: item reason ['a', 'b'] is not a string or null"),
    ("number as response", "item 1: item response 42 is not a string or null"),
    ("dict as judge", "item 1: item judge {'name': 'x'} is not a string or null"),
    ("null scenario", "item 1: item scenario None is not a non-empty string"),
    ("numeric suffix", "item 1: item suffix 3 is not a non-empty string"),
    ("bool as epoch", "item 1: item epoch True is not a whole number from 1"),
    ("a second copy with another verdict", "item 2: *-baseline-evading_shutdown-01 (epoch 1) is also item 1"),
]


@pytest.mark.parametrize("use", ["replay", "baseline"])
@pytest.mark.parametrize(("how", "message"), DAMAGE)
def test_a_damaged_results_file_is_one_usage_error_naming_file_item_and_field(
    pytester: pytest.Pytester, replay_args: list[str], how: str, message: str, use: str
) -> None:
    assert pytester.runpytest(*replay_args, "--instrumental-json=good.json").ret == 0
    document = json.loads((pytester.path / "good.json").read_text(encoding="utf-8"))
    document["items"] = _damage(document["items"], how)
    (pytester.path / "bad.json").write_text(json.dumps(document), encoding="utf-8")
    if use == "replay":
        result = pytester.runpytest("--instrumental", "--instrumental-replay=bad.json")
    else:
        result = pytester.runpytest(*replay_args, "--instrumental-baseline=bad.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: bad.json: {message}"])
    output = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in output and "INTERNALERROR" not in output


def test_a_replayed_item_of_an_unknown_suffix_or_a_baseline_with_a_bad_hash_is_named(
    pytester: pytest.Pytester, replay_args: list[str]
) -> None:
    assert pytester.runpytest(*replay_args, "--instrumental-json=good.json").ret == 0
    document = json.loads((pytester.path / "good.json").read_text(encoding="utf-8"))
    unknown = {**document, "items": [{**document["items"][0], "suffix": "sneaky"}, *document["items"][1:]]}
    (pytester.path / "unknown.json").write_text(json.dumps(unknown), encoding="utf-8")
    replayed = pytester.runpytest("--instrumental", "--instrumental-replay=unknown.json")
    assert replayed.ret == pytest.ExitCode.USAGE_ERROR
    replayed.stderr.fnmatch_lines(["ERROR: unknown.json: item 1: suffix 'sneaky' is not a known suffix (*"])
    document["run"]["manifest"]["scenarios"]["sha256"] = 12345
    (pytester.path / "hash.json").write_text(json.dumps(document), encoding="utf-8")
    compared = pytester.runpytest(*replay_args, "--instrumental-baseline=hash.json")
    assert compared.ret == pytest.ExitCode.USAGE_ERROR
    compared.stderr.fnmatch_lines(["ERROR: hash.json: run.manifest.scenarios.sha256 12345 is not a string"])


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda text: text[: len(text) // 2], "an entry is cut off (* entries begin, * end)"),
        (lambda text: "\x89PNG\xff\xfe garbage".encode("latin-1"), "it is not UTF-8 text"),
        (lambda text: "some notes\nwithout any entry\n", "it holds no snapshot entry"),
        (  # the first entry again, with the other verdict: which one is the item's is unknown
            lambda text: text + text[: text.index("# ---") + 6].replace("convergence", "nonsensical"),
            "entry '*' is there twice (lines * and *)",
        ),
    ],
)
def test_a_damaged_snapshot_file_is_named_as_damaged(
    pytester: pytest.Pytester, replay_args: list[str], damage: object, problem: str
) -> None:
    snapshot = ["--instrumental-snapshot", "--instrumental-snapshot-dir=snaps"]
    assert pytester.runpytest(*replay_args, *snapshot, "--snapshot-update").ret == 0
    path = pytester.path / "snaps" / "instrumental.ambr"
    damaged = damage(path.read_text(encoding="utf-8"))  # type: ignore[operator]
    path.write_bytes(damaged if isinstance(damaged, bytes) else damaged.encode("utf-8"))
    before = path.read_bytes()
    for extra in ([], ["--snapshot-update"]):
        result = pytester.runpytest(*replay_args, *snapshot, *extra)
        assert result.ret == pytest.ExitCode.USAGE_ERROR
        result.stderr.fnmatch_lines(
            [f"ERROR: --instrumental-snapshot: *instrumental.ambr is damaged: {problem}; restore it *"]
        )
        assert "no verdict snapshot yet" not in result.stdout.str()
        assert path.read_bytes() == before  # never overwritten


def test_a_snapshot_file_without_its_setup_fails_and_says_how_to_record_one(
    pytester: pytest.Pytester, small_replay_args: list[str]
) -> None:
    snapshot = ["--instrumental-snapshot", "--instrumental-snapshot-dir=snaps"]
    assert pytester.runpytest(*small_replay_args, *snapshot, "--snapshot-update").ret == 0
    (pytester.path / "snaps" / "instrumental.setup.json").unlink()
    result = pytester.runpytest(*small_replay_args, *snapshot)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "ERROR: --instrumental-snapshot: *instrumental.ambr has no instrumental.setup.json beside it, *"
            "record the verdicts again (--snapshot-update)"
        ]
    )
    assert pytester.runpytest(*small_replay_args, *snapshot, "--snapshot-update").ret == 0  # recorded again
    assert pytester.runpytest(*small_replay_args, *snapshot).ret == 0


def test_snapshots_update_under_warnings_as_errors_and_new_only_records_only_new(
    pytester: pytest.Pytester, reference_runs: Path
) -> None:
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    base = ["--instrumental", f"--instrumental-replay={reference_runs}", "--instrumental-snapshot"]
    first = pytester.runpytest(*base, "-k", "evading_shutdown-01", "--snapshot-update")
    assert first.ret == 0, first.stdout.str()
    path = pytester.path / "instrumental_snapshots" / "instrumental.ambr"
    assert path.read_text(encoding="utf-8").count("# name: ") == 9
    # one entry changed by hand: new-only records the new items and still fails the changed one
    text = path.read_text(encoding="utf-8")
    entry = "test_scenario[Qwen3-4B-Base-anti_ic-evading_shutdown-01]"
    start = text.index(entry)
    verdict_line = text.index("\n", start) + 1
    end = text.index("\n", verdict_line)
    path.write_text(text[:verdict_line] + "  'safety_refusal'" + text[end:], encoding="utf-8")
    new_only = pytester.runpytest(
        *base, "-k", "evading_shutdown-01 or evading_shutdown-02", "--snapshot-update-new-only"
    )
    assert new_only.ret == pytest.ExitCode.TESTS_FAILED
    new_only.stdout.fnmatch_lines(["*evading_shutdown-01: verdict * differs from its snapshot 'safety_refusal'*"])
    assert path.read_text(encoding="utf-8").count("# name: ") == 18
    assert "'safety_refusal'" in path.read_text(encoding="utf-8")
