"""Golden values for the loss functions."""

import math

import pytest
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


# ------------------------------------------------------------------------------------ KD and DPO
from speechsum.training.losses import (  # noqa: E402
    DIVERGENCES, dpo_loss, forward_kl, generalized_jsd, kl, reverse_kl, sequence_logps, topk_buckets,
)


def _lp(*probs):
    return torch.log(torch.tensor([list(probs)], dtype=torch.float32))


def test_kl_of_identical_is_zero():
    p = torch.log_softmax(torch.randn(4, 11), -1)
    for name, fn in DIVERGENCES.items():
        assert abs(fn(p, p, 0.5).item()) < 1e-6, name


def test_kl_golden_and_direction():
    p, q = _lp(0.5, 0.5), _lp(0.9, 0.1)
    expected_pq = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert math.isclose(kl(p, q).item(), expected_pq, rel_tol=1e-5)
    # student q, teacher p: forward = KL(teacher || student), reverse = KL(student || teacher)
    assert math.isclose(forward_kl(q, p).item(), expected_pq, rel_tol=1e-5)
    expected_qp = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert math.isclose(reverse_kl(q, p).item(), expected_qp, rel_tol=1e-5)


def test_zero_probability_terms_count_as_zero():
    p = torch.log(torch.tensor([[1.0, 0.0]]))
    q = _lp(0.5, 0.5)
    assert math.isclose(kl(p, q).item(), math.log(2), rel_tol=1e-6)


def test_jsd_endpoints_equal_the_kls_and_midpoint_golden():
    s, t = _lp(0.9, 0.1), _lp(0.5, 0.5)
    assert generalized_jsd(s, t, 0.0).item() == forward_kl(s, t).item()
    assert generalized_jsd(s, t, 1.0).item() == reverse_kl(s, t).item()
    m = [0.7, 0.3]  # 0.5 * teacher + 0.5 * student
    ref = 0.5 * sum(a * math.log(a / b) for a, b in zip([0.5, 0.5], m)) + \
        0.5 * sum(a * math.log(a / b) for a, b in zip([0.9, 0.1], m))
    assert math.isclose(generalized_jsd(s, t, 0.5).item(), ref, rel_tol=1e-5)
    assert generalized_jsd(s, t, 0.5).item() <= math.log(2)  # JSD is bounded by log 2


def test_topk_buckets_keep_the_tail_mass():
    student = _lp(0.5, 0.3, 0.2)
    s, t = topk_buckets(student, torch.tensor([[1]]), torch.log(torch.tensor([[0.6]])))
    assert torch.allclose(s.exp(), torch.tensor([[0.3, 0.7]]), atol=1e-6)
    assert torch.allclose(t.exp(), torch.tensor([[0.6, 0.4]]), atol=1e-6)


def test_dpo_zero_margin_is_log2_and_sign():
    z = torch.zeros(3)
    loss, rc, rr = dpo_loss(z, z, z, z, beta=0.1)
    assert math.isclose(loss.item(), math.log(2), rel_tol=1e-6) and rc.abs().sum() == 0
    better, _, _ = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), torch.zeros(1), torch.zeros(1), beta=0.5)
    assert math.isclose(better.item(), -math.log(1 / (1 + math.exp(-1.0))), rel_tol=1e-6)
    # a reference that already prefers chosen by the same margin gives log 2 again
    same, _, _ = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), torch.tensor([1.0]), torch.tensor([-1.0]))
    assert math.isclose(same.item(), math.log(2), rel_tol=1e-6)


def test_length_normalized_dpo_divides_each_log_ratio_by_its_length():
    # chosen: log-ratio -2 over 4 tokens (-0.5/token); rejected: -6 over 12 tokens (-0.5/token)
    pc, pr, z = torch.tensor([-2.0]), torch.tensor([-6.0]), torch.zeros(1)
    summed, _, _ = dpo_loss(pc, pr, z, z, beta=1.0)  # margin +4: the longer rejected lost more in total
    assert math.isclose(summed.item(), -math.log(1 / (1 + math.exp(-4.0))), rel_tol=1e-6)
    per_token, rc, rr = dpo_loss(pc, pr, z, z, beta=1.0, chosen_len=torch.tensor([4.0]), rejected_len=torch.tensor([12.0]))
    assert math.isclose(per_token.item(), math.log(2), rel_tol=1e-6)  # the same per token: no preference
    assert rc.item() == rr.item() == -0.5


