"""Stage 3: DPO on pairs of the policy's own summaries, judged for faithfulness.

    speechsum train dpo --config configs/dpo/tiny.yaml [key=value ...] [--resume]

Pairs: for each item the starting policy samples `num_samples` summaries from the audio (with
`greedy`, its greedy summary joins them); a judge ranks them and the best and worst form a
(chosen, rejected) pair (ties dropped; `pairs_per_item`: the K largest score gaps; `unfinished`: how a
summary cut off at the length cap may pair). Judges:
- `facts`: items with known facts; score = fact recall - `hallucination_penalty` x invented
  claims (names, numbers, dates the document does not contain), or fact F1, minus
  `repetition_penalty` x the share of repeated 4-grams; offline and exact;
- `llm`: a local LLM with a faithfulness-first rubric, asked twice with the order swapped; its
  log-odds of "1" against "2" in the two orders are summed, which cancels its position bias, and
  pairs with too little evidence are dropped (`llm_verdict: answers`: its two written answers
  must agree instead; small local judges answer "1" almost always, bench/judge.py);
- `openai:URL#MODEL`: the same rubric on any OpenAI-compatible endpoint (GPT-4.1, vLLM), its
  two answers must agree, inconsistent verdicts are dropped.
With `corrections` (fact judge), an item whose greedy summary invents a claim also gives the pair
(that summary with the invented claims replaced by the document's own, that summary as written).
Pairs, with the judge's reason and the reference log-probs, go to `<out_dir>/preferences.jsonl`;
`pairs: FILE` trains on an existing preference file instead.

Loss: sigmoid DPO against the frozen reference (the starting policy; its sequence log-probs are
computed once, before training), `beta` configurable, optional SFT term on the chosen summary.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from speechsum.models.speech_lm import SpeechLMConfig
from speechsum.training import common
from speechsum.training.common import LoopConfig, OptimConfig
from speechsum.training.sft import DataConfig, item_frames, load_items


@dataclass
class DPOConfig:
    model: SpeechLMConfig = field(default_factory=SpeechLMConfig)
    """Used only without `init`; with `init`, the saved model config is inherited."""
    init: str = ""
    """The KD (or SFT) run folder to start from; it is also the frozen reference."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-5))
    loop: LoopConfig = field(default_factory=LoopConfig)
    judge: str = "facts"
    """'facts', 'llm' (local judge_model) or 'openai:URL#MODEL'."""
    judge_model: str = "qwen2.5-0.5b-instruct"
    """Local LLM judge (judge: llm)."""
    llm_verdict: Literal["auto", "answers", "logprobs"] = "auto"
    """How an LLM judge's two asks (order swapped) decide a pair. answers: its written "1"/"2" must
    name the same summary both times. logprobs (local judges only): log P("1") - log P("2") in the
    first order minus the same in the swapped order, position bias cancelled; the sign decides.
    auto: logprobs for a local judge, answers for an endpoint."""
    llm_min_margin: float = 0.0
    """llm_verdict logprobs: drop pairs whose summed log-odds are within this of zero."""
    hallucination_penalty: float = 0.5
    """Fact judge, fact_score recall_penalty: score = recall - penalty x number of invented claims."""
    fact_score: Literal["recall_penalty", "f1"] = "recall_penalty"
    """Fact judge's score: recall minus the penalty, or fact F1 (recall and claim precision, eval's
    primary score; an invented claim costs in proportion to how much else the summary states)."""
    num_samples: int = 4
    """Summaries sampled per item (N >= 2)."""
    sample_temperature: float = 1.0
    """Sampling temperature of the candidates."""
    max_new_tokens: int = 96
    """Length cap of sampled summaries."""
    pair_items: int = 0
    """Items to sample pairs for (0: all training items)."""
    sample_items: int = 0
    """Items whose candidates are sampled in one batch (`num_samples` rows each) and whose pairs'
    reference log-probs are computed in one forward (0: `loop.batch_size`). Decoding on a CPU
    costs about the same per step for 8 rows as for 32 (bench/generate.py, bf16: 90 tokens/s at 8
    rows, 277 at 32), so building pairs is faster in larger batches; the samples differ from a run
    with another value (the random draws fall differently), not their distribution."""
    pairs: str = ""
    """An existing preferences.jsonl to train on instead of sampling and judging."""
    beta: float = 0.1
    """DPO temperature on the log-ratio margin."""
    sft_weight: float = 0.0
    """Weight of a cross-entropy term on the chosen summary."""
    select: Literal["last", "guard", "best"] = "last"
    """Which model becomes `final/`, judged on the dev split's items with known facts by the mean
    fact F1 of their greedy summaries (eval's primary score; decoded greedily up to
    `select_max_new_tokens`, without eval's repeat stop, which drops repeated lines that fact F1
    counts once anyway; `select.json` has every score). last: the last step's,
    no dev decoding. guard: the last step's unless the starting model scores higher (by more than
    `select_margin`), so a run that made the model worse on dev hands on its starting model
    unchanged (two dev decodings).
    best: the best of the starting model and every checkpoint (`loop.save_every`); ties go to the
    earlier step. Measured (docs/experiments.md: "Choosing the DPO step on dev"): one of two seeds
    of the demo's DPO collapsed to 7-word answers by step 4 while the other gained, and 24 dev
    items told them apart; picking among the gaining run's checkpoints on the same 24 items took
    its step 12 over its step 24, worse on the demo's test items (F1 0.197 against 0.230), so the
    tiny preset guards and does not pick."""
    select_margin: float = 0.0
    """select (guard, best): a later step is kept unless its dev fact F1 is more than this below the
    best earlier one (0: only a higher score replaces an earlier step). Measured (docs/experiments.md:
    "The shorter cut over three seeds"): with 0, the demo's guard handed on the KD model in three of
    three seeds on one data draw, after dev losses of 0.007-0.015 F1 on 24 items, while on 120 fresh
    items those DPO models kept F1 (+0.006 [-0.01, +0.03]) and invented 0.37 fewer facts per summary
    [-0.52, -0.22]; a collapse (7-word answers) loses far more on dev."""
    select_items: int = 0
    """select (guard, best): the first N dev items with known facts (0: all)."""
    select_max_new_tokens: int = 96
    """select (guard, best): the length cap of the dev summaries (eval's `--max-new-tokens` in the demo)."""
    dpop_lambda: float = 0.0
    """DPO-Positive (Pal et al. 2024): the margin loses dpop_lambda x max(0, ref - policy log-prob of
    the chosen summary), so DPO cannot widen the margin by making the chosen summary less likely
    than the reference did (0: plain DPO). The Smaug paper uses 5-500 on summed log-ratios."""
    stop_guard: float = 0.0
    """Weight of an unlikelihood term on ending the chosen summary early: -log(1 - p(end of turn))
    at each chosen position that is not its end, a mean over the chosen tokens
    (`losses.early_stop_unlikelihood`; 0: off). Seed 1's collapsed DPO had raised p(end of turn)
    after the first line of its KD model's answers from ~0.02 to ~0.9 within 24 steps."""
    length_normalize: bool = False
    """Divide each sequence log-ratio by its token count (length-normalized DPO; `beta` then acts
    per token, so it wants to be ~30x larger than for summed log-ratios)."""
    pair_rule: Literal["best_worst", "dominance"] = "best_worst"
    """Fact judge: which two candidates form the pair. best_worst: the highest and lowest score.
    dominance: the largest score gap among pairs whose chosen states at least the rejected's
    recall with no more invented claims, so no pair prefers a summary for saying less. (Measured
    on the demo's KD model: it did not stop DPO from writing shorter summaries; docs/experiments.md.)"""
    greedy: Literal["off", "candidate", "anchor"] = "off"
    """The policy's greedy summary (what eval and `summarize` decode) in the pairs. candidate: it
    joins the `num_samples` samples as one more candidate; anchor: also, every pair contains it
    (chosen when a judge prefers it to a sample, rejected when a sample beats it), so each pair
    says how to move the greedy answer itself rather than which of two samples is better."""
    max_length_gap: float = 0.0
    """Pair only candidates whose token counts differ by at most this fraction of the longer one
    (0: no limit), so that length is not what separates chosen from rejected: without it the
    chosen sample was the shorter one in 2 of 3 pairs and rejected ones hit the length cap 3x as
    often. Measured: with the old recall-minus-penalty judge, at 0.25 the DPO model kept KD's
    answer length but F1 still fell (it dropped names instead); with F1 dominance and the greedy
    anchor (the tiny preset), over 3 seeds, F1 rose as much as without it and answers grew less
    (docs/experiments.md: DPO variants; DPO and invented facts)."""
    chosen_max_invented: int = -1
    """Fact judge: the chosen summary may state at most this many invented claims (-1: no limit;
    0: never prefer a summary that invents anything, however much else it gets right). Items
    whose every better candidate invents give no pair. Under the preset's rules about half the
    chosen summaries still invented a name, date or amount. Measured over 3 seeds (docs/experiments.md: DPO and
    invented facts): at 0 (96 pair items for ~39 pairs) F1 is the preset's and the DPO model
    invents no less (+0.28 per summary against the preset); it still answers longer than KD."""
    corrections: bool = False
    """Fact judge with the greedy summary (`greedy` not off): each item whose greedy summary invents
    a claim also gives a correction pair: chosen = the greedy summary with every invented name,
    amount, date or time replaced by the document's nearest one of the same kind
    (`evaluation.facts.correct_summary`), rejected = the greedy summary as the policy wrote it. The
    two differ only at the invented claims, so the preference is about them, not about length or
    what else is said (fine-grained correctional feedback, RLHF-V). Kept only when the corrected
    summary invents fewer claims and recalls no fewer facts; added to the judge's pair of the item.
    Measured (docs/experiments.md: correction pairs): with `sft_weight: 1.0` DPO invents 0.21-0.26 fewer claims
    per summary than KD over 3 seeds (0.47 fewer from the demo's KD model), and its fact F1 moves by
    -0.02 to +0.03 per run instead of the judged pairs' +0.04; without the SFT term it cuts
    inventions mostly by answering shorter. Off in the preset since 2026-12-05: over 3 seeds of
    that day's recipe, from the same samples, the judged pairs alone (SFT term 0.1) cut inventions
    as much (-0.40 against -0.27 per summary) and kept their F1 gain (+0.027 against +0.001)."""

    correction_kinds: list[str] = field(default_factory=list)
    """Claim kinds the corrections replace (`evaluation.claims.CLAIM_KINDS`: name, phone, time,
    date, weekday, month, money, percent, number; empty: all). The tiny model hears almost no
    name right (KD: 0.32 of its 0.35 names per summary invented); judged pairs teach it to drop
    them, while a name corrected to the document's teaches it to keep naming. Measured without
    names over 3 seeds (docs/experiments.md: correction pairs): F1 +0.026 over KD against the preset's +0.021,
    inventions -0.15 against -0.21 (both differences inside the noise); from the demo's KD model
    +0.35 inventions against the preset on the same samples (both with `corrections` on)."""
    style_guard: bool = False
    """Fact judge: a pair's chosen summary must pass at least as many of the requested style's checks
    as the rejected one (`evaluation.compliance.style_compliance`: bullets when asked, the length
    the instruction states, an email's shape, ...), so that no pair prefers a summary for stating
    more facts in a form the user did not ask for. The preset's DPO answered longer than asked:
    style compliance 0.69-0.70 against KD's 0.79-0.80."""
    pairs_per_item: int = 1
    """Fact judge: up to this many pairs from one item's candidates, the largest score gaps first
    (with `greedy: anchor` each contains the greedy summary, against a different sample). The
    candidates cost the sampling; more of their pairs cost only training steps. Measured at 4 (with
    `unfinished: match` and `repetition_penalty: 1`, 2 seeds; docs/experiments.md: DPO and
    repetition): 91-117 pairs instead of 58-65, and no steadier: one seed answered in 14 words, the
    other drifted longer with repeats. 1 in the preset."""
    unfinished: Literal["pair", "reject", "match"] = "pair"
    """How a candidate that did not finish (it hit `max_new_tokens`, or the decoder's loop stop cut
    it) may pair. pair: like any other. reject: it may only be the rejected side. match: only
    candidates that both finished or both were cut off pair up, so that stopping is not what
    separates chosen from rejected. With `pair` about a quarter of the chosen summaries were cut
    off; DPO raising their likelihood over finished rejected ones teaches the policy not to stop,
    and the 400-document demo's DPO model answered twice as long as KD in near-repeats (repeated
    4-grams 0.26 against KD's 0.09). Measured with `repetition_penalty: 1` over 3 seeds
    (docs/experiments.md: DPO and repetition): `reject` stops the repeats but DPO then answers
    shorter, F1 -0.013 against KD; `match` keeps +0.016 F1 over KD (the preset +0.029) and seed 0
    still drifts to long answers with repeats. `pair` in the preset."""
    repetition_penalty: float = 0.0
    """Fact judge: subtract this times the candidate's repeated-4-gram share
    (`evaluation.metrics.repeated_ngrams`: the share of its word 4-grams it already said) from its
    score, so that of two summaries with the same facts the one that goes round the same claims
    loses (the paper names repetitive phrases as one of the failures DPO is for)."""
    correct_chosen: bool = False
    """Fact judge: when the judged pair's chosen summary invents a claim, replace it by its
    corrected text (as `corrections` does for the greedy summary, and kept under the same rule:
    fewer invented claims, no less recall). The judge's pair then prefers a summary that states
    more of the document's facts *and* invents none of the checked kinds, where its chosen side
    otherwise still invented a claim in about half the pairs. Measured with the tiny preset over 3
    seeds (docs/experiments.md: correction pairs): 0.16 fewer invented claims per summary than the preset, clear,
    for 0.010 less recall; F1 over KD +0.014 instead of +0.021 (with `corrections` on, the preset
    then). Off in the preset."""

    def __post_init__(self):
        if self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2, got {self.num_samples}")
        if self.select_margin < 0:
            raise ValueError(f"select_margin must be >= 0, got {self.select_margin}")
        if self.stop_guard < 0:
            raise ValueError(f"stop_guard must be >= 0, got {self.stop_guard}")
        if self.sample_items < 0:
            raise ValueError(f"sample_items must be >= 0 (0: loop.batch_size), got {self.sample_items}")
        if self.judge not in ("facts", "llm") and not self.judge.startswith("openai:"):
            raise ValueError(f"judge={self.judge!r}: use facts, llm or openai:URL#MODEL")
        if self.llm_verdict == "logprobs" and self.judge.startswith("openai:"):
            raise ValueError("llm_verdict=logprobs needs a local judge (judge: llm); an endpoint's written "
                             "answers are read with llm_verdict: answers (or auto)")
        if self.llm_min_margin < 0:
            raise ValueError(f"llm_min_margin must be >= 0, got {self.llm_min_margin}")
        if not 0.0 <= self.max_length_gap < 1.0:
            raise ValueError(f"max_length_gap must be in [0, 1), got {self.max_length_gap}")
        if self.chosen_max_invented < -1:
            raise ValueError(f"chosen_max_invented must be >= 0, or -1 for no limit, got {self.chosen_max_invented}")
        if self.corrections and (self.judge != "facts" or self.greedy == "off"):
            raise ValueError(f"corrections replace the fact judge's invented claims in the greedy summary; they need "
                             f"judge: facts (got {self.judge!r}) and greedy: candidate or anchor (got {self.greedy!r})")
        from speechsum.evaluation.claims import CLAIM_KINDS

        unknown = [k for k in self.correction_kinds if k not in CLAIM_KINDS]
        if unknown:
            raise ValueError(f"correction_kinds: unknown claim kind(s) {unknown}; known: {', '.join(CLAIM_KINDS)}")
        if self.correct_chosen and self.judge != "facts":
            raise ValueError(f"correct_chosen replaces the fact judge's invented claims; judge={self.judge!r} "
                             "has none (use judge: facts, or correct_chosen: false)")
        if self.pairs_per_item < 1:
            raise ValueError(f"pairs_per_item must be >= 1, got {self.pairs_per_item}")
        if self.pairs_per_item > 1 and self.judge != "facts":
            raise ValueError(f"pairs_per_item > 1 ranks the fact judge's score gaps; judge={self.judge!r} "
                             "compares one pair per item (use judge: facts, or pairs_per_item: 1)")
        if self.repetition_penalty < 0:
            raise ValueError(f"repetition_penalty must be >= 0, got {self.repetition_penalty}")
        if self.repetition_penalty > 0 and self.judge != "facts":
            raise ValueError(f"repetition_penalty is a term of the fact judge's score; judge={self.judge!r} "
                             "has no score (use judge: facts, or repetition_penalty: 0)")
        if self.chosen_max_invented >= 0 and self.judge != "facts":
            raise ValueError(f"chosen_max_invented counts the fact judge's invented claims; judge={self.judge!r} "
                             "has none (use judge: facts, or chosen_max_invented: -1)")


