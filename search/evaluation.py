"""Retrieval metrics against class labels, as the seed projects measured them.

For one query with ranked relevance flags ``rel`` (1 = same label) and R relevant images in
the collection (the query itself excluded):
- P@k  = (1/k) * sum_{i<=k} rel_i
- AP@k = (1/min(k, R)) * sum_{i<=k} P@i * rel_i   (0 when R = 0)
mAP@k and the reported P@k are means over every query.
"""
from __future__ import annotations

from typing import Sequence


def precision_at_k(relevant: Sequence[bool], k: int) -> float:
    return sum(relevant[:k]) / k


def average_precision_at_k(relevant: Sequence[bool], k: int, total_relevant: int) -> float:
    if total_relevant == 0:
        return 0.0
    hits, score = 0, 0.0
    for i, is_relevant in enumerate(relevant[:k], start=1):
        if is_relevant:
            hits += 1
            score += hits / i
    return score / min(k, total_relevant)
