"""The transformers engine on a tiny random Llama: correctness of continuous batching,
sampling, stop handling, cancellation and structured output."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest

from services.common.errors import EngineError, InvalidRequest, Overloaded
from services.generation.engines.base import Engine, GenerationChunk, SamplingOptions
from services.generation.engines.detokenizer import IncrementalDetokenizer as _IncrementalDetokenizer
from services.generation.engines.detokenizer import find_stop as _find_stop
from services.generation.engines.detokenizer import held_back as _held_back
from services.generation.engines.sampling import top_k_top_p as _top_k_top_p
from services.generation.engines.transformers_engine import TransformersEngine
from tests.tiny_models import DEFAULT_TOKENIZER_SRC, build_tiny_llama, smollm2_path

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def engine(tiny_model_path: Path):
    # Requests capture their own event loop, so one started engine serves every test's loop.
    eng = TransformersEngine(str(tiny_model_path), model_id="tiny", max_batch_size=8, max_waiting=64)
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.stop())


@pytest.fixture(scope="session")
def hf_model(tiny_model_path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_path, dtype=torch.float32).eval()


def prompt_of(length: int, offset: int = 0) -> list[int]:
    return [1] + [(300 + offset * 37 + 11 * i) % 40000 + 100 for i in range(length - 1)]


async def run(eng: TransformersEngine, prompt: list[int], opts: SamplingOptions, rid: str = "r") -> dict:
    chunks: list[GenerationChunk] = []
    async for chunk in eng.generate(rid, prompt, opts):
        chunks.append(chunk)
    return {
        "chunks": chunks,
        "tokens": [t for c in chunks for t in c.token_ids],
        "text": "".join(c.text for c in chunks),
        "last": chunks[-1],
    }


async def wait_for(predicate, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


GREEDY = SamplingOptions(max_tokens=16, temperature=0.0, ignore_eos=True)


def test_implements_protocol(engine: TransformersEngine) -> None:
    assert isinstance(engine, Engine)
    assert engine.info.engine == "transformers"
    assert engine.info.id == "tiny"
    assert engine.info.max_model_len == 2048
    assert engine.supports_json_schema


@pytest.mark.asyncio
async def test_greedy_matches_hf_generate(engine: TransformersEngine, hf_model) -> None:
    eos = hf_model.generation_config.eos_token_id
    for length in (3, 17):
        prompt = prompt_of(length, offset=length)
        out = await run(engine, prompt, SamplingOptions(max_tokens=12, temperature=0.0))
        ref = hf_model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, length:].tolist()
        if eos in ref:
            ref = ref[: ref.index(eos) + 1]
        assert out["tokens"] == ref
        assert out["last"].prompt_tokens == length
        assert out["last"].completion_tokens == len(ref)


@pytest.mark.asyncio
async def test_batched_mid_flight_equals_alone(engine: TransformersEngine) -> None:
    prompts = [prompt_of(n, offset=i) for i, n in enumerate((5, 31, 2, 12, 64, 9))]
    alone = [(await run(engine, p, GREEDY))["tokens"] for p in prompts]

    async def delayed(i: int) -> list[int]:
        await asyncio.sleep(0.004 * i)  # join a batch that is already decoding
        return (await run(engine, prompts[i], GREEDY, rid=f"b{i}"))["tokens"]

    together = await asyncio.gather(*(delayed(i) for i in range(len(prompts))))
    assert together == alone


@pytest.mark.asyncio
async def test_concurrent_requests_share_decode_steps(engine: TransformersEngine) -> None:
    before = engine.stats().batch_sizes
    opts = SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True)
    results = await asyncio.gather(*(run(engine, prompt_of(4 + i, i), opts, f"c{i}") for i in range(8)))
    assert all(r["last"].completion_tokens == 24 for r in results)
    after = engine.stats().batch_sizes
    assert any(size >= 4 and after[size] > before.get(size, 0) for size in after), after
    await wait_for(lambda: engine.stats().running == 0)


@pytest.mark.asyncio
async def test_max_tokens_gives_length(engine: TransformersEngine) -> None:
    out = await run(engine, prompt_of(6), SamplingOptions(max_tokens=7, temperature=0.0, ignore_eos=True))
    assert out["last"].finish_reason == "length"
    assert out["last"].completion_tokens == 7
    assert len(out["tokens"]) == 7
    assert [c.completion_tokens for c in out["chunks"]] == list(range(1, 8))
    assert all(c.finish_reason is None for c in out["chunks"][:-1])


@pytest.mark.asyncio
async def test_stop_string_is_cut(engine: TransformersEngine) -> None:
    prompt = prompt_of(8, 3)
    full = await run(engine, prompt, SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True))
    text = full["text"]
    assert len(text) > 20
    stop = text[12:16]
    expected = text[: text.find(stop)]
    out = await run(
        engine, prompt, SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True, stop=("@@never@@", stop))
    )
    assert out["text"] == expected
    assert out["last"].finish_reason == "stop"
    assert out["last"].stop_reason == stop
    assert out["tokens"] == full["tokens"][: len(out["tokens"])]
    assert len(out["tokens"]) < 24


@pytest.mark.asyncio
async def test_stop_token_id(engine: TransformersEngine) -> None:
    prompt = prompt_of(5, 9)
    full = await run(engine, prompt, SamplingOptions(max_tokens=10, temperature=0.0, ignore_eos=True))
    target = full["tokens"][4]
    out = await run(
        engine, prompt, SamplingOptions(max_tokens=10, temperature=0.0, ignore_eos=True, stop_token_ids=(target,))
    )
    cut = full["tokens"].index(target)
    assert out["tokens"] == full["tokens"][: cut + 1]
    assert out["last"].finish_reason == "stop"
    assert out["last"].stop_reason == target


@pytest.mark.asyncio
async def test_eos_stops_unless_ignored(engine: TransformersEngine) -> None:
    eos = engine._tokenizer.eos_token_id
    prompt = prompt_of(6, 4)
    full = await run(engine, prompt, SamplingOptions(max_tokens=6, temperature=0.0, ignore_eos=True))
    # Make the third generated token count as EOS, as far as this request is concerned.
    engine._eos_ids.add(full["tokens"][2])
    try:
        out = await run(engine, prompt, SamplingOptions(max_tokens=6, temperature=0.0))
        ignored = await run(engine, prompt, SamplingOptions(max_tokens=6, temperature=0.0, ignore_eos=True))
    finally:
        engine._eos_ids.discard(full["tokens"][2])
        engine._eos_ids.add(eos)
    assert out["tokens"] == full["tokens"][: full["tokens"].index(full["tokens"][2]) + 1]
    assert out["last"].finish_reason == "stop"
    assert out["last"].stop_reason is None
    assert ignored["tokens"] == full["tokens"]


@pytest.mark.asyncio
async def test_seed_is_reproducible_in_any_company(engine: TransformersEngine) -> None:
    opts = SamplingOptions(max_tokens=16, temperature=1.0, top_p=0.95, top_k=200, seed=1234, ignore_eos=True)
    prompt = prompt_of(7, 5)
    alone = (await run(engine, prompt, opts))["tokens"]
    noise = SamplingOptions(max_tokens=20, temperature=1.3, ignore_eos=True)
    results = await asyncio.gather(
        run(engine, prompt_of(20, 1), noise, "n1"),
        run(engine, prompt, opts, "seeded"),
        run(engine, prompt_of(3, 2), noise, "n2"),
    )
    assert results[1]["tokens"] == alone
    other = await run(engine, prompt, SamplingOptions(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True))
    assert other["tokens"] != alone


@pytest.mark.asyncio
async def test_top_k_one_is_greedy(engine: TransformersEngine) -> None:
    prompt = prompt_of(9, 6)
    greedy = await run(engine, prompt, GREEDY)
    sampled = await run(engine, prompt, SamplingOptions(max_tokens=16, temperature=1.5, top_k=1, ignore_eos=True))
    assert sampled["tokens"] == greedy["tokens"]


@pytest.mark.asyncio
async def test_penalties_change_output(engine: TransformersEngine) -> None:
    prompt = prompt_of(4, 7)
    base = await run(engine, prompt, SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True))
    assert len(set(base["tokens"])) < 24  # the tiny model repeats itself
    penalised = await run(
        engine,
        prompt,
        SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True, presence_penalty=2.0, frequency_penalty=2.0),
    )
    assert len(set(penalised["tokens"])) > len(set(base["tokens"]))
    rep = await run(
        engine, prompt, SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True, repetition_penalty=100.0)
    )
    assert len(set(rep["tokens"])) == 24  # nothing seen before can win any more


@pytest.mark.asyncio
async def test_logprobs(engine: TransformersEngine) -> None:
    out = await run(engine, prompt_of(5, 8), SamplingOptions(max_tokens=5, temperature=0.0, logprobs=3))
    for chunk in out["chunks"]:
        assert chunk.logprobs is not None and len(chunk.logprobs) == len(chunk.token_ids) == 1
        lp = chunk.logprobs[0]
        assert lp.token_id == chunk.token_ids[0]
        assert isinstance(lp.token, str)
        assert len(lp.top) == 3
        assert lp.top[0][0] == lp.token_id
        assert lp.top[0][2] == pytest.approx(lp.logprob, abs=1e-6)
        assert lp.logprob <= 0
        assert [t[2] for t in lp.top] == sorted((t[2] for t in lp.top), reverse=True)
    only = await run(engine, prompt_of(5, 8), SamplingOptions(max_tokens=2, temperature=0.7, logprobs=0, seed=1))
    assert all(c.logprobs is not None and c.logprobs[0].top == [] for c in only["chunks"])
    none = await run(engine, prompt_of(5, 8), SamplingOptions(max_tokens=2, temperature=0.0))
    assert all(c.logprobs is None for c in none["chunks"])


@pytest.mark.asyncio
async def test_cancellation_aborts_in_worker(engine: TransformersEngine) -> None:
    long = SamplingOptions(max_tokens=400, temperature=0.0, ignore_eos=True)
    aborted_before = engine.num_aborted
    survivor = asyncio.create_task(run(engine, prompt_of(5, 1), SamplingOptions(max_tokens=60, ignore_eos=True)))

    async def break_early() -> int:
        n = 0
        async with contextlib.aclosing(engine.generate("breaker", prompt_of(6, 2), long)) as stream:
            async for _ in stream:
                n += 1
                if n == 3:
                    break
        return n

    started = asyncio.Event()

    async def consume_forever() -> None:
        async for _ in engine.generate("cancelled", prompt_of(7, 3), long):
            started.set()

    victim = asyncio.create_task(consume_forever())
    assert await break_early() == 3
    await started.wait()
    victim.cancel()
    with pytest.raises(asyncio.CancelledError):
        await victim

    out = await survivor
    assert out["last"].finish_reason == "length" and out["last"].completion_tokens == 60
    await wait_for(lambda: engine.stats().running == 0 and engine.num_aborted >= aborted_before + 2)
    assert engine.num_aborted == aborted_before + 2
    assert engine.stats().waiting == 0
    assert not engine._active


@pytest.mark.asyncio
async def test_explicit_abort_ends_stream(engine: TransformersEngine) -> None:
    long = SamplingOptions(max_tokens=500, temperature=0.0, ignore_eos=True)
    chunks: list[GenerationChunk] = []

    async def consume() -> None:
        async for chunk in engine.generate("to-abort", prompt_of(5), long):
            chunks.append(chunk)
            if len(chunks) == 2:
                await engine.abort("to-abort")

    await asyncio.wait_for(consume(), timeout=10)
    assert chunks[-1].finish_reason == "abort"
    assert len(chunks) < 100
    await wait_for(lambda: engine.stats().running == 0)


@pytest.mark.asyncio
async def test_queue_overflow_raises_overloaded(tiny_model_path: Path) -> None:
    eng = TransformersEngine(str(tiny_model_path), model_id="tiny", max_batch_size=1, max_waiting=1)
    await eng.start()
    try:
        long = SamplingOptions(max_tokens=1500, temperature=0.0, ignore_eos=True)
        first = asyncio.create_task(run(eng, prompt_of(4), long, "first"))
        await wait_for(lambda: eng.stats().running == 1)
        second = asyncio.create_task(run(eng, prompt_of(4), long, "second"))
        await wait_for(lambda: eng.stats().waiting == 1)
        stream = eng.generate("third", prompt_of(4), long)
        with pytest.raises(Overloaded):
            await stream.__anext__()
        for task in (first, second):
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        await wait_for(lambda: eng.stats().running == 0 and eng.stats().waiting == 0)
        assert eng.num_aborted == 2
    finally:
        await eng.stop()


@pytest.mark.asyncio
async def test_zero_waiting_still_fills_the_batch(tiny_model_path: Path) -> None:
    eng = TransformersEngine(str(tiny_model_path), model_id="tiny", max_batch_size=2, max_waiting=0)
    await eng.start()
    try:
        out = await run(eng, prompt_of(4), SamplingOptions(max_tokens=3, ignore_eos=True))
        assert out["last"].completion_tokens == 3
        long = SamplingOptions(max_tokens=1500, temperature=0.0, ignore_eos=True)
        tasks = [asyncio.create_task(run(eng, prompt_of(4), long, f"r{i}")) for i in range(2)]
        await wait_for(lambda: eng.stats().running == 2)
        with pytest.raises(Overloaded):
            await eng.generate("extra", prompt_of(4), long).__anext__()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await wait_for(lambda: eng.stats().running == 0)
    finally:
        await eng.stop()


@pytest.mark.asyncio
async def test_invalid_requests(engine: TransformersEngine) -> None:
    with pytest.raises(InvalidRequest):
        await run(engine, prompt_of(2040), SamplingOptions(max_tokens=16))
    with pytest.raises(InvalidRequest):
        await run(engine, prompt_of(2048), SamplingOptions(max_tokens=1))
    with pytest.raises(InvalidRequest):
        await run(engine, [], SamplingOptions(max_tokens=1))


@pytest.mark.asyncio
async def test_worker_error_fails_request_and_keeps_going(engine: TransformersEngine) -> None:
    real = engine._model
    calls = {"n": 0}

    def broken(*args, **kwargs):
        calls["n"] += 1
        raise RuntimeError("boom")

    engine._model = broken
    try:
        with pytest.raises(EngineError, match="boom"):
            await run(engine, prompt_of(4), SamplingOptions(max_tokens=4))
    finally:
        engine._model = real
    assert calls["n"] >= 1
    out = await run(engine, prompt_of(4), SamplingOptions(max_tokens=4, ignore_eos=True))
    assert out["last"].completion_tokens == 4


@pytest.mark.asyncio
async def test_json_schema_output(engine: TransformersEngine) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}, "color": {"enum": ["red", "green"]}},
        "required": ["ok", "color"],
        "additionalProperties": False,
    }
    for opts in (
        SamplingOptions(max_tokens=40, temperature=0.0, json_schema=schema),
        SamplingOptions(max_tokens=40, temperature=1.0, seed=7, json_schema=schema),
    ):
        out = await run(engine, prompt_of(6), opts)
        assert out["last"].finish_reason == "stop", out["text"]
        value = json.loads(out["text"])
        assert set(value) == {"ok", "color"}
        assert isinstance(value["ok"], bool) and value["color"] in ("red", "green")
    obj = await run(
        engine, prompt_of(6), SamplingOptions(max_tokens=40, temperature=0.0, json_schema={"type": "object"})
    )
    assert isinstance(json.loads(obj["text"]), dict)


def test_incremental_detokenizer_multibyte(engine: TransformersEngine) -> None:
    tok = engine._tokenizer
    text = "héllo wörld 世界 🎉🎉 naïve — “quotes” ½"
    ids = tok.encode(text, add_special_tokens=False)
    detok = _IncrementalDetokenizer(tok, [1, 2, 3])
    parts = [detok.push(i) for i in ids] + [detok.flush()]
    assert "".join(parts) == text
    assert not any("\ufffd" in p for p in parts)


def test_stop_string_helpers() -> None:
    assert _find_stop("hello world", ("wor", "lo"), 0) == (3, "lo")
    assert _find_stop("hello world", ("xyz",), 0) is None
    assert _held_back("hello wo", ("world",), 0) == 2
    assert _held_back("hello wo", ("world",), 7) == 0  # only the unsent tail can be held
    assert _held_back("hello w", ("world", "w"), 6) == 1
    assert _held_back("hello", ("xyz",), 0) == 0


def _reference_top_k_top_p(logits, top_k: int, top_p: float):
    """Plain full-sort version: top-k, then top-p on the renormalised top-k distribution."""
    values, order = logits.sort(descending=True)
    if top_k > 0:
        values[top_k:] = float("-inf")
    probs = values.softmax(-1)
    remove = (probs.cumsum(-1) - probs) > top_p if top_p < 1.0 else torch.zeros_like(probs, dtype=torch.bool)
    remove[0] = False
    values[remove] = float("-inf")
    return torch.full_like(logits, float("-inf")).scatter(-1, order, values)


def test_top_k_top_p_matches_full_sort() -> None:
    gen = torch.Generator().manual_seed(0)
    sharp = torch.randn(3, 5000, generator=gen) * 4
    flat = torch.randn(2, 5000, generator=gen) * 0.05  # nucleus far wider than the candidate window
    logits = torch.cat([sharp, flat])
    params = [(0, 0.9), (40, 1.0), (40, 0.5), (0, 0.99), (300, 0.8)]
    got = _top_k_top_p(logits.clone(), [k for k, _ in params], [p for _, p in params])
    for row, (k, p) in enumerate(params):
        want = _reference_top_k_top_p(logits[row].clone(), k, p)
        assert torch.equal(torch.isinf(got[row]), torch.isinf(want)), (k, p)
        kept = ~torch.isinf(want)
        assert torch.equal(got[row][kept], logits[row][kept])
    assert int((~torch.isinf(got[3])).sum()) > 1000  # the flat row needed the full sort


@pytest.fixture
def smollm2() -> str:
    if not Path(DEFAULT_TOKENIZER_SRC, "model.safetensors").is_file():
        pytest.skip("SmolLM2 is not converted in the data folder yet")
    return smollm2_path()


@pytest.mark.slow
@pytest.mark.asyncio
async def test_smollm2_json_and_batching(smollm2: str) -> None:
    eng = TransformersEngine(smollm2, model_id="smollm2", max_batch_size=4)
    await eng.start()
    try:
        tok = eng._tokenizer
        messages = [{"role": "user", "content": "Describe a cat as JSON with fields name and age."}]
        prompt = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        schema = {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        }
        out = await run(eng, prompt, SamplingOptions(max_tokens=64, temperature=0.0, json_schema=schema))
        value = json.loads(out["text"])
        assert isinstance(value["name"], str) and isinstance(value["age"], int)
        alone = (await run(eng, prompt, SamplingOptions(max_tokens=24, temperature=0.0, ignore_eos=True)))["tokens"]
        together = await asyncio.gather(
            *(run(eng, prompt[: len(prompt) - i] if i else prompt, GREEDY, f"s{i}") for i in range(4))
        )
        assert together[0]["tokens"][:16] == alone[:16]
    finally:
        await eng.stop()


@pytest.mark.parametrize("kind", ["sliding", "hybrid"])
def test_windowed_attention_is_refused_at_load(tmp_path: Path, kind: str) -> None:
    """The batch slices full KV caches: a sliding-window or hybrid model would decode wrong text silently."""
    from services.generation.weights.errors import WeightsError
    from tests.tiny_models import build_tiny_windowed

    path = build_tiny_windowed(tmp_path / kind, kind, window=8)
    eng = TransformersEngine(str(path), model_id=kind, max_batch_size=2)
    with pytest.raises(WeightsError, match=r"sliding_attention \(8 tokens\).*full attention only") as info:
        asyncio.run(eng.start())
    assert info.value.code == "unsupported_attention" and eng._model is None
    # a window as long as the served context never slides: that model is served, and decodes
    short = TransformersEngine(str(path), model_id=kind, max_batch_size=2, max_model_len=8)
    asyncio.run(short.start())
    try:
        out = asyncio.run(run(short, [1, 2, 3], SamplingOptions(max_tokens=3, temperature=0, ignore_eos=True)))
        assert len(out["tokens"]) == 3
    finally:
        asyncio.run(short.stop())


def test_full_attention_configs_pass_the_check(tiny_model_path: Path) -> None:
    from transformers import AutoConfig, Qwen2Config

    from services.generation.engines.transformers_engine import check_full_attention

    check_full_attention(AutoConfig.from_pretrained(tiny_model_path), 2048, "llama")
    # Qwen2 declares a window that is off unless use_sliding_window is set
    check_full_attention(Qwen2Config(sliding_window=4096, use_sliding_window=False), 8192, "qwen2")
