"""AsyncEngine: concurrent streams, cancellation frees blocks, step errors reach the right requests."""

import asyncio
import threading

import pytest
from engine_fakes import assert_all_free

from rusteeze.engine.async_engine import AsyncEngine
from rusteeze.engine.engine import EngineStepError
from rusteeze.errors import InvalidRequestError
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