# ------------------------------------------------------------------------------------ judges


def fact_rows(item: dict, texts: list[str]) -> list[dict]:
    """The fact scorer's record of each candidate (recall, invented claims, F1)."""
    from speechsum.evaluation.facts import item_facts, score_summary

    facts = item_facts(item)
    return [score_summary(t, facts, item["transcript"], context=item["instruction"]) for t in texts]


def fact_judge(item: dict, texts: list[str], penalty: float, score: str = "recall_penalty",
               rows: list[dict] | None = None, repetition_penalty: float = 0.0) -> tuple[list[float], list[str]]:
    """Score each candidate by fact recall minus a penalty per invented claim (or by fact F1),
    minus `repetition_penalty` x its repeated-4-gram share; reasons for the record."""
    from speechsum.evaluation.metrics import repeated_ngrams

    scores, reasons = [], []
    for text, r in zip(texts, rows if rows is not None else fact_rows(item, texts)):
        recall = r["recall"] if r["recall"] is not None else 0.0
        if score == "f1":
            value = r["f1"] if r["f1"] is not None else 0.0
            why = f"F1 {value:.2f}, recall {recall:.2f}, invented {r['hallucinated'][:4]}"
        else:
            value = recall - penalty * r["n_hallucinated"]
            why = f"recall {recall:.2f}, invented {r['hallucinated'][:4]}"
        if repetition_penalty:
            rep = repeated_ngrams(text)
            value -= repetition_penalty * rep
            why += f", repeated 4-grams {rep:.2f}"
        scores.append(value)
        reasons.append(why)
    return scores, reasons


