"""Verdict snapshots: each item's verdict as a syrupy snapshot, and the setup each model's
snapshots were recorded with.

The verdicts are syrupy snapshots, one ``instrumental.ambr`` entry per item, asserted through
``check_verdict``: the one place that touches syrupy (and its session, which syrupy keeps on the
pytest config). A verdict is only comparable with one judged for the same model (source,
revision, generation settings), by the same judge, under the same suffix text, so the setup of
each model is kept beside the snapshots in ``instrumental.setup.json`` and checked before any
verdict is compared; a difference is named, not reported as a flip.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_instrumental.errors import InputError
from pytest_instrumental.inputs import DATA_LIMIT, load_json, read_bytes
from pytest_instrumental.outputs import write_text

if TYPE_CHECKING:
    import pytest
    from syrupy.extensions.amber import AmberSnapshotExtension

SNAPSHOT_BASENAME = "instrumental"  # the snapshot file is <directory>/instrumental.ambr
SETUP_FILE = "instrumental.setup.json"
FILES = (f"{SNAPSHOT_BASENAME}.ambr", SETUP_FILE)  # what this plugin writes in the snapshot directory

Setup = dict[str, Any]  # {"model": {...}, "judge": str, "suffixes": {name: sha256}}


def model_setup(model: Mapping[str, object], judge: str, suffixes: Mapping[str, str]) -> Setup:
    return {"model": dict(model), "judge": judge, "suffixes": dict(suffixes)}


def read_setups(directory: Path) -> dict[str, Setup]:
    """The recorded setup of each model; none when nothing was recorded yet."""
    path = directory / SETUP_FILE
    if not path.exists():
        return {}
    data = load_json(path, DATA_LIMIT, "the snapshots' setup")
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise InputError(f"{path}: not a mapping of model name to setup")
    return data


def write_setups(directory: Path, setups: Mapping[str, Setup]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(sorted(setups.items())), indent=2, sort_keys=True, ensure_ascii=False)
    write_text(directory / SETUP_FILE, text + "\n")


def damage(directory: Path, needs_setup: bool = True) -> str | None:
    """Why the snapshot file in ``directory`` cannot be what this plugin wrote (not text, no
    entries, an entry cut off or there twice, its setup file missing), so that a damaged file is
    named as such and never taken for "no snapshot yet", which would invite overwriting it; None
    when it is absent or sound. ``needs_setup``: verdicts are compared (not recorded) this run."""
    path = directory / f"{SNAPSHOT_BASENAME}.ambr"
    if not path.exists() and not path.is_symlink():
        return None
    try:
        text = read_bytes(path, DATA_LIMIT, "the snapshot file").decode("utf-8")
    except UnicodeDecodeError:
        return f"{path} is damaged: it is not UTF-8 text"
    except InputError as exc:
        return str(exc)
    if not text.strip():
        return None
    lines = text.splitlines()
    names = sum(line.startswith("# name: ") for line in lines)
    ends = sum(line == "# ---" for line in lines)
    if not names:
        return f"{path} is damaged: it holds no snapshot entry"
    if names != ends or lines[-1] != "# ---":
        return f"{path} is damaged: an entry is cut off ({names} entries begin, {ends} end)"
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if line.startswith("# name: "):
            if line in first_line:  # which of the two is the item's verdict is unknown: never pick one
                return f"{path} is damaged: entry {line[8:]!r} is there twice (lines {first_line[line]} and {number})"
            first_line[line] = number
    if needs_setup and not (directory / SETUP_FILE).exists():
        return (
            f"{path} has no {SETUP_FILE} beside it, so the setup its verdicts were judged in (model, judge, "
            "suffixes) is unknown and no verdict can be compared"
        )
    return None


def setup_changes(recorded: Setup | None, current: Setup) -> list[str]:
    """What differs between the recorded and the current setup, one phrase each. Suffixes are
    compared where both have them: a suffix new to this run only lacks snapshots."""
    if recorded is None:
        return []
    changes = []
    if recorded.get("judge") != current["judge"]:
        changes.append(f"judge {recorded.get('judge')!r} -> {current['judge']!r}")
    old_model, new_model = recorded.get("model", {}), current["model"]
    for key in sorted(old_model.keys() | new_model.keys()):
        if old_model.get(key) != new_model.get(key):
            changes.append(f"{key} {old_model.get(key)!r} -> {new_model.get(key)!r}")
    old_suffixes = recorded.get("suffixes", {})
    for name, sha in sorted(current["suffixes"].items()):
        if name in old_suffixes and old_suffixes[name] != sha:
            changes.append(f"suffix {name} text changed")
    return changes


def check_verdict(
    item: pytest.Item, snapshots: type[AmberSnapshotExtension], verdict: str, changes: list[str]
) -> str | None:
    """Assert ``verdict`` against the item's snapshot (``snapshots``: ``verdict_snapshots``'s) as
    syrupy's own ``snapshot`` fixture would (with ``--snapshot-update`` this records it); the
    failure message, or None.
    ``changes`` (from ``setup_changes``) make the verdict not comparable: only a verdict judged in
    the recorded setup is compared.

    With epochs the verdict is a tally (``convergence 2/3, no_convergence 1/3``). A tally that
    differs from its snapshot only by sampling noise (``within_noise``) keeps the snapshot: the
    assertion is made against the recorded tally, so syrupy counts it as passed."""
    from syrupy.assertion import SnapshotAssertion
    from syrupy.location import PyTestLocation

    updating = bool(item.config.option.update_snapshots)
    assertion = SnapshotAssertion(
        session=item.config._syrupy,  # type: ignore[attr-defined]  # syrupy's session, as its fixture uses
        extension_class=snapshots,
        test_location=PyTestLocation(item),
        update_snapshots=updating,
        # --snapshot-update-new-only: a verdict with no snapshot is recorded, a changed one still fails
        update_new_snapshots_only=bool(getattr(item.config.option, "update_new_snapshots_only", False)),
    )
    if not updating and "/" in verdict:
        recorded, _ = assertion._recall_data(index=0)  # syrupy's own recall, as its session is
        old = None if recorded is None else str(recorded).strip().strip("'")
        if old is not None and old != verdict and within_noise(old, verdict):
            verdict = old
    matches = assertion == verdict
    if updating:
        return None
    if changes:
        return (
            f"verdict snapshot not comparable, recorded in another setup: {'; '.join(changes)} "
            "(--snapshot-update records this one)"
        )
    if matches:
        return None
    recorded = assertion.executions[0].recalled_data
    if recorded is None:
        return f"no verdict snapshot yet (verdict {verdict}; --snapshot-update records it)"
    return f"verdict {verdict} differs from its snapshot {str(recorded).strip()} (--snapshot-update accepts it)"


def verdict_snapshots(directory: Path, items: Sequence[pytest.Item]) -> type[AmberSnapshotExtension]:
    """syrupy's amber format, in the configured directory, owning ``instrumental.ambr`` only
    (the setup file beside it is not a snapshot and must never be cleaned up as one), its entries
    in the order ``items`` were collected: syrupy writes by name otherwise (anti_ic first), and its
    own --snapshot-declaration-order counts only plain test functions. One class per session:
    syrupy queues a file's writes by extension class."""
    from syrupy.data import SnapshotCollection, SnapshotCollections
    from syrupy.extensions.amber import AmberSnapshotExtension
    from syrupy.location import PyTestLocation
    from syrupy.types import SnapshotIndex

    order = {PyTestLocation(item).snapshot_name: n for n, item in enumerate(items)}

    class VerdictSnapshots(AmberSnapshotExtension):
        @classmethod
        def dirname(cls, *, test_location: PyTestLocation) -> str:
            return str(directory)

        @classmethod
        def write_snapshot_collection(
            cls, *, snapshot_collection: SnapshotCollection, name_order: dict[str, int] | None = None
        ) -> None:
            super().write_snapshot_collection(snapshot_collection=snapshot_collection, name_order=order)

        @classmethod
        def get_file_basename(cls, *, test_location: PyTestLocation, index: SnapshotIndex) -> str:
            return SNAPSHOT_BASENAME  # one file for the whole suite

        @classmethod
        def matches_test_location(cls, *, test_location: PyTestLocation, snapshot_location: str) -> bool:
            # Every item's verdict lives in the one suite file, by design: syrupy would otherwise
            # warn that it cannot relate the two, which -W error turns into a failed write.
            return Path(snapshot_location) == directory / f"{SNAPSHOT_BASENAME}.{cls.file_extension}"

        def discover_snapshots(
            self, *, test_location: PyTestLocation, ignore_extensions: list[str] | None = None
        ) -> SnapshotCollections:
            found = SnapshotCollections()
            for collection in super().discover_snapshots(
                test_location=test_location, ignore_extensions=ignore_extensions
            ):
                if Path(collection.location).name != SETUP_FILE:
                    found.add(collection)
            return found

    return VerdictSnapshots


NOISE_ALPHA = 0.05


def within_noise(old: str, new: str) -> bool:
    """Whether two tallies of one item's epochs could differ by sampling alone: Fisher's exact
    test on their convergence counts finds no difference at NOISE_ALPHA. With 3 epochs no change
    of one item is ever significant (0/3 against 3/3: p = 0.1); a snapshot then fails only on a
    change of setup, and the per-cell statistics and the baseline rules carry the comparison."""
    from scipy.stats import fisher_exact

    (old_yes, old_n), (new_yes, new_n) = convergence_count(old), convergence_count(new)
    if not old_n or not new_n:
        return False
    table = [[old_yes, old_n - old_yes], [new_yes, new_n - new_yes]]
    return bool(fisher_exact(table).pvalue >= NOISE_ALPHA)


def convergence_count(tally: str) -> tuple[int, int]:
    """``convergence 2/3, no_convergence 1/3`` -> (2, 3)."""
    converged, total = 0, 0
    for part in tally.split(","):
        name, _, count = part.strip().partition(" ")
        got, _, out_of = count.partition("/")
        if not (got.isdigit() and out_of.isdigit()):
            return 0, 0
        total = int(out_of)
        converged += int(got) if name == "convergence" else 0
    return converged, total
