"""LLM-judge helpers: a G-Eval rubric, score parsing and expectation, pairwise consistency.

G-Eval (Liu et al. 2023) asks the judge for a 1-5 score and, instead of taking the sampled digit,
uses the expectation over the judge's probabilities of the five score tokens, which separates
summaries that a sampled integer would tie. The judge itself is passed in as a function: a local
HF causal LM (`local_judge_logprobs`) or any OpenAI-compatible endpoint (its `top_logprobs` give
the same token -> logprob dict) - the backends live with the eval command.

The rubric puts faithfulness first: a summary that invents a name, number or date is worse than
one that leaves something out, because a reader cannot tell an invented fact from a real one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Literal

SCORES = ("1", "2", "3", "4", "5")

RUBRIC = """You will be given the transcript of a recording, a request for a summary of it, and a summary written for that request.
Your task is to rate the summary on one overall scale from 1 to 5.

Evaluation criteria, in order of importance:
1. Faithfulness (most important): every name, number, amount, date, time and decision in the summary must be stated in the transcript. An invented or changed fact is the worst error: a summary with any invented fact scores at most 2.
2. Coverage: the summary states the facts the request asks for (people, amounts, dates, decisions, action items and their owners), without padding.
3. Style: the summary follows the request's format and limits (bullets, number of items or sentences, word limit, email shape, owners on action items).

Evaluation steps:
1. Read the transcript and note its key facts.
2. Check each fact in the summary against the transcript; note anything invented or changed.
3. Check which requested facts are missing.
4. Check the format against the request.
5. Give the score: 5 = faithful, complete and in the requested format; 4 = faithful with a minor omission or format slip; 3 = faithful but missing important facts or ignoring the format; 2 = one invented or changed fact, or mostly off the request; 1 = several invented facts or unrelated to the transcript.

Transcript:
{transcript}

Request:
{instruction}

Summary:
{summary}

Answer with the score only, a single digit from 1 to 5.
Score (1-5):"""

PAIRWISE = """You will be given the transcript of a recording, a request for a summary of it, and two summaries written for that request.
Decide which summary is better. Faithfulness matters most: a summary that invents or changes a name, number, amount, date or decision loses to one that does not. Then prefer the summary that covers more of what the request asks for, then the one that follows the requested format.

Transcript:
{transcript}

Request:
{instruction}

Summary 1:
{first}

Summary 2:
{second}