def verdict_mode(cfg: DPOConfig) -> str:
    """'answers' or 'logprobs': how the LLM judge's two asks decide (`llm_verdict`, auto resolved)."""
    if cfg.llm_verdict != "auto":
        return cfg.llm_verdict
    return "answers" if cfg.judge.startswith("openai:") else "logprobs"


def make_llm_verdict(cfg: DPOConfig, backend=None):
    """verdict(instruction, transcript, a, b) -> "a" | "b" | None from the LLM judge (`judge: llm`
    loads `judge_model`; `openai:URL#MODEL` an endpoint; `backend`: an already loaded one)."""
    from speechsum.evaluation.judge import (as_messages, debiased_verdict, local_judge_logprobs, pairwise_prompt,
                                            pairwise_verdict, parse_preference)
    from speechsum.models.text_lm import chat_backend

    backend = backend or chat_backend(cfg.judge if cfg.judge.startswith("openai:") else cfg.judge_model)

    def prompt(instruction, transcript, first, second):
        return as_messages(pairwise_prompt(instruction, transcript, first, second))

    if verdict_mode(cfg) == "answers":
        def ask(instruction, transcript, first, second):
            return parse_preference(backend.chat([prompt(instruction, transcript, first, second)], max_new_tokens=8)[0])

        return lambda instr, tr, a, b: pairwise_verdict(lambda x, y: ask(instr, tr, x, y), a, b)

    def margin(instruction, transcript, first, second):
        lp = local_judge_logprobs(backend.llm, backend.tokenizer, prompt(instruction, transcript, first, second),
                                  labels=("1", "2"))
        return lp["1"] - lp["2"]

    return lambda instr, tr, a, b: debiased_verdict(lambda x, y: margin(instr, tr, x, y), a, b, cfg.llm_min_margin)


