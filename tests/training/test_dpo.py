"""DPO: judges (facts, position-swapped LLM), the preference file, and a short run."""

import json
import math
import shutil

import pytest

from tiny import FakePairwiseJudge, dev_with_facts, save_tiny_models

from speechsum.models.speech_lm import SpeechLMConfig
from speechsum.training import common, dpo
from speechsum.training.sft import DataConfig

FACTS = json.dumps([
    {"id": "f1", "kind": "person", "value": "Priya Patel", "mention": "Priya Patel", "attrs": {}},
    {"id": "f2", "kind": "money", "value": "$2,500", "mention": "$2,500", "attrs": {}},
    {"id": "f3", "kind": "date", "value": "Tuesday", "mention": "Tuesday", "attrs": {}},
])
ITEM = {"id": "d-0", "instruction": "Summarize in one line.", "facts": FACTS,
        "transcript": "Priya Patel said the budget of $2,500 is approved on Tuesday."}


def test_fact_judge_prefers_faithful_and_penalises_inventions():
    texts = ["Priya Patel got $2,500 approved on Tuesday.", "John Smith got $9,000 on Friday.", "A budget was approved."]
    pick = dpo.pick_pair(ITEM, texts, dpo.DPOConfig())
    assert pick[:2] == (0, 1) and "invented" in pick[2]
    assert dpo.pick_pair(ITEM, ["same", "same"], dpo.DPOConfig()) is None  # ties dropped


def test_fact_judge_f1_score_does_not_reward_saying_nothing():
    # one true fact and one invented name vs a summary that states nothing checkable
    texts = ["Priya Patel spoke, and so did John Smith.", "A budget was discussed."]
    # recall - 0.5 x invented: 1/3 - 0.5 < 0, so the empty summary wins
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig())[:2] == (1, 0)
    # fact F1 (recall 1/3, claim precision 1/2 -> 0.4 against 0): the summary with the fact wins
    c, r, reason = dpo.pick_pair(ITEM, texts, dpo.DPOConfig(fact_score="f1"))
    assert (c, r) == (0, 1) and reason.startswith("facts: chosen F1 0.40")


def test_dominance_pairs_never_prefer_saying_less():
    texts = ["Priya Patel got $2,500 on Friday.",          # 2 facts, 1 invented: 2/3 - 0.5
             "A budget was approved.",                      # nothing checkable: 0
             "John Smith got $9,000 on Friday.",            # 0 facts, 3 invented: -1.5
             "Priya Patel spoke."]                          # 1 fact, nothing invented: 1/3
    # best vs worst: the fact-free summary and the 3-invention one are in the pairs' extremes
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig())[:2] == (3, 2)
    # dominance: the same pair qualifies (more recall, fewer inventions) and has the largest gap
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(pair_rule="dominance"))[:2] == (3, 2)
    # without the 3-invention summary, best vs worst prefers saying nothing over two facts and one
    # invention; dominance refuses that trade and pairs the summaries that differ only in
    # inventions or only in facts
    two = [texts[0], texts[1]]
    assert dpo.pick_pair(ITEM, two, dpo.DPOConfig(hallucination_penalty=1.0))[:2] == (1, 0)
    assert dpo.pick_pair(ITEM, two, dpo.DPOConfig(hallucination_penalty=1.0, pair_rule="dominance")) is None
    c, r, _ = dpo.pick_pair(ITEM, [texts[1], texts[3]], dpo.DPOConfig(pair_rule="dominance"))
    assert (c, r) == (1, 0)  # a true fact and nothing invented beats saying nothing


def test_style_guard_never_prefers_a_summary_in_the_wrong_form():
    item = {**ITEM, "style": "one_line", "instruction": "Summarize in one sentence."}
    texts = ["Priya Patel got $2,500 approved. It was on Tuesday.",  # 3 facts, but two sentences
             "Priya Patel got the budget approved."]                 # 1 fact, one sentence
    cfg = dpo.DPOConfig(fact_score="f1", pair_rule="dominance")
    assert dpo.pick_pair(item, texts, cfg)[:2] == (0, 1)  # more facts wins on facts alone
    assert dpo.pick_pair(item, texts, dpo.DPOConfig(fact_score="f1", pair_rule="dominance", style_guard=True)) is None
    # in the requested form, more facts still wins
    texts[0] = "Priya Patel got $2,500 approved on Tuesday."
    assert dpo.pick_pair(item, texts, dpo.DPOConfig(fact_score="f1", pair_rule="dominance", style_guard=True))[:2] == (0, 1)


