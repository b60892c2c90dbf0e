"""gpu_check (a): the kernel tests in a child pytest, outcomes recorded as they come (a run cut short still counts).

On CUDA the Triton kernels are compiled for the GPU (``TRITON_INTERPRET=0``: tests/conftest.py only
sets the interpreter when the variable is unset) and ``tests/kernels/kernel_refs.py`` puts every
tensor on the GPU, which turns on the bf16 cases. The Numba kernel tests are left out: they run on
the CPU, where CI runs them already. ``gpu_check_plugin`` records each outcome with the case's dtype.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

DTYPE_NAMES = ("float32", "float16", "bfloat16")


def run_pytest(root: Path, paths: list[str], dry_run: bool, timeout_s: float) -> dict:
    """Run pytest on ``paths`` (cwd ``root``) for at most ``timeout_s`` seconds; counts by outcome and dtype.

    Returns:
        ``ok`` (ran to the end, nothing failed), ``counts`` per outcome, ``by_dtype`` (outcome
        counts per dtype of the dtype-parametrized cases), ``failed`` test ids, ``timed_out``,
        the command and the output's tail.
    """
    args = [*paths, "-q", "-p", "no:cacheprovider", "-p", "gpu_check_plugin", "-o", "addopts="]
    args.append("--ignore-glob=tests/kernels/test_numba_*")
    workers = 0 if dry_run or importlib.util.find_spec("xdist") is None else min(8, os.cpu_count() or 1)
    if workers > 1:
        args += ["-n", str(workers)]  # Triton compiles the kernels' variants in parallel processes
    benches = str(Path(__file__).resolve().parent)
    results_file = Path(tempfile.mkstemp(prefix="gpu_check_", suffix=".jsonl")[1])
    python_path = os.pathsep.join(filter(None, [benches, str(root), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, TRITON_INTERPRET="1" if dry_run else "0", PYTHONUNBUFFERED="1", PYTHONPATH=python_path)
    env["GPU_CHECK_RESULTS"] = str(results_file)
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", *args]
    proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        timed_out = True
    results, dtypes = read_results(results_file)
    results_file.unlink(missing_ok=True)
    failed = sorted(test for test, outcome in results.items() if outcome in ("failed", "error"))
    by_dtype = {
        name: dict(Counter(outcome for test, outcome in results.items() if dtypes.get(test) == name))
        for name in DTYPE_NAMES
    }
    return {
        "ok": not timed_out and proc.returncode == 0 and not failed and bool(results),
        "returncode": proc.returncode,
        "timed_out": timed_out,
        "wall_s": round(time.perf_counter() - started, 1),
        "counts": dict(Counter(results.values())),
        "by_dtype": by_dtype,
        "failed": failed[:50],
        "command": f"TRITON_INTERPRET={env['TRITON_INTERPRET']} python -m pytest {' '.join(args)}",
        "tail": "\n".join(out.splitlines()[-40:]),
    }


def read_results(path: Path) -> tuple[dict[str, str], dict[str, str | None]]:
    """({test id: outcome}, {test id: dtype name}) from the plugin's JSON lines; a test's last line wins."""
    results: dict[str, str] = {}
    dtypes: dict[str, str | None] = {}
    if not path.exists():
        return results, dtypes
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the last line of a killed run may be cut
            continue
        results[row["id"]] = row["outcome"]
        dtypes[row["id"]] = row["dtype"]
    return results, dtypes