def length_matched(lengths: list[int], i: int, j: int, gap: float) -> bool:
    """Whether candidates i and j differ in length by at most `gap` of the longer (0: always)."""
    return gap <= 0 or abs(lengths[i] - lengths[j]) <= gap * max(lengths[i], lengths[j])


def pick_pair(item: dict, texts: list[str], cfg: DPOConfig, verdict=None,
              lengths: list[int] | None = None, anchor: int | None = None,
              finished: list[bool] | None = None) -> tuple[int, int, str] | None:
    """The item's first pair (`pick_pairs`), or None."""
    pairs = pick_pairs(item, texts, cfg, verdict, lengths, anchor, finished)
    return pairs[0] if pairs else None


def pick_pairs(item: dict, texts: list[str], cfg: DPOConfig, verdict=None,
               lengths: list[int] | None = None, anchor: int | None = None,
               finished: list[bool] | None = None) -> list[tuple[int, int, str]]:
    """Up to `pairs_per_item` (chosen index, rejected index, reason), largest score gap first;
    empty for a tie / inconsistent judge.
    `verdict`: the LLM judge's (instruction, transcript, a, b) -> "a" | "b" | None (`make_llm_verdict`);
    `lengths`: token counts of the candidates (default: word counts), for `max_length_gap`;
    `anchor`: a candidate index every pair must contain (the greedy summary, `greedy: anchor`);
    `finished`: whether each candidate ended on its own (default: all did), for `unfinished`."""
    lengths = lengths or [len(t.split()) for t in texts]
    finished = finished or [True] * len(texts)

    def may_pair(chosen: int, rejected: int) -> bool:
        if cfg.unfinished == "reject":
            return finished[chosen]
        return cfg.unfinished == "pair" or finished[chosen] == finished[rejected]

    if cfg.judge == "facts":
        rows = fact_rows(item, texts)  # scored once, for the judge and for the dominance rule
        scores, reasons = fact_judge(item, texts, cfg.hallucination_penalty, cfg.fact_score, rows,
                                     cfg.repetition_penalty)
        n, inv = len(texts), [r["n_hallucinated"] for r in rows]
        may_choose = [cfg.chosen_max_invented < 0 or k <= cfg.chosen_max_invented for k in inv]
        cands = [(i, j) for i in range(n) for j in range(n)
                 if may_choose[i] and scores[i] > scores[j] and texts[i] != texts[j]]
        if cfg.pair_rule == "dominance":
            rec = [r["recall"] or 0.0 for r in rows]
            cands = [(i, j) for i, j in cands if rec[i] >= rec[j] and inv[i] <= inv[j]]
        if cfg.style_guard:
            from speechsum.evaluation.compliance import style_compliance

            comp = [style_compliance(item.get("style"), t, item["instruction"])["score"] for t in texts]
            cands = [(i, j) for i, j in cands if comp[i] >= comp[j]]
        cands = [(i, j) for i, j in cands if length_matched(lengths, i, j, cfg.max_length_gap)
                 and (anchor is None or anchor in (i, j)) and may_pair(i, j)]
        cands.sort(key=lambda p: scores[p[0]] - scores[p[1]], reverse=True)  # stable: ties keep index order
        return [(c, r, f"facts: chosen {reasons[c]} vs rejected {reasons[r]}") for c, r in cands[: cfg.pairs_per_item]]
    # pairwise LLM judge on the two most different candidates by length (cheap proxy for diversity),
    # or, with max_length_gap, the most different pair within the gap
    pairs = [(a, b) for a in range(len(texts)) for b in range(len(texts))
             if lengths[a] <= lengths[b] and a != b and length_matched(lengths, a, b, cfg.max_length_gap)
             and (anchor is None or anchor in (a, b)) and (may_pair(a, b) or may_pair(b, a))]
    if not pairs:
        return []
    a, b = max(pairs, key=lambda p: (lengths[p[1]] - lengths[p[0]], -p[0], p[1]))
    if texts[a] == texts[b]:
        return []
    v = verdict(item["instruction"], item["transcript"], texts[a], texts[b])
    if v is None:
        return []
    why = f"{cfg.judge}: " + ("preferred in both orders" if verdict_mode(cfg) == "answers"
                              else "preferred by its log-odds summed over both orders")
    chosen, rejected = (a, b) if v == "a" else (b, a)
    return [(chosen, rejected, why)] if may_pair(chosen, rejected) else []


