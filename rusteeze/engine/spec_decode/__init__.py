"""Speculative decoding: cheap proposals for the next tokens, verified by the model in one forward pass.

``config`` (the ``[speculative]`` table, torch-free), ``ngram`` (the proposer), ``speculator``
(who proposes, adaptive back-off, counters), ``verify`` (greedy and rejection-sampling
acceptance), ``rollback`` (the KV slots of rejected drafts).
"""
