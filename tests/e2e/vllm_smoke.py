"""End-to-end smoke test of VllmEngine on the real small model (CPU is fine).

    .venv/bin/python tests/e2e/vllm_smoke.py [--model PATH] [--tokens 32] [--streams 8]

Starts the engine, streams a greedy chat completion, aborts requests mid-way
(consumer walks away, and `engine.abort`), runs N concurrent streams, checks
logprobs, stop strings, JSON-schema output and the prompt-length error, prints
timings, stops the engine and checks that no child process is left behind.
Exits non-zero on the first failed check.

Not a pytest module on purpose: vLLM spawns processes, so this needs a main guard,
and it takes about a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "data" / "models" / "smollm2-135m-instruct"


def check(cond: bool, what: str) -> None:
    if not cond:
        print(f"FAIL: {what}", flush=True)
        raise SystemExit(1)
    print(f"ok   {what}", flush=True)


def wait_for_model(path: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not ((path / "config.json").is_file() and (path / "model.safetensors").is_file()):
        if time.monotonic() > deadline:
            raise SystemExit(f"model not found at {path} after {timeout:.0f}s")
        print(f"waiting for {path} ...", flush=True)
        time.sleep(5)


async def collect(engine, request_id, ids, options, *, stop_after: int | None = None):
    """Consume one stream; returns (chunks, seconds to first chunk, total seconds)."""
    chunks = []
    t0 = time.perf_counter()
    ttft = None
    gen = engine.generate(request_id, ids, options)
    try:
        async for chunk in gen:
            if ttft is None:
                ttft = time.perf_counter() - t0
            chunks.append(chunk)
            if stop_after is not None and len(chunks) >= stop_after:
                break
    finally:
        await gen.aclose()
    return chunks, ttft, time.perf_counter() - t0


async def main(args: argparse.Namespace) -> None:
    import psutil
    from transformers import AutoTokenizer

    from services.common.errors import InvalidRequest
    from services.generation.engines.base import Engine, SamplingOptions
    from services.generation.engines.vllm_engine import VllmEngine

    model = Path(args.model)
    wait_for_model(model)
    tok = AutoTokenizer.from_pretrained(str(model))

    def chat_ids(text: str) -> list[int]:
        messages = [{"role": "user", "content": text}]
        rendered = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(tok(str(rendered), add_special_tokens=False)["input_ids"])

    ids = chat_ids("What is the capital of France? Answer in one sentence.")
    print(f"prompt: {len(ids)} tokens", flush=True)

    engine = VllmEngine(
        str(model),
        model_id="smollm2",
        max_model_len=args.max_model_len,
        kv_cache_bytes=args.kv_cache_gib * (1 << 30),
        dtype=args.dtype,
        quantization=args.quantization,
    )
    check(isinstance(engine, Engine), "VllmEngine satisfies the Engine protocol")
    t0 = time.perf_counter()
    await engine.start()
    startup = time.perf_counter() - t0
    print(f"engine startup: {startup:.1f}s  info={engine.info}", flush=True)
    check(engine.info.max_model_len == args.max_model_len, f"max_model_len is {args.max_model_len}")
    children = psutil.Process().children(recursive=True)
    print(f"child processes while running: {[(c.pid, c.name()) for c in children]}", flush=True)
    try:
        n = args.tokens
        # 1. Greedy stream (warms up too).
        greedy = SamplingOptions(max_tokens=n, temperature=0.0)
        chunks, ttft, secs = await collect(engine, "greedy-1", ids, greedy)
        text = "".join(c.text for c in chunks)
        print(f"greedy ({len(chunks)} chunks, ttft {ttft:.3f}s, {secs:.2f}s): {text!r}", flush=True)
        last = chunks[-1]
        check(last.finish_reason in ("stop", "length"), f"greedy finished ({last.finish_reason})")
        check(last.prompt_tokens == len(ids), "prompt_tokens counted")
        check(last.completion_tokens == sum(len(c.token_ids) for c in chunks), "completion_tokens cumulative")
        check(tok.decode([t for c in chunks for t in c.token_ids], skip_special_tokens=True) == text, "text = ids")
        chunks2, _, _ = await collect(engine, "greedy-2", ids, greedy)
        check("".join(c.text for c in chunks2) == text, "greedy is deterministic")

        # 2. One stream, exactly n tokens: decode speed.
        fixed = SamplingOptions(max_tokens=n, temperature=0.0, ignore_eos=True)
        chunks, ttft, secs = await collect(engine, "single", ids, fixed)
        got = chunks[-1].completion_tokens
        check(got == n and chunks[-1].finish_reason == "length", f"ignore_eos gives {n} tokens")
        tps1 = got / secs
        print(f"1 stream: {got} tokens in {secs:.2f}s = {tps1:.1f} tok/s (ttft {ttft:.3f}s)", flush=True)

        # 3. Consumer walks away after 3 chunks: the request must be aborted in vLLM.
        long = SamplingOptions(max_tokens=200, temperature=0.0, ignore_eos=True)
        chunks, _, _ = await collect(engine, "walk-away", ids, long, stop_after=3)
        await asyncio.sleep(0.3)
        st = engine.stats()
        check(st.running == 0 and st.waiting == 0, f"walked-away request is gone from vLLM ({st})")

        # 3b. Cancelling the consuming task aborts too.
        task = asyncio.create_task(collect(engine, "cancelled", ids, long))
        await asyncio.sleep(0.5)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)
        st = engine.stats()
        check(st.running == 0 and st.waiting == 0, f"cancelled request is gone from vLLM ({st})")

        # 3c. engine.abort() from outside ends the stream with an "abort" chunk.
        async def abort_soon():
            await asyncio.sleep(0.5)
            await engine.abort("aborted")

        aborter = asyncio.create_task(abort_soon())
        chunks, _, _ = await collect(engine, "aborted", ids, long)
        await aborter
        check(
            chunks[-1].finish_reason == "abort" and chunks[-1].completion_tokens < 200,
            f"engine.abort ends the stream with 'abort' after {chunks[-1].completion_tokens} tokens",
        )

        # 4. N concurrent streams.
        k = args.streams
        peak = {"running": 0, "waiting": 0}

        async def watch():
            while True:
                st = engine.stats()
                peak["running"] = max(peak["running"], st.running)
                peak["waiting"] = max(peak["waiting"], st.waiting)
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        t0 = time.perf_counter()
        results = await asyncio.gather(*(collect(engine, f"conc-{i}", ids, fixed) for i in range(k)))
        secs = time.perf_counter() - t0
        watcher.cancel()
        total = sum(r[0][-1].completion_tokens for r in results)
        check(total == k * n, f"{k} concurrent streams gave {k} x {n} tokens")
        texts = {"".join(c.text for c in r[0]) for r in results}
        check(len(texts) == 1, "concurrent greedy outputs are identical")
        tpsk = total / secs
        ttfts = sorted(r[1] for r in results)
        print(
            f"{k} streams: {total} tokens in {secs:.2f}s = {tpsk:.1f} tok/s aggregate "
            f"({tpsk / k:.1f}/stream, ttft median {ttfts[k // 2]:.3f}s); peak stats {peak}",
            flush=True,
        )
        check(peak["running"] >= 2, "stats() saw several running requests")
        st = engine.stats()
        print(f"stats after: {st}", flush=True)
        check(st.running == 0 and st.waiting == 0, "stats() back to idle")

        # 5. Logprobs.
        lp = SamplingOptions(max_tokens=5, temperature=0.0, logprobs=3)
        chunks, _, _ = await collect(engine, "logprobs", ids, lp)
        lps = [x for c in chunks for x in (c.logprobs or [])]
        check(len(lps) == 5, "one TokenLogprob per token")
        check(all(len(x.top) == 3 for x in lps), "3 alternatives per token")
        check(all(x.top == sorted(x.top, key=lambda t: -t[2]) for x in lps), "alternatives sorted best first")
        check(all(x.top[0][0] == x.token_id for x in lps), "greedy token is the top alternative")
        check(all(isinstance(x.token, str) and x.token for x in lps), "token strings decoded")
        print(f"logprobs[0]: {lps[0]}", flush=True)
        lp0 = SamplingOptions(max_tokens=3, temperature=0.0, logprobs=0)
        chunks, _, _ = await collect(engine, "logprobs0", ids, lp0)
        lps = [x for c in chunks for x in (c.logprobs or [])]
        check(len(lps) == 3 and all(x.top == [] for x in lps), "logprobs=0 gives the sampled token only")

        # 6. Stop string (cut from the text, reported as stop_reason).
        words = text.split()
        if len(words) >= 3:
            stop_word = words[2]
            chunks, _, _ = await collect(
                engine, "stop", ids, SamplingOptions(max_tokens=n, temperature=0.0, stop=(stop_word,))
            )
            stext = "".join(c.text for c in chunks)
            check(
                chunks[-1].finish_reason == "stop" and chunks[-1].stop_reason == stop_word and stop_word not in stext,
                f"stop string {stop_word!r} ends generation and is cut: {stext!r}",
            )

        # 7. JSON schema (vLLM structured outputs).
        schema = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
            "additionalProperties": False,
        }
        jids = chat_ids("Give the capital of France as JSON with keys city and country.")
        t0 = time.perf_counter()
        chunks, _, _ = await collect(
            engine, "json", jids, SamplingOptions(max_tokens=64, temperature=0.0, json_schema=schema)
        )
        jtext = "".join(c.text for c in chunks)
        print(f"json ({time.perf_counter() - t0:.2f}s): {jtext!r}", flush=True)
        parsed = json.loads(jtext)
        check(set(parsed) == {"city", "country"}, "JSON schema output parses and has the keys")

        # 8. Sampling with a seed is reproducible.
        seeded = SamplingOptions(max_tokens=16, temperature=0.9, top_p=0.95, top_k=40, seed=1234)
        a, _, _ = await collect(engine, "seed-a", ids, seeded)
        b, _, _ = await collect(engine, "seed-b", ids, seeded)
        check("".join(c.text for c in a) == "".join(c.text for c in b), "seeded sampling is reproducible")

        # 9. A prompt that does not fit.
        try:
            await collect(engine, "too-long", [1] * args.max_model_len, greedy)
        except InvalidRequest as exc:
            check(exc.code == "context_length_exceeded", f"too-long prompt -> InvalidRequest: {exc.message}")
        else:
            check(False, "too-long prompt raised InvalidRequest")
        # An out-of-vocabulary token id is vLLM's own validation error.
        try:
            await collect(engine, "bad-id", [10**7], greedy)
        except InvalidRequest as exc:
            check(True, f"bad token id -> InvalidRequest: {exc.message}")
        else:
            check(False, "bad token id raised InvalidRequest")
        # Still healthy after the errors.
        chunks, _, _ = await collect(engine, "after-errors", ids, greedy)
        check("".join(c.text for c in chunks) == text, "engine still serves after request errors")
    finally:
        t0 = time.perf_counter()
        await engine.stop()
        print(f"engine stop: {time.perf_counter() - t0:.1f}s", flush=True)

    await asyncio.sleep(0.5)
    left = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            continue
        if "multiprocessing.resource_tracker" in cmdline:
            # Python's own helper for the spawn start method; it lives as long as
            # this interpreter and exits with it.
            print(f"(python's multiprocessing resource tracker {child.pid} stays until exit)", flush=True)
            continue
        left.append((child.pid, cmdline[:120]))
    check(not left, f"no engine process left ({left})")
    print(
        f"SUMMARY startup={startup:.1f}s tok/s@1={tps1:.1f} tok/s@{args.streams}={tpsk:.1f} "
        f"rss={psutil.Process().memory_info().rss / 2**20:.0f}MiB",
        flush=True,
    )


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--quantization", default=None)
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main(parser.parse_args()))