def correction(item: dict, text: str, kinds: list[str] | None = None) -> tuple[str, str] | None:
    """(the summary with its invented claims corrected, the reason), or None when no correction
    makes it invent fewer claims without recalling fewer facts (`corrections`; `kinds`: only
    claims of these kinds are corrected, None or empty: all)."""
    from speechsum.evaluation.facts import correct_summary, item_facts

    fixed, edits = correct_summary(text, item_facts(item), item["transcript"], context=item["instruction"],
                                   kinds=kinds or None)
    if not edits:
        return None
    before, after = fact_rows(item, [text, fixed])
    if after["n_hallucinated"] >= before["n_hallucinated"] or (after["recall"] or 0) < (before["recall"] or 0):
        return None
    changes = ", ".join(f"{a!r} -> {b!r}" for a, b in dict(edits).items())
    return fixed, (f"correction: {changes}; invented {before['n_hallucinated']} -> {after['n_hallucinated']}, "
                   f"recall {before['recall'] or 0:.2f} -> {after['recall'] or 0:.2f}")


def completion_logps(forward, model, frames, instructions: list[str], completions: list[list[int]]):
    """Sum of log p(completion | audio, instruction) per item [B] from one forward (`forward`: the
    model's `target_logits`, or its DDP wrapper in training), and that forward's TargetLogits."""
    from speechsum.training.losses import sequence_logps

    out = forward(model.build_batch(model.audio_items(frames, instructions, completions)))
    tok = torch.log_softmax(out.logits, -1).gather(1, out.targets[:, None])[:, 0]
    return sequence_logps(tok, out.rows, len(completions)), out


@torch.no_grad()
def sequence_logps_of(model, frames, instructions: list[str], completions: list[list[int]]) -> torch.Tensor:
    """Sum of log p(completion | audio, instruction) per item [B] (used for the reference)."""
    return completion_logps(model.target_logits, model, frames, instructions, completions)[0]


def pair_logps(forward, model, frames, pairs: list[dict]):
    """Policy sequence log-probs [2P] of [chosen_1..chosen_P, rejected_1..rejected_P] from one
    forward, and its TargetLogits (rows < P are chosen tokens)."""
    comps = [r["pair"]["chosen_ids"] for r in pairs] + [r["pair"]["rejected_ids"] for r in pairs]
    instrs = [r["pair"]["instruction"] for r in pairs] * 2
    return completion_logps(forward, model, frames + frames, instrs, comps)


