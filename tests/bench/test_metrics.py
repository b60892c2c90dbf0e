"""Benchmark figures from hand-made request timelines, and the JSON file."""

import json

import pytest

from rusteeze.bench.metrics import BenchResult, RequestRecord, summarize_ms, write_json


def result() -> BenchResult:
    # Request a: sent at 0, tokens at 0.1, 0.2, 0.4 (TTFT 100 ms, ITLs 100 and 200 ms, TPOT 150 ms).
    # Request b: sent at 0, tokens at 0.3, 0.4 (TTFT 300 ms, ITL 100 ms, TPOT 100 ms).
    # Request c failed.
    records = [
        RequestRecord(prompt_tokens=10, start=0.0, token_times=[0.1, 0.2, 0.4], output_tokens=3),
        RequestRecord(prompt_tokens=20, start=0.0, token_times=[0.3, 0.4], output_tokens=2),
        RequestRecord(prompt_tokens=30, start=0.0, error="HTTP 500: boom"),
    ]
    settings = {"num_prompts": 3, "input_len": 10, "output_len": 3, "seed": 0}
    return BenchResult("offline", "tiny", settings, records, duration=0.5, prefill_tokens=60, prefill_seconds=0.2)


def test_figures():
    f = result().figures()
    assert (f["completed"], f["failed"]) == (2, 1)
    assert (f["total_input_tokens"], f["total_output_tokens"]) == (30, 5)
    assert f["request_throughput"] == pytest.approx(4.0)
    assert f["output_throughput"] == pytest.approx(10.0)
    assert f["total_token_throughput"] == pytest.approx(70.0)
    assert f["prefill_throughput"] == pytest.approx(300.0)
    assert (f["mean_ttft_ms"], f["median_ttft_ms"]) == (pytest.approx(200.0), pytest.approx(200.0))
    assert f["p99_ttft_ms"] == pytest.approx(100 + 0.99 * 200)
    assert f["mean_tpot_ms"] == pytest.approx(125.0)
    assert f["mean_itl_ms"] == pytest.approx(400 / 3)
    assert f["median_itl_ms"] == pytest.approx(100.0)
    assert f["mean_e2el_ms"] == pytest.approx(400.0)
    assert f["peak_memory_bytes"] is None


def test_no_samples_give_none_not_nan():
    assert summarize_ms([]) == {"mean": None, "median": None, "p99": None}
    empty = BenchResult("online", "m", {}, [RequestRecord(prompt_tokens=1, start=0.0)], duration=0.0).figures()
    assert empty["completed"] == 0 and empty["request_throughput"] is None and empty["mean_ttft_ms"] is None


def test_write_json_is_atomic_and_complete(tmp_path):
    path = tmp_path / "bench.json"
    path.write_text("old")
    write_json(path, result())
    data = json.loads(path.read_text())
    assert data["mode"] == "offline" and data["model"] == "tiny" and data["settings"]["num_prompts"] == 3
    assert data["completed"] == 2 and data["mean_ttft_ms"] == pytest.approx(200.0)
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temp file left behind
    with pytest.raises(OSError):
        write_json(tmp_path / "missing" / "bench.json", result())
