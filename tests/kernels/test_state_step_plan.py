"""The torch kernels' per-step plan belongs to the step's metadata: built once per forward, never shared, never kept.

(It replaced a module-level memo keyed on tensor identity that every engine
and thread shared, and that kept the last step's tensors alive.)
"""

import gc
import weakref

import torch
from kernel_refs import randn
from tiny_models import kv_caches_for

from rusteeze.kernels import torch_ops
from rusteeze.loader.model_loader import load_model_from_path
from rusteeze.models.attention import contiguous_metadata


def test_one_plan_per_forward_owned_by_the_metadata(tiny_model_dirs, monkeypatch):
    model = load_model_from_path(tiny_model_dirs["mistral"], kernel_backend="torch").model
    built = []
    real = torch_ops._batch_plan
    monkeypatch.setattr(torch_ops, "_batch_plan", lambda *a: built.append(1) or real(*a))
    lens = [3, 13]
    meta, blocks = contiguous_metadata(lens, 4)
    ids = torch.arange(3, 3 + sum(lens))
    positions = torch.cat([torch.arange(n) for n in lens])
    with torch.no_grad():
        model(ids, positions, kv_caches_for(model, blocks, 4), meta)
    assert len(built) == 1  # every layer shares it
    assert torch_ops._current_plan.get() is None  # the forward's scope has ended
    gone = [weakref.ref(t) for t in (meta.block_tables, meta.seq_lens, meta.cu_seqlens_q, meta.slot_mapping)]
    gone.append(weakref.ref(meta.plan))
    del meta
    gc.collect()
    assert all(ref() is None for ref in gone), "something outside the step keeps its metadata alive"


def test_an_active_plan_is_ignored_for_other_tensors():
    """Ops called with tensors that are not the current plan's compute their own index work."""
    k_cache = randn(6, 4, 1, 8)
    v_cache = randn(6, 4, 1, 8)
    q = randn(5, 2, 8)
    tables = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    a_cu, a_lens = torch.tensor([0, 4, 5], dtype=torch.int32), torch.tensor([9, 5], dtype=torch.int32)
    b_cu, b_lens = torch.tensor([0, 1, 5], dtype=torch.int32), torch.tensor([12, 4], dtype=torch.int32)
    slots = torch.arange(5)
    expected = torch_ops.paged_attention(q, k_cache, v_cache, b_cu, b_lens, tables, 0.3)
    plan = torch_ops.StepPlan(a_cu, a_lens, slots, tables)
    with plan.active():
        torch_ops.paged_attention(q, k_cache, v_cache, a_cu, a_lens, tables, 0.3)
        got = torch_ops.paged_attention(q, k_cache, v_cache, b_cu, b_lens, tables, 0.3)
    torch.testing.assert_close(got, expected)