def preference_rows(records) -> list[dict]:
    """The training rows ({"id", "pair"}) of preferences.jsonl records: an item's judged pair, its
    further judged pairs (`pairs_per_item`) and its correction pair (`corrections`) are rows each."""
    return [{"id": r["id"], "pair": p} for r in records
            for p in (r.get("pair"), *r.get("more", []), r.get("correction")) if p]


def read_records(path: Path, resuming: bool = False) -> list[dict]:
    """The records of a preferences.jsonl, one JSON object per line. `resuming` (the run's own file,
    which a kill can cut in the middle of its last line): a last line without its newline that does
    not parse is dropped from the file, and its item is judged again. Any other unreadable line is
    an InputError naming the file and line."""
    text = path.read_text()
    lines = text.split("\n")
    records = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError("not a record with an id")
        except ValueError as e:
            if resuming and n == len(lines) and not text.endswith("\n"):  # cut by a kill while writing
                path.write_text(text[: len(text) - len(line)])
                return records
            raise common.InputError(f"{path}:{n}: not a preference record ({str(e)[:80]})") from None
        records.append(rec)
    return records


def build_preferences(model, items: list[dict], cfg: DPOConfig, out_path: Path, log=None) -> list[dict]:
    """Sample, judge and record pairs with reference log-probs; resumes from a partial file."""
    done = {}
    if out_path.is_file():
        done = {rec["id"]: rec for rec in read_records(out_path, resuming=True)}
    verdict = make_llm_verdict(cfg) if cfg.judge != "facts" else None
    gen = torch.Generator().manual_seed(cfg.loop.seed)
    t0, kept, dropped, corrected = time.time(), 0, 0, 0

    def with_end(g, ids: list[int]) -> list[int]:
        return ids + ([model.end_of_turn_id] if g.finished else [])

    def record(item: dict, chosen: str, rejected: str, ids: list[list[int]], reason: str, side) -> dict:
        return {"instruction": item["instruction"], "chosen": chosen, "rejected": rejected,
                "chosen_ids": ids[0], "rejected_ids": ids[1], "reason": reason, "judge": cfg.judge, "greedy": side}

    def add_reference(recs: list[dict], frames: list) -> None:
        """The reference log-probs of a chunk's pairs, `loop.batch_size` pairs per forward
        ([chosen..., rejected...], as the training step has them), in the training forward's
        precision, so step 1 starts at zero margin."""
        for s in range(0, len(recs), cfg.loop.batch_size):
            rs, fr = recs[s : s + cfg.loop.batch_size], frames[s : s + cfg.loop.batch_size]
            with torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16,
                                enabled=cfg.loop.bf16):
                ref = sequence_logps_of(model, fr + fr, [r["instruction"] for r in rs] * 2,
                                        [r["chosen_ids"] for r in rs] + [r["rejected_ids"] for r in rs])
            for k, r in enumerate(rs):
                r["ref_chosen"], r["ref_rejected"] = float(ref[k]), float(ref[len(rs) + k])

    model.eval()
    step = cfg.sample_items or cfg.loop.batch_size
    with open(out_path, "a") as f:
        for start in range(0, len(items), step):
            chunk = [r for r in items[start : start + step] if r["id"] not in done]
            if not chunk:
                continue
            frames = item_frames(model, chunk)
            with torch.no_grad():
                prompts = model.audio_items(frames, [r["instruction"] for r in chunk])
            # N samples per item in one batch, and the greedy summary, all from one prefill of the prompts
            start = model.prefill_items(prompts)
            gens = model.decode_prefilled(start.repeat(cfg.num_samples), max_new_tokens=cfg.max_new_tokens,
                                          do_sample=True, temperature=cfg.sample_temperature, generator=gen)
            greedy = (model.decode_prefilled(start, max_new_tokens=cfg.max_new_tokens, do_sample=False)
                      if cfg.greedy != "off" else [])
            g_idx = cfg.num_samples if greedy else None  # the greedy summary's index among the candidates
            recs, new, new_frames = [], [], []
            for k, item in enumerate(chunk):
                cands = gens[k * cfg.num_samples : (k + 1) * cfg.num_samples] + greedy[k : k + 1]
                picks = pick_pairs(item, [g.text for g in cands], cfg, verdict, [len(g.ids) for g in cands],
                                   anchor=g_idx if cfg.greedy == "anchor" else None,
                                   finished=[g.finished for g in cands])
                rec = {"id": item["id"], "pair": None}
                dropped += not picks
                for n_pick, (c, r, reason) in enumerate(picks):
                    ids = [with_end(cands[i], cands[i].ids) for i in (c, r)]
                    chosen = cands[c].text
                    fix = correction(item, chosen, cfg.correction_kinds) if cfg.correct_chosen else None
                    if fix is not None:
                        chosen, reason = fix[0], f"{reason}; chosen {fix[1]}"
                        ids[0] = with_end(cands[c], model.tokenizer(chosen, add_special_tokens=False)["input_ids"])
                    pair = record(item, chosen, cands[r].text, ids, reason, {c: "chosen", r: "rejected"}.get(g_idx))
                    if n_pick == 0:
                        rec["pair"] = pair
                    else:  # pairs_per_item: the item's further pairs, smaller score gaps
                        rec.setdefault("more", []).append(pair)
                    new.append(pair)
                    new_frames.append(frames[k])
                    kept += 1
                fix = correction(item, cands[g_idx].text, cfg.correction_kinds) if cfg.corrections else None
                if fix is not None:
                    g = cands[g_idx]
                    # the corrected text is tokenized afresh; the rejected side keeps the policy's own ids
                    fixed_ids = model.tokenizer(fix[0], add_special_tokens=False)["input_ids"]
                    rec["correction"] = record(item, fix[0], g.text, [with_end(g, fixed_ids), with_end(g, g.ids)],
                                               fix[1], "rejected")
                    new.append(rec["correction"])
                    new_frames.append(frames[k])
                    corrected += 1
                recs.append(rec)
            add_reference(new, new_frames)
            for rec in recs:
                done[rec["id"]] = rec
                f.write(json.dumps(rec) + "\n")
            f.flush()
    pairs = preference_rows(done.values())
    if log:
        lc = [len(r["pair"]["chosen_ids"]) for r in pairs]
        lr = [len(r["pair"]["rejected_ids"]) for r in pairs]
        sides = Counter(r["pair"].get("greedy") for r in pairs)
        log(f"dpo: {kept} pairs, {dropped} items with no pair (ties/inconsistent/refused)"
            + (f", {corrected} correction pairs" if cfg.corrections else "") + f", {time.time() - t0:.0f} s; "
            f"chosen shorter in {sum(c < r for c, r in zip(lc, lr))} of {len(pairs)} pairs, mean tokens "
            f"chosen {sum(lc) / max(len(lc), 1):.1f} / rejected {sum(lr) / max(len(lr), 1):.1f}"
            + (f"; the greedy summary chosen in {sides['chosen']}, rejected in {sides['rejected']}"
               if cfg.greedy != "off" else ""))
    return pairs


