"""Claim extraction: every accepted surface form normalizes to one value."""

import pytest

from speechsum.evaluation.claims import extract_claims, name_claims, number_claims, rewrite_number_words


def values(text, kind=None):
    return [(c.kind, c.value) for c in number_claims(text) if kind is None or c.kind == kind]


@pytest.mark.parametrize("words, digits", [
    ("two and a half thousand dollars", "2500 dollars"),
    ("twenty-five hundred dollars", "2500 dollars"),
    ("one point five million", "1500000"),
    ("a thousand people", "1000 people"),
    ("two hundred and five", "205"),
    ("two thousand and seven", "2007"),
    ("nineteen ninety-eight", "1998"),
    ("twenty twenty-five", "2025"),
    ("the fourteenth of March", "the 14th of March"),
    ("twenty-first", "21st"),
    ("five six", "5 6"),
    ("one of them, zero", "one of them, zero"),  # lone small words stay words
])
def test_number_words(words, digits):
    assert rewrite_number_words(words).text == digits


@pytest.mark.parametrize("text", ["$2,500", "2,500 dollars", "two and a half thousand dollars",
                                  "twenty-five hundred dollars", "$2.5k", "2500 dollars"])
def test_money_forms(text):
    assert values(text) == [("money", 2500.0)]


def test_other_kinds():
    assert values("$1.2 million") == [("money", 1_200_000.0)]
    assert values("45 per cent, 45%, forty-five percent") == [("percent", 45.0)] * 3
    for text in ("10.45pm", "10:45 pm", "22:45", "quarter to eleven in the evening"):
        assert values(text) == [("time", (10, 45, "pm"))], text
    assert values("half past ten") == [("time", (10, 30, None))]
    assert values("9am") == [("time", (9, 0, "am"))]
    for text in ("March 14", "March 14th", "14 March", "the fourteenth of March", "14th of March"):
        assert values(text) == [("date", (3, 14))], text
    assert values("Thursday, March 14") == [("weekday", "Thursday"), ("date", (3, 14))]
    assert values("by tuesday in May") == [("weekday", "Tuesday"), ("month", "May")]
    assert values("you may go") == []
    assert values("call 555 123 4567") == [("phone", "5551234567")]
    assert values("3,819 meals and 1998") == [("number", 3819.0), ("number", 1998.0)]


def test_list_numbering_and_ordinals_are_not_claims():
    assert values("1. We hired 5 people.\n2) The 3rd item") == [("number", 5.0)]


def test_a_number_glued_to_a_name_by_a_hyphen_is_not_a_claim():
    # a correction pair once turned "COVID-19" into "COVID-6": the 19 is part of the name
    assert values("COVID-19 cost 40 jobs in room B-12") == [("number", 40.0)]
    assert values("between 10-20 people") == [("number", 10.0), ("number", 20.0)]


def test_surface_and_span_point_into_the_original_text():
    text = "They spent two and a half thousand dollars on it."
    (claim,) = number_claims(text)
    assert claim.surface == "two and a half thousand dollars"
    assert text[claim.start:claim.end] == claim.surface


def test_names():
    text = "Marta Rossi met Omar in Lisbon. Nakamura Labs agreed. Budget is fine. John will call. Overall fine."
    names = [c.value for c in name_claims(text, known_words=frozenset({"budget"}))]
    # "Budget" opens a sentence and is a document word; "John" opens one but a verb follows
    assert names == ["Marta Rossi", "Omar", "Lisbon", "Nakamura Labs", "John"]
    assert [c.value for c in name_claims("- Subject: Meeting: Project Falcon")] == ["Falcon"]
    kinds = [c.kind for c in extract_claims("Omar will pay $300 on Friday.")]
    assert kinds == ["name", "money", "weekday"]