Answer with a single digit: 1 if Summary 1 is better, 2 if Summary 2 is better.
Better summary (1 or 2):"""


def rubric_prompt(instruction: str, transcript: str, summary: str) -> str:
    return RUBRIC.format(instruction=instruction.strip(), transcript=transcript.strip(), summary=summary.strip())


def pairwise_prompt(instruction: str, transcript: str, first: str, second: str) -> str:
    return PAIRWISE.format(instruction=instruction.strip(), transcript=transcript.strip(), first=first.strip(),
                           second=second.strip())


def as_messages(prompt: str) -> list[dict[str, str]]:
    """A prompt as one user turn, for chat models and OpenAI-compatible endpoints."""
    return [{"role": "user", "content": prompt}]


# ---------------------------------------------------------------------------------------------
# scores


_EXPLICIT = re.compile(r"(?:score|rating)\s*(?:\(1\s*-\s*5\))?\s*(?:is|of|:|=)?\s*\**\s*([1-5])(?![\d.])", re.I)
_OUT_OF = re.compile(r"(?<![\d.])([1-5])\s*(?:/|out of)\s*5\b", re.I)
_LEADING = re.compile(r"^\W*([1-5])(?![\d.]\d)\b")


def parse_score(text: str) -> int | None:
    """The 1-5 score in a judge's reply ("4", "Score: 4", "**4**/5", "4 out of 5"); None if absent.

    An explicit "score: N" or "N/5" wins over a leading digit; a bare number elsewhere in prose
    ("3 facts are missing") is not taken as the score.
    """
    for pattern in (_EXPLICIT, _OUT_OF, _LEADING):
        m = pattern.search(text.strip())
        if m:
            return int(m.group(1))
    return None


def _logsumexp(xs: list[float]) -> float:
    top = max(xs)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(x - top) for x in xs))


def score_distribution(logprobs: Mapping[str, float]) -> dict[str, float] | None:
    """Probabilities of "1".."5" renormalized over the five; None if none of them is present.

    Keys are tokens as a tokenizer or endpoint reports them: " 4" and "4" are the same score
    (their probabilities add); other tokens are ignored.
    """
    grouped: dict[str, list[float]] = {}
    for token, lp in logprobs.items():
        key = token.strip()
        if key in SCORES and lp is not None:
            grouped.setdefault(key, []).append(float(lp))
    if not grouped:
        return None
    merged = {k: _logsumexp(v) for k, v in grouped.items()}
    total = _logsumexp(list(merged.values()))
    if total == -math.inf:
        return None
    return {s: math.exp(merged[s] - total) if s in merged else 0.0 for s in SCORES}


def expected_score(logprobs: Mapping[str, float]) -> float | None:
    """G-Eval score: sum_s s * p(s) with p renormalized over the score tokens "1".."5"."""
    dist = score_distribution(logprobs)
    if dist is None:
        return None
    return sum(int(s) * p for s, p in dist.items())


# ---------------------------------------------------------------------------------------------
# local judge


def _score_token_ids(tokenizer, labels: tuple[str, ...] = SCORES) -> dict[str, list[int]]:
    """Token ids a model can emit for each score: "4" and, if it is one token, " 4"."""
    ids: dict[str, list[int]] = {}
    for s in labels:
        found = []
        for text in (s, " " + s):
            enc = tokenizer.encode(text, add_special_tokens=False)
            if len(enc) == 1 and enc[0] not in found and enc[0] != tokenizer.unk_token_id:
                found.append(enc[0])
        if not found:
            raise ValueError(f"the tokenizer has no single token for the score {s!r}")
        ids[s] = found
    return ids


def local_judge_logprobs(model, tokenizer, prompt: str | list[dict[str, str]],
                         labels: tuple[str, ...] = SCORES) -> dict[str, float]:
    """Next-token log-probabilities of "1".."5" (or of `labels`, e.g. ("1", "2") for a pairwise
    judge) after `prompt` (a string, or chat messages that the tokenizer's chat template turns into
    a prompt ending with the assistant turn)."""
    import torch

    if isinstance(prompt, str):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    else:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device)).logits[0, -1].float()  # V
    logp = torch.log_softmax(logits, dim=-1)
    return {s: float(torch.logsumexp(logp[tok_ids], dim=0)) for s, tok_ids in _score_token_ids(tokenizer, labels).items()}


# ---------------------------------------------------------------------------------------------
# pairwise judging (DPO preference pairs)


_PREFERENCE = (re.compile(r"^\W*([12])(?![\d.]\d)\b"), re.compile(r"summary\s*([12])\b", re.I))


def parse_preference(text: str) -> Literal[1, 2] | None:
    """1 or 2 from a pairwise judge's reply ("2", "**1**", "Summary 2 is better"); None if absent."""
    for pattern in _PREFERENCE:
        m = pattern.search(text.strip())
        if m:
            return int(m.group(1))  # type: ignore[return-value]
    return None


def pairwise_verdict(ask: Callable[[str, str], int | None], a: str, b: str) -> Literal["a", "b"] | None:
    """"a" or "b" when the judge prefers the same summary in both orders, else None.

    `ask(first, second)` returns 1 or 2 (the preferred position) or None. Judges favour one
    position (usually the first); asking with the order swapped and keeping only agreeing verdicts
    removes pairs decided by position rather than content.
    """
    forward, backward = ask(a, b), ask(b, a)
    if forward == 1 and backward == 2:
        return "a"
    if forward == 2 and backward == 1:
        return "b"
    return None


def debiased_verdict(margin: Callable[[str, str], float], a: str, b: str,
                     min_margin: float = 0.0) -> Literal["a", "b"] | None:
    """"a" or "b" from the judge's log-odds in both orders, its position bias cancelled; None when
    the evidence is below `min_margin`.

    `margin(first, second)` = log P("1") - log P("2") for the judge's next token: how much it
    prefers the first summary. A judge that favours a position adds the same bias to both orders:
    margin(a, b) = s + bias and margin(b, a) = -s + bias, so margin(a, b) - margin(b, a) = 2s keeps
    only the content preference. Small local judges answer "1" almost always (bench/judge.py), so
    agreement of their generated answers across the swap (`pairwise_verdict`) keeps almost no pair,
    while their probabilities still order the two summaries.
    """
    s = margin(a, b) - margin(b, a)
    if s > min_margin:
        return "a"
    if s < -min_margin:
        return "b"
    return None
