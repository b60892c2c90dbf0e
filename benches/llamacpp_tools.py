"""llama.cpp's own benchmarks (llama-bench, llama-batched-bench) on the same GGUF, when a build is present.

Build them once from the source vendored in the llama-cpp-python sdist (about 10 minutes on 2 cores)::

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp
    cmake -B build -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
    cmake --build build -j2 --target llama-bench llama-batched-bench

and pass ``--llama-cpp-bin .../build/bin`` to ``benches/throughput.py``.
"""

from __future__ import annotations

import json
import os
import subprocess


def run_llama_bench(bin_dir: str, model: str, threads: int, prefill: int, gen: int) -> dict:
    """``llama-bench`` pp``prefill`` and tg``gen``: tokens/s of each (its own mean over repetitions)."""
    cmd = [os.path.join(bin_dir, "llama-bench"), "-m", model, "-t", str(threads), "-p", str(prefill)]
    cmd += ["-n", str(gen), "-r", "3", "-o", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    rows = json.loads(proc.stdout)
    out = {}
    for row in rows:
        key = f"pp{row['n_prompt']}" if row["n_prompt"] else f"tg{row['n_gen']}"
        out[key] = row["avg_ts"]
    return out


def run_batched_bench(bin_dir: str, model: str, threads: int, prompts: int, input_len: int, output_len: int) -> dict:
    """``llama-batched-bench`` with ``prompts`` parallel sequences: output tokens/s of the whole run."""
    ctx = prompts * (input_len + output_len) + 64
    cmd = [os.path.join(bin_dir, "llama-batched-bench"), "-m", model, "-t", str(threads), "-c", str(ctx)]
    cmd += ["-b", "2048", "-ub", "512", "-npp", str(input_len), "-ntg", str(output_len), "-npl", str(prompts)]
    cmd += ["--output-format", "jsonl"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    row = json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])
    return {"total_s": row["t"], "output_tok_s": prompts * output_len / row["t"], "raw": row}
