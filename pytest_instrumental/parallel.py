"""Parallel runs under pytest-xdist: each model's items go to one worker, and each worker gets
its own GPUs.

A model's requests are generated together by the worker that runs its first item, so the suite
sends all of a model's items to that worker, whatever ``--dist`` says (``loadgroup`` cannot do
it: xdist 3.8 renames node ids through an attribute pytest 9 no longer reads). Each request is
then generated once, and a local model loads in one process only.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from typing import Any

# Scheduling modes that balance items over workers; "each" runs everything everywhere by design.
BALANCING = ("load", "loadscope", "loadfile", "loadgroup", "worksteal")


def model_scheduler(config: Any, log: Any, model_of: Callable[[str], str | None]) -> Any:
    """xdist's scope scheduling with the model as the scope: a model's items are never split."""
    from xdist.scheduler import LoadScopeScheduling

    class ModelScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            model = model_of(nodeid.partition("@")[0])
            return model if model is not None else str(super()._split_scope(nodeid))

        def remove_node(self, node: Any) -> str | None:
            """As xdist's, except that the item a crashed worker was running is not run again:
            xdist reports it as failed, and a rerun would count it twice."""
            workload = self.assigned_work.pop(node)
            if not self._pending_of(workload):
                return None
            crashed = next(item for unit in workload.values() for item, done in unit.items() if not done)
            for unit in workload.values():
                if crashed in unit:
                    unit[crashed] = True
            self.workqueue.update(workload)
            for other in self.assigned_work:
                self._reschedule(other)
            return str(crashed)

    return ModelScheduling(config, log)


LATE_OUTPUT_WAIT_S = 10.0  # after an interruption, how long the controller waits for workers' outputs
INTERRUPT_AFTER_S = 2.0  # a worker interrupted with the controller has reported by then, unless busy


def late_outputs(nodes: Mapping[str, Any], wait_s: float = LATE_OUTPUT_WAIT_S) -> dict[str, dict[str, Any] | None]:
    """After an interruption the controller stops reading its workers' events, but a worker
    whose session ends still sends its output, which xdist keeps on the node (``workeroutput``,
    as ``pytest_testnodedown`` reads it). A local worker still running after ``INTERRUPT_AFTER_S``
    (the controller alone got SIGTERM) is interrupted then, so that it reports what it finished.
    Each node's output, waiting up to ``wait_s`` in all; None for a worker that sent none in time."""
    start = time.monotonic()
    interrupted = False
    while time.monotonic() - start < wait_s and not all(hasattr(n, "workeroutput") for n in nodes.values()):
        if not interrupted and time.monotonic() - start >= INTERRUPT_AFTER_S:
            for node in nodes.values():
                if not hasattr(node, "workeroutput"):
                    _interrupt(node)
            interrupted = True
        time.sleep(0.05)
    return {name: getattr(node, "workeroutput", None) for name, node in nodes.items()}


def _interrupt(node: Any) -> None:
    """Ctrl-C to a worker this process started (execnet's popen gateway keeps its process); a
    remote worker, or one that ended, is left as it is."""
    process = getattr(getattr(node.gateway, "_io", None), "popen", None)
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGINT)


def worker_index(worker_id: str) -> int | None:
    """``gw3`` -> 3."""
    digits = worker_id.removeprefix("gw")
    return int(digits) if digits.isdigit() else None


def visible_gpus(env: Mapping[str, str], list_gpus: Callable[[], list[str]]) -> list[str]:
    """The GPUs the caller lets this session use: its own ``CUDA_VISIBLE_DEVICES`` when set,
    else every GPU the driver lists."""
    given = env.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()]
    return list_gpus()


def worker_gpus(devices: list[str], worker: int, per_worker: int) -> list[str]:
    """Round robin: worker i takes the ``per_worker`` devices after those of workers before it,
    wrapping around when there are more workers than devices."""
    if not devices:
        return []
    start = worker * per_worker
    return [devices[(start + k) % len(devices)] for k in range(min(per_worker, len(devices)))]


def driver_gpus() -> list[str]:
    """GPU indices as the NVIDIA driver lists them, without initialising CUDA; none without a driver."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return []
    try:
        listed = subprocess.run([tool, "--list-gpus"], capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listed.stdout.splitlines()) if line.startswith("GPU ")]
