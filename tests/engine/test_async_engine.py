"""AsyncEngine: concurrent streams, cancellation frees blocks, step errors reach the right requests,
a slow reader gets merged outputs (bounded), a dead engine thread fails every caller."""

import asyncio
import logging
import threading

import pytest
from engine_fakes import assert_all_free
from tiny_models import build_model_dir

from rusteeze.config import EngineConfig
from rusteeze.engine import async_engine
from rusteeze.engine.async_engine import AsyncEngine, EngineDeadError, EngineShutdownError
from rusteeze.engine.engine import Engine, EngineStepError
from rusteeze.errors import InvalidRequestError
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
LONG = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)


@pytest.fixture
def engine(make_engine):
    return make_engine(max_model_len=128)


def idle(engine, aengine) -> None:
    """Wait (bounded) until the engine thread has drained every request."""
    for _ in range(2000):
        if not engine.has_unfinished_requests() and not aengine._adds and not aengine._aborts:
            return
        threading.Event().wait(0.005)
    raise AssertionError("engine never became idle")


async def collect(aengine, prompt, params=GREEDY, **kw):
    outs = [o async for o in aengine.generate(prompt, params, **kw)]
    assert outs[-1].finished and all(not o.finished for o in outs[:-1])
    return outs


def test_concurrent_streams_match_the_sync_engine(engine):
    prompts = [[5, 6, 7, i] for i in range(3, 9)]
    expected = []
    for p in prompts:
        rid = engine.add_request(p, GREEDY)
        while engine.has_unfinished_requests():
            done = [o for o in engine.step() if o.request_id == rid and o.finished]
        expected.append(done[0].outputs[0].token_ids)
    aengine = AsyncEngine(engine)

    async def run_made(prompt):  # validated first, then run: the server's path
        outs = [o async for o in aengine.run(engine.make_request(prompt, GREEDY))]
        assert outs[-1].finished
        return outs

    async def main():
        return await asyncio.gather(*(collect(aengine, p) if i % 2 else run_made(p) for i, p in enumerate(prompts)))

    results = asyncio.run(main())
    aengine.shutdown()
    for outs, want in zip(results, expected, strict=True):
        assert outs[-1].outputs[0].token_ids == want
        assert [t for o in outs for t in o.outputs[0].delta_token_ids] == want
    assert_all_free(engine.block_manager)


def test_cancelling_or_leaving_a_stream_aborts_it_and_frees_blocks(engine):
    aengine = AsyncEngine(engine)

    async def main():
        stream = aengine.generate([5, 6, 7], LONG)
        first = await stream.__anext__()
        assert not first.finished
        await stream.aclose()  # a client that stops reading
        started = asyncio.Event()

        async def consume():
            async for _ in aengine.generate([8, 9], LONG):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()  # a client that disconnects
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    idle(engine, aengine)
    assert_all_free(engine.block_manager)
    aengine.shutdown()


def test_a_failing_step_fails_its_requests_and_the_loop_keeps_serving(engine, monkeypatch):
    real_run, calls = engine.runner.run, {"n": 0}

    def flaky_run(out):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("boom")
        return real_run(out)

    monkeypatch.setattr(engine.runner, "run", flaky_run)
    aengine = AsyncEngine(engine)

    async def main():
        with pytest.raises(EngineStepError) as info:
            await collect(aengine, [5, 6, 7], LONG)
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(InvalidRequestError):
            await collect(aengine, [])
        return await collect(aengine, [5, 6, 7])

    outs = asyncio.run(main())
    assert outs[-1].outputs[0].finish_reason == "length"
    assert aengine.is_running and aengine.num_step_errors == 1
    idle(engine, aengine)
    assert_all_free(engine.block_manager)
    aengine.shutdown()
    assert not aengine.is_running


def _wait_until(predicate) -> None:
    for _ in range(20_000):
        if predicate():
            return
        threading.Event().wait(0.005)
    raise AssertionError("condition never held")


@pytest.fixture(scope="module")
def long_context_loaded(tmp_path_factory):
    """A tiny random Llama with a 2,304-token context, for replies of 2,000 tokens."""
    path = build_model_dir(tmp_path_factory.mktemp("long_llama"), "llama", seed=3, max_position_embeddings=2304)
    return path, load_model_from_path(path, device="cpu", kernel_backend="torch")