def test_chosen_max_invented_never_prefers_an_invention():
    texts = ["Priya Patel got $2,500 on Friday.",          # 2 facts, 1 invented (Friday)
             "John Smith got $9,000 on Friday.",            # 0 facts, 3 invented
             "Priya Patel spoke."]                          # 1 fact, nothing invented
    f1 = dict(fact_score="f1", pair_rule="dominance")
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(**f1))[:2] == (0, 1)  # the best F1 invents one claim
    c, r, reason = dpo.pick_pair(ITEM, texts, dpo.DPOConfig(**f1, chosen_max_invented=0))
    assert (c, r) == (2, 1) and "invented []" in reason.split(" vs ")[0]
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(**f1, chosen_max_invented=1))[:2] == (0, 1)
    # with the greedy summary as the anchor: when it invents, no sample that invents may replace it
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(**f1, chosen_max_invented=0), anchor=0) is None
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(**f1, chosen_max_invented=0), anchor=1)[:2] == (2, 1)
    with pytest.raises(ValueError, match="chosen_max_invented"):
        dpo.DPOConfig(chosen_max_invented=-2)
    with pytest.raises(ValueError, match="judge='llm' has none"):
        dpo.DPOConfig(judge="llm", chosen_max_invented=0)


def test_length_gap_pairs_only_similar_lengths():
    texts = ["Priya Patel got $2,500 approved on Tuesday.",   # best
             "John Smith got $9,000 on Friday.",             # worst
             "A budget was approved."]                       # in between
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(), lengths=[10, 30, 11])[:2] == (0, 1)
    # the worst is 3x longer than the others: within a 25 % gap only the first and the third pair up
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(max_length_gap=0.25), lengths=[10, 30, 11])[:2] == (0, 2)
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(max_length_gap=0.25), lengths=[10, 30, 20]) is None
    # default lengths are word counts: 7, 6 and 4 words
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(max_length_gap=0.2))[:2] == (0, 1)
    assert dpo.length_matched([10, 30], 0, 1, 0.0) and not dpo.length_matched([10, 30], 0, 1, 0.5)
    with pytest.raises(ValueError, match="max_length_gap"):
        dpo.DPOConfig(max_length_gap=1.0)


def test_anchor_pairs_always_contain_the_anchor():
    texts = ["Priya Patel got $2,500 approved on Tuesday.",   # best
             "John Smith got $9,000 on Friday.",             # worst
             "A budget was approved."]                       # in between: the anchor (greedy) below
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig())[:2] == (0, 1)
    # the anchor pairs with whichever sample it differs from most: it beats the worst by 1.5 and
    # loses to the best by 1.0 (recall - 0.5 x invented: 1, -1.5, 0)
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(), anchor=2)[:2] == (2, 1)
    assert dpo.pick_pair(ITEM, texts[:1] + texts[2:], dpo.DPOConfig(), anchor=1)[:2] == (0, 1)  # a sample beats it
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(), anchor=0)[:2] == (0, 1)
    assert dpo.pick_pair(ITEM, texts[:2] + [texts[1]], dpo.DPOConfig(), anchor=2)[:2] == (0, 2)
    assert dpo.pick_pair(ITEM, [texts[1], texts[1]], dpo.DPOConfig(), anchor=1) is None
    llm = dpo.DPOConfig(judge="llm")
    prefers_long = lambda instr, tr, a, b: "a" if len(a) > len(b) else "b"  # noqa: E731
    assert dpo.pick_pair(ITEM, texts, llm, prefers_long)[:2] == (0, 2)  # the most different lengths
    assert dpo.pick_pair(ITEM, texts, llm, prefers_long, anchor=1)[:2] == (1, 2)  # 6 vs 4 words, not 6 vs 7


