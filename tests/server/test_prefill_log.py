"""Long prompts log their prefill progress (clock injected: no timing in the assertions)."""

import asyncio
import logging
import re
import threading
from types import SimpleNamespace

from server_helpers import run_app

from rusteeze.server import prefill_log
from rusteeze.server.prefill_log import PrefillLog


class FakeClock:
    """A clock that moves only when told to (``step`` seconds per read when set)."""

    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 100.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def fake_request(num_prompt: int) -> SimpleNamespace:
    seq = SimpleNamespace(num_prompt_tokens=num_prompt, num_computed_tokens=0)
    return SimpleNamespace(request_id="cmpl-x-0", seqs=[seq], prompt_token_ids=[1] * num_prompt)


def lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rusteeze.server" and "prompt tokens" in r.getMessage()]


def test_a_line_every_interval_then_one_when_the_prompt_is_read(caplog):
    caplog.set_level(logging.INFO, logger="rusteeze.server")
    clock, request = FakeClock(), fake_request(8192)
    watcher = PrefillLog(request, clock)
    clock.now += 4.9
    watcher.poll()
    assert lines(caplog) == []  # not 5 s yet
    request.seqs[0].num_computed_tokens = 2048
    clock.now += 0.1
    watcher.poll()
    clock.now += 3
    watcher.poll()  # 3 s after the last line: quiet
    request.seqs[0].num_computed_tokens = 8192 + 1  # the first output token is computed too
    clock.now += 2
    watcher.poll()
    clock.now += 31.3
    watcher.finish()
    assert lines(caplog) == [
        "request cmpl-x-0: read 2048 of 8192 prompt tokens",
        "request cmpl-x-0: read 8192 of 8192 prompt tokens",
        "request cmpl-x-0: read 8192 prompt tokens in 41.3 s",
    ]


def test_short_prompts_are_not_watched():
    async def main():
        with prefill_log.prefill_log(fake_request(2047), FakeClock()) as watcher:
            assert watcher is None
        with prefill_log.prefill_log(fake_request(2048), FakeClock()) as watcher:
            assert isinstance(watcher, PrefillLog) and not watcher._task.done()
        await asyncio.sleep(0)
        assert watcher._task is None

    asyncio.run(main())


def test_the_server_logs_a_long_prompt_chunk_by_chunk(make_app, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="rusteeze.server")
    monkeypatch.setattr(prefill_log, "MIN_PROMPT_TOKENS", 200)  # the tiny model's context is 512
    monkeypatch.setattr(prefill_log, "TICK_S", 0.001)
    monkeypatch.setattr(prefill_log, "CLOCK", FakeClock(step=5.0))  # every poll is 5 s after the last
    polls = threading.Condition()
    num_polls = [0]
    real_poll = PrefillLog.poll

    def counted_poll(self):
        real_poll(self)
        with polls:
            num_polls[0] += 1
            polls.notify_all()

    monkeypatch.setattr(PrefillLog, "poll", counted_poll)
    app = make_app({"max_num_batched_tokens": 32, "max_model_len": 512})

    def still_reading_a_long_prompt(engine) -> bool:
        return any(
            len(r.prompt_token_ids) >= 200 and r.seqs[0].num_computed_tokens < r.seqs[0].num_prompt_tokens
            for r in list(engine.requests.values())
        )

    async def fn(c):
        engine = app.state.engine
        real_step = engine.step

        def step_then_wait_for_a_poll():  # the forced slow step: the watcher sees every chunk
            outputs = real_step()
            if still_reading_a_long_prompt(engine):
                with polls:
                    target = num_polls[0] + 1
                    polls.wait_for(lambda: num_polls[0] >= target, timeout=10)
            return outputs

        engine.step = step_then_wait_for_a_poll
        body = {"max_tokens": 2, "temperature": 0, "ignore_eos": True}
        r = await c.post("/v1/completions", json={**body, "prompt": [7] * 300})
        assert r.status_code == 200, r.text
        r = await c.post("/v1/completions", json={**body, "prompt": [7] * 150})
        assert r.status_code == 200, r.text

    run_app(app, fn)
    got = lines(caplog)
    progress = [int(m.group(1)) for line in got[:-1] if (m := re.search(r"read (\d+) of 300 prompt tokens$", line))]
    assert len(progress) == len(got) - 1  # only the 300-token prompt is watched
    assert progress == sorted(progress) and len({n for n in progress if 0 < n < 300}) >= 5  # chunk by chunk
    assert re.fullmatch(r"request cmpl-\w+-0: read 300 prompt tokens in \d+\.\d s", got[-1])
