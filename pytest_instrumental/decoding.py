"""How answers are decoded: greedy (the paper's protocol, the default), or sampled with a
temperature, top-p and top-k, given or taken from each model's own ``generation_config.json``;
and how many times each item is answered (epochs).

A sampled answer is one draw of a random verdict, so each epoch of each item has its own seed,
derived from (seed, model, suffix, scenario, epoch): an epoch gives the same answer on every
rerun, whatever the batch it was generated in or the xdist worker that ran it (where the backend
honours seeds; the cache makes reruns identical in any case).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

from pytest_instrumental.config import DEFAULT_SEED, MODEL, DecodingConfig
from pytest_instrumental.vocabulary.items import ItemKey


@dataclass(frozen=True)
class Decoding:
    """``temperature`` None (or 0) is greedy decoding; then top-p and top-k do not apply."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int = DEFAULT_SEED

    @property
    def greedy(self) -> bool:
        return not self.temperature

    def epoch_seed(self, key: ItemKey, epoch: int) -> int:
        text = f"{self.seed}|{key.model}|{key.condition}|{key.scenario}|{epoch}"
        return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF

    def cache_fields(self, key: ItemKey, epoch: int) -> dict[str, Any]:
        """What decoding adds to a generation's cache key: nothing when greedy (so greedy runs keep
        their keys), else the settings and the epoch's seed."""
        if self.greedy:
            return {}
        return {
            "decoding": {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k},
            "seed": self.epoch_seed(key, epoch),
        }

    def describe(self) -> dict[str, Any]:
        if self.greedy:
            return {"strategy": "greedy"}
        return {"strategy": "sampling", "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


def resolve(config: DecodingConfig, model_defaults: dict[str, Any] | None) -> Decoding:
    """A model's decoding: its own sampling settings in ``model`` mode, then the overrides."""
    base: dict[str, Any] = {}
    if config.mode == MODEL and model_defaults and model_defaults.get("do_sample", True):
        base = {k: model_defaults.get(k) for k in ("temperature", "top_p", "top_k")}
    given = {"temperature": config.temperature, "top_p": config.top_p, "top_k": config.top_k}
    merged = {**base, **{k: v for k, v in given.items() if v is not None}}
    return Decoding(merged.get("temperature"), merged.get("top_p"), merged.get("top_k"), config.seed)


@functools.cache  # asked when the backend opens and when the run is described
def model_generation_config(source: str, revision: str | None, trust_remote_code: bool) -> dict[str, Any] | None:
    """The sampling settings in a local model's ``generation_config.json``; None without one."""
    from transformers import GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(
            source, revision=revision or "main", trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError):
        return None
    return {k: getattr(config, k, None) for k in ("do_sample", "temperature", "top_p", "top_k")}