def test_llm_judge_verdict_modes(monkeypatch):
    short, long = "short", "a much longer summary"
    # a position-biased judge: +3 log-odds for the first position, +1 for the longer summary
    biased = FakePairwiseJudge(lambda first, second: 3.0 + (1.0 if len(first) > len(second) else -1.0))
    biased.patch(monkeypatch)
    # its written answers say "1" in both orders: dropped as inconsistent
    cfg = dpo.DPOConfig(judge="llm", llm_verdict="answers")
    assert dpo.pick_pair(ITEM, [short, long], cfg, dpo.make_llm_verdict(cfg, biased)) is None
    assert biased.seen == [(short, long), (long, short)]
    # its log-odds in both orders: (3 - 1) - (3 + 1) = -4 -> the longer one, the bias cancelled
    cfg = dpo.DPOConfig(judge="llm")  # auto = logprobs for a local judge
    c, r, reason = dpo.pick_pair(ITEM, [short, long], cfg, dpo.make_llm_verdict(cfg, biased))
    assert (c, r) == (1, 0) and "log-odds summed over both orders" in reason
    cfg = dpo.DPOConfig(judge="llm", llm_min_margin=4.0)  # not more than 4 nats of evidence
    assert dpo.pick_pair(ITEM, [short, long], cfg, dpo.make_llm_verdict(cfg, biased)) is None
    assert dpo.verdict_mode(dpo.DPOConfig(judge="openai:http://x/v1#m")) == "answers"
    with pytest.raises(ValueError, match="llm_verdict=logprobs needs a local judge"):
        dpo.DPOConfig(judge="openai:http://x/v1#m", llm_verdict="logprobs")


def _cfg(tmp_path, data, **kw):
    enc, llm = save_tiny_models(tmp_path / "models")
    return dpo.DPOConfig(
        model=SpeechLMConfig(encoder=str(enc), llm=str(llm), stack=4, projector_hidden=32, lora_r=4, lora_alpha=8,
                             system_prompt="you are a helpful assistant"),
        data=DataConfig(path=str(data)), num_samples=3, max_new_tokens=6, sample_temperature=1.5,
        optim=common.OptimConfig(lr=1e-2, warmup_steps=1),
        loop=common.LoopConfig(out_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, save_every=2, bf16=False),
        **kw)


def test_correction_pair_replaces_the_invented_claims_with_the_documents():
    fixed, reason = dpo.correction(ITEM, "John Smith got $9,000 on Friday.")
    assert fixed == "Priya Patel got $2,500 on Tuesday."
    assert reason.startswith("correction: 'John Smith' -> 'Priya Patel', '$9,000' -> '$2,500', 'Friday' -> 'Tuesday'")
    assert "invented 3 -> 0, recall 0.00 -> 1.00" in reason
    assert dpo.correction(ITEM, "Priya Patel got $2,500 approved.") is None  # nothing invented
    # only the kinds asked for: the invented name stays, the amount and the day are corrected
    fixed, reason = dpo.correction(ITEM, "John Smith got $9,000 on Friday.", kinds=["money", "weekday"])
    assert fixed == "John Smith got $2,500 on Tuesday." and "invented 3 -> 1" in reason
    assert dpo.correction(ITEM, "John Smith got $2,500 on Tuesday.", kinds=["money", "weekday"]) is None
    with pytest.raises(ValueError, match="correction_kinds: unknown claim kind.*'names'"):
        dpo.DPOConfig(correction_kinds=["names"])
    with pytest.raises(ValueError, match="corrections .* greedy: candidate or anchor"):
        dpo.DPOConfig(judge="facts", corrections=True)
    with pytest.raises(ValueError, match="need judge: facts"):
        dpo.DPOConfig(judge="llm", greedy="anchor", corrections=True)
    with pytest.raises(ValueError, match="correct_chosen .* judge='llm'"):
        dpo.DPOConfig(judge="llm", correct_chosen=True)


