"""Fact recall and hallucinated facts on a hand-made document."""

import dataclasses
import random

import pytest

from speechsum.data.documents import Fact
from speechsum.evaluation.facts import _View, aggregate, correct_summary, fact_stated, score_summary

TRANSCRIPT = (
    "Hi, Marta Rossi here from Nakamura Labs. We have twelve engineers on the warehouse move. "
    "We've decided to raise the budget for the warehouse move to two and a half thousand dollars. "
    "Omar, can you send the slides to Marta by March 4th? Sure. "
    "We meet again at quarter to eleven in the evening."
)
FACTS = [
    Fact("person:0", "person", "Marta Rossi", "Marta Rossi"),
    Fact("person:1", "person", "Omar", "Omar"),
    Fact("org:0", "org", "Nakamura Labs", "Nakamura Labs"),
    Fact("count:0", "count", "12 engineers", "twelve engineers", {"about": "the warehouse move"}),
    Fact("money:0", "money", "$2,500", "two and a half thousand dollars", {"about": "the warehouse move"}),
    Fact("decision:0", "decision", "raise the budget for the warehouse move to $2,500",
         "raise the budget for the warehouse move to two and a half thousand dollars", {"form": "vp"}),
    Fact("date:0", "date", "Tuesday 4 March", "March 4th"),
    Fact("action:0", "action", "Omar: send the slides to Marta Rossi by Tuesday 4 March", "send the slides to Marta",
         {"owner": "person:1"}),
    Fact("time:0", "time", "10:45 pm", "quarter to eleven in the evening", {"about": "next meeting"}),
]
COMPLETE = ("Marta Rossi of Nakamura Labs has 12 engineers on the warehouse move. The team raised the budget "
            "for the warehouse move to $2,500. Omar will send the slides to Marta by Tuesday, March 4. "
            "They meet again at 10:45 pm.")


def score(summary, facts=FACTS, **kw):
    return score_summary(summary, facts, TRANSCRIPT, **kw)


def test_summary_with_all_facts():
    r = score(COMPLETE)
    assert r["recall"] == 1.0 and r["n_facts"] == 9 and r["missed"] == []
    assert r["n_hallucinated"] == 0 and r["hallucinated"] == [] and r["precision"] == 1.0 and r["f1"] == 1.0
    assert r["n_claims"] == 9  # Marta Rossi, Nakamura Labs, 12, $2,500, Omar, Tuesday, March 4, Marta, 10:45 pm


def test_changed_amount_is_flagged():
    summary = COMPLETE.replace("$2,500", "$3,000")
    r = score(summary)
    assert r["hallucinated"] == ["$3,000"] and r["n_hallucinated"] == 1
    assert summary[slice(*r["hallucinated_spans"][0])] == "$3,000"
    assert sorted(r["missed"]) == ["decision:0", "money:0"]
    assert r["recall"] == pytest.approx(7 / 9)
    assert r["precision"] == pytest.approx(8 / 9)
    assert r["f1"] == pytest.approx(2 * (7 / 9) * (8 / 9) / (7 / 9 + 8 / 9))


@pytest.mark.parametrize("form", ["2,500 dollars", "two and a half thousand dollars", "$2.5k",
                                  "twenty-five hundred dollars"])
def test_paraphrased_number_still_matches(form):
    r = score(COMPLETE.replace("$2,500", form))
    assert r["recall"] == 1.0 and r["n_hallucinated"] == 0


def test_partial_forms_of_names_dates_and_times():
    view = _View.of("Rossi and Omar meet on Tuesday, quarter to eleven at night.")
    assert fact_stated("person", "Marta Rossi", view)  # surname
    assert fact_stated("date", "Tuesday 4 March", view)  # weekday alone
    assert fact_stated("time", "10:45 pm", view)
    assert not fact_stated("time", "10:45 am", view)
    assert not fact_stated("org", "Nakamura Labs", _View.of("Some Labs"))
    assert fact_stated("date", "Tuesday 4 March", _View.of("due 4th of March"))
    # an action needs its owner, its people, its deadline and most of its task words
    action = "Omar: send the slides to Marta Rossi by Tuesday 4 March"
    assert fact_stated("action", action, _View.of("Omar sends Marta the slides by March 4."))
    assert not fact_stated("action", action, _View.of("Omar sends Marta the slides by March 5."))
    assert not fact_stated("action", action, _View.of("Marta sends the slides by March 4."))


