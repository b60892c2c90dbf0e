"""The GPU check: one command that proves rusteeze's CUDA path on a real GPU and writes every figure to one JSON file.

    python benches/gpu_check.py --out gpu_check.json        # on a CUDA machine (< 8 minutes)
    python benches/gpu_check.py --dry-run --out dry.json    # the same code on the CPU, tiny shapes, Triton interpreter

Sections, each with a time budget (a section that would overrun the whole budget is skipped and
the reason recorded; one that fails records its error and the next one runs):

* ``kernel_tests`` (a): ``pytest tests/kernels`` on CUDA with real (not interpreted) Triton
  kernels, the bf16 and fp16 cases included; counts per outcome and per dtype, failures by name.
* ``kernels`` (d): each hot Triton kernel timed with CUDA events at Llama shapes, achieved GB/s
  (and TFLOP/s where it computes) beside the H200's limits.
* ``parity`` (b): random-weight Llama checkpoints written as safetensors (the tiny test shape and
  a ~1B shape); rusteeze's greedy tokens against transformers' on the same weights, float32
  (exact match expected) and bf16 (first divergence reported).
* ``throughput`` (c): the ~1B model in bf16: batched generation beside transformers' generate
  (64 x 512/128 and 256 x 512/128), single-stream decode (CUDA graphs and eager), 1,024- and
  8,192-token prefill, and the KV budget profiled from ``gpu_memory_utilization``.

The JSON file is rewritten after every section, so a run cut short keeps what it measured.
Nothing is installed at run time: a plain checkout runs (``kernels/`` is mapped to
``rusteeze.kernels`` as the installed package does); packages the GPU machine lacks travel as
wheels installed into a directory on ``PYTHONPATH`` before the run (see docs/kernels.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOTAL_BUDGET_S = 480.0  # the 8 minutes
# (section, budget on a GPU, budget in a dry run), in running order.
SECTIONS = (
    ("kernel_tests", 120.0, 40.0),
    ("kernels", 40.0, 15.0),
    ("parity", 120.0, 35.0),
    ("throughput", 180.0, 45.0),
)
NEEDED = ("torch", "triton", "transformers", "tokenizers", "safetensors", "numpy", "numba", "llguidance", "gguf")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.json", help="the JSON file of every figure")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, Triton interpreter")
    parser.add_argument("--budget-s", type=float, default=TOTAL_BUDGET_S, help="whole-run time budget (s)")
    parser.add_argument("--only", help="comma-separated sections to run (default: all)")
    parser.add_argument("--work-dir", help="where checkpoints are written (default: a temporary directory)")
    return parser.parse_args(argv)


def bootstrap(dry_run: bool) -> None:
    """Set the environment before torch/triton load and make a plain checkout importable."""
    os.environ["TRITON_INTERPRET"] = "1" if dry_run else "0"  # read when triton is first imported
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    map_checkout_packages()


def map_checkout_packages() -> None:
    """Make ``rusteeze.kernels`` and ``rusteeze.commands`` importable from a checkout that is not installed.

    setuptools maps ``kernels/`` and ``commands/`` to those names; here the repository root joins
    ``rusteeze``'s package path instead (an installed package is left as it is).
    """
    import importlib.util

    import rusteeze

    if importlib.util.find_spec("rusteeze.kernels") is None:
        rusteeze.__path__.append(str(ROOT))


def missing_modules() -> list[str]:
    """The packages of :data:`NEEDED` this Python cannot import."""
    import importlib.util

    return [name for name in NEEDED if importlib.util.find_spec(name) is None]


class Budget:
    """Wall-clock budget of the whole run; sections ask it whether they may start."""

    def __init__(self, total_s: float) -> None:
        self.start = time.perf_counter()
        self.total_s = total_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bootstrap(args.dry_run)
    budget = Budget(args.budget_s)
    report: dict = {"meta": meta(args), "sections": {}, "skipped": {}}
    out = Path(args.out)
    missing = missing_modules()
    if missing:
        report["error"] = f"cannot import {', '.join(missing)}: install the wheels handed over (docs/kernels.md)"
        write(out, report, budget)
        print(f"gpu_check: {report['error']}", file=sys.stderr)
        return 2
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        report["error"] = "no CUDA device: run on a GPU machine, or pass --dry-run"
        write(out, report, budget)
        print(f"gpu_check: {report['error']}", file=sys.stderr)
        return 2
    report["meta"].update(device_meta(torch, args.dry_run))
    wanted = set(args.only.split(",")) if args.only else {name for name, _, _ in SECTIONS}
    for name, gpu_s, dry_s in SECTIONS:
        if name not in wanted:
            continue
        section_s = dry_s if args.dry_run else gpu_s
        if budget.left() < section_s:
            report["skipped"][name] = f"{budget.left():.0f} s of the budget left, the section needs {section_s:.0f} s"
            write(out, report, budget)
            continue
        print(f"== {name} (budget {section_s:.0f} s, {budget.elapsed():.0f} s elapsed)", flush=True)
        started = time.perf_counter()
        try:
            result = run_section(name, args, time.perf_counter() + section_s)
        except Exception as e:  # one section's failure is a result; the next section still runs
            result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            print(f"   {name} failed: {result['error']}", flush=True)
        result["seconds"] = round(time.perf_counter() - started, 1)
        report["sections"][name] = result
        write(out, report, budget)
        release(torch)
    print(f"gpu_check: wrote {out} ({budget.elapsed():.0f} s)")
    failed = [name for name, result in report["sections"].items() if "error" in result or result.get("ok") is False]
    return 1 if failed else 0


def run_section(name: str, args: argparse.Namespace, deadline: float) -> dict:
    """Run one section until ``deadline`` (perf_counter seconds)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if name == "kernel_tests":
        return kernel_tests(args.dry_run, deadline)
    if name == "kernels":
        from gpu_check_kernels import kernel_figures

        return kernel_figures(args.dry_run, deadline)
    from gpu_check_models import parity, throughput

    work = Path(args.work_dir) if args.work_dir else Path(os.environ.get("TMPDIR", "/tmp")) / "rusteeze_gpu_check"
    if name == "parity":
        return parity(work, args.dry_run, deadline)
    return throughput(work, args.dry_run, deadline)


def kernel_tests(dry_run: bool, deadline: float) -> dict:
    """(a) pytest over the kernel tests with real Triton kernels on CUDA (the interpreter in a dry run)."""
    from gpu_check_pytest import run_pytest

    files = (
        ["tests/kernels/test_silu_and_mul.py", "-k", "matches_reference and 2200"]
        if dry_run
        else ["tests/kernels", "tests/engine/test_cuda_graphs.py"]
    )
    return run_pytest(ROOT, files, dry_run, max(10.0, deadline - time.perf_counter()))


def meta(args: argparse.Namespace) -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {
        "dry_run": args.dry_run,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git_commit": commit or None,
        "python": platform.python_version(),
        "budget_s": args.budget_s,
    }


def device_meta(torch, dry_run: bool) -> dict:
    import transformers
    import triton

    info = {"torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__}
    if dry_run:
        return info | {"device": "cpu (dry run: Triton interpreter)"}
    props = torch.cuda.get_device_properties(0)
    return info | {"device": props.name, "gpu_memory_bytes": props.total_memory, "sms": props.multi_processor_count}


def release(torch) -> None:
    """Give back what a section left on the GPU before the next one."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def write(out: Path, report: dict, budget: Budget) -> None:
    report["total_s"] = round(budget.elapsed(), 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
