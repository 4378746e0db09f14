"""Style compliance: limits parsed from instructions, per-style format checks."""

import random

import pytest

from speechsum.evaluation.compliance import count_sentences, count_words, has_owner, parse_limits
from speechsum.evaluation.metrics import style_compliance


@pytest.mark.parametrize("instruction, limits", [
    ("Summarize this meeting in one sentence of at most 25 words.", {"words": ("<=", 25), "sentences": ("==", 1)}),
    ("Give me a one-line summary of the recording, under 30 words.", {"words": ("<", 30), "sentences": ("==", 1)}),
    ("Boil this meeting down to a single sentence, 20 words max.", {"words": ("<=", 20), "sentences": ("==", 1)}),
    ("TL;DR in 15 words or fewer.", {"words": ("<=", 15)}),
    ("In 3 sentences or fewer, summarize the recording.", {"sentences": ("<=", 3)}),
    ("Write a brief paragraph, no longer than four sentences.", {"sentences": ("<=", 4)}),
    ("Summarize the meeting in 5 bullet points.", {"items": ("==", 5)}),
    ("What are the 4 most important points? Use bullets.", {"items": ("==", 4)}),
    ("List at most 5 bullets.", {"items": ("<=", 5)}),
    ("Write a bulleted summary with exactly 3 items.", {"items": ("==", 3)}),
    ("Give me 2 Q&A pairs that summarize what was said.", {"items": ("==", 2)}),
    ("Turn the recording into 3 question-answer pairs.", {"items": ("==", 3)}),
    ("Which decisions were agreed? One per line.", {}),
    ("Summarize the recording.", {}),
    (None, {}),
])
def test_parse_limits(instruction, limits):
    assert parse_limits(instruction) == limits


def test_counts():
    assert count_words("- Budget: $2,500 (approved).") == 3
    assert count_sentences("Dr. Rossi approved it. Omar will send the slides at 10.45pm! Done") == 3
    assert count_sentences("- one item\n- another item") == 2
    assert count_sentences("We meet at 10 a.m. on Tuesday in St. Louis.") == 1


def check(style, text, instruction=None):
    return style_compliance(style, text, instruction)


def test_one_line_and_word_limit():
    instr = "Summarize this meeting in one sentence of at most 12 words."
    ok = check("one_line", "The team raised the warehouse budget to $2,500.", instr)
    assert ok["compliant"] and ok["score"] == 1.0 and ok["limits"] == {"words": "<=12", "sentences": "==1"}
    two = check("one_line", "The team met. They raised the budget.", instr)
    assert not two["checks"]["one_sentence"] and not two["compliant"]
    long = check("one_line", " ".join(["word"] * 13) + ".", instr)
    assert long["checks"] == {"non_empty": True, "one_line": True, "one_sentence": True, "words<=12": False,
                              "sentences==1": True}
    assert long["score"] == pytest.approx(4 / 5)


def test_bullets_count():
    text = "- Budget raised to $2,500\n* Omar sends the slides\n• Next meeting Tuesday"
    assert check("bullets", text, "Summarize in 3 bullet points.")["compliant"]
    assert not check("bullets", text, "Summarize in 4 bullet points.")["compliant"]
    assert check("bullets", "1. first\n2. second", "at most 5 bullets")["compliant"]
    prose = check("bullets", "The budget was raised. Omar sends the slides.", "Use 2 bullets.")
    assert not prose["checks"]["bullets"]


def test_paragraph():
    assert check("paragraph", "We met. We agreed. We left.", "In at most 3 sentences.")["compliant"]
    assert not check("short-paragraph", "We met. We agreed. We left. Bye.", "In at most 3 sentences.")["compliant"]
    assert not check("paragraph", "- a list\n- is not prose")["checks"]["prose"]