def test_invented_entities():
    r = score("Omar and John Smith will send the slides on Friday at 9 am to Lisbon. Marta has 14 engineers.")
    assert r["hallucinated"] == ["John Smith", "Friday", "9 am", "Lisbon", "14"]
    assert r["n_claims"] == 7 and r["precision"] == pytest.approx(2 / 7)


def test_instruction_numbers_are_allowed_context():
    assert score("Here are 3 points:\n1. Omar sends the slides.")["hallucinated"] == ["3"]
    assert score("Here are 3 points:\n1. Omar sends the slides.", context="Give me 3 points.")["hallucinated"] == []


def test_dict_facts_and_kinds():
    as_dicts = [dataclasses.asdict(f) for f in FACTS]
    assert score(COMPLETE, as_dicts) == score(COMPLETE)
    r = score("Omar has the slides.", kinds=("person",))
    assert r["recall"] == 0.5 and r["missed"] == ["person:0"]
    empty = score("Nothing happened.", facts=[])
    assert empty["recall"] is None and empty["f1"] is None and empty["precision"] == 1.0


def test_aggregate():
    results = [score(COMPLETE), score(COMPLETE.replace("$2,500", "$3,000")), score("x", facts=[])]
    agg = aggregate(results)
    assert agg["n"] == 3
    assert agg["recall"] == pytest.approx((1 + 7 / 9) / 2)
    assert agg["micro_recall"] == pytest.approx(16 / 18)
    assert agg["hallucination_rate"] == pytest.approx(1 / 18)
    assert agg["hallucinated_per_summary"] == pytest.approx(1 / 3)
    assert agg["summaries_with_hallucination"] == pytest.approx(1 / 3)


def test_rendered_targets_state_no_invented_facts():
    # targets rendered from a document's facts can only state what it states
    styles = pytest.importorskip("speechsum.data.styles")
    from speechsum.data import documents

    for seed in range(10):
        rng = random.Random(seed)
        genre = documents.GENRES[seed % len(documents.GENRES)]
        doc = documents.make_document(f"doc{seed}", genre, rng)
        for style in styles.STYLES.values():
            target, _ = styles.render_target(style, doc, rng)
            r = score_summary(target, doc.facts, doc.transcript)
            assert r["hallucinated"] == [], (style.name, target)
        # all targets together state every decision, action, disagreement and amount
        text = "\n".join(styles.render_target(s, doc, rng)[0] for s in styles.STYLES.values())
        core = ("decision", "action", "disagreement", "money", "date", "person")
        r = score_summary(text, doc.facts, doc.transcript, kinds=core)
        assert r["recall"] == 1.0, r["missed"]


def test_correct_summary_puts_the_nearest_document_value_in_place_of_each_invention():
    wrong = (COMPLETE.replace("$2,500", "$3,000").replace("Marta Rossi of", "Marla Rossa of")
             .replace("10:45 pm", "10:15 pm"))
    assert score(wrong)["n_hallucinated"] == 3
    fixed, edits = correct_summary(wrong, FACTS, TRANSCRIPT)
    # the facts' written forms, not the transcript's spoken ones; the rest of the text untouched
    assert fixed == COMPLETE
    assert edits == [("Marla Rossa", "Marta Rossi"), ("$3,000", "$2,500"), ("10:15 pm.", "10:45 pm.")]
    assert correct_summary(COMPLETE, FACTS, TRANSCRIPT) == (COMPLETE, [])


def test_correct_summary_never_maps_two_inventions_onto_one_value():
    # one amount in the document: it replaces the nearer wrong amount (both mentions of it); the
    # other stays, as does a kind the document never states (a percentage)
    summary = "Budget $3,000, later $3,000 again, or $90,000, up 40%."
    fixed, edits = correct_summary(summary, FACTS, TRANSCRIPT)
    assert fixed == "Budget $2,500, later $2,500 again, or $90,000, up 40%."
    assert edits == [("$3,000", "$2,500"), ("$3,000", "$2,500")]
    # a value the summary already states is not used again for an invented one
    assert correct_summary("$2,500 now and $3,000 later.", FACTS, TRANSCRIPT)[1] == []
