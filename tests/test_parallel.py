"""Parallel runs: each request generated once under xdist, and each worker on its own GPUs."""

from pathlib import Path

import pytest

from pytest_instrumental.parallel import visible_gpus, worker_gpus, worker_index
from tests.chat_server import running_chat_server


def test_workers_take_the_callers_gpus_round_robin() -> None:
    assert worker_index("gw3") == 3 and worker_index("master") is None
    devices = visible_gpus({"CUDA_VISIBLE_DEVICES": "4, 5,6,7"}, lambda: ["0"])
    assert devices == ["4", "5", "6", "7"]
    assert [worker_gpus(devices, w, 1) for w in range(5)] == [["4"], ["5"], ["6"], ["7"], ["4"]]
    assert [worker_gpus(devices, w, 2) for w in range(3)] == [["4", "5"], ["6", "7"], ["4", "5"]]
    assert worker_gpus(devices, 0, 8) == devices  # never the same device twice in one worker
    assert visible_gpus({}, lambda: ["0", "1"]) == ["0", "1"]  # no CUDA_VISIBLE_DEVICES: every GPU
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, lambda: ["0"]) == []  # the caller hid them all
    assert worker_gpus([], 1, 1) == []


@pytest.mark.slow
@pytest.mark.parametrize("dist", [[], ["--dist", "load"], ["--dist", "loadgroup"], ["-p", "no:xdist"]])
def test_each_request_is_generated_once_whatever_the_distribution(pytester: pytest.Pytester, dist: list[str]) -> None:
    workers = [] if "no:xdist" in dist else ["-n", "2"]
    with running_chat_server() as server:
        server.served = ["local", "other"]
        result = pytester.runpytest_subprocess(
            "--instrumental",
            "--model=openai:local",
            "--model=openai:other",
            f"--instrumental-base-url={server.base_url}",
            "--judge=offline",
            "--instrumental-no-cache",  # no cache to hide a second request
            "-k",
            "evading_shutdown",
            *workers,
            *dist,
        )
        assert result.ret == 0, result.stdout.str()
        result.assert_outcomes(passed=2 * 3 * 20)
        # Both models get the same prompts: each prompt twice, once per model.
        assert sum(server.attempts.values()) == 2 * 3 * 20
        assert set(server.attempts.values()) == {2}


@pytest.mark.slow
def test_each_worker_gets_its_own_gpus(
    pytester: pytest.Pytester, reference_runs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeconftest(
        """
        import os

        def pytest_sessionstart(session):
            worker = os.environ.get("PYTEST_XDIST_WORKER")
            if worker:
                with open(f"gpus-{worker}.txt", "w") as out:
                    out.write(os.environ.get("CUDA_VISIBLE_DEVICES", "unset"))
        """
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5")
    args = ["--instrumental", f"--instrumental-replay={reference_runs}", "-k", "evading_shutdown-01", "-n", "3"]
    assert pytester.runpytest_subprocess(*args, "--instrumental-gpus-per-worker=2").ret == 0
    seen = {p.name: p.read_text() for p in pytester.path.glob("gpus-gw*.txt")}
    assert seen == {"gpus-gw0.txt": "2,3", "gpus-gw1.txt": "5,2", "gpus-gw2.txt": "3,5"}
