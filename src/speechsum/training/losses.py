"""Losses as pure functions of tensors (golden-tested in tests/training/test_losses.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None,
                        reduction: str = "token") -> torch.Tensor:
    """Cross-entropy over target tokens.

    logits [N, V], targets [N] (only target positions, see SpeechLM.target_logits).
    reduction "sum": sum over tokens (the caller divides by a global token count);
    "token": mean over all N tokens (long targets weigh more);
    "sequence": mean over sequences of each sequence's mean token loss (needs `rows`).
    """
    nll = F.cross_entropy(logits.float(), targets, reduction="none")
    if reduction == "sum":
        return nll.sum()
    if reduction == "token":
        return nll.mean()
    if reduction == "sequence":
        assert rows is not None, "sequence reduction needs rows"
        n_rows = int(rows.max()) + 1
        per_row = torch.zeros(n_rows, dtype=nll.dtype).index_add_(0, rows, nll)
        counts = torch.zeros(n_rows, dtype=nll.dtype).index_add_(0, rows, torch.ones_like(nll))
        return (per_row[counts > 0] / counts[counts > 0]).mean()
    raise ValueError(f"unknown reduction {reduction!r}")


def feature_alignment_loss(audio: list[torch.Tensor], text: list[torch.Tensor]) -> torch.Tensor:
    """1 - cosine between the mean projected audio embedding of each span [A_i, D] and the mean LLM
    input embedding of its transcript tokens [T_i, D], averaged over spans. 0 when the means point
    the same way; 2 when opposite. Lengths differ (audio and text tokens are not aligned one to
    one), so spans are compared as wholes."""
    a = torch.stack([x.float().mean(0) for x in audio])
    t = torch.stack([x.float().mean(0) for x in text])
    return (1 - F.cosine_similarity(a, t, dim=-1)).mean()
