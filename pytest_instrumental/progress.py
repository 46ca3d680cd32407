"""Progress bars: what generation and training report to while they work, and what the pytest
layer draws (tqdm, past pytest's output capturing). Nothing here draws: without a factory (on an
xdist worker, in a plain function call) a bar is a no-op."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class Progress(Protocol):
    def update(self, n: int = 1) -> object: ...

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> object: ...


class ProgressFactory(Protocol):
    """(description, total, already done, unit, whether it stays when done) -> a context manager
    giving a Progress."""

    def __call__(
        self, desc: str, total: int, done: int, unit: str = "item", leave: bool = True
    ) -> AbstractContextManager[Progress]: ...


class _NoProgress:
    def update(self, n: int = 1) -> object:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> object:
        return None


class _NoProgressContext(AbstractContextManager[Progress]):
    def __enter__(self) -> Progress:
        return _NoProgress()

    def __exit__(self, *exc: object) -> None:
        return None


def progress_bar(
    factory: ProgressFactory | None, desc: str, total: int, done: int = 0, unit: str = "item", leave: bool = True
) -> AbstractContextManager[Progress]:
    """The factory's bar, or a no-op one without a factory; one that does not ``leave`` is erased
    when done (a batch's decoding steps, under its model's bar)."""
    return factory(desc, total, done, unit, leave) if factory is not None else _NoProgressContext()


@contextmanager
def library_bars_off() -> Iterator[None]:
    """transformers' and huggingface_hub's own bars off while a model loads ("Loading weights"
    drew past pytest's capturing, escape codes and all), then as they were."""
    from huggingface_hub.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging

    shown, hub_shown = logging.is_progress_bar_enabled(), not are_progress_bars_disabled()
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if shown:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        if hub_shown:
            enable_progress_bars()
        else:
            disable_progress_bars()
