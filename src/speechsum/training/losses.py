"""Losses as pure functions of tensors (golden-tested in tests/training/test_losses.py)."""

from __future__ import annotations

import math

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
        per_row = nll.new_zeros(n_rows).index_add_(0, rows, nll)
        counts = nll.new_zeros(n_rows).index_add_(0, rows, torch.ones_like(nll))
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


def ctc_feasible(n_frames: int, target: list[int]) -> bool:
    """CTC needs one frame per target token plus a blank between repeated tokens."""
    repeats = sum(a == b for a, b in zip(target, target[1:]))
    return n_frames >= len(target) + repeats


def embedding_ctc_loss(audio: list[torch.Tensor], targets: list[list[int]], embedding: torch.Tensor,
                       blank_id: int, temperature: float = 0.1) -> tuple[torch.Tensor, int]:
    """CTC of audio tokens against their transcript's token ids, scored in the LLM's own input space.

    audio: per span the projected audio tokens [A_i, D]; targets: per span the transcript ids;
    embedding: the frozen LLM input embedding matrix [V, D]. The logit of token v at an audio
    token a is cos(a, E_v) / temperature, so minimising CTC pulls each audio token towards the
    embedding of the text token it carries (an LLM reads those natively), with the CTC blank being
    the embedding of `blank_id` (a token the LLM can skip, such as a single space). Dense,
    per-token supervision that needs no pass through the LLM: cheap connector pre-alignment.
    Returns (mean over feasible spans of CTC / target length, number of spans used); spans with
    too few audio tokens for their target (see `ctc_feasible`) are left out, not clipped. Target
    ids equal to `blank_id` are dropped (they would be indistinguishable from blanks).
    """
    keep = []
    for a, t in zip(audio, targets):
        t = [i for i in t if i != blank_id]
        if t and ctc_feasible(len(a), t):
            keep.append((a, t))
    if not keep:
        return audio[0].sum() * 0.0 if audio else embedding.sum() * 0.0, 0
    # classes = the vocabulary; the blank token's own column stands for the CTC blank (targets never
    # hold it), so the normaliser counts it once
    e = F.normalize(embedding.float(), dim=-1)  # V, D
    lengths = torch.tensor([len(a) for a, _ in keep])
    # 1/temperature folded into the [sum A, D] side, not applied to the [sum A, V] product
    x = torch.cat([F.normalize(a.float(), dim=-1) for a, _ in keep]) / temperature  # sum A_i, D
    logits = (x @ e.T).float()  # sum A_i, V (the matmul may run under bf16 autocast)
    # log-softmax only where CTC reads it: the normaliser over all classes, then just the blank and
    # each span's own target tokens (a full [sum A, V] log-softmax tensor is ~0.4 GB per step at
    # batch 32, stack 4), so the CTC tensor is [T, B, max U + 1] instead of [T, B, V]
    lse = torch.logsumexp(logits, -1, keepdim=True)  # sum A, 1
    small, labels = [], []
    for lg, z, (_, t) in zip(logits.split(lengths.tolist()), lse.split(lengths.tolist()), keep):
        vocab = list(dict.fromkeys(t))  # the span's distinct tokens: a repeat keeps its label (CTC needs a blank between)
        small.append(lg[:, [blank_id] + vocab] - z)  # A_i, U_i + 1 (column 0 = blank)
        labels.append(torch.tensor([vocab.index(i) + 1 for i in t]))
    width = max(x.shape[1] for x in small)
    small = [F.pad(x, (0, width - x.shape[1]), value=-1e4) for x in small]  # padding columns are never read
    padded = torch.nn.utils.rnn.pad_sequence(small)  # T, B, max U + 1
    loss = F.ctc_loss(padded, torch.cat(labels).to(padded.device), lengths, torch.tensor([len(t) for _, t in keep]), blank=0,
                      reduction="mean", zero_infinity=True)
    return loss, len(keep)


# ------------------------------------------------------------------------------------ distillation
# All divergences take log-probabilities [N, K] over the same K outcomes (the vocabulary, or the
# top-k + tail buckets of a remote teacher) at the N completion positions, and return the mean
# over positions. Trap: torch's F.kl_div(input, target) computes KL(target || input), the opposite
# argument order to the paper notation, so it is not used here.


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position [N] = sum_k p_k (log p_k - log q_k); 0 * log 0 counts as 0."""
    p = log_p.exp()
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(-1)


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student): mode-covering; the student must put mass wherever the teacher does."""
    return kl(teacher_logp, student_logp).mean()


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """KL(student || teacher): mode-seeking; penalises student tokens the teacher finds unlikely."""
    return kl(student_logp, teacher_logp).mean()


def generalized_jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    """GKD's generalised JSD: with M = beta * teacher + (1 - beta) * student,
    beta * KL(teacher || M) + (1 - beta) * KL(student || M) for 0 < beta < 1. The mixture vanishes
    at the endpoints, so (as in GKD/TRL) beta = 0 is defined as forward KL and beta = 1 as reverse KL."""
    if beta <= 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta >= 1.0:
        return reverse_kl(student_logp, teacher_logp)
    log_m = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), dim=0)
    return (beta * kl(teacher_logp, log_m) + (1 - beta) * kl(student_logp, log_m)).mean()