def dev_fact_f1(model, items: list[dict], max_new_tokens: int, batch_size: int) -> float:
    """Mean fact F1 of the model's greedy summaries of `items` (the selection score of `select`;
    eval's primary score, which leaves out documents without salient facts, F1 None)."""
    from speechsum.evaluation.facts import score_item

    scores = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        with torch.no_grad():
            prompts = model.audio_items(item_frames(model, chunk), [r["instruction"] for r in chunk])
        gens = model.generate_items(prompts, max_new_tokens=max_new_tokens, do_sample=False)
        scores += [score_item(r, g.text)["f1"] for r, g in zip(chunk, gens)]
    scores = [x for x in scores if x is not None]
    return sum(scores) / len(scores) if scores else 0.0


def selection_items(cfg: DPOConfig) -> list[dict]:
    """The dev items `select` scores: those with known facts, the first `select_items`."""
    from speechsum.evaluation.facts import item_facts

    where = f"{cfg.data.path}/{cfg.data.dev_split}"
    try:
        dev = load_items(cfg.data, cfg.data.dev_split)
    except FileNotFoundError:
        raise common.InputError(f"select: {cfg.select} needs a dev split, and {where} has no manifest") from None
    items = [r for r in dev if item_facts(r)]
    if not items:
        raise common.InputError(f"select: {cfg.select} needs dev items with known facts, and {where} has none")
    return items[: cfg.select_items] if cfg.select_items else items


# ------------------------------------------------------------------------------------ the loop


