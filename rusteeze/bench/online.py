"""Online benchmark: drive any OpenAI-compatible server's streaming `/v1/completions` with httpx.

Requests arrive as a Poisson process at ``request_rate`` per second (inf: all at once) and at
most ``concurrency`` are in flight; each is timed from the moment it is sent. Prompts are random
words (no tokenizer is needed on this side; one common word is about one token); token counts
come from the server's ``usage`` when it reports one (``stream_options.include_usage``), else
output tokens are counted as streamed chunks. ``ignore_eos`` is sent so every request generates
``output_len`` tokens on servers that honour it (vLLM, rusteeze); others ignore the field.

As offline, a warm-up request comes first and a prefill run (one output token per prompt)
gives ``prefill_throughput``. Peak memory is the server's business and is not reported.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from rusteeze.bench.metrics import BenchResult, RequestRecord
from rusteeze.bench.offline import Progress, check_sizes
from rusteeze.errors import ConfigError, RusteezeError

_WORD_LIST = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city community name "
    "president team minute idea kid body information back parent face others level office door health person "
    "art war history party result change morning reason research girl guy moment air teacher force education"
)
WORDS = tuple(_WORD_LIST.split())


def random_text_prompts(num_prompts: int, length: int, seed: int) -> list[str]:
    """``num_prompts`` strings of ``length`` random common words."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=length).tolist()) for _ in range(num_prompts)]


def arrival_gaps(num_requests: int, rate: float, seed: int) -> list[float]:
    """Seconds to wait before each request: 0 first, then exponential gaps of mean 1/rate (all 0 for inf)."""
    if math.isinf(rate):
        return [0.0] * num_requests
    rng = np.random.default_rng(seed)
    return [0.0, *rng.exponential(1.0 / rate, size=max(num_requests - 1, 0)).tolist()][:num_requests]


def api_base(url: str) -> str:
    """The server root: `http://host:8000/v1/` → `http://host:8000`."""
    base = url.strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"--url {url!r} must start with http:// or https://")
    return base.removesuffix("/v1")


def run_online(
    url: str,
    model: str | None,
    num_prompts: int,
    input_len: int,
    output_len: int,
    concurrency: int | None = None,
    request_rate: float = math.inf,
    seed: int = 0,
    api_key: str | None = None,
    on_progress: Progress | None = None,
) -> BenchResult:
    """Benchmark the server at ``url``.

    Args:
        url: the server (`http://127.0.0.1:8000`, with or without `/v1`).
        model: the model id to send; None asks `/v1/models` and takes the first.
        num_prompts, input_len, output_len, seed: as offline (lengths in words / tokens).
        concurrency: most requests in flight (None: no limit).
        request_rate: mean arrivals per second (Poisson); inf sends them all at once.
        api_key: sent as `Authorization: Bearer KEY`.
        on_progress: called after each finished request.

    Raises:
        ConfigError: a bad URL, count, rate or concurrency.
        RusteezeError: the server cannot be reached, or every request failed (the first error is named).
    """
    check_sizes(num_prompts, input_len, output_len)
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency {concurrency} must be at least 1")
    if not request_rate > 0:
        raise ConfigError(f"--request-rate {request_rate} must be positive (inf: all at once)")
    base = api_base(url)
    return asyncio.run(
        _bench(base, model, num_prompts, input_len, output_len, concurrency, request_rate, seed, api_key, on_progress)
    )


