"""benches/gpu_check.py: the dry run (CPU, Triton interpreter) walks every section and writes the JSON report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benches" / "gpu_check.py"
sys.path.append(str(ROOT / "benches"))

from gpu_check_models import first_divergence, write_tokenizer  # noqa: E402
from gpu_check_pytest import read_results  # noqa: E402


def run_check(tmp_path: Path, *flags: str, timeout: float = 400) -> tuple[int, dict]:
    out = tmp_path / "report.json"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the script sets it itself
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--work-dir", str(tmp_path / "work"), *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.exists(), proc.stderr[-2000:]
    return proc.returncode, json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_runs_every_section_and_reports_figures(tmp_path):
    code, report = run_check(tmp_path)
    sections = report["sections"]
    errors = {name: s.get("error") for name, s in sections.items() if "error" in s}
    assert not errors, {name: sections[name].get("traceback") for name in errors}
    assert code == 0
    assert set(sections) | set(report["skipped"]) == {"kernel_tests", "kernels", "parity", "throughput"}
    assert report["meta"]["dry_run"] is True and report["total_s"] > 0
    tests = sections["kernel_tests"]
    assert tests["ok"] and tests["counts"]["passed"] == 4
    assert tests["by_dtype"]["bfloat16"] == {"skipped": 2}  # no CUDA here: the bf16 cases skip
    rows = sections["kernels"]["rows"]
    assert rows and all(row["us"] > 0 and row["gbs"] >= 0 for row in rows)
    assert {"rms_norm", "paged_attention", "int4_matmul"} <= {row["kernel"].split()[0] for row in rows}
    parity = sections["parity"]
    assert parity["ok"]
    ran = [case for case in parity["cases"] if "skipped" not in case]
    assert ran and all(case["exact"] for case in ran if case["dtype"] == "float32")
    speed = sections["throughput"]["rusteeze"]
    assert speed["kv_cache_memory"] == 64 * 2**20 and speed["cuda_graph_buckets"] is None  # CPU: no graphs
    assert speed["single_stream"]["decode_tok_s"] > 0 and speed["prefill"]["16"]["tok_s"] > 0
    figures = speed["batched"]["2x8/2"]
    assert figures["output_tok_s"] == pytest.approx(2 * 2 / figures["seconds"], rel=0.05)  # 2 prompts x 2 tokens
    assert figures["total_tok_s"] == pytest.approx(2 * (8 + 2) / figures["seconds"], rel=0.05)


def test_sections_over_the_budget_are_skipped_with_the_reason(tmp_path):
    code, report = run_check(tmp_path, "--budget-s", "1", timeout=120)
    assert code == 0 and report["sections"] == {}
    assert set(report["skipped"]) == {"kernel_tests", "kernels", "parity", "throughput"}
    assert all("of the budget left, the section needs" in reason for reason in report["skipped"].values())


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_tokenizer_has_exactly_the_vocabulary_asked(tmp_path):
    from tokenizers import Tokenizer

    write_tokenizer(tmp_path, 1000)
    tok = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert tok.get_vocab_size() == 1000 and tok.encode("w3 w999").ids == [3, 999]


def test_results_of_a_killed_run_keep_the_finished_cases(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text(
        '{"id": "a", "outcome": "passed", "dtype": "float16"}\n'
        '{"id": "b", "outcome": "failed", "dtype": null}\n'
        '{"id": "b", "outcome": "error", "dtype": null}\n'
        '{"id": "c", "outc'
    )
    results, dtypes = read_results(path)
    assert results == {"a": "passed", "b": "error"} and dtypes == {"a": "float16", "b": None}