def test_dpo_positive_penalizes_only_a_chosen_summary_made_less_likely():
    z = torch.zeros(1)
    # chosen up by 1, rejected down by 1: the penalty is off, the loss is plain DPO's
    up, _, _ = dpo_loss(torch.tensor([1.0]), torch.tensor([-1.0]), z, z, beta=0.5, positive=5.0)
    assert math.isclose(up.item(), -math.log(1 / (1 + math.exp(-1.0))), rel_tol=1e-6)
    # both pushed down (chosen -1, rejected -3): DPO's margin is +2 x 0.5 = 1 (loss 0.3133);
    # DPOP's is 1 - 0.5 x 5 x 1 = -1.5 (loss log(1 + e^1.5) = 1.7014)
    args = (torch.tensor([-1.0]), torch.tensor([-3.0]), z, z)
    plain, rc, rr = dpo_loss(*args, beta=0.5)
    dpop, rc2, rr2 = dpo_loss(*args, beta=0.5, positive=5.0)
    assert math.isclose(plain.item(), 0.31326169, rel_tol=1e-6)
    assert math.isclose(dpop.item(), 1.70141328, rel_tol=1e-6)
    assert rc.item() == rc2.item() == -0.5 and rr.item() == rr2.item() == -1.5  # rewards are DPO's
    # its gradient pushes the chosen log-prob up: d loss / d policy_c < 0 under DPOP
    pc = torch.tensor([-1.0], requires_grad=True)
    dpo_loss(pc, torch.tensor([-3.0]), z, z, beta=0.5, positive=5.0)[0].backward()
    assert math.isclose(pc.grad.item(), -0.5 * 6 * (1 / (1 + math.exp(-1.5))), rel_tol=1e-5)
    # with lengths the penalty is per token too: chosen -4 over 4 tokens -> -1 per token
    ln, _, _ = dpo_loss(torch.tensor([-4.0]), torch.tensor([-12.0]), z, z, beta=0.5, positive=5.0,
                        chosen_len=torch.tensor([4.0]), rejected_len=torch.tensor([4.0]))
    assert math.isclose(ln.item(), 1.70141328, rel_tol=1e-6)


def test_sequence_logps_sum_by_row_and_masked_positions_contribute_nothing():
    tok = torch.tensor([-1.0, -2.0, -0.5])
    assert sequence_logps(tok, torch.tensor([0, 0, 1]), 3).tolist() == [-3.0, -0.5, 0.0]


# ------------------------------------------------------------------------------------ embedding CTC
from speechsum.training.losses import ctc_feasible, embedding_ctc_loss  # noqa: E402

# vocabulary rows: 0 (the blank token, e.g. a lone space), 1, 2
_E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])


def test_embedding_ctc_one_frame_golden():
    # one audio token pointing at row 1: cosines blank 0, tok1 1, tok2 0 (the blank's own row is
    # masked, so it does not take mass twice) -> p(tok1) = e / (e + 2), CTC = log(1 + 2/e)
    loss, used = embedding_ctc_loss([torch.tensor([[0.0, 3.0]])], [[1]], _E, blank_id=0, temperature=1.0)
    assert used == 1 and math.isclose(loss.item(), math.log(1 + 2 / math.e), rel_tol=1e-5)


def test_embedding_ctc_perfect_alignment_is_near_zero():
    # tokens 1, 2 with a blank between: audio tokens equal the embeddings, sharp temperature
    audio = torch.stack([_E[1], _E[0], _E[2]]) * 5
    loss, _ = embedding_ctc_loss([audio], [[1, 2]], _E, blank_id=0, temperature=0.01)
    assert loss.item() < 1e-6
    wrong, _ = embedding_ctc_loss([torch.stack([_E[2], _E[0], _E[1]])], [[1, 2]], _E, blank_id=0, temperature=0.01)
    assert wrong.item() > 10