def train(cfg: DPOConfig, resume: bool = False, log=print) -> Path:
    """Run DPO; returns `<out_dir>/final`."""
    from speechsum.training.losses import dpo_loss, early_stop_unlikelihood, token_cross_entropy

    # --- model, optimizer
    run = common.start_run(cfg, log, resume=resume)
    model, acc = run.model, run.acc

    # --- data: preference pairs (sampled and judged once by the starting policy = the reference)
    train_items = load_items(cfg.data, cfg.data.train_split)
    dev_items = selection_items(cfg) if cfg.select != "last" else []  # before minutes of sampling
    by_id = {r["id"]: r for r in train_items}
    run.run_dir.mkdir(parents=True, exist_ok=True)
    pref_file = Path(cfg.pairs) if cfg.pairs else run.run_dir / "preferences.jsonl"
    if not cfg.pairs:
        if run.main:
            build_preferences(model, train_items[: cfg.pair_items] if cfg.pair_items else train_items, cfg,
                              pref_file, log)
        acc.wait_for_everyone()
    if not pref_file.is_file():
        raise common.InputError(f"pairs={pref_file}: no such file")
    pairs = preference_rows(read_records(pref_file))
    missing = [r["id"] for r in pairs if r["id"] not in by_id]
    if missing:
        raise common.InputError(f"preference pairs name items not in {cfg.data.path}/{cfg.data.train_split}: {missing[:3]}")
    if not pairs:
        raise common.InputError("no preference pairs: every item's candidates tied or were refused by the pair rules "
                         "(max_length_gap, chosen_max_invented, unfinished); raise num_samples or "
                         "sample_temperature, or loosen the rules")
    order = common.DataOrder(len(pairs), cfg.loop.seed)
    common.resume_or_begin(run, order, resume)
    opt = run.opt  # under FSDP rebuilt on the sharded parameters
    select = None
    if cfg.select != "last":
        select = common.BestOnDev(run, lambda m: dev_fact_f1(m, dev_items, cfg.select_max_new_tokens,
                                                            cfg.sample_items or cfg.loop.batch_size),
                                  every_checkpoint=cfg.select == "best", margin=cfg.select_margin)
        select(run.step)

    # --- train
    # progressive validation: a pair in its first epoch has not been trained on yet, so whether the
    # policy already prefers its chosen summary says how far the preference learned so far carries
    # to pairs it has not seen (0.5: not at all)
    unseen = dict.fromkeys(("pairs", "preferred", "margin"), 0.0)
    while run.step < cfg.loop.max_steps:
        t0 = time.time()
        lr = cfg.optim.lr * common.lr_at(run.step, cfg.optim, cfg.loop.max_steps)
        common.set_lr(opt, lr)
        first = order.position
        step_pairs = [pairs[i] for i in order.take(run.per_step)]
        fresh = [first + k < len(pairs) for k in range(len(step_pairs))]
        step_unseen = dict.fromkeys(unseen, 0.0)
        # per-step means over micro-batches, then over ranks; the rewards (beta x policy-reference
        # log-ratio) apart as well as their margin: DPO can widen the margin while pushing
        # probability off both summaries onto text neither contains
        sums = dict.fromkeys(("loss", "reward_accuracy", "reward_margin", "reward_chosen", "reward_rejected"), 0.0)
        for micro in range(cfg.optim.grad_accum):
            mb = common.rank_slice(step_pairs, micro, cfg.loop.batch_size, acc.process_index, acc.num_processes)
            with torch.no_grad():
                frames = item_frames(model, [by_id[r["id"]] for r in mb])
            with run.micro_batch(last=micro == cfg.optim.grad_accum - 1):
                seq, out = pair_logps(run.ddp_model, model, frames, mb)
                p = len(mb)
                ref_c = torch.tensor([r["pair"]["ref_chosen"] for r in mb], device=seq.device)
                ref_r = torch.tensor([r["pair"]["ref_rejected"] for r in mb], device=seq.device)
                # a mean over this rank's pairs; every rank has batch_size of them, so DDP's gradient
                # average is the mean over all ranks' pairs
                lens = (torch.tensor([len(r["pair"]["chosen_ids"]) for r in mb], dtype=torch.float32, device=seq.device),
                        torch.tensor([len(r["pair"]["rejected_ids"]) for r in mb], dtype=torch.float32, device=seq.device)
                        ) if cfg.length_normalize else (None, None)
                loss, rc, rr = dpo_loss(seq[:p], seq[p:], ref_c, ref_r, cfg.beta, *lens, positive=cfg.dpop_lambda)
                if cfg.sft_weight > 0 or cfg.stop_guard > 0:
                    # per-token terms on the chosen side; chosen tokens differ per rank: sum here / all
                    # ranks' chosen tokens, x ranks (DDP averages)
                    chosen_rows = out.rows < p
                    n_chosen = common.all_reduce_sum(acc, int(chosen_rows.sum()))
                    logits_c, targets_c = out.logits[chosen_rows], out.targets[chosen_rows]
                    if cfg.sft_weight > 0:
                        ce = token_cross_entropy(logits_c, targets_c, reduction="sum")
                        loss = loss + cfg.sft_weight * ce / n_chosen * acc.num_processes
                    if cfg.stop_guard > 0:
                        ul = early_stop_unlikelihood(logits_c, targets_c, model.end_of_turn_id)
                        loss = loss + cfg.stop_guard * ul / n_chosen * acc.num_processes
                loss = loss / cfg.optim.grad_accum
                common.check_finite(loss, run.step, [r["id"] for r in mb])
                acc.backward(loss)
            sums["loss"] += loss.item()
            for key, v in (("reward_accuracy", (rc > rr).float()), ("reward_margin", rc - rr),
                           ("reward_chosen", rc), ("reward_rejected", rr)):
                sums[key] += v.mean().item() / cfg.optim.grad_accum
            new = torch.tensor(common.rank_slice(fresh, micro, cfg.loop.batch_size, acc.process_index,
                                                 acc.num_processes), dtype=torch.bool, device=rc.device)
            step_unseen["pairs"] += float(new.sum())
            step_unseen["preferred"] += float((rc > rr)[new].sum())
            step_unseen["margin"] += float((rc - rr)[new].sum())
        grad_norm = common.clip_and_step(acc, run.params, opt, cfg.optim.grad_clip)
        run.step += 1
        means = {k: common.all_reduce_sum(acc, v) / acc.num_processes for k, v in sums.items()}
        step_unseen = {k: common.all_reduce_sum(acc, v) for k, v in step_unseen.items()}
        for k, v in step_unseen.items():
            unseen[k] += v
        extra = ({"unseen_pairs": int(step_unseen["pairs"]),
                  "unseen_accuracy": step_unseen["preferred"] / step_unseen["pairs"]} if step_unseen["pairs"] else {})
        dt = time.time() - t0
        if common.should_log(run):
            run.metrics.log(run.step, **means, **extra, lr=lr, grad_norm=grad_norm, seconds=dt, epoch=order.epoch)
        run.bar.update(loss=means["loss"], acc=means["reward_accuracy"])
        common.end_step(run, order)
        if select is not None:
            select(run.step)
    if unseen["pairs"]:
        run.bar.close()  # the line below starts on its own line, not after the bar (finish_run closes it too)
        run.log(f"dpo: before their first update the policy preferred the chosen summary in "
            f"{int(unseen['preferred'])} of {int(unseen['pairs'])} pairs ({unseen['preferred'] / unseen['pairs']:.2f}; "
            f"mean reward margin {unseen['margin'] / unseen['pairs']:+.3f}): how far the preference it learned "
            f"carries to pairs it has not trained on (0.5: not at all)")
    if select is not None:
        best = select.load_best()
        scores = ", ".join(f"{k}: {v:.3f}" for k, v in sorted(select.scores.items()))
        run.bar.close()
        if run.main:
            run.log(f"dpo: dev fact F1 by step ({len(dev_items)} items) {scores}; final = "
                    + (f"step {best}" if best else "the starting model (no scored step beat it on dev)"))
    return common.finish_run(run, "dpo")
