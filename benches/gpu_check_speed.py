"""gpu_check (c): the speed figures of one engine on one checkpoint (rusteeze, then transformers).

Every figure is greedy with EOS ignored, so both engines do the same work:

* ``batched``: ``n`` prompts of ``input_len`` random tokens, ``output_len`` new tokens each, all
  submitted at once: output tokens/s and total (prompt + output) tokens/s;
* ``single_stream``: one prompt; decode tokens/s = ``output_len`` / (time for ``output_len + 1``
  tokens - time for 1 token), so the prefill is not counted;
* ``prefill``: one prompt of each length, one output token: prompt tokens/s (best of two).

rusteeze runs with the KV budget left unset, so on CUDA it is profiled from
``gpu_memory_utilization`` (the chosen bytes are recorded), and decodes through CUDA graphs; its
single-stream figure is measured again with ``enforce_eager`` to show what the graphs gain.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from gpu_check_models import free, hf_generate, hf_model, random_prompts, rusteeze_llm

WARM_UP_LEN = 32  # prompt tokens of the warm-up run before any figure is timed


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Wall seconds of ``fn()`` with the device synchronized on both sides."""
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def device_sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def measure_rusteeze(directory: Path, dtype, device, vocab, workloads, prefills, single, deadline) -> dict:
    """rusteeze's figures (see the module doc); items past ``deadline`` are recorded as skipped."""
    sync = device_sync(device)
    longest = max(max(prefills), max(i + o for _, i, o in workloads), sum(single), WARM_UP_LEN) + 16
    budget = None if device == "cuda" else "64MiB"  # None: profiled from gpu_memory_utilization
    seqs = max(n for n, _, _ in workloads)
    started = time.perf_counter()
    llm = rusteeze_llm(directory, dtype, device, max_model_len=longest, max_num_seqs=seqs,
                       max_num_batched_tokens=max(prefills), kv_cache_memory=budget)  # fmt: skip
    graphs = llm.engine.runner.decode_graphs
    result: dict = {
        "startup_s": round(time.perf_counter() - started, 1),
        "kv_cache_memory": llm.engine.config.kv_cache_memory,
        "gpu_memory_utilization": llm.engine.config.gpu_memory_utilization,
        "cuda_graph_buckets": list(graphs.buckets) if graphs is not None else None,
    }
    generate = llm_generate(llm)
    generate(random_prompts(2, WARM_UP_LEN, vocab), 4)  # compile what the capture did not (prefill shapes)
    run_figures(result, generate, sync, vocab, workloads, prefills, single, deadline)
    del llm, graphs, generate
    free()
    if time.perf_counter() > deadline:
        result["single_stream_eager"] = {"skipped": "out of the section's time"}
        return result
    eager = rusteeze_llm(directory, dtype, device, max_model_len=sum(single) + 16, max_num_seqs=1,
                         enforce_eager=True, kv_cache_memory="256MiB")  # fmt: skip
    generate = llm_generate(eager)
    generate(random_prompts(1, 8, vocab), 2)
    result["single_stream_eager"] = single_stream(generate, sync, vocab, *single)
    del eager, generate
    free()
    return result


def llm_generate(llm) -> Callable:
    """``generate(prompts, tokens)`` of a rusteeze LLM: greedy, EOS ignored."""
    from rusteeze import SamplingParams

    def generate(prompts, tokens):
        params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        return llm.generate(prompts, params, use_tqdm=False)

    return generate


def measure_hf(directory: Path, dtype, device, vocab, workloads, prefills, single, deadline) -> dict:
    """transformers' figures on the same checkpoint (see the module doc)."""
    if time.perf_counter() > deadline:
        return {"skipped": "out of the section's time"}
    sync = device_sync(device)
    model = hf_model(directory, dtype, device)
    generate, prefill = hf_calls(model)
    generate(random_prompts(2, WARM_UP_LEN, vocab), 4)
    result: dict = {}
    run_figures(result, generate, sync, vocab, workloads, prefills, single, deadline, prefill)
    del model, generate, prefill
    free()
    return result


def hf_calls(model) -> tuple[Callable, Callable]:
    """``generate(prompts, tokens)`` and ``prefill(prompt)`` (one forward, last logits only) of a transformers model."""
    import torch

    def generate(prompts, tokens):
        return hf_generate(model, prompts, tokens)

    def prefill(prompt):
        with torch.inference_mode():
            model(torch.tensor([prompt], device=model.device), logits_to_keep=1)

    return generate, prefill


def run_figures(result, generate, sync, vocab, workloads, prefills, single, deadline, prefill=None) -> None:
    """Fill ``result`` with the batched, single-stream and prefill figures of ``generate``."""
    result["batched"] = {}
    for n, input_len, output_len in workloads:
        key = f"{n}x{input_len}/{output_len}"
        if time.perf_counter() > deadline:
            result["batched"][key] = {"skipped": "out of the section's time"}
            continue
        prompts = random_prompts(n, input_len, vocab, seed=n)
        seconds = timed(lambda prompts=prompts, o=output_len: generate(prompts, o), sync)
        result["batched"][key] = {
            "seconds": round(seconds, 3),
            "output_tok_s": round(n * output_len / seconds, 1),
            "total_tok_s": round(n * (input_len + output_len) / seconds, 1),
        }
        print(f"   batched {key}: {n * output_len / seconds:,.0f} output tok/s", flush=True)
    result["single_stream"] = (
        single_stream(generate, sync, vocab, *single)
        if time.perf_counter() < deadline
        else {"skipped": "out of the section's time"}
    )
    result["prefill"] = {}
    for length in prefills:
        if time.perf_counter() > deadline:
            result["prefill"][str(length)] = {"skipped": "out of the section's time"}
            continue
        prompt = random_prompts(1, length, vocab, seed=length)[0]
        run = (lambda p=prompt: prefill(p)) if prefill is not None else (lambda p=prompt: generate([p], 1))
        seconds = min(timed(run, sync) for _ in range(2))
        result["prefill"][str(length)] = {"seconds": round(seconds, 4), "tok_s": round(length / seconds, 1)}
        print(f"   prefill {length}: {length / seconds:,.0f} tok/s", flush=True)


def single_stream(generate, sync, vocab, input_len: int, output_len: int) -> dict:
    """Decode tokens/s of one sequence, its prefill subtracted (best of two runs each)."""
    prompt = random_prompts(1, input_len, vocab, seed=7)
    first = min(timed(lambda: generate(prompt, 1), sync) for _ in range(2))
    whole = min(timed(lambda: generate(prompt, output_len + 1), sync) for _ in range(2))
    tok_s = output_len / max(whole - first, 1e-9)
    print(f"   single-stream decode: {tok_s:,.1f} tok/s", flush=True)
    return {"input_len": input_len, "output_len": output_len, "decode_tok_s": round(tok_s, 1)}