async def _bench(
    base: str,
    model: str | None,
    num_prompts: int,
    input_len: int,
    output_len: int,
    concurrency: int | None,
    rate: float,
    seed: int,
    api_key: str | None,
    on_progress: Progress | None,
) -> BenchResult:
    report = on_progress or (lambda phase, done, total: None)
    slots = concurrency or num_prompts
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=slots, max_keepalive_connections=slots)
    timeout = httpx.Timeout(None, connect=30.0)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=timeout) as client:
        model = model or await _first_model(client, base)
        drive = _Driver(client, model, slots)
        await drive.run(random_text_prompts(1, min(16, input_len), seed + 2), min(4, output_len), math.inf, seed)
        prefill, prefill_seconds = await drive.run(
            random_text_prompts(num_prompts, input_len, seed + 1),
            1,
            math.inf,
            seed,
            lambda d: report("prefill", d, num_prompts),
        )
        records, duration = await drive.run(
            random_text_prompts(num_prompts, input_len, seed),
            output_len,
            rate,
            seed,
            lambda d: report("generate", d, num_prompts),
        )
    failed = [r for r in records if not r.ok]
    if len(failed) == len(records):
        raise RusteezeError(
            f"all {len(records)} requests to {base}/v1/completions failed; the first: {failed[0].error}"
        )
    settings = {
        "url": base,
        "num_prompts": num_prompts,
        "input_len": input_len,
        "output_len": output_len,
        "seed": seed,
        "concurrency": concurrency,
        "request_rate": None if math.isinf(rate) else rate,
    }
    return BenchResult(
        mode="online",
        model=model,
        settings=settings,
        records=records,
        duration=duration,
        prefill_tokens=sum(r.prompt_tokens for r in prefill if r.ok),
        prefill_seconds=prefill_seconds,
    )


async def _first_model(client: httpx.AsyncClient, base: str) -> str:
    """The first model id `/v1/models` lists."""
    try:
        response = await client.get("/v1/models")
        response.raise_for_status()
        return response.json()["data"][0]["id"]
    except httpx.HTTPStatusError as e:
        raise RusteezeError(
            f"{base}/v1/models answered {e.response.status_code}; name the model: bench MODEL --url"
        ) from None
    except httpx.HTTPError as e:
        raise RusteezeError(f"cannot reach {base}: {e or type(e).__name__}") from None
    except (ValueError, KeyError, IndexError, TypeError):
        raise RusteezeError(f"{base}/v1/models lists no model; name one: bench MODEL --url") from None


class _Driver:
    """Sends batches of streaming completion requests and times them."""

    def __init__(self, client: httpx.AsyncClient, model: str, slots: int) -> None:
        self.client, self.model, self.slots = client, model, slots

    async def run(
        self,
        prompts: list[str],
        max_tokens: int,
        rate: float,
        seed: int,
        on_done: Callable[[int], None] = lambda d: None,
    ) -> tuple[list[RequestRecord], float]:
        """Send every prompt (Poisson arrivals at ``rate``, ``slots`` in flight); return the records and wall time."""
        gate = asyncio.Semaphore(self.slots)
        records = [RequestRecord(prompt_tokens=len(p.split()), start=0.0) for p in prompts]
        done = 0

        async def one(prompt: str, record: RequestRecord) -> None:
            nonlocal done
            async with gate:
                await self._send(prompt, max_tokens, record)
            done += 1
            on_done(done)

        start = time.perf_counter()
        tasks = []
        for gap, prompt, record in zip(arrival_gaps(len(prompts), rate, seed), prompts, records, strict=True):
            if gap:
                await asyncio.sleep(gap)
            tasks.append(asyncio.create_task(one(prompt, record)))
        await asyncio.gather(*tasks)
        return records, time.perf_counter() - start

    async def _send(self, prompt: str, max_tokens: int, record: RequestRecord) -> None:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 1.0,
            "top_p": 1.0,
            "stream": True,
            "stream_options": {"include_usage": True},
            "ignore_eos": True,
        }
        chunks, usage = 0, None
        record.start = time.perf_counter()
        try:
            async with self.client.stream("POST", "/v1/completions", json=body) as response:
                if response.status_code != 200:
                    record.error = f"HTTP {response.status_code}: {_error_message(await response.aread())}"
                    return
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        record.error = f"stream error: {_error_message(data.encode())}"
                        return
                    if any(choice.get("text") for choice in event.get("choices") or []):
                        record.token_times.append(time.perf_counter())
                        chunks += 1
                    usage = event.get("usage") or usage
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            record.error = f"{type(e).__name__}: {e}"
            return
        record.output_tokens = usage.get("completion_tokens", chunks) if usage else chunks
        if usage and usage.get("prompt_tokens"):
            record.prompt_tokens = usage["prompt_tokens"]


def _error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI error body, else the body's start."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace").strip() or "(empty body)"