def test_a_reader_that_stops_reading_gets_one_merged_output_and_nothing_piles_up(long_context_loaded, monkeypatch):
    path, loaded = long_context_loaded
    config = EngineConfig(
        model=str(path), device="cpu", kernel_backend="torch", max_model_len=2200, block_size=16,
        kv_cache_memory="8MiB",
    )  # fmt: skip
    engine = Engine(config, loaded=loaded)
    aengine = AsyncEngine(engine)
    params = SamplingParams(temperature=0, max_tokens=2000, ignore_eos=True)
    depth: list[int] = []
    put = async_engine._Stream.put

    def recording_put(stream, item):
        ok = put(stream, item)
        depth.append(len(stream))
        return ok

    monkeypatch.setattr(async_engine._Stream, "put", recording_put)

    async def normal():
        return [o async for o in aengine.generate([5, 6, 7], params, request_id="normal")]

    async def slow():
        loop = asyncio.get_running_loop()
        wakeups = []
        schedule = loop.call_soon_threadsafe
        stream = aengine.generate([5, 6, 7], params, request_id="slow")
        first = await stream.__anext__()
        depth.clear()
        loop.call_soon_threadsafe = lambda *a: wakeups.append(a) or schedule(*a)  # count the engine's wake-ups
        while "slow" in engine.requests or aengine._adds:  # the whole reply is generated meanwhile
            await asyncio.sleep(0.01)
        rest = [o async for o in stream]
        return [first, *rest], wakeups

    want = asyncio.run(normal())
    got, wakeups = asyncio.run(slow())
    aengine.shutdown()
    assert len(want[-1].outputs[0].token_ids) == 2000 and len(want) > 1000
    assert len(got) == 2 and got[-1].finished  # everything after the first output, merged into one
    assert max(depth) == 1 and len(depth) > 1000  # one pending item per put, ~2,000 puts
    assert len(wakeups) <= 1  # and one scheduled wake-up, not one per step
    a, b = want[-1].outputs[0], got[-1].outputs[0]
    assert (a.text, a.token_ids, a.finish_reason) == (b.text, b.token_ids, b.finish_reason) and len(a.text) > 0
    assert [t for o in got for t in o.outputs[0].delta_token_ids] == b.token_ids
    assert "".join(o.outputs[0].delta_text for o in got) == b.text
    assert_all_free(engine.block_manager)


def test_merged_outputs_keep_logprobs_and_running_sums(engine):
    params = SamplingParams(temperature=0.8, seed=1, max_tokens=40, ignore_eos=True, logprobs=2, n=2)
    aengine = AsyncEngine(engine)
    sizes = []  # per output when it came: len(token_ids), len(text), delta tokens so far

    async def run(read_slowly: bool, cumulative: bool = True):
        request = engine.make_request([5, 6, 7], params)
        outs = []
        async for out in aengine.run(request, cumulative=cumulative):
            outs.append(out)
            c = out.outputs[0]
            sizes.append((len(c.token_ids), len(c.text), sum(len(o.outputs[0].delta_token_ids) for o in outs)))
            if read_slowly and len(outs) == 1:
                while request.request_id in engine.requests:
                    await asyncio.sleep(0.01)
        return outs

    normal = asyncio.run(run(False))
    whole_sizes = sizes[:]
    slow, deltas = asyncio.run(run(True)), asyncio.run(run(False, False))
    aengine.shutdown()
    assert len(slow) == 2
    for outs in (normal, slow, deltas):
        for i in range(2):
            c = outs[-1].outputs[i]
            assert len(c.token_ids) == len(c.logprobs) == 40
            assert c.cumulative_logprob == pytest.approx(
                sum(e[t].logprob for e, t in zip(c.logprobs, c.token_ids, strict=True))
            )
            assert [t for o in outs for t in o.outputs[i].delta_token_ids] == c.token_ids
            assert [e for o in outs for e in o.outputs[i].delta_logprobs] == c.logprobs
            assert (c.token_ids, c.text) == (normal[-1].outputs[i].token_ids, normal[-1].outputs[i].text)
    # cumulative=False: unfinished outputs carry only the deltas
    assert all(o.outputs[0].token_ids == o.outputs[0].delta_token_ids for o in deltas[:-1])
    # cumulative (the default): every output is whole so far (its lists grow with later outputs)
    assert all(n_ids == seen for n_ids, _, seen in whole_sizes)
    assert [n_text for _, n_text, _ in whole_sizes] == [len(o.outputs[0].text) for o in normal]


class _Killed(BaseException):
    """Escapes every `except Exception`: the engine thread dies of it."""


def test_a_dead_engine_thread_fails_every_caller_with_its_cause(engine, monkeypatch, caplog):
    real_step, calls = engine.step, {"n": 0}

    def dying_step():
        calls["n"] += 1
        if calls["n"] == 5:
            raise _Killed("out of luck")
        return real_step()

    monkeypatch.setattr(engine, "step", dying_step)
    aengine = AsyncEngine(engine)

    async def main():
        streams = [aengine.generate([5, 6, i], LONG) for i in (7, 8)]
        first = await streams[0].__anext__()
        assert not first.finished
        errors = []
        for stream in streams:  # the one mid-stream and the one that never got an output
            with pytest.raises(EngineDeadError, match="out of luck") as info:
                async for _ in stream:
                    pass
            errors.append(info.value)
        with pytest.raises(EngineDeadError, match="out of luck"):  # later callers: at once
            await collect(aengine, [5, 6, 7])
        return errors

    with caplog.at_level(logging.ERROR, logger="rusteeze.engine"):
        errors = asyncio.run(main())
    assert all(isinstance(e.__cause__, _Killed) for e in errors)
    assert aengine.is_dead and not aengine.is_running
    assert [r.message for r in caplog.records].count("the engine thread died; every request now fails") == 1
    assert caplog.records[0].exc_info is not None  # with the traceback


def test_shutdown_fails_waiting_requests_with_a_shutdown_error(engine):
    aengine = AsyncEngine(engine)

    async def main():
        stream = aengine.generate([5, 6, 7], LONG)
        await stream.__anext__()
        await asyncio.to_thread(aengine.shutdown)
        with pytest.raises(EngineShutdownError):
            async for _ in stream:
                pass
        with pytest.raises(EngineShutdownError):
            await collect(aengine, [5, 6, 7])

    asyncio.run(main())
    assert not aengine.is_running and not aengine.is_dead
    assert_all_free(engine.block_manager)
