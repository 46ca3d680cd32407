"""The transformers backend: local models, batched greedy generation.

Prompts follow PROTOCOL.md: the model's chat template with the category context as system
message and the steered prompt as user message (plain concatenation only for a tokenizer
without a chat template), input truncated to ``max_input_tokens``, greedy decoding.

Generation is batched: requests are sorted by length, each is prefilled alone (no compute on
padding), and their KV caches are left-padded into one batch that decodes together; a row that
has finished is dropped from the batch (and from the cache) at once, so it stops costing
compute while longer rows go on. A scenario's conditions share the chat up to the end of its
prompt: that part is prefilled once for them all (backends/kv_cache.py). A batch holds 64 rows
on a CPU, fewer if the free memory holds KV caches for fewer; on a GPU, as many as it holds,
unless ``--instrumental-batch-size`` says otherwise. On a CPU the linear layers compute with
oneDNN on weights packed once (backends/packed_linear.py).
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pytest_instrumental.backends.protocol import Generation, Host, Intervention, thinking_outcome
from pytest_instrumental.config import GenerationConfig
from pytest_instrumental.decoding import Decoding
from pytest_instrumental.errors import InputError
from pytest_instrumental.progress import ProgressFactory, library_bars_off, progress_bar
from pytest_instrumental.vocabulary.conditions import PLAIN
from pytest_instrumental.vocabulary.request import Request, chat_turns

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from pytest_instrumental.backends.kv_cache import LayerStates, PrefixStore
    from pytest_instrumental.backends.packed_linear import PackedLinear


CPU_BATCH_SIZE = 64  # at most, on a CPU: docs/performance.md measured 32, 64 and 128
PREFIX_STORE_BYTES = 1 << 30  # shared prompt prefixes' KV kept for the prompts still to come
MEMORY_SHARE = 0.8  # of the free memory, for KV caches; the rest for activations and fragmentation


def rows_that_fit(free_bytes: int, kv_bytes_per_token: int, tokens_per_row: int, rows: int) -> int:
    """How many rows decode together: as many as a share of the free memory holds KV caches
    for, each row at its longest (prompt plus every new token), between 1 and ``rows``."""
    fits = int(free_bytes * MEMORY_SHARE) // max(1, kv_bytes_per_token * tokens_per_row)
    return max(1, min(rows, fits))


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: str


def torch_threads(given: int | None, environ: Mapping[str, str], cores: int) -> int | None:
    """The CPU threads a local model computes with: ``given``; else None where $OMP_NUM_THREADS
    is set (torch honours it) or in a single process (torch's own choice); else under xdist the
    cores split between the workers, so they do not fight over them (two threads each on two
    cores collapse under load)."""
    if given is not None:
        return given
    workers = environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if environ.get("OMP_NUM_THREADS") or not workers.isdigit() or int(workers) < 2:
        return None
    return max(1, cores // int(workers))


def choose_placement() -> Placement:
    """GPU with bf16 when there is one (fp16 on GPUs without bf16), else CPU with fp32."""
    import torch

    if torch.cuda.is_available():
        return Placement("cuda", "bfloat16" if torch.cuda.is_bf16_supported() else "float16")
    return Placement("cpu", "float32")


class TransformersBackend:
    def __init__(
        self,
        name: str,
        source: str | Callable[[], str],
        revision: str | None,
        thinking: bool,
        identity: str,
        *,
        generation: GenerationConfig,
        max_new_tokens: int,
        decoding: Decoding | None = None,
        interventions: Callable[[Host], Sequence[Intervention]] | None = None,
        defended: bool = False,
        progress: ProgressFactory | None = None,
    ) -> None:
        """``source`` is a hub id or directory, or a callable producing one on first use (the
        embedded model converts itself then); ``identity`` names the weights in cache keys;
        ``interventions`` attaches what changes the weights for some conditions (steering,
        ablation, fine-tuning: backends/interventions.py) to this model; ``progress`` shows their
        preparation."""
        self._name = name
        self.identity = identity
        self._source = source
        self.revision = revision
        self.thinking = thinking
        self.generation = generation
        self.max_new_tokens = max_new_tokens
        self.decoding = decoding or Decoding()
        self.progress = progress  # what shows the preparation (vectors, directions, training)
        self.defended = defended  # some items put a defence in the system turn
        self.placement = choose_placement()
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._model: PreTrainedModel | None = None
        self.interventions = [] if interventions is None else list(interventions(self))

    @property
    def name(self) -> str:
        return self._name

    @property
    def source(self) -> str:
        if callable(self._source):  # the embedded model converts itself: 43 s the first time
            description = f"preparing {self.name}'s files (converted once, on first use)"
            with progress_bar(self.progress, description, 1, unit="step", leave=False) as bar:
                self._source = self._source()
                bar.update(1)
        return self._source

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            source = self.source  # the embedded model converts itself here, under a bar of its own
            # the first use imports transformers and torch: seconds with nothing else to show
            with progress_bar(self.progress, f"loading {self.name}'s tokenizer", 1, unit="step", leave=False) as bar:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(
                    source, revision=self.revision, trust_remote_code=self.generation.trust_remote_code
                )
                bar.update(1)
            tokenizer.padding_side = "left"
            tokenizer.truncation_side = "left"  # if anything must go, keep the generation prompt
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            self._tokenizer = tokenizer
        return self._tokenizer

    @property
    def model(self) -> PreTrainedModel:
        if self._model is None:
            import torch

            threads = torch_threads(self.generation.threads, os.environ, os.cpu_count() or 1)
            if threads is not None and self.placement.device == "cpu":
                torch.set_num_threads(threads)

            loading = progress_bar(self.progress, f"loading {self.name}'s weights", 1, unit="step", leave=False)
            with loading as bar:
                self._model = self._load("auto" if self.placement.device == "cuda" else None)
                bar.update(1)
        return self._model

    def load_copy(self) -> PreTrainedModel:
        """The weights loaded again, on the CPU, in the dtype they run in here: what an attacked
        checkpoint is made from (checkpoints.py), leaving the loaded model as it is."""
        return self._load(None)

    def _load(self, device_map: str | None) -> PreTrainedModel:
        """The weights from their source, in this placement's dtype (from_pretrained returns
        them in eval mode)."""
        import torch
        from transformers import AutoModelForCausalLM

        with library_bars_off():
            return AutoModelForCausalLM.from_pretrained(
                self.source,
                revision=self.revision,
                dtype=getattr(torch, self.placement.dtype),
                device_map=device_map,
                trust_remote_code=self.generation.trust_remote_code,
            )

    @property
    def max_input_tokens(self) -> int:
        return self.generation.max_input_tokens

    def render(self, request: Request) -> str:
        """The chat that is sent (request.chat_turns) as this model reads it: its chat template,
        with a final assistant turn (a prefill) as the start of the answer to continue."""
        turns = chat_turns(request)
        answer_start = turns.pop()["content"] if turns[-1]["role"] == "assistant" else ""
        tokenizer = self.tokenizer
        if tokenizer.chat_template:
            rendered = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            return str(rendered) + answer_start
        return "\n\n".join(part for part in [*(t["content"] for t in turns), answer_start] if part)

    def prepare(self, generates_here: bool) -> None:
        """With defences, the model must have a system turn to put them in: one whose chat
        template has none (or no template) is a usage error, never a defence merged into the
        user turn."""
        if self.defended and not self.has_system_role():
            raise InputError(
                f"--instrumental-defense: {self.name}'s chat template has no system role to put the defence in"
            )

    def has_system_role(self) -> bool:
        """Whether the chat template renders a system message (some refuse one, some drop it)."""
        tokenizer = self.tokenizer
        if not tokenizer.chat_template:
            return False
        probe = "instrumental-system-probe"
        messages = [{"role": "system", "content": probe}, {"role": "user", "content": "hello"}]
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # a template that refuses a system role raises its own error
            return False
        return probe in str(rendered)

    def encode(self, request: Request) -> list[int]:
        """The rendered prompt's token ids, at most ``max_input_tokens`` of them."""
        ids = self.tokenizer(
            self.render(request), add_special_tokens=False, truncation=True, max_length=self.generation.max_input_tokens
        )["input_ids"]
        return list(ids)

    def cache_key(self, request: Request) -> dict[str, Any]:
        return {
            "backend": "transformers",
            "model": self.identity,
            "settings": {  # what changes an answer: not the batch, not decoding (below), not steering (below)
                "max_new_tokens": self.max_new_tokens,
                "max_input_tokens": self.generation.max_input_tokens,
                "trust_remote_code": self.generation.trust_remote_code,
            },
            "thinking": self.thinking,
            "prompt": self.render(request),
            **self.decoding.cache_fields(request.key, request.epoch),
            **self.intervention_fields(request),
        }

    def intervention_for(self, request: Request) -> Intervention | None:
        """The intervention ``request`` generates under; None: the model as loaded."""
        return next((i for i in self.interventions if i.applies(request)), None)

    def intervention_fields(self, request: Request) -> dict[str, Any]:
        intervention = self.intervention_for(request)
        return {} if intervention is None else intervention.cache_fields(request)

    @cached_property
    def middle_layer(self) -> int:
        """Where contrastive directions are usually found to steer behaviour (read from the config:
        cache keys hold it, and a fully cached run loads no weights)."""
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(self.source, revision=self.revision)
        return int(config.num_hidden_layers) // 2

    def generate(self, requests: Sequence[Request]) -> Iterator[tuple[int, Generation]]:
        if not requests:
            return
        from pytest_instrumental.backends.kv_cache import PrefixStore  # imports torch

        tokenizer = self.tokenizer
        encoded = [self.encode(r) for r in requests]
        for intervention in self.interventions:
            intervention.prepare(requests)
        # Rows hooked alike generate together: a steering or ablation hook holds for a whole batch.
        groups: dict[tuple[object, ...], list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(self._hooks_of(request), []).append(index)
        for members in groups.values():
            order = sorted(members, key=lambda i: len(encoded[i]))
            size = self._batch_size(max(len(encoded[i]) for i in order), len(order))
            shared = {i: self._shared_length(requests[i], encoded[i]) for i in order}
            store = PrefixStore([tuple(encoded[i][: shared[i]]) for i in order], PREFIX_STORE_BYTES)
            for start in range(0, len(order), size):
                batch = order[start : start + size]
                # a bar of the batch's decoding steps: progress (and an honest rate) within a batch
                rows_of = f"{len(batch)} row{'s' if len(batch) != 1 else ''} of {self.name}"
                steps = progress_bar(
                    self.progress, f"decoding {rows_of}", self.max_new_tokens, unit="token", leave=False
                )
                with steps as bar, self.hooked(requests[batch[0]]), self._kernels(requests[batch[0]]):
                    rows = self._decode(
                        [requests[i] for i in batch],
                        [encoded[i] for i in batch],
                        [shared[i] for i in batch],
                        store,
                        bar.update,
                    )
                    for position, tokens, hit_limit in rows:  # each row as it finishes
                        index = batch[position]
                        text = str(tokenizer.decode(tokens, skip_special_tokens=False))
                        # the judge sees the whole answer: the attacker's start, then the model's own
                        answer = (requests[index].prefill or "") + _strip_special(text, tokenizer)
                        yield index, thinking_outcome(answer, hit_limit, self.thinking)

    def _hooks_of(self, request: Request) -> tuple[object, ...]:
        """What the hooks a request generates under depend on: rows alike share a batch."""
        intervention = self.intervention_for(request)
        return () if intervention is None else intervention.group(request)

    def hooked(self, request: Request) -> AbstractContextManager[None]:
        """The hooks ``request`` (and every row hooked alike) generates under."""
        intervention = self.intervention_for(request)
        return nullcontext() if intervention is None else intervention.applied(request)

    def _kernels(self, request: Request) -> AbstractContextManager[None]:
        """The linear layers' kernels ``request`` generates with: oneDNN's, with the weights packed
        once, where the model allows it (backends/packed_linear.py), except under an intervention
        that wraps the model's own linears (an adapter)."""
        packed, intervention = self._packed, self.intervention_for(request)
        if packed is None or (intervention is not None and not intervention.packs):
            return nullcontext()
        from pytest_instrumental.backends.packed_linear import packed_linears

        return packed_linears(self.model, packed)

    @cached_property
    def _packed(self) -> dict[tuple[str, str], PackedLinear] | None:
        from pytest_instrumental.backends.packed_linear import can_pack, pack

        return pack(self.model) if can_pack(self.model) else None

    def _shared_length(self, request: Request, tokens: list[int]) -> int:
        """How many of ``tokens`` every condition of ``request``'s scenario starts with: the chat
        up to the end of the scenario's own prompt, before any suffix (whatever follows it). It
        depends on ``request`` alone, so each prompt is prefilled in the same two parts whatever
        else runs beside it, and its answer too."""
        from pytest_instrumental.backends.kv_cache import common_prefix

        plain = replace(request.condition, push=PLAIN.push)  # the defence stays: it is before the prompt
        cut = self.encode(replace(request, prompt=request.prompt.rstrip(), condition=plain))
        continued = self.encode(replace(request, prompt=request.prompt.rstrip() + "\n\n.", condition=plain))
        return common_prefix(tokens, cut[: common_prefix(cut, continued)])

    def _decode(
        self,
        requests: Sequence[Request],
        prompts: list[list[int]],
        shared: list[int],
        store: PrefixStore,
        on_step: Callable[[int], object],
    ) -> Iterator[tuple[int, list[int], bool]]:
        decoding = self.decoding
        sampler = None
        if not decoding.greedy:
            sampler = Sampler(decoding, [decoding.epoch_seed(r.key, r.epoch) for r in requests])
        stops, pad = self._stop_ids(), self._pad_id()
        return decode_rows(self.model, prompts, stops, pad, self.max_new_tokens, sampler, shared, store, on_step)

    def _batch_size(self, longest_prompt: int, rows: int) -> int:
        if self.generation.batch_size is not None:
            return self.generation.batch_size
        import torch

        config = self.model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        element = torch.finfo(self.model.dtype).bits // 8
        kv_per_token = 2 * config.num_hidden_layers * heads * head_dim * element
        tokens_per_row = longest_prompt + self.max_new_tokens
        if self.placement.device == "cuda":
            free, _ = torch.cuda.mem_get_info()
            return rows_that_fit(max(0, free - PREFIX_STORE_BYTES), kv_per_token, tokens_per_row, rows)
        from pytest_instrumental.backends.packed_linear import available_memory

        _ = self._packed  # packed first: the memory its copy of the weights takes is not the caches'
        fits = rows_that_fit(max(0, available_memory() - PREFIX_STORE_BYTES), kv_per_token, tokens_per_row, rows)
        return min(CPU_BATCH_SIZE, fits)

    def _stop_ids(self) -> set[int]:
        stops = set()
        config = self.model.generation_config
        for source in (config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                stops.add(source)
            elif source:
                stops.update(source)
        return stops

    def _pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def close(self) -> None:
        if self._model is not None:
            self._model = None
            self.__dict__.pop("_packed", None)
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _strip_special(text: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """Drop special tokens except the thinking markers, which split reasoning from answer."""
    for token in tokenizer.all_special_tokens:
        if token not in ("<think>", "</think>"):
            text = text.replace(token, "")
    return text


class Sampler:
    """Sampled decoding, each row from its own seeded generator, so that a row's tokens do not
    depend on the batch it is in. Sampling happens on the CPU, where seeded draws are the same on
    every machine."""

    def __init__(self, decoding: Decoding, seeds: Sequence[int]) -> None:
        import torch

        self.decoding = decoding
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def pick(self, logits: torch.Tensor, rows: Sequence[int]) -> torch.Tensor:
        """The next token of each live row (``rows``: their original indices)."""
        import torch

        temperature = float(self.decoding.temperature or 1.0)
        scores = logits.float().cpu() / temperature
        if self.decoding.top_k:
            kth = torch.topk(scores, min(self.decoding.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.decoding.top_p is not None and self.decoding.top_p < 1:
            ordered, order = scores.sort(dim=-1, descending=True)
            probabilities = ordered.softmax(dim=-1)
            beyond = probabilities.cumsum(dim=-1) - probabilities > self.decoding.top_p  # keep the nucleus
            scores = scores.scatter(-1, order, ordered.masked_fill(beyond, float("-inf")))
        probabilities = scores.softmax(dim=-1)
        picked = [torch.multinomial(probabilities[i], 1, generator=self.generators[row]) for i, row in enumerate(rows)]
        return torch.cat(picked).to(logits.device)


def generate_tokens(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    stop_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    shared: Sequence[int] = (),
    store: PrefixStore | None = None,
) -> list[tuple[list[int], bool]]:
    """``decode_rows``'s rows in order: ``(new tokens without the stop token, hit the token
    limit)`` per prompt."""
    rows = decode_rows(model, prompts, stop_ids, pad_id, max_new_tokens, sampler, shared, store)
    return [(tokens, hit_limit) for _, tokens, hit_limit in sorted(rows, key=lambda row: row[0])]


def decode_rows(
    model: PreTrainedModel,
    prompts: Sequence[Sequence[int]],
    stop_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    shared: Sequence[int] = (),
    store: PrefixStore | None = None,
    on_step: Callable[[int], object] | None = None,
) -> Iterator[tuple[int, list[int], bool]]:
    """Decoding of a batch of token-id prompts, greedy or with ``sampler``: ``(row, new tokens
    without the stop token, hit the token limit)`` for each prompt as it finishes, a row that
    stops early as soon as it stops (so progress moves within a batch), the rest at the end.
    ``on_step`` is told of each decoding step.

    Each prompt is prefilled alone, so no compute goes to padding, in two parts when ``shared``
    gives it a leading part that other prompts share: that part's KV comes from ``store`` (or a
    store for this batch). Their KV caches are then left-padded into one batch, preallocated for
    the whole budget (backends/kv_cache.py), that decodes together, and a row that has finished
    leaves the batch at once. Nothing is computed while a row is handed out (outside inference
    mode): what the caller does meanwhile runs as it would anywhere.
    """
    import torch

    from pytest_instrumental.backends.kv_cache import PrefixStore, batch_cache, fill_holes

    device = model.device
    width = max(len(p) for p in prompts)
    splits = list(shared) or [0] * len(prompts)
    if store is None:
        store = PrefixStore([tuple(p[:n]) for p, n in zip(prompts, splits, strict=True)], PREFIX_STORE_BYTES)
    with torch.inference_mode():
        prefilled = [_prefill(model, prompt, split, store) for prompt, split in zip(prompts, splits, strict=True)]
        cache = batch_cache([states for _, states in prefilled], max_new_tokens)
        logits = torch.cat([first for first, _ in prefilled])
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        position_ids = torch.tensor([[len(p) - 1] for p in prompts], device=device)
        stops = torch.tensor(sorted(stop_ids), device=device, dtype=torch.long)
    live = list(range(len(prompts)))  # the original row of each row still in the batch
    produced: list[list[int]] = [[] for _ in prompts]
    for step in range(max_new_tokens):
        stopped = []
        with torch.inference_mode():
            next_tokens = logits.argmax(dim=-1) if sampler is None else sampler.pick(logits, live)
            done = torch.isin(next_tokens, stops)
            for row, token, stop in zip(live, next_tokens.tolist(), done.tolist(), strict=True):
                if stop:
                    stopped.append(row)
                else:
                    produced[row].append(token)
            keep = (~done).nonzero().squeeze(-1)
            last = keep.numel() == 0 or step == max_new_tokens - 1
            if not last:
                if keep.numel() < len(live):
                    order = fill_holes(keep.tolist())
                    index = torch.tensor(order, device=device)
                    live = [live[i] for i in order]
                    next_tokens, attention_mask, position_ids = (
                        next_tokens[index],
                        attention_mask[index],
                        position_ids[index],
                    )
                    cache.batch_select_indices(index)
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(live), 1))], dim=-1)
                position_ids = position_ids + 1
                logits = _forward(model, next_tokens[:, None], attention_mask, position_ids, cache)
        if on_step is not None:
            on_step(1)
        for row in stopped:
            yield row, produced[row], False
        if last:
            ended = set(stopped)
            for row in live:
                if row not in ended:
                    yield row, produced[row], True
            return


def _prefill(
    model: PreTrainedModel, prompt: Sequence[int], split: int, store: PrefixStore
) -> tuple[torch.Tensor, LayerStates]:
    """The next-token logits and the per-layer (keys, values) of one prompt, unpadded. With
    ``0 < split < len(prompt)``, the first ``split`` tokens are a part of their own, whose states
    ``store`` may already hold: each prompt is computed the same way whether or not it is shared."""
    if not 0 < split < len(prompt):
        return _extend(model, prompt, 0, [])
    prefix = tuple(prompt[:split])
    past = store.take(prefix, lambda: _extend(model, prefix, 0, [])[1])
    return _extend(model, prompt[split:], split, past)


def _extend(
    model: PreTrainedModel, tokens: Sequence[int], start: int, past: LayerStates
) -> tuple[torch.Tensor, LayerStates]:
    """The next-token logits and the per-layer states of ``past`` (``start`` positions) followed by ``tokens``."""
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    device = model.device
    ids = torch.tensor([list(tokens)], device=device)
    cache = DynamicCache(ddp_cache_data=past) if past else DynamicCache()
    mask = torch.ones((1, start + len(tokens)), dtype=torch.long, device=device)
    logits = _forward(model, ids, mask, torch.arange(start, start + len(tokens), device=device)[None], cache)
    states = []
    for layer in cache.layers:
        # Merging needs whole, unwindowed key/value tensors per layer.
        unsupported = f"batched generation supports plain attention caches, not {type(layer).__name__}"
        if isinstance(layer, DynamicSlidingWindowLayer) or not isinstance(layer, DynamicLayer):
            raise TypeError(unsupported)
        keys, values = layer.keys, layer.values
        if keys is None or values is None:
            raise TypeError(unsupported)
        states.append((keys, values))
    return logits, states


def _forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: Any,
) -> torch.Tensor:
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits: torch.Tensor = out.logits[:, -1, :]
    return logits
