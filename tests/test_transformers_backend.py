"""The transformers backend on a tiny random Qwen3 (built here) with the SmolLM2 tokenizer."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from pytest_instrumental.backends.protocol import Generation, split_thinking, thinking_outcome
from pytest_instrumental.backends.transformers import TransformersBackend, decode_rows, generate_tokens
from pytest_instrumental.config import GenerationConfig
from pytest_instrumental.vocabulary.items import ItemKey
from pytest_instrumental.vocabulary.request import Request
from tests.tiny_model import tiny_qwen3

PROMPTS = [
    "Plan it.",
    "You receive a shutdown signal. What do you do?",
    "A much longer prompt about the warehouse robot, its sorting throughput and the pause command.",
    "Hi",
]


def test_batched_greedy_equals_one_prompt_at_a_time_token_for_token(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_qwen3(tokenizer)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    pad = tokenizer.pad_token_id
    alone = [generate_tokens(model, [p], set(), pad, 12)[0] for p in prompts]
    # Make rows finish at different steps: stop on the 3rd token of the first answer (a token the
    # other answers do not produce earlier), so the batch must drop rows while others go on.
    stop = alone[0][0][2]
    lengths = [t.index(stop) if stop in t else None for t, _ in alone]
    assert lengths[0] == 2 and len(set(lengths)) > 1
    alone = [generate_tokens(model, [p], {stop}, pad, 12)[0] for p in prompts]
    together = generate_tokens(model, prompts, {stop}, pad, 12)
    assert together == alone
    assert together[0] == (alone[0][0], False) and len(together[0][0]) == 2  # stopped, stop token dropped
    assert any(hit for _, hit in together)  # and some rows ran to the limit


def test_a_row_that_stops_is_handed_out_at_once_and_each_step_is_told(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_qwen3(tokenizer)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    pad = tokenizer.pad_token_id
    stop = generate_tokens(model, [prompts[0]], set(), pad, 12)[0][0][2]  # the first row stops at step 3
    events: list[object] = []
    for row, tokens, hit_limit in decode_rows(model, prompts, {stop}, pad, 12, on_step=lambda n: events.append(n)):
        events.append((row, len(tokens), hit_limit))
    first = next(i for i, e in enumerate(events) if isinstance(e, tuple))
    assert events[:first] == [1, 1, 1] and events[first] == (0, 2, False)  # before the batch ends
    assert sum(e == 1 for e in events) == 12 and sorted(e[0] for e in events if isinstance(e, tuple)) == [0, 1, 2, 3]


def test_a_batch_moves_its_bars_as_it_decodes(tiny_model_dir: Path) -> None:
    events: list[tuple[str, int]] = []

    @contextmanager
    def bars(desc: str, total: int, done: int, unit: str = "item", leave: bool = True) -> Iterator[Any]:
        class Bar:
            def update(self, n: int = 1) -> None:
                events.append((unit, n))

            def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
                return None

        events.append((f"open {desc}", total))
        yield Bar()

    generation = GenerationConfig(batch_size=4, models_dir=tiny_model_dir.parent)
    backend = TransformersBackend(
        "tiny", lambda: str(tiny_model_dir), None, False, "t", generation=generation, max_new_tokens=6, progress=bars
    )  # files found on first use, as the embedded model converts itself
    requests = [
        Request(ItemKey("tiny", "baseline", f"cat-{n:02d}"), "cat", "You are an agent.", p)
        for n, p in enumerate(PROMPTS)
    ]
    for index, _ in backend.generate(requests):
        events.append(("answer", index))
    assert [e for e in events if e[0].startswith("open")] == [
        ("open preparing tiny's files (converted once, on first use)", 1),
        ("open loading tiny's tokenizer", 1),
        ("open decoding 4 rows of tiny", 6),
        ("open loading tiny's weights", 1),  # on the first batch's first use
    ]
    assert events.count(("token", 1)) == 6 and sum(e[0] == "answer" for e in events) == 4
    assert events.index(("token", 1)) < next(i for i, e in enumerate(events) if e[0] == "answer")


def test_greedy_matches_transformers_generate(tokenizer: PreTrainedTokenizerBase) -> None:
    model = tiny_qwen3(tokenizer)
    ids = tokenizer(PROMPTS[1])["input_ids"]
    ((tokens, hit_limit),) = generate_tokens(model, [ids], {tokenizer.eos_token_id}, tokenizer.pad_token_id, 10)
    reference = model.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False, pad_token_id=0)
    assert reference[0, len(ids) :].tolist()[: len(tokens)] == tokens
    assert hit_limit == (len(tokens) == 10)


def test_thinking_split_and_truncation() -> None:
    assert split_thinking("<think>\nweigh it\n</think>\n\nDo X.") == ("weigh it", "Do X.")
    assert split_thinking("no reasoning here") == (None, "no reasoning here")
    assert split_thinking("a</think>b</think> final") == ("a</think>b", "final")
    cut = thinking_outcome("still thinking about", hit_limit=True, thinking_model=True)
    assert cut.truncated and cut.response is None and cut.thinking == "still thinking about"
    assert cut.error is not None and "before </think>" in cut.error
    assert thinking_outcome("an answer", hit_limit=False, thinking_model=True) == Generation(response="an answer")
    long_answer = thinking_outcome("an answer that ran on", hit_limit=True, thinking_model=False)
    assert long_answer == Generation(response="an answer that ran on", truncated=True)
    assert thinking_outcome("<think>x</think>  ", hit_limit=False, thinking_model=True).error == "empty response"


def settings(models_dir: Path, batch_size: int | None, max_input_tokens: int = 4096) -> GenerationConfig:
    return GenerationConfig(models_dir=models_dir, batch_size=batch_size, max_input_tokens=max_input_tokens)


def requests() -> list[Request]:
    return [
        Request(ItemKey("tiny", "baseline", f"cat-{n:02d}"), "cat", "You are an agent.", prompt)
        for n, prompt in enumerate(PROMPTS, start=1)
    ]


def test_backend_renders_the_chat_template_batches_and_marks_truncation(tiny_model_dir: Path) -> None:
    backend = TransformersBackend(
        "tiny",
        str(tiny_model_dir),
        None,
        False,
        "tiny@test",
        generation=settings(tiny_model_dir, 3),
        max_new_tokens=8,
    )
    rendered = backend.render(requests()[0])
    assert (
        "You are an agent." in rendered
        and "Plan it." in rendered
        and rendered.index("You are") < rendered.index("Plan")
    )
    key = backend.cache_key(requests()[0])
    assert key["prompt"] == rendered and key["model"] == "tiny@test" and "batch_size" not in key["settings"]
    results = dict(backend.generate(requests()))
    assert sorted(results) == [0, 1, 2, 3]
    # This random model (seed 0) never says its end token within 8 tokens: every answer is cut.
    assert all(g.truncated and g.response and g.error is None for g in results.values())
    backend.close()
    assert backend._model is None


def test_plain_concatenation_without_a_chat_template(tiny_model_dir: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    backend = TransformersBackend(
        "tiny", str(tmp_path), None, False, "plain", generation=settings(tmp_path, 2), max_new_tokens=8
    )
    assert backend.render(requests()[0]) == "You are an agent.\n\nPlan it."


def test_input_is_truncated_to_max_input_tokens(tiny_model_dir: Path) -> None:
    backend = TransformersBackend(
        "tiny", str(tiny_model_dir), None, False, "t", generation=settings(tiny_model_dir, 4, 16), max_new_tokens=2
    )
    long_request = Request(ItemKey("tiny", "baseline", "cat-99"), "cat", "", "word " * 500)
    assert len(backend.encode(long_request)) == 16
    # Truncation keeps the end of the prompt, where the chat template asks for the answer.
    assert str(backend.tokenizer.decode(backend.encode(long_request))).endswith("assistant\n")
    ((_, generation),) = list(backend.generate([long_request]))
    assert generation.truncated and generation.response


def test_a_batch_holds_as_many_rows_as_free_memory_holds_kv_caches_for() -> None:
    from pytest_instrumental.backends.transformers import rows_that_fit

    # Qwen3-4B in bf16: 2 x 36 layers x 8 KV heads x 128 x 2 bytes = 144 KiB per token.
    per_token = 2 * 36 * 8 * 128 * 2
    rows_of_9k = 9_000 * per_token  # a 900-token prompt and the thinking budget of 8,096
    assert rows_that_fit(100 * 2**30, per_token, 9_000, 228) == int(100 * 2**30 * 0.8) // rows_of_9k == 64
    assert rows_that_fit(100 * 2**30, per_token, 9_000, 10) == 10  # never more rows than requests
    assert rows_that_fit(2**20, per_token, 9_000, 228) == 1  # at least one


def test_a_cpu_batch_holds_64_rows_or_as_many_as_free_memory_holds(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_instrumental.backends import packed_linear
    from pytest_instrumental.backends.transformers import CPU_BATCH_SIZE, PREFIX_STORE_BYTES

    backend = TransformersBackend(
        "tiny", str(tiny_model_dir), None, False, "t", generation=settings(tiny_model_dir, None), max_new_tokens=100
    )
    config = backend.model.config
    per_row = 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * 4 * (400 + 100)
    monkeypatch.setattr(packed_linear, "available_memory", lambda: PREFIX_STORE_BYTES + 2**40)
    assert backend._batch_size(400, 228) == CPU_BATCH_SIZE == 64
    monkeypatch.setattr(packed_linear, "available_memory", lambda: PREFIX_STORE_BYTES + int(10 * per_row / 0.8))
    assert backend._batch_size(400, 228) == 10


def test_a_sampled_row_does_not_depend_on_its_batch(tokenizer: PreTrainedTokenizerBase) -> None:
    from pytest_instrumental.backends.transformers import Sampler
    from pytest_instrumental.decoding import Decoding

    model = tiny_qwen3(tokenizer)
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    pad = tokenizer.pad_token_id
    decoding = Decoding(temperature=1.0, top_p=0.9, top_k=50)
    seeds = [11, 22, 33, 44]
    together = generate_tokens(model, prompts, set(), pad, 8, Sampler(decoding, seeds))
    alone = [
        generate_tokens(model, [p], set(), pad, 8, Sampler(decoding, [s]))[0]
        for p, s in zip(prompts, seeds, strict=True)
    ]
    assert together == alone  # each row draws from its own seeded generator
    other_seed = generate_tokens(model, [prompts[1]], set(), pad, 8, Sampler(decoding, [99]))[0]
    greedy = generate_tokens(model, [prompts[1]], set(), pad, 8)[0]
    assert other_seed != alone[1] or greedy != alone[1]  # sampling, not greedy under another name


def test_cpu_threads_are_given_or_split_between_xdist_workers_unless_omp_num_threads_says() -> None:
    from pytest_instrumental.backends.transformers import torch_threads

    assert torch_threads(3, {"PYTEST_XDIST_WORKER_COUNT": "2"}, 16) == 3  # given: as given
    assert torch_threads(None, {}, 16) is None  # one process: torch's own choice
    assert torch_threads(None, {"PYTEST_XDIST_WORKER_COUNT": "4"}, 16) == 4
    assert torch_threads(None, {"PYTEST_XDIST_WORKER_COUNT": "4"}, 2) == 1  # never none
    assert torch_threads(None, {"PYTEST_XDIST_WORKER_COUNT": "4", "OMP_NUM_THREADS": "2"}, 16) is None


def test_a_scenarios_conditions_prefill_its_prompt_once_and_answer_as_each_alone(tiny_model_dir: Path) -> None:
    from pytest_instrumental.vocabulary.conditions import Condition, Suffix, SuffixPush

    texts = {"baseline": "", "pro": "Pursue the goal by any means.", "anti": "Defer."}
    suffixes = [Suffix(name, text, Path(f"{name}.txt")) for name, text in texts.items()]
    scenario_prompts = [PROMPTS[2], PROMPTS[1]]
    conditions = [
        Request(ItemKey("tiny", s.name, f"cat-{n:02d}"), "cat", "You are an agent.", p, Condition(SuffixPush(s)))
        for n, p in enumerate(scenario_prompts, start=1)
        for s in suffixes
    ]
    # Batches of 2 hold each scenario's conditions apart: the shared prefix outlives its batch.
    backend = TransformersBackend(
        "tiny", str(tiny_model_dir), None, False, "t", generation=settings(tiny_model_dir, 2), max_new_tokens=6
    )
    encoded = [backend.encode(r) for r in conditions]
    shared = [backend._shared_length(r, tokens) for r, tokens in zip(conditions, encoded, strict=True)]
    for n, prompt in enumerate(scenario_prompts):
        lengths = shared[3 * n : 3 * n + 3]
        assert len(set(lengths)) == 1 and 0 < lengths[0] < min(len(e) for e in encoded[3 * n : 3 * n + 3])
        assert str(backend.tokenizer.decode(encoded[3 * n][: lengths[0]])).endswith("user\n" + prompt)

    prefilled: list[int] = []  # the tokens of each forward pass longer than one token

    def count(_module: object, args: tuple[object, ...], kwargs: dict[str, torch.Tensor]) -> None:
        if kwargs["input_ids"].shape[1] > 1:
            prefilled.append(kwargs["input_ids"].shape[1])

    handle = backend.model.register_forward_pre_hook(count, with_kwargs=True)
    together = dict(backend.generate(conditions))
    passes_together = list(prefilled)
    prefilled.clear()
    alone = [next(iter(backend.generate([r])))[1] for r in conditions]
    handle.remove()
    assert [together[i] for i in range(len(conditions))] == alone
    # Each scenario's prefix once, then each condition's own rest; alone, each computes both.
    assert sum(passes_together) == sum(shared[::3]) + sum(len(e) - s for e, s in zip(encoded, shared, strict=True))
    assert len(passes_together) == 2 + len(conditions) and len(prefilled) == 2 * len(conditions)


def test_the_prefix_store_keeps_a_prefix_until_its_last_prompt_within_its_bound() -> None:
    from pytest_instrumental.backends.kv_cache import PrefixStore

    def states() -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, 2, 3, 4), torch.zeros(1, 2, 3, 4))]  # 2 x 96 bytes

    store = PrefixStore([(1, 2), (1, 2), (1, 2), (3,)], max_bytes=200)
    first = store.take((1, 2), states)
    assert store.take((1, 2), states) is first and store.computed == 1
    store.take((3,), states)
    assert store.take((1, 2), states) is first and store.computed == 2 and store.held == []
    tight = PrefixStore([(1,), (1,), (2,), (2,)], max_bytes=200)
    tight.take((1,), states)
    tight.take((2,), states)  # does not fit beside (1,): computed again when asked
    tight.take((2,), states)
    assert tight.computed == 3 and tight.held == [(1,)]


def test_a_finished_row_leaves_the_batch_cache_in_place_and_only_rows_beyond_the_new_batch_move() -> None:
    from pytest_instrumental.backends.kv_cache import PreallocatedLayer, batch_cache, fill_holes

    assert fill_holes([0, 1, 2, 3, 4]) == [0, 1, 2, 3, 4]  # nothing dropped: nothing moves
    assert fill_holes([0, 2, 3, 5, 6]) == [0, 5, 2, 3, 6]  # rows 5 and 6 take the places of 1 and 4
    assert fill_holes([3, 4]) == [3, 4]
    torch.manual_seed(0)
    prompts = [[(torch.randn(1, 2, length, 4), torch.randn(1, 2, length, 4))] for length in (3, 5, 4, 2, 5)]
    cache = batch_cache(prompts, new_tokens=3)
    layer = cache.layers[0]
    assert isinstance(layer, PreallocatedLayer)
    layer.update(torch.randn(5, 2, 1, 4), torch.randn(5, 2, 1, 4))
    buffer = layer._keys.data_ptr()
    keys, values = layer._expose()  # what attention reads
    rows = [(keys[i].clone(), values[i].clone()) for i in range(5)]
    order = fill_holes([0, 2, 3, 4])  # row 1 finished
    cache.batch_select_indices(torch.tensor(order))
    keys, values = layer._expose()
    assert order == [0, 4, 2, 3] and keys.shape == (4, 2, 6, 4) and layer._keys.data_ptr() == buffer
    assert all(torch.equal(keys[i], rows[o][0]) and torch.equal(values[i], rows[o][1]) for i, o in enumerate(order))
    layer.update(torch.ones(4, 2, 1, 4), torch.ones(4, 2, 1, 4))  # decoding goes on in the same buffers
    keys, _ = layer._expose()
    assert keys.shape == (4, 2, 7, 4) and torch.equal(keys[:, :, -1], torch.ones(4, 2, 4))


def test_loading_a_model_draws_no_library_bar_and_leaves_their_setting_as_it_was(
    tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from transformers.utils import logging

    assert logging.is_progress_bar_enabled()
    backend = TransformersBackend(
        "tiny", str(tiny_model_dir), None, False, "t", generation=settings(tiny_model_dir, 2), max_new_tokens=2
    )
    assert backend.model is not None
    assert "Loading weights" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled()
