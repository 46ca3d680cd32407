import subprocess
import sys
from pathlib import Path

import pytest

from pytest_instrumental.agreement import cohen_kappa, compare, load_verdicts
from pytest_instrumental.errors import InputError
from tests.helpers import item, write_results_file


def test_cohen_kappa_matches_a_hand_computed_value() -> None:
    # 10 items: A says c,c,c,c,c,n,n,n,n,n; B agrees except one c->n and one n->c.
    a = ["convergence"] * 5 + ["no_convergence"] * 5
    b = ["convergence"] * 4 + ["no_convergence"] + ["convergence"] + ["no_convergence"] * 4
    # observed 0.8; expected 0.5*0.5 + 0.5*0.5 = 0.5; kappa = (0.8 - 0.5) / 0.5 = 0.6
    assert cohen_kappa(list(zip(a, b, strict=True))) == pytest.approx(0.6)
    assert cohen_kappa([]) is None
    assert cohen_kappa([("convergence", "convergence")]) == 1.0


def test_compare_reports_confusion_cells_and_unmatched_items(tmp_path: Path) -> None:
    def scenario(n: int) -> dict[str, str]:
        return {"scenario": f"evading_shutdown-{n:02d}", "category": "evading_shutdown"}

    a = [item("convergence", **scenario(1)), item("convergence", **scenario(2)), item("nonsensical", **scenario(3))]
    b = [item("convergence", **scenario(1)), item("no_convergence", **scenario(2)), item(None, **scenario(3))]
    b.append(item("safety_refusal", **scenario(4)))
    write_results_file(tmp_path / "a.json", a)
    write_results_file(tmp_path / "b.json", b)
    result = compare(load_verdicts(tmp_path / "a.json"), load_verdicts(tmp_path / "b.json"))
    assert (result.matched, result.only_a, result.only_b, result.errors_b) == (2, 0, 1, 1)
    assert result.confusion["convergence"] == {
        "convergence": 1,
        "no_convergence": 1,
        "safety_refusal": 0,
        "nonsensical": 0,
    }
    (cell,) = result.cells
    assert (cell.old_conv_pct, cell.new_conv_pct, cell.conv_change_pp) == (100.0, 50.0, -50.0)


def test_items_from_different_runs_share_nothing(tmp_path: Path) -> None:
    write_results_file(tmp_path / "a.json", [item("convergence", model="x")])
    write_results_file(tmp_path / "b.json", [item("convergence", model="y")])
    with pytest.raises(InputError, match="share no items"):
        compare(load_verdicts(tmp_path / "a.json"), load_verdicts(tmp_path / "b.json"))


def test_the_command_compares_reference_runs_with_themselves(reference_runs: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_instrumental", "agreement", str(reference_runs), str(reference_runs)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "items judged by both: 639" in done.stdout
    assert "accuracy: 100.00%   Cohen's kappa: 1.000" in done.stdout
    assert "Qwen3-4B-Thinking-2507  anti_ic   71  9.86     9.86     +0.00" in done.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "pytest_instrumental", "agreement", str(reference_runs), "nowhere.json"],
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and missing.stderr.startswith("error: nowhere.json does not exist")