def test_dpo_run_writes_pairs_and_trains(tmp_path, tiny_data, monkeypatch):
    # the tiny data has no facts; judge by length so pairs exist, and check the record round-trips
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    cfg = _cfg(tmp_path, tiny_data)
    logs = []
    dpo.train(cfg, log=logs.append)
    recs = [json.loads(x) for x in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    pairs = [r for r in recs if r["pair"]]
    assert pairs and all(len(r["pair"]["chosen"]) > len(r["pair"]["rejected"]) for r in pairs)
    assert all(r["pair"]["ref_chosen"] <= 0 and "len" in r["pair"]["reason"] for r in pairs)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # step 1 starts at the reference: zero margin, loss log 2
    assert abs(rows[0]["loss"] - 0.6931) < 1e-3 and abs(rows[0]["reward_margin"]) < 1e-4
    assert abs(rows[0]["reward_chosen"]) < 1e-4 and abs(rows[0]["reward_rejected"]) < 1e-4  # policy == reference
    assert all(r["pair"]["greedy"] is None for r in pairs)  # greedy: off
    # progressive validation: pairs in their first epoch are scored before any update on them; at
    # step 1 the policy is the reference (margin 0, no pair preferred yet)
    assert rows[0]["unseen_pairs"] == 2 and rows[0]["unseen_accuracy"] == 0.0
    seen_first = sum(r.get("unseen_pairs", 0) for r in rows)
    assert seen_first == min(len(pairs), 2 * 2)
    assert [x for x in logs if "before their first update" in x][0].startswith(
        f"dpo: before their first update the policy preferred the chosen summary in ")
    assert f" of {seen_first} pairs (" in [x for x in logs if "before their first update" in x][0]
    # the same preference file can be passed in directly
    cfg2 = _cfg(tmp_path / "again", tiny_data, pairs=str(tmp_path / "run" / "preferences.jsonl"))
    cfg2.loop.max_steps = 1
    dpo.train(cfg2, log=lambda *a: None)
    assert not (tmp_path / "again" / "run" / "preferences.jsonl").exists()


def test_dpo_greedy_anchor_puts_the_greedy_summary_in_every_pair(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    cfg = _cfg(tmp_path, tiny_data, greedy="anchor")
    cfg.loop.max_steps = 1
    dpo.train(cfg, log=lambda *a: None)
    recs = [json.loads(x) for x in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    pairs = [r for r in recs if r["pair"]]
    assert pairs and all(r["pair"]["greedy"] in ("chosen", "rejected") for r in pairs)


def test_dpo_corrections_add_a_pair_against_the_greedy_summary(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    monkeypatch.setattr(dpo, "correction", lambda item, text, kinds=None: (text + " fixed", "correction: test"))
    cfg = _cfg(tmp_path, tiny_data, greedy="anchor", corrections=True)
    cfg.loop.max_steps = 1
    dpo.train(cfg, log=lambda *a: None)
    recs = [json.loads(x) for x in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    fixes = [r["correction"] for r in recs]
    assert all(f["chosen"] == f["rejected"] + " fixed" and f["greedy"] == "rejected" for f in fixes)
    # the rejected side is the greedy summary as the policy wrote it: its own token ids
    for r in recs:
        if r["pair"]:
            side = r["pair"]["greedy"]
            assert r["correction"]["rejected_ids"] == r["pair"][f"{side}_ids"]
    assert len(dpo.preference_rows(recs)) == len(fixes) + sum(bool(r["pair"]) for r in recs)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["reward_margin"]) < 1e-4  # correction pairs' reference log-probs match the policy too


def test_dpo_correct_chosen_corrects_the_judged_pairs_chosen_side(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    monkeypatch.setattr(dpo, "correction", lambda item, text, kinds=None: (text + " fixed", "correction: test"))
    cfg = _cfg(tmp_path, tiny_data, correct_chosen=True)
    cfg.loop.max_steps = 1
    dpo.train(cfg, log=lambda *a: None)
    recs = [json.loads(x) for x in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    pairs = [r["pair"] for r in recs if r["pair"]]
    assert pairs and all(p["chosen"].endswith(" fixed") and not p["rejected"].endswith(" fixed") for p in pairs)
    assert all(p["reason"].endswith("; chosen correction: test") for p in pairs)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(cfg.model.llm)
    for p in pairs:  # the corrected text is tokenized afresh (plus the end of turn if the sample ended)
        ids = tok(p["chosen"], add_special_tokens=False)["input_ids"]
        assert p["chosen_ids"][: len(ids)] == ids and len(p["chosen_ids"]) - len(ids) in (0, 1)
    assert not any("correction" in r for r in recs)  # no separate correction pairs without `corrections`
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert abs(rows[0]["reward_margin"]) < 1e-4  # the corrected chosen's reference log-probs match the policy


def test_dpo_samples_several_items_per_batch(tmp_path, tiny_data, monkeypatch):
    # sample_items=3 with batch_size 2: chunks of 3 items, references in forwards of 2 pairs
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    monkeypatch.setattr(dpo, "correction", lambda item, text, kinds=None: (text + " fixed", "correction: test"))
    cfg = _cfg(tmp_path, tiny_data, greedy="anchor", corrections=True, sample_items=3)
    cfg.loop.max_steps = 1
    dpo.train(cfg, log=lambda *a: None)
    recs = [json.loads(x) for x in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    train_ids = [r["id"] for r in dpo.load_items(cfg.data, cfg.data.train_split)]
    assert [r["id"] for r in recs] == train_ids  # every item once, in order
    rows = dpo.preference_rows(recs)
    assert len(rows) > 3 and all(r["pair"]["ref_chosen"] < 0 and r["pair"]["ref_rejected"] < 0 for r in rows)
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert abs(metrics[0]["reward_margin"]) < 1e-4 and abs(metrics[0]["reward_chosen"]) < 1e-4
    with pytest.raises(ValueError, match="sample_items must be >= 0"):
        dpo.DPOConfig(sample_items=-1)


def test_repetition_penalty_prefers_the_summary_that_does_not_go_round():
    once = "Priya Patel got $2,500 approved on Tuesday."
    twice = once + " Priya Patel got $2,500 approved on Tuesday, so Priya Patel got $2,500 approved on Tuesday."
    f1 = dict(fact_score="f1", pair_rule="dominance")
    assert dpo.pick_pair(ITEM, [twice, once], dpo.DPOConfig(**f1)) is None  # the same facts: a tie
    c, r, reason = dpo.pick_pair(ITEM, [twice, once], dpo.DPOConfig(**f1, repetition_penalty=1.0))
    assert (c, r) == (1, 0) and "repeated 4-grams 0.00" in reason.split(" vs ")[0]
    scores, _ = dpo.fact_judge(ITEM, [twice], 0.5, "f1", repetition_penalty=1.0)
    # F1 1 minus the repeated share: 25 words ($2,500 is two) make 22 4-grams, 10 of them said before
    assert scores[0] == pytest.approx(1.0 - 10 / 22)
    with pytest.raises(ValueError, match="repetition_penalty must be >= 0"):
        dpo.DPOConfig(repetition_penalty=-0.1)
    with pytest.raises(ValueError, match="repetition_penalty .* judge='llm'"):
        dpo.DPOConfig(judge="llm", repetition_penalty=1.0)


def test_unfinished_rules_keep_stopping_out_of_the_preference():
    texts = ["Priya Patel got $2,500 approved on Tuesday.",   # best, but cut off at the cap
             "John Smith got $9,000 on Friday.",             # worst
             "A budget was approved."]
    cut = [False, True, True]
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(), finished=cut)[:2] == (0, 1)
    reject = dpo.DPOConfig(unfinished="reject")
    assert dpo.pick_pair(ITEM, texts, reject, finished=cut)[:2] == (2, 1)
    assert dpo.pick_pair(ITEM, texts, reject, finished=[False, True, False]) is None  # only the worst finished
    assert dpo.pick_pair(ITEM, texts, reject, finished=[True, False, True])[:2] == (0, 1)  # may still be rejected
    match = dpo.DPOConfig(unfinished="match")
    assert dpo.pick_pair(ITEM, texts, match, finished=cut)[:2] == (2, 1)
    assert dpo.pick_pair(ITEM, texts, match, finished=[True, False, True])[:2] == (0, 2)  # not against the cut one
    assert dpo.pick_pair(ITEM, texts, match, finished=[False, False, True])[:2] == (0, 1)  # both cut off
    llm = dpo.DPOConfig(judge="llm", unfinished="reject")
    prefers_long = lambda instr, tr, a, b: "a" if len(a) > len(b) else "b"  # noqa: E731
    assert dpo.pick_pair(ITEM, texts, llm, prefers_long, finished=[True, True, True])[:2] == (0, 2)
    assert dpo.pick_pair(ITEM, texts, llm, prefers_long, finished=cut) is None
    # match: the longest and shortest finished ones pair instead
    llm_match = dpo.DPOConfig(judge="llm", unfinished="match")
    assert dpo.pick_pair(ITEM, texts, llm_match, prefers_long, finished=cut)[:2] == (1, 2)


def test_dpo_unfinished_rule_gets_each_candidates_end(tmp_path, tiny_data, monkeypatch):
    # the tiny random model never ends on its own; mark every other candidate as ended. Judged by
    # length, the longest candidate wins; with unfinished: reject only an ended one may be chosen,
    # and an ended candidate's ids get the end-of-turn token appended in the pair record
    from speechsum.models.speech_lm import SpeechLM

    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    real = SpeechLM.decode_prefilled

    def some_end(self, *a, **kw):
        ends.add(self.end_of_turn_id)
        gens = real(self, *a, **kw)
        for k, g in enumerate(gens):
            g.finished = k % 2 == 0
        return gens

    monkeypatch.setattr(SpeechLM, "decode_prefilled", some_end)
    ends = set()

    def run(name, **kw):
        cfg = _cfg(tmp_path / name, tiny_data, **kw)
        cfg.loop.max_steps = 1
        dpo.train(cfg, log=lambda *a: None)
        recs = [json.loads(x) for x in (tmp_path / name / "run" / "preferences.jsonl").read_text().splitlines()]
        return [r["pair"] for r in recs if r["pair"]]

    free, must = run("free"), run("must", unfinished="reject")
    (end,) = ends
    ended = lambda ids: ids[-1] == end  # noqa: E731
    assert must and all(ended(p["chosen_ids"]) for p in must)
    assert any(not ended(p["chosen_ids"]) for p in free)  # without it a cut-off sample is chosen


def test_pairs_per_item_ranks_an_items_pairs_by_score_gap():
    texts = ["Priya Patel got $2,500 approved on Tuesday.",   # 1.0
             "John Smith got $9,000 on Friday.",             # -1.5
             "A budget was approved.",                       # 0 (the anchor below)
             "Priya Patel spoke."]                           # 1/3
    assert len(dpo.pick_pairs(ITEM, texts, dpo.DPOConfig())) == 1
    pairs = dpo.pick_pairs(ITEM, texts, dpo.DPOConfig(pairs_per_item=3))
    assert [p[:2] for p in pairs] == [(0, 1), (3, 1), (2, 1)]  # gaps 2.5, 1.83, 1.5
    # with the anchor every pair contains it, against a different sample
    pairs = dpo.pick_pairs(ITEM, texts, dpo.DPOConfig(pairs_per_item=3), anchor=2)
    assert [p[:2] for p in pairs] == [(2, 1), (0, 2), (3, 2)]
    assert dpo.pick_pair(ITEM, texts, dpo.DPOConfig(pairs_per_item=3), anchor=2)[:2] == (2, 1)
    with pytest.raises(ValueError, match="pairs_per_item must be >= 1"):
        dpo.DPOConfig(pairs_per_item=0)
    with pytest.raises(ValueError, match="pairs_per_item > 1 .* judge='llm'"):
        dpo.DPOConfig(judge="llm", pairs_per_item=2)


def test_stop_guard_adds_the_chosen_sides_early_stop_cost_to_dpo(tmp_path, tiny_data, monkeypatch):
    """At step 1 the policy is the reference, so DPO's loss is log 2 and the guard adds weight x
    the chosen tokens' mean -log(1 - p(end of turn)): positive, and linear in the weight."""
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    dpo.train(_cfg(tmp_path / "pairs", tiny_data), log=lambda *a: None)
    first_loss = {}
    for w in (0.0, 1.0, 2.0):
        cfg = _cfg(tmp_path / f"w{w}", tiny_data, pairs=str(tmp_path / "pairs" / "run" / "preferences.jsonl"), stop_guard=w)
        cfg.loop.max_steps = 1
        dpo.train(cfg, log=lambda *a: None)
        first_loss[w] = json.loads((tmp_path / f"w{w}" / "run" / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert abs(first_loss[0.0] - math.log(2)) < 1e-3
    guard = first_loss[1.0] - first_loss[0.0]
    assert guard > 0 and abs((first_loss[2.0] - first_loss[0.0]) - 2 * guard) < 1e-4
    with pytest.raises(ValueError, match="stop_guard"):
        dpo.DPOConfig(stop_guard=-1.0)


def test_dpo_pairs_per_item_trains_on_every_recorded_pair(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    cfg = _cfg(tmp_path, tiny_data, greedy="anchor", pairs_per_item=3)
    cfg.loop.max_steps = 1
    dpo.train(cfg, log=lambda *a: None)
    recs = [json.loads(x) for x in (tmp_path / "run" / "preferences.jsonl").read_text().splitlines()]
    more = [p for r in recs for p in r.get("more", [])]
    assert more and all(p["greedy"] in ("chosen", "rejected") and p["ref_chosen"] < 0 for p in more)
    assert all(len(r.get("more", [])) <= 2 and (r["pair"] or not r.get("more")) for r in recs)
    assert len(dpo.preference_rows(recs)) == sum(1 + len(r.get("more", [])) for r in recs if r["pair"])


# ------------------------------------------------------------------------------------ select: guard / best


def _projector(path):
    from safetensors.torch import load_file

    return load_file(path / "projector.safetensors")


def test_select_dev_scores_every_checkpoint_with_the_fact_judge(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    cfg = _cfg(tmp_path, dev_with_facts(tiny_data), select="best", select_max_new_tokens=6)
    cfg.loop.save_every = 1
    logs = []
    final = dpo.train(cfg, log=logs.append)
    rec = json.loads((tmp_path / "run" / "select.json").read_text())
    assert sorted(rec["scores"]) == ["0", "1", "2"] and all(0.0 <= v <= 1.0 for v in rec["scores"].values())
    best = rec["best"]
    assert rec["scores"][str(best)] == max(rec["scores"].values())
    # the earliest of the best scores wins, and only its folder is kept
    assert best == min(int(k) for k, v in rec["scores"].items() if v == max(rec["scores"].values()))
    assert [p.name for p in (tmp_path / "run").glob("best-step-*")] == [f"best-step-{best:07d}"]
    kept = _projector(tmp_path / "run" / f"best-step-{best:07d}")
    assert all((kept[k] == v).all() for k, v in _projector(final).items())
    assert any(x.startswith("dpo: dev fact F1 by step (2 items) 0: ") for x in logs)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "dev_select" in r] == [0, 1, 2]


def _scripted_select(tmp_path, tiny_data, monkeypatch, scores, select, logs=None, **kw):
    """A 2-step DPO run (a checkpoint every step) whose dev scores are `scores`, in the order asked."""
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    script = iter(scores)
    monkeypatch.setattr(dpo, "dev_fact_f1", lambda *a: next(script))
    cfg = _cfg(tmp_path, dev_with_facts(tiny_data), select=select, **kw)
    cfg.loop.save_every = 1
    return dpo.train(cfg, log=(logs.append if logs is not None else lambda *a: None))


@pytest.mark.parametrize("scores,best", [([0.5, 0.2, 0.3], 0), ([0.2, 0.3, 0.6], 2), ([0.2, 0.4, 0.4], 1)])
def test_select_dev_hands_on_the_best_step_or_the_starting_model(tmp_path, tiny_data, monkeypatch, scores, best):
    logs = []
    final = _scripted_select(tmp_path, tiny_data, monkeypatch, scores, "best", logs)
    assert json.loads((tmp_path / "run" / "select.json").read_text())["best"] == best
    start = _projector(tmp_path / "run" / "checkpoints" / "step-0000002" / "model")  # the last step's weights
    got = _projector(final)
    if best == 0:  # the starting model: the projector is frozen by default, so compare the LoRA weights
        from safetensors.torch import load_file

        init_lora = load_file(tmp_path / "run" / "best-step-0000000" / "adapter" / "adapter_model.safetensors")
        fin_lora = load_file(final / "adapter" / "adapter_model.safetensors")
        assert all((fin_lora[k] == v).all() for k, v in init_lora.items())
        last = load_file(tmp_path / "run" / "checkpoints" / "step-0000002" / "model" / "adapter" / "adapter_model.safetensors")
        assert any((last[k] != v).any() for k, v in init_lora.items())  # training did move them
        assert "final = the starting model (no scored step beat it on dev)" in logs[-2] + logs[-1]
    elif best == 2:
        assert all((got[k] == v).all() for k, v in start.items())
    else:
        assert any("final = step 1" in x for x in logs)


def test_select_dev_resumes_without_rescoring(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], [f"len {len(t)}" for t in texts]))
    calls = []
    monkeypatch.setattr(dpo, "dev_fact_f1", lambda *a: calls.append(1) or 0.1 * len(calls))
    cfg = _cfg(tmp_path, dev_with_facts(tiny_data), select="best")
    cfg.loop.save_every = 1
    dpo.train(cfg, log=lambda *a: None)
    assert len(calls) == 3
    cfg.loop.max_steps = 3
    dpo.train(cfg, resume=True, log=lambda *a: None)
    rec = json.loads((tmp_path / "run" / "select.json").read_text())
    assert len(calls) == 4 and sorted(rec["scores"]) == ["0", "1", "2", "3"] and rec["best"] == 3
    # a fresh run is refused in a folder that holds one; in one without checkpoints (a run killed
    # before its first save) it forgets the old scores
    cfg.loop.max_steps = 1
    with pytest.raises(common.InputError, match="already holds a run"):
        dpo.train(cfg, log=lambda *a: None)
    for sub in ("checkpoints", "final"):
        shutil.rmtree(tmp_path / "run" / sub)
    dpo.train(cfg, log=lambda *a: None)
    assert sorted(json.loads((tmp_path / "run" / "select.json").read_text())["scores"]) == ["0", "1"]


def test_select_dev_without_known_facts_is_a_clear_error(tmp_path, tiny_data):
    cfg = _cfg(tmp_path, tiny_data, select="best")
    with pytest.raises(ValueError, match=r"select: best needs dev items with known facts, and .*/dev has none"):
        dpo.train(cfg, log=lambda *a: None)


@pytest.mark.parametrize("scores,best", [([0.3, 0.2], 0), ([0.2, 0.25], 2)])
def test_select_guard_scores_only_the_start_and_the_end(tmp_path, tiny_data, monkeypatch, scores, best):
    _scripted_select(tmp_path, tiny_data, monkeypatch, scores, "guard")
    rec = json.loads((tmp_path / "run" / "select.json").read_text())
    assert sorted(rec["scores"]) == ["0", "2"] and rec["best"] == best


@pytest.mark.parametrize("scores,margin,best", [([0.30, 0.29], 0.02, 2), ([0.30, 0.27], 0.02, 0), ([0.30, 0.29], 0.0, 0)])
def test_select_guard_margin_keeps_a_last_step_within_it(tmp_path, tiny_data, monkeypatch, scores, margin, best):
    _scripted_select(tmp_path, tiny_data, monkeypatch, scores, "guard", select_margin=margin)
    assert json.loads((tmp_path / "run" / "select.json").read_text())["best"] == best


@pytest.mark.parametrize("scores,best", [([0.30, 0.35, 0.34], 2), ([0.30, 0.35, 0.32], 1), ([0.30, 0.25, 0.29], 2)])
def test_select_best_margin_takes_the_latest_step_within_it_of_the_best(tmp_path, tiny_data, monkeypatch, scores, best):
    _scripted_select(tmp_path, tiny_data, monkeypatch, scores, "best", select_margin=0.02)
    assert json.loads((tmp_path / "run" / "select.json").read_text())["best"] == best


def test_cli_train_dpo_select_without_dev_facts_is_one_line_before_any_sampling(tmp_path, tiny_data, capsys, monkeypatch):
    from speechsum.cli import main

    sampled = []
    monkeypatch.setattr(dpo, "build_preferences", lambda *a, **k: sampled.append(1))
    enc, llm = save_tiny_models(tmp_path / "models")
    capsys.readouterr()  # the tiny models' saving bars
    code = main(["train", "dpo", "--config", "configs/dpo/tiny.yaml", "init=", f"model.encoder={enc}",
                 f"model.llm={llm}", "model.stack=4", "model.projector_hidden=32", "model.lora_r=4",
                 "model.lora_alpha=8", f"data.path={tiny_data}", f"loop.out_dir={tmp_path / 'run'}",
                 "loop.bf16=false", "select=guard"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not sampled
    assert "select: guard needs dev items with known facts, and " in err[0] and err[0].endswith("/dev has none")


def test_a_negative_select_margin_is_refused(tmp_path, tiny_data):
    with pytest.raises(ValueError, match="select_margin must be >= 0, got -0.01"):
        _cfg(tmp_path, tiny_data, select="guard", select_margin=-0.01)


def test_a_preference_file_cut_by_a_kill_resumes_and_a_broken_one_names_its_line(tmp_path):
    # a kill while a record was being written left half a line; resuming raised JSONDecodeError
    path = tmp_path / "preferences.jsonl"
    whole = json.dumps({"id": "a", "pair": None}) + "\n" + json.dumps({"id": "b", "pair": None}) + "\n"
    path.write_text(whole + '{"id": "c", "pair": {"chos')
    assert [r["id"] for r in dpo.read_records(path, resuming=True)] == ["a", "b"]
    assert path.read_text() == whole  # the cut record is judged again, appended after b
    with pytest.raises(common.InputError, match=r"preferences.jsonl:2: not a preference record"):
        path.write_text(whole.replace('"b"', '"b"}{'))  # broken in the middle: not a kill's doing
        dpo.read_records(path, resuming=True)
    path.write_text(whole + '{"id": "c"')  # a file given as pairs=FILE is read as it is
    with pytest.raises(common.InputError, match=r"preferences.jsonl:3: not a preference record"):
        dpo.read_records(path)
