"""Procedural documents, instruction styles, rendered targets and the target fact check."""

import json
import random
import re
from collections import Counter

import pytest

from speechsum.data import documents, multilingual, styles
from speechsum.data.factcheck import check_target


def _docs(n=280):
    out = []
    for i in range(n):
        if i % 10 == 9:
            out.append(multilingual.make_document(f"x{i}", multilingual.LANGUAGES[i % 3], random.Random(i)))
        else:
            out.append(documents.make_document(f"d{i}", documents.GENRES[i % 7], random.Random(i)))
    return out


DOCS = _docs()


def test_every_fact_surface_form_is_in_the_transcript():
    for d in DOCS:
        text = d.transcript.lower()
        assert d.facts
        for f in d.facts:
            assert f.mention.lower() in text, (d.doc_id, f)
        json.dumps(d.to_json())  # serializable ground truth


def test_genres_vary_in_length_register_and_fact_kinds():
    words = {g: [len(d.transcript.split()) for d in DOCS if d.genre == g and d.language == "en"]
             for g in documents.GENRES}
    assert max(words["voicemail"]) < 90  # ~20-35 s of speech
    assert max(words["meeting"]) > 300  # a few minutes
    kinds = Counter(f.kind for d in DOCS for f in d.facts)
    for k in ("person", "money", "date", "time", "decision", "action", "disagreement", "percent", "place"):
        assert kinds[k] > 0, k
    assert {d.register for d in DOCS} == {"formal", "neutral", "casual"}
    casual = " ".join(d.transcript for d in DOCS if d.register == "casual")
    assert " um, " in casual or " uh, " in casual
    assert {d.language for d in DOCS} == {"en", "es", "fr", "de"}


def test_people_called_by_first_name_only_are_not_given_surnames():
    for d in DOCS:
        for f in d.of_kind("person"):
            assert f.value in d.transcript
            if f.attrs.get("role"):
                assert f.attrs["role"] in d.transcript


def test_styles_inventory():
    assert len(styles.STYLES) >= 10
    assert all(len(s.paraphrases) >= 5 for s in styles.STYLES.values())
    assert len(styles.HELD_OUT_STYLES) >= 2
    for s in styles.STYLES.values():
        kinds = [styles.held_out_kind(s, i) for i in range(len(s.paraphrases))]
        assert set(kinds) == ({"style"} if s.held_out else {"", "paraphrase"})
        if s.limit:
            assert any("{n}" in p for p in s.paraphrases)
    rng = random.Random(0)
    for name in styles.TRAIN_STYLES:
        s = styles.STYLES[name]
        assert all(styles.held_out_kind(s, styles.choose_paraphrase(s, rng, False)) == "" for _ in range(50))
    with pytest.raises(ValueError):
        styles.choose_paraphrase(styles.STYLES[styles.HELD_OUT_STYLES[0]], rng, False)


def test_rendered_targets_state_only_document_facts_and_obey_limits():
    for d in DOCS:
        values = [f.value for f in d.facts]
        for s in styles.STYLES.values():
            target, n = styles.render_target(s, d, random.Random(d.doc_id))
            assert target.strip()
            assert check_target(target, d.transcript, values) == [], (d.doc_id, s.name, target)
            if s.limit == "words":
                assert len(target.split()) <= n
            elif s.limit == "bullets" and s.name == "bullets":
                assert target.count("\n- ") + 1 == n
            elif s.limit == "sentences":
                assert len(re.split(r"(?<=\.) ", target)) <= n
            for pid in range(len(s.paraphrases)):
                assert "{" not in styles.instruction_text(s, pid, d.genre, n)


def test_fact_check_catches_foreign_entities_and_numbers():
    d = DOCS[0]
    values = [f.value for f in d.facts]
    other = next(x for x in DOCS[1:] if x.language == "en")
    foreign = next(f.value for f in other.of_kind("person") if f.value.split()[0] not in d.transcript)
    assert check_target(f"{foreign} will send the report.", d.transcript, values)
    assert check_target("The budget is $987,654,321.", d.transcript, values) == ["number 987654321 is not in the document"]
    money = d.of_kind("money", "count")[0].value
    assert check_target(f"The figure was {money}.", d.transcript, values) == []
