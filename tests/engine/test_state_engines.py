"""Engines share no mutable state: two in one process, even stepping in two threads, behave as each alone.

Engine-owned: the sampling generator (seeded with the config's ``seed``; the
process's global torch generator is never reseeded or drawn from), the
sequence ids, and the torch kernels' per-step plan (it lives on the step's
metadata).
"""

import random
import sys
import threading

import pytest
import torch
from engine_fakes import assert_all_free

from rusteeze.sampling import SamplingParams

GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
UNSEEDED = SamplingParams(temperature=1.0, top_k=40, max_tokens=14, ignore_eos=True)
SEEDED = SamplingParams(temperature=0.9, seed=77, max_tokens=10, ignore_eos=True)
PAIR = SamplingParams(temperature=1.2, n=2, max_tokens=9, ignore_eos=True)


def workload(vocab: int, seed: int) -> list[tuple[list[int], SamplingParams]]:
    """Prompts of 3 to 30 tokens (past Mistral's window of 8) with every kind of sampling."""
    rng = random.Random(seed)
    kinds = [GREEDY, UNSEEDED, SEEDED, PAIR, UNSEEDED, GREEDY, UNSEEDED]
    return [([rng.randrange(3, vocab) for _ in range(rng.randint(3, 30))], kind) for kind in kinds]


def run(engine, work) -> list[list[list[int]]]:
    """Queue everything, step until done; token ids per completion, in request order."""
    ids = [engine.add_request(prompt, params) for prompt, params in work]
    done = {}
    while engine.has_unfinished_requests():
        done.update({o.request_id: o for o in engine.step() if o.finished})
    assert_all_free(engine.block_manager)
    return [[c.token_ids for c in done[i].outputs] for i in ids]


@pytest.fixture
def fast_thread_switches():
    """Switch between Python threads every 10 µs so the two engines' steps interleave finely."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def test_two_engines_in_two_threads_give_what_each_gives_alone(make_engine, fast_thread_switches):
    # Same model object for both (the fixture shares loaded weights); chunked prefill in one of them.
    configs = [{"seed": 1}, {"seed": 2, "max_num_batched_tokens": 16}]
    vocab = make_engine("mistral").model_config.vocab_size
    works = [workload(vocab, seed=10), workload(vocab, seed=11)]
    alone = [run(make_engine("mistral", **cfg), work) for cfg, work in zip(configs, works, strict=True)]
    assert run(make_engine("mistral", **configs[0]), works[0]) == alone[0]  # reproducible for a config seed

    engines = [make_engine("mistral", **cfg) for cfg in configs]
    start = threading.Barrier(2)
    results: list = [None, None]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            start.wait(timeout=30)
            results[i] = run(engines[i], works[i])
        except BaseException as e:  # surfaced below: pytest does not see a thread's exception
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert results == alone


def test_engines_leave_torch_global_generator_alone(make_engine):
    before = torch.get_rng_state()
    engine = make_engine(seed=123)
    assert torch.equal(torch.get_rng_state(), before)  # creating an engine does not reseed the process
    run(engine, workload(engine.model_config.vocab_size, seed=3))  # nor does unseeded sampling draw from it
    assert torch.equal(torch.get_rng_state(), before)


def test_the_config_seed_decides_unseeded_sampling(make_engine):
    vocab = make_engine().model_config.vocab_size
    work = [(p, UNSEEDED) for p, _ in workload(vocab, seed=5)]
    first = run(make_engine(seed=7), work)
    torch.manual_seed(999)  # whatever the process's global generator does
    assert run(make_engine(seed=7), work) == first
    assert run(make_engine(seed=8), work) != first


def test_sequence_ids_belong_to_an_engine(make_engine):
    a, b = make_engine(), make_engine()
    for engine in (a, b):
        engine.add_request([5, 6, 7], SamplingParams(max_tokens=2, n=3))
        engine.add_request([8, 9], SamplingParams(max_tokens=2))
    ids = [[s.seq_id for r in e.requests.values() for s in r.seqs] for e in (a, b)]
    assert ids == [[0, 1, 2, 3], [0, 1, 2, 3]]