DIVERGENCES = {
    "forward_kl": lambda s, t, beta: forward_kl(s, t),
    "reverse_kl": lambda s, t, beta: reverse_kl(s, t),
    "jsd": generalized_jsd,
}


def chunked_row_mean(fn, tensors: list[torch.Tensor | None], chunk: int) -> torch.Tensor:
    """`fn(*tensors)`, a mean over the rows of its inputs, computed `chunk` rows at a time under
    activation checkpointing: each chunk's intermediates are freed after its forward and rebuilt
    in its backward, so only one chunk's exist at a time. With [N, V] log-prob tensors of a
    152k-token vocabulary that is the difference between ~6 GB and ~1 GB for a divergence at 1024
    positions (bench/kd_loss.py). The same value and gradient as one call, up to summation order;
    `chunk` <= 0 or >= N: one call. `None` entries are passed through."""
    from torch.utils.checkpoint import checkpoint

    n = next(t for t in tensors if t is not None).shape[0]
    if chunk <= 0 or n <= chunk:
        return fn(*tensors)
    total = 0.0
    for s in range(0, n, chunk):
        part = [None if t is None else t[s : s + chunk] for t in tensors]
        rows = min(chunk, n - s)
        total = total + checkpoint(fn, *part, use_reentrant=False) * (rows / n)
    return total


def distill_log_probs(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-vocabulary log-probs of student and teacher at temperature T (logits [N, V])."""
    return (F.log_softmax(student_logits.float() / temperature, -1),
            F.log_softmax(teacher_logits.float() / temperature, -1))


def topk_buckets(student_logp: torch.Tensor, topk_ids: torch.Tensor,
                 teacher_topk_logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Project both distributions onto K+1 buckets: the teacher's top-k tokens [N, K] and a tail
    bucket holding the remaining mass (what a remote teacher's `prompt_logprobs` gives us).
    Returns (student, teacher) log-probs [N, K+1]."""
    s_top = student_logp.gather(-1, topk_ids)
    s_tail = torch.log1p(-s_top.exp().sum(-1).clamp(max=1 - 1e-6))
    t_tail = torch.log1p(-teacher_topk_logp.exp().sum(-1).clamp(max=1 - 1e-6))
    return torch.cat([s_top, s_tail[:, None]], -1), torch.cat([teacher_topk_logp, t_tail[:, None]], -1)


# ------------------------------------------------------------------------------------ preference


def sequence_logps(token_logp: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Sum of per-token log-probs [N] into one value per sequence [n_rows]."""
    return token_logp.new_zeros(n_rows).index_add(0, rows, token_logp)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float = 0.1, chosen_len: torch.Tensor | None = None,
             rejected_len: torch.Tensor | None = None, positive: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid DPO (Rafailov et al. 2023) on sequence log-probs [P]: -log sigmoid(beta * margin),
    margin = (policy_c - ref_c) - (policy_r - ref_r). Returns (loss, chosen_reward, rejected_reward);
    at zero margin the loss is log 2. With token counts `chosen_len`/`rejected_len` each log-ratio
    is divided by its length (length-normalized DPO, as in SimPO/LN-DPO): ending a summary early
    no longer moves the reward by itself.

    `positive` > 0 is DPO-Positive (DPOP, Pal et al. 2024, arXiv 2402.13228): the margin loses
    positive x max(0, ref_c - policy_c), so the loss rises once the policy makes the chosen summary
    less likely than the reference did. Plain DPO can widen the margin by pushing both summaries
    down (the rejected one faster); this term leaves the loss as DPO's while the chosen log-ratio
    is >= 0 and makes lowering it cost."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if chosen_len is not None and rejected_len is not None:
        chosen_ratio = chosen_ratio / chosen_len.clamp(min=1)
        rejected_ratio = rejected_ratio / rejected_len.clamp(min=1)
    chosen_reward, rejected_reward = beta * chosen_ratio, beta * rejected_ratio
    margin = chosen_reward - rejected_reward
    if positive > 0:
        margin = margin - beta * positive * (-chosen_ratio).clamp(min=0)
    loss = -F.logsigmoid(margin).mean()
    return loss, chosen_reward.detach(), rejected_reward.detach()


def early_stop_unlikelihood(logits: torch.Tensor, targets: torch.Tensor, stop_id: int) -> torch.Tensor:
    """Sum over the positions whose target is not `stop_id` of -log(1 - p(stop_id)): the cost of
    the model wanting to end the answer where the sequence goes on (unlikelihood, Welleck et al.
    2020, on the one token). logits [N, V], targets [N]. Computed as logsumexp(all) -
    logsumexp(all but stop_id), which stays finite as p(stop_id) -> 1."""
    inside = targets != stop_id
    z = logits[inside].float()
    rest = z.clone()
    rest[:, stop_id] = float("-inf")
    return (torch.logsumexp(z, -1) - torch.logsumexp(rest, -1)).sum()