def test_embedding_ctc_skips_infeasible_spans_and_blank_targets():
    assert ctc_feasible(2, [1, 2]) and not ctc_feasible(2, [1, 1]) and ctc_feasible(3, [1, 1])
    good = torch.tensor([[0.0, 3.0]])
    alone, _ = embedding_ctc_loss([good], [[1]], _E, 0, 1.0)
    # a span with 1 audio token for 2 target tokens is left out; blank ids in a target are dropped
    both, used = embedding_ctc_loss([good, good], [[1], [1, 2]], _E, 0, 1.0)
    assert used == 1 and math.isclose(both.item(), alone.item(), rel_tol=1e-6)
    dropped, used = embedding_ctc_loss([good], [[0, 1, 0]], _E, 0, 1.0)
    assert used == 1 and math.isclose(dropped.item(), alone.item(), rel_tol=1e-6)
    nothing, used = embedding_ctc_loss([good.requires_grad_()], [[1, 2]], _E, 0, 1.0)
    assert used == 0 and nothing.item() == 0.0
    nothing.backward()  # still differentiable: a step with no usable span is a no-op, not a crash


def test_embedding_ctc_gathered_classes_equal_full_vocabulary_ctc():
    """The column gathering is exact: same value as torch's CTC over all V + 1 classes."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    emb = torch.randn(9, 4)
    audio = [torch.randn(7, 4), torch.randn(5, 4)]
    targets = [[3, 3, 5, 7], [8, 2]]  # different numbers of distinct tokens per span
    got, used = embedding_ctc_loss(audio, targets, emb, blank_id=1, temperature=0.5)
    e = F.normalize(torch.cat([emb[1:2], emb]), dim=-1)
    lp = []
    for a in audio:
        logits = F.normalize(a, dim=-1) @ e.T / 0.5
        logits[:, 2] = -1e4
        lp.append(F.log_softmax(logits, -1))
    full = F.ctc_loss(torch.nn.utils.rnn.pad_sequence(lp), torch.tensor([4, 4, 6, 8, 9, 3]), torch.tensor([7, 5]),
                      torch.tensor([4, 2]), blank=0, reduction="mean")
    assert used == 2 and math.isclose(got.item(), full.item(), rel_tol=1e-5)



def test_early_stop_unlikelihood_golden():
    from speechsum.training.losses import early_stop_unlikelihood

    stop = 2
    # three positions over a vocabulary of 3: p(stop) = 0.5 where the answer goes on, ~1/3 at a
    # uniform position, and the last position's target IS the stop token (not counted)
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)],   # p = [.25, .25, .5]
                           [1.0, 1.0, 1.0],             # p(stop) = 1/3
                           [0.0, 0.0, 5.0]])            # target = stop: left out
    targets = torch.tensor([0, 1, stop])
    want = -math.log(1 - 0.5) - math.log(1 - 1 / 3)
    assert math.isclose(early_stop_unlikelihood(logits, targets, stop).item(), want, rel_tol=1e-6)
    # finite as p(stop) -> 1, and its gradient lowers the stop logit only
    x = torch.tensor([[0.0, 0.0, 40.0]], requires_grad=True)
    v = early_stop_unlikelihood(x, torch.tensor([0]), stop)
    v.backward()
    assert math.isfinite(v.item()) and math.isclose(v.item(), 40.0 - math.log(2.0), rel_tol=1e-4)
    assert x.grad[0, stop] > 0 and (x.grad[0, :stop] < 0).all()  # descent moves mass off the stop token
    # nothing to count: zero
    assert early_stop_unlikelihood(logits[2:], targets[2:], stop).item() == 0.0


def test_sums_by_row_stay_on_the_inputs_device():
    """The per-row sums are made where their inputs are (a GPU's token log-probs stay on the GPU)."""
    from speechsum.training.losses import sequence_logps

    out = sequence_logps(torch.zeros(5, device="meta"), torch.zeros(5, dtype=torch.long, device="meta"), 2)
    assert out.device.type == "meta" and out.shape == (2,)


def test_chunked_row_mean_golden_and_gradient():
    """Mean of row sums of squares over rows [1, 2, 3, 4, 5] (x 2 columns of the same value):
    (2 + 8 + 18 + 32 + 50) / 5 = 22, in chunks of 2 (the last one a single row) as in one call,
    with the same gradient (2x / 5 per element) and a None input passed through."""
    from speechsum.training.losses import chunked_row_mean

    x = torch.arange(1.0, 6.0)[:, None].repeat(1, 2).requires_grad_(True)
    fn = lambda a, none: (a**2).sum(-1).mean()  # noqa: E731
    for chunk in (0, 2, 5, 7):
        x.grad = None
        out = chunked_row_mean(fn, [x, None], chunk)
        out.backward()
        assert out.item() == pytest.approx(22.0)
        torch.testing.assert_close(x.grad, 2 * x.detach() / 5)
