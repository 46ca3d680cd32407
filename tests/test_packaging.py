"""The wheel carries the scenarios, suffixes and prefills, so a plain `pip install` runs the suite."""

import subprocess
import sys
import zipfile
from pathlib import Path

from pytest_instrumental.reports.inspect_log import INSPECT_REQUIREMENT

REPO = Path(__file__).resolve().parents[1]


def test_wheel_ships_scenarios_suffixes_and_the_entry_point(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
    )
    (wheel,) = tmp_path.glob("pytest_instrumental-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for source in [*REPO.glob("scenarios/*.toml"), *REPO.glob("suffixes/*.txt"), *REPO.glob("prefills/*.txt")]:
        assert f"pytest_instrumental/data/{source.parent.name}/{source.name}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "instrumental = pytest_instrumental.plugin" in zipfile.ZipFile(wheel).read(entry_points).decode()
    data = ["judges/offline.json", "rubric/judge_system.txt", "rubric/judge_user.txt"]
    data += ["reports/templates/report.html.j2", "reports/templates/report_filter.js"]
    data += [f"{door}/__init__.pyi" for door in ("vocabulary", "records", "statistics", "reports")]  # read at import
    for name in data:
        assert f"pytest_instrumental/{name}" in names
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = [
        line.removeprefix("Requires-Dist: ") for line in metadata.splitlines() if line.startswith("Requires-Dist")
    ]
    assert "pytest-xdist>=3.5" in requires  # -n works after the quick start's plain install
    assert f"{INSPECT_REQUIREMENT}; extra == 'inspect'" in requires  # what the missing-extra message says to install
