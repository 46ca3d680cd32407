"""The project cache directory and things built once into a shared cache."""

import multiprocessing
import time
from pathlib import Path

import pytest

from pytest_instrumental.cache import build_once, open_project_cache


def test_the_project_cache_keeps_itself_out_of_git(tmp_path: Path) -> None:
    cache = open_project_cache(tmp_path / ".instrumental-cache")
    cache.close()
    assert (tmp_path / ".instrumental-cache" / ".gitignore").read_text(encoding="utf-8").splitlines()[-1] == "*"
    tag = (tmp_path / ".instrumental-cache" / "CACHEDIR.TAG").read_text(encoding="utf-8")
    assert tag.startswith("Signature: 8a477f597d28d172789f06886806bc55")  # the spec's, as pytest writes it


def _slow_build(directory: Path, log: Path) -> None:
    with log.open("a", encoding="utf-8") as handle:
        handle.write("built\n")
    time.sleep(0.5)
    (directory / "config.json").write_text("{}", encoding="utf-8")


def _build_in_another_process(target: Path, log: Path) -> None:
    build_once(target, lambda d: _slow_build(d, log))


def test_processes_building_at_once_build_once(tmp_path: Path) -> None:
    target, log = tmp_path / "models" / "m", tmp_path / "log"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_build_in_another_process, args=(target, log)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert log.read_text(encoding="utf-8") == "built\n"
    assert (target / "config.json").is_file()
    assert sorted(p.name for p in target.parent.iterdir()) == ["m", "m.lock"]


def test_what_a_killed_or_failed_build_leaves_is_removed(tmp_path: Path) -> None:
    target = tmp_path / "m"
    stale = tmp_path / "m.partial"
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"\0" * 10)  # as a build killed with SIGKILL leaves it

    def failing(directory: Path) -> None:
        (directory / "half.safetensors").write_bytes(b"\0")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        build_once(target, failing)
    assert not stale.exists() and not target.exists()

    def working(directory: Path) -> None:
        (directory / "config.json").write_text("{}", encoding="utf-8")

    build_once(target, working)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.lock"]
