"""Judge helpers: rubric, score parsing and expectation, pairwise consistency, local log-probs."""

import math

import pytest
import torch

from speechsum.evaluation.judge import (
    as_messages,
    debiased_verdict,
    expected_score,
    local_judge_logprobs,
    pairwise_prompt,
    pairwise_verdict,
    parse_preference,
    parse_score,
    rubric_prompt,
    score_distribution,
)


def test_rubric_puts_faithfulness_first():
    prompt = rubric_prompt("Summarize in 3 bullets.", "Omar spent $2,500.", "- Omar spent $3,000")
    assert prompt.index("Faithfulness") < prompt.index("Coverage") < prompt.index("Style")
    assert "invented" in prompt and "Summarize in 3 bullets." in prompt and "- Omar spent $3,000" in prompt
    assert prompt.rstrip().endswith("Score (1-5):")
    assert as_messages(prompt) == [{"role": "user", "content": prompt}]
    pair = pairwise_prompt("Summarize.", "T", "first one", "second one")
    assert pair.index("first one") < pair.index("second one")


@pytest.mark.parametrize("text, score", [
    ("4", 4), (" 5\n", 5), ("Score: 3", 3), ("**Score:** 2", 2), ("score (1-5): 4", 4), ("I give it 4/5.", 4),
    ("4 out of 5", 4), ("Rating = 1", 1), ("**5**", 5),
    ("Three facts are missing, so 2/5", 2), ("The summary misses 3 facts.", None), ("10", None), ("4.5", None),
    ("", None), ("6", None),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_expected_score_goldens():
    uniform = {s: math.log(0.2) for s in "12345"}
    assert expected_score(uniform) == pytest.approx(3.0)
    assert expected_score({"5": 0.0}) == pytest.approx(5.0)
    assert expected_score({"4": math.log(0.5), "5": math.log(0.5)}) == pytest.approx(4.5)
    # renormalized over the five: other tokens' mass is dropped, 0.1 / 0.1 -> 1/2 each
    assert expected_score({"1": math.log(0.1), "2": math.log(0.1), "The": math.log(0.8)}) == pytest.approx(1.5)
    # " 4" and "4" are the same score: p(4) = 0.2 + 0.2, p(2) = 0.4 -> 3.0
    assert expected_score({" 4": math.log(0.2), "4": math.log(0.2), "2": math.log(0.4)}) == pytest.approx(3.0)
    assert expected_score({"yes": 0.0}) is None
    assert expected_score({"3": -math.inf}) is None
    dist = score_distribution({"1": math.log(0.3), "3": math.log(0.1)})
    assert dist == pytest.approx({"1": 0.75, "2": 0.0, "3": 0.25, "4": 0.0, "5": 0.0})


@pytest.mark.parametrize("text, pref", [("1", 1), ("2.", 2), ("**2**", 2), ("Summary 1 is better.", 1),
                                        ("I prefer summary 2", 2), ("neither", None)])
def test_parse_preference(text, pref):
    assert parse_preference(text) == pref


def test_pairwise_verdict_needs_agreement_in_both_orders():
    good, bad = "Omar spent $2,500.", "Omar spent $3,000."
    fair = lambda first, second: 1 if first == good else 2  # noqa: E731
    assert pairwise_verdict(fair, good, bad) == "a"
    assert pairwise_verdict(fair, bad, good) == "b"
    calls = []

    def first_always(first, second):
        calls.append((first, second))
        return 1

    assert pairwise_verdict(first_always, good, bad) is None
    assert calls == [(good, bad), (bad, good)]
    assert pairwise_verdict(lambda f, s: None, good, bad) is None


def test_local_judge_logprobs_tiny_llama():
    from tiny import tiny_llm, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_llm(len(tok)).eval()
    prompt = rubric_prompt("summarize", "the team agreed", "the team agreed")
    got = local_judge_logprobs(model, tok, prompt)
    assert list(got) == ["1", "2", "3", "4", "5"]
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    for digit, lp in got.items():
        (token_id,) = tok.encode(digit, add_special_tokens=False)
        assert lp == pytest.approx(float(logp[token_id]), abs=1e-5)
    assert 1.0 <= expected_score(got) <= 5.0
    chat = local_judge_logprobs(model, tok, as_messages(prompt))
    assert set(chat) == set(got) and all(v < 0 for v in chat.values())
    assert local_judge_logprobs(model, tok, prompt, labels=("1", "2")) == {k: got[k] for k in ("1", "2")}


def test_debiased_verdict_cancels_position_bias():
    good, bad = "Omar spent $2,500.", "Omar spent $3,000."
    # log P("1") - log P("2"): +5 for whatever comes first, +0.5 for the good summary
    margin = lambda first, second: 5.0 + (0.5 if first == good else -0.5)  # noqa: E731
    assert debiased_verdict(margin, good, bad) == "a"  # (5.5) - (4.5) = +1
    assert debiased_verdict(margin, bad, good) == "b"
    assert debiased_verdict(margin, good, bad, min_margin=1.0) is None  # exactly 1 nat: not more
    assert debiased_verdict(lambda f, s: 2.0, good, bad) is None  # position only
