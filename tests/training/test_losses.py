"""Golden values for the loss functions."""

import math

import torch

from speechsum.training.losses import feature_alignment_loss, token_cross_entropy


def test_cross_entropy_uniform_is_log_vocab():
    logits = torch.zeros(5, 7)
    targets = torch.tensor([0, 1, 2, 3, 4])
    assert math.isclose(token_cross_entropy(logits, targets).item(), math.log(7), rel_tol=1e-6)
    assert math.isclose(token_cross_entropy(logits, targets, reduction="sum").item(), 5 * math.log(7), rel_tol=1e-6)


def test_cross_entropy_sequence_reduction_weighs_sequences_equally():
    # row 0: one token with loss 0 (huge logit on the target); row 1: three tokens at log(2)
    logits = torch.tensor([[100.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]])
    targets = torch.tensor([0, 0, 1, 0])
    rows = torch.tensor([0, 1, 1, 1])
    assert math.isclose(token_cross_entropy(logits, targets, rows, "token").item(), 3 * math.log(2) / 4, rel_tol=1e-5)
    assert math.isclose(token_cross_entropy(logits, targets, rows, "sequence").item(), math.log(2) / 2, rel_tol=1e-5)


def test_feature_alignment_golden():
    a = [torch.tensor([[1.0, 0.0], [1.0, 0.0]])]
    assert feature_alignment_loss(a, [torch.tensor([[2.0, 0.0]])]).item() == 0.0  # same direction
    assert math.isclose(feature_alignment_loss(a, [torch.tensor([[0.0, 3.0]])]).item(), 1.0)  # orthogonal
    assert math.isclose(feature_alignment_loss(a, [torch.tensor([[-1.0, 0.0]])]).item(), 2.0)  # opposite
