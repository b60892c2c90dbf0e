"""Token bitmasks: bit order, padded vocabulary columns, unconstrained rows untouched."""

from types import SimpleNamespace

import torch

from rusteeze.structured import StructuredOutputsParams
from rusteeze.structured.bitmask import GrammarMasks, apply_grammar_mask, grammar_masks, unpack_bitmask
from rusteeze.structured.compiler import GrammarCompiler


def test_unpack_reads_bit_t_mod_32_of_word_t_div_32_and_disallows_columns_past_the_mask():
    bitmask = torch.tensor([[0b101, -(1 << 31)]], dtype=torch.int32)  # tokens 0, 2 and 63 (the sign bit)
    allowed = unpack_bitmask(bitmask, 70)
    assert allowed.shape == (1, 70)
    assert allowed[0].nonzero().flatten().tolist() == [0, 2, 63]


def test_only_constrained_rows_are_masked():
    logits = torch.randn(3, 40)
    before = logits.clone()
    masks = GrammarMasks(torch.tensor([1]), torch.tensor([[0b110, 0]], dtype=torch.int32), all_rows=False)
    apply_grammar_mask(logits, masks)
    assert torch.equal(logits[0], before[0]) and torch.equal(logits[2], before[2])
    assert torch.isfinite(logits[1]).nonzero().flatten().tolist() == [1, 2]
    assert torch.equal(logits[1, 1:3], before[1, 1:3])
    assert apply_grammar_mask(logits, None) is logits


def test_padded_model_vocabulary_columns_are_never_allowed(smollm2_tokenizer):
    v = smollm2_tokenizer.vocab_size + 40  # a model whose lm_head is padded past the tokenizer
    compiler = GrammarCompiler(smollm2_tokenizer, v, smollm2_tokenizer.eos_token_ids)
    seqs = [
        SimpleNamespace(grammar=None),
        SimpleNamespace(grammar=compiler.matcher(StructuredOutputsParams(regex=".*"))),
    ]
    masks = grammar_masks(seqs)
    assert masks.rows.tolist() == [1] and not masks.all_rows
    logits = torch.zeros(2, v)
    apply_grammar_mask(logits, masks)
    assert torch.isinf(logits[1, smollm2_tokenizer.vocab_size :]).all()
    assert torch.isfinite(logits[1, : smollm2_tokenizer.vocab_size]).sum() > 40_000  # any text, and EOS
    assert torch.isfinite(logits[0]).all()


def test_a_rejected_token_ends_the_grammar_instead_of_the_engine_step(smollm2_tokenizer, caplog):
    compiler = GrammarCompiler(smollm2_tokenizer, smollm2_tokenizer.vocab_size, smollm2_tokenizer.eos_token_ids)
    grammar = compiler.matcher(StructuredOutputsParams(regex="[0-9]+"))
    letter = smollm2_tokenizer.encode("x", add_special_tokens=False)[0]
    assert grammar.advance(letter) is True
    assert "grammar rejected token" in caplog.text