def test_email_shape():
    email = "Subject: Warehouse budget\n\nHi all,\n\nWe raised the warehouse budget to $2,500 today.\n\nBest,\nMarta"
    assert check("email", email, "Write an email update with a subject line.")["compliant"]
    no_greeting = check("email", "We raised the warehouse budget to $2,500 today.\n\nThanks,")
    assert no_greeting["checks"]["greeting"] is False and no_greeting["checks"]["sign_off"] is True
    no_subject = check("email", "Hello,\nWe raised the warehouse budget to $2,500 today.\nCheers",
                       "with a subject line")
    assert no_subject["checks"] == {"non_empty": True, "greeting": True, "sign_off": True, "body": True,
                                    "subject": False}


@pytest.mark.parametrize("item, owned", [
    ("Marta Rossi: send the slides by Tuesday", True),
    ("Omar will book the Birch room", True),
    ("students: read chapter 7", True),
    ("Send the slides to the team (owner: Marta)", True),
    ("Send the slides by Friday", False),
    ("Deadline: Friday", False),
])
def test_owner_patterns(item, owned):
    assert has_owner(item) is owned


def test_action_items():
    good = "- Marta: send the slides by Tuesday\n- Omar will call Nakamura Labs"
    assert check("action_items", good)["compliant"]
    bad = check("action-items", "- Send the slides by Tuesday\n- Omar will call Nakamura Labs")
    assert bad["checks"]["owners"] is False and bad["score"] == pytest.approx(2 / 3)
    assert check("action_items", "No action items were assigned.")["compliant"]


def test_title():
    assert check("title", "Warehouse budget raised", "A title of at most 5 words.")["compliant"]
    ended = check("title", "Warehouse budget raised.")
    assert ended["checks"]["no_final_period"] is False
    assert not check("title", "Warehouse budget raised\nand more")["checks"]["one_line"]
    assert not check("title", " ".join(["long"] * 13))["checks"]["short"]


def test_tldr_and_questions():
    instr = "Start with 'TL;DR:' and summarize the meeting in 10 words or fewer."
    assert check("tldr", "TL;DR: budget raised to $2,500.", instr)["compliant"]
    assert not check("tldr", "Budget raised to $2,500.", instr)["checks"]["tldr_prefix"]
    qa = "Q: What was decided?\nA: A bigger budget.\nQ: Who sends the slides?\nA: Omar."
    assert check("questions_answered", qa, "Give me 2 Q&A pairs.")["compliant"]
    assert not check("questions_answered", qa, "Give me 3 Q&A pairs.")["compliant"]
    assert not check("questions_answered", "Q: What was decided?\nQ: Who?")["checks"]["answered"]


def test_numbers_people_decisions_and_unknown_style():
    assert check("numbers-and-dates", "- $2,500 (budget)\n- Tuesday 4 March (deadline)")["compliant"]
    assert not check("numbers_dates", "- the budget\n- Tuesday 4 March")["checks"]["numbers"]
    assert check("people_roles", "- Marta Rossi, site manager\n- Omar")["compliant"]
    assert check("key_decisions", "- Raise the budget to $2,500\n- Switch supplier")["compliant"]
    assert check("key_decisions", "They agreed to raise the budget.")["compliant"]
    user = check("summary", "Anything goes here.", "Summarize in under 3 words.")
    assert user["checks"] == {"non_empty": True, "words<3": False}
    assert check("bullets", "   ")["checks"] == {"non_empty": False}


def test_rendered_targets_comply_with_their_instructions():
    # the data module renders each target to obey its instruction; the checker must agree
    styles = pytest.importorskip("speechsum.data.styles")
    from speechsum.data import documents

    for seed in range(12):
        rng = random.Random(seed)
        genre = documents.GENRES[seed % len(documents.GENRES)]
        doc = documents.make_document(f"doc{seed}", genre, rng)
        for style in styles.STYLES.values():
            target, n = styles.render_target(style, doc, rng)
            for pid, template in enumerate(style.paraphrases):
                if "{n}" in template and n is None:
                    continue
                instruction = styles.instruction_text(style, pid, genre, n)
                result = style_compliance(style.name, target, instruction)
                assert result["compliant"], (style.name, instruction, target, result["checks"])
