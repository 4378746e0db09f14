"""Fact recall, claim precision and hallucinated facts of a summary of a document with known facts.

Recall: the share of the document's salient facts (`speechsum.data.documents.Fact`) that the
summary states. A fact is decomposed into atoms - numbers, amounts, dates, times, phone numbers
and names, normalized by `claims.py` so any accepted surface form matches ("$2,500" = "2,500
dollars" = "two and a half thousand dollars"; a date = its day and month, or its weekday; a
person = any part of the name) - plus the content words of its value. A fact is stated when all
its atoms are in the summary and enough of its content words are (`CONTENT_SHARE`, on crude
stems, so "raised the budget" states "raise the budget").

Precision and hallucination: every claim the summary makes (names, numbers, money, percents,
dates, weekdays, months, times, phone numbers) must be supported by the transcript or the facts'
values; an unsupported claim is a hallucinated fact. Precision is the share of supported claims
(1.0 when the summary makes none: it stated nothing false).

Everything here is a heuristic over surface forms, tuned to the procedural documents; it
compares systems fairly (all are scored by the same rules) rather than proving truth.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from speechsum.data.numbers import MONTHS, WEEKDAYS
from speechsum.evaluation.claims import Claim, extract_claims, name_parts, number_claims

SALIENT_KINDS = ("person", "org", "place", "project", "topic", "money", "count", "percent", "date", "time", "year",
                 "phone", "decision", "action", "disagreement")
_ENTITY_KINDS = ("org", "place", "project", "room")
# Share of a fact's content words (stems) the summary must contain besides the fact's atoms.
# Other kinds need only their atoms: a count is its number, a disagreement its two people and two
# amounts however it is phrased. Entities without a distinctive name ("the main boardroom") need
# all their words.
CONTENT_SHARE = {"topic": 0.6, "decision": 0.5, "action": 0.5, "org": 1.0, "place": 1.0, "project": 1.0,
                 "room": 1.0}
_NUMERIC = ("number", "money", "percent")

_FUNCTION_WORDS = frozenset("""
a an the of to and or in on at by for from with as is was were be been are will would should could can may
that this these those it its their they we our he she his her them us you your i me my not no but if then
than so also about into over under up down out off after before until during per via which who whom what
when where why how there here just only very more most some any each every all both other such own too
again once least wanted argued dollars euros pounds percent per cent
""".split())
_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")


def _stem(word: str) -> str:
    """Crude suffix stripping: raise/raised/raising -> rais, pallets -> pallet."""
    w = word.lower()
    for suffix in ("ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[: -len(suffix)]
            break
    return w[:-1] if w.endswith("e") and len(w) > 3 else w


def _words(text: str) -> set[str]:
    return {w.lower().removesuffix("'s").removesuffix("’s") for w in _WORD.findall(text)}


# ---------------------------------------------------------------------------------------------
# what a text contains, normalized


@dataclasses.dataclass
class _View:
    numbers: set[float]
    dates: set[tuple[int, int]]
    weekdays: set[str]
    months: set[str]
    times: list[tuple]
    phones: set[str]
    words: set[str]
    stems: set[str]

    @classmethod
    def of(cls, text: str, claims: Iterable[Claim] | None = None) -> _View:
        claims = number_claims(text) if claims is None else claims
        v = cls(set(), set(), set(), set(), [], set(), _words(text), set())
        v.stems = {_stem(w) for w in v.words}
        for c in claims:
            if c.kind in _NUMERIC:
                v.numbers.add(round(float(c.value), 6))
            elif c.kind == "date":
                v.dates.add(c.value)
                v.months.add(MONTHS[c.value[0] - 1])
            elif c.kind == "weekday":
                v.weekdays.add(c.value)
            elif c.kind == "month":
                v.months.add(c.value)
            elif c.kind == "time":
                v.times.append(c.value)
            elif c.kind == "phone":
                v.phones.add(c.value)
        return v


def _same_time(a: tuple, b: tuple) -> bool:
    """(h12, minute, am/pm or None): a missing am/pm ("10:45") matches either."""
    return a[:2] == b[:2] and (a[2] is None or b[2] is None or a[2] == b[2])


def _has(view: _View, kind: str, value: Any) -> bool:
    if kind in _NUMERIC:
        return round(float(value), 6) in view.numbers
    if kind == "date":
        return value in view.dates
    if kind == "weekday":
        return value in view.weekdays
    if kind == "month":
        return value in view.months
    if kind == "time":
        return any(_same_time(value, t) for t in view.times)
    if kind == "phone":
        return value in view.phones
    if kind == "word":
        return value in view.words
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------
# recall: is a fact stated?


Atom = list[tuple[str, Any]]  # alternatives: the atom is present when any one is


def _fields(fact: Any) -> tuple[str, str, str, Mapping]:
    if isinstance(fact, Mapping):
        return fact["id"], fact["kind"], fact["value"], fact.get("attrs") or {}
    return fact.id, fact.kind, fact.value, fact.attrs


def _name_atom(name: str) -> Atom:
    parts = name_parts(name) or _WORD.findall(name)
    return [("word", p.lower()) for p in parts]


def fact_atoms(kind: str, value: str) -> tuple[list[Atom], list[str]]:
    """(atoms, content stems) of a fact value."""
    if kind == "person":
        return [_name_atom(value)], []
    if kind in _ENTITY_KINDS and name_parts(value):
        # every distinctive word: "Port Kelda" is not stated by "Port"
        return [[("word", p.lower())] for p in name_parts(value)], []
    claims = [c for c in extract_claims(value) if c.kind != "name" or kind in ("decision", "action", "disagreement")]
    atoms: list[Atom] = []
    covered: set[str] = set()
    for i, c in enumerate(claims):
        covered |= _words(c.surface)
        if c.kind == "name":
            atoms.append(_name_atom(c.value))
        elif c.kind == "weekday" and i + 1 < len(claims) and claims[i + 1].kind == "date" \
                and claims[i + 1].start - c.end <= 2:
            continue  # "Thursday 14 March": one atom with the date, below
        elif c.kind == "date" and i > 0 and claims[i - 1].kind == "weekday" and c.start - claims[i - 1].end <= 2:
            atoms.append([("date", c.value), ("weekday", claims[i - 1].value)])
        else:
            atoms.append([(c.kind, c.value)])
    content = [w for w in _words(value) - covered if w not in _FUNCTION_WORDS]
    return atoms, sorted({_stem(w) for w in content})


def fact_stated(kind: str, value: str, summary: _View) -> bool:
    atoms, content = fact_atoms(kind, value)
    if not atoms and not content:
        return False
    if not all(any(_has(summary, k, v) for k, v in atom) for atom in atoms):
        return False
    if not content:
        return True
    share = CONTENT_SHARE.get(kind, 0.0)
    return sum(s in summary.stems for s in content) >= share * len(content)


# ---------------------------------------------------------------------------------------------
# precision: is a claim supported?


def _supported(claim: Claim, allowed: _View) -> bool:
    if claim.kind == "name":
        return all(w in allowed.words for w in _words(claim.value))
    if claim.kind == "phone" and claim.value not in allowed.phones:
        return any(claim.value in p for p in allowed.phones)
    return _has(allowed, claim.kind, claim.value)


def item_facts(item: Mapping[str, Any]) -> list[dict]:
    """A dataset item's known facts (its manifest's JSON `facts`; none for items without)."""
    return json.loads(item["facts"]) if item.get("facts") else []


def score_item(item: Mapping[str, Any], summary: str) -> dict[str, Any] | None:
    """`score_summary` of a summary of a dataset item (its facts, transcript and instruction, as
    eval and the report read them); None when the item has no known facts."""
    facts = item_facts(item)
    return score_summary(summary, facts, item["transcript"], context=item["instruction"]) if facts else None


def _allowed(fields: list[tuple], transcript: str, context: str) -> tuple[_View, frozenset[str]]:
    """What a summary may claim (the transcript, the context, the facts' values) and the document's
    vocabulary: one definition of "invented" for scoring and for correcting."""
    allowed = _View.of("\n".join([transcript, context] + [v for _, _, v, _ in fields]))
    return allowed, frozenset(allowed.words)


def score_summary(summary: str, facts: Sequence[Any], transcript: str, kinds: Sequence[str] = SALIENT_KINDS,
                  context: str = "") -> dict[str, Any]:
    """Fact recall/precision/F1 and hallucinated claims of one summary.

    `facts` are `Fact` objects or their dicts (the manifest's JSON); `kinds` picks the salient
    facts that recall counts; `context` is extra allowed material (e.g. the instruction, whose
    "5 bullet points" a summary may repeat).
    """
    fields = [_fields(f) for f in facts]
    salient = [(fid, kind, value) for fid, kind, value, _ in fields if kind in kinds]
    view = _View.of(summary)
    stated = [fid for fid, kind, value in salient if fact_stated(kind, value, view)]

    allowed, doc_words = _allowed(fields, transcript, context)
    claims = extract_claims(summary, known_words=doc_words)
    unique: dict[tuple, Claim] = {}
    for c in claims:
        key = (c.kind, c.value.lower() if c.kind == "name" else c.value)
        unique.setdefault(key, c)
    false = [c for c in unique.values() if not _supported(c, allowed)]

    recall = len(stated) / len(salient) if salient else None
    precision = 1.0 - len(false) / len(unique) if unique else 1.0
    f1 = None
    if recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "recall": recall, "precision": precision, "f1": f1,
        "n_facts": len(salient), "n_stated": len(stated),
        "missed": [fid for fid, _, _ in salient if fid not in stated],
        "n_claims": len(unique), "n_hallucinated": len(false),
        "hallucinated": [c.surface for c in false],
        "hallucinated_spans": [[c.start, c.end] for c in false],
    }


# ---------------------------------------------------------------------------------------------
# correction: an invented claim replaced by the document's nearest claim of the same kind

_NAMED_KINDS = ("person", "org", "place", "project")


def _distance(kind: str, a: Any, b: Any) -> float:
    """How far apart two claim values of one kind are: the nearest document value is the likeliest
    reading of a garbled one (a misheard name, a neighbouring day, an amount off by a digit)."""
    if kind in _NUMERIC:
        a, b = float(a), float(b)
        return abs(math.log(a / b)) if a > 0 and b > 0 else abs(a - b) + 1e9
    if kind == "date":
        return abs((a[0] * 31 + a[1]) - (b[0] * 31 + b[1]))
    if kind == "weekday":
        d = abs(WEEKDAYS.index(a) - WEEKDAYS.index(b)) if a in WEEKDAYS and b in WEEKDAYS else 7
        return min(d, 7 - d)
    if kind == "month":
        return abs(MONTHS.index(a) - MONTHS.index(b)) if a in MONTHS and b in MONTHS else 12
    if kind == "time":
        return abs((a[0] % 12 * 60 + a[1]) - (b[0] % 12 * 60 + b[1])) + (a[2] != b[2]) * 0.5
    return 1.0 - difflib.SequenceMatcher(None, str(a).lower(), str(b).lower()).ratio()


def _value_key(c: Claim) -> tuple:
    return (c.kind, round(float(c.value), 6) if c.kind in _NUMERIC else str(c.value).lower())


def correct_summary(summary: str, facts: Sequence[Any], transcript: str, context: str = "",
                    kinds: Sequence[str] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The summary with every invented claim (as `score_summary` counts them) replaced by the
    document's nearest supported claim of the same kind, as the document writes it: the
    fine-grained correction of a hallucination (RLHF-V, Yu et al. 2023) made from known facts
    instead of a human editor. Returns (corrected text, [(invented surface, replacement)]); a claim
    whose kind the document never states (an amount in a document without amounts), or whose every
    same-kind value already replaced another invented value, stays as it is. The rest of the text
    is untouched, so the two versions differ only where the claims were. `kinds`: correct only
    claims of these kinds (`claims.CLAIM_KINDS`; None: all)."""
    fields = [_fields(f) for f in facts]
    allowed, known = _allowed(fields, transcript, context)
    # what the document states, each as written: the transcript's claims and the named facts
    # (the facts' values first: where both state a value, the written form "$2,500" wins over a
    # spoken one, "two and a half thousand dollars")
    doc = [c for c in extract_claims("\n".join([v for _, _, v, _ in fields] + [transcript]), known_words=known)
           if _supported(c, allowed)]
    doc += [Claim("name", v, v, 0, 0) for _, kind, v, _ in fields if kind in _NAMED_KINDS and name_parts(v)]
    claims = extract_claims(summary, known_words=known)
    out, edits, pos = [], [], 0
    fixed: dict[tuple, Claim] = {}  # an invented value -> its replacement, the same at every mention
    # each document value stands in for one invented value at most, and never for one the summary
    # already states: three different wrong amounts do not all become the document's one amount
    used = {_value_key(c) for c in claims if _supported(c, allowed)}
    for c in claims:
        if c.start < pos or _supported(c, allowed) or (kinds is not None and c.kind not in kinds):
            continue
        key = _value_key(c)
        if key not in fixed:
            same = [d for d in doc if d.kind == c.kind and _value_key(d) not in used]
            if not same:
                continue
            fixed[key] = min(same, key=lambda d: _distance(c.kind, c.value, d.value))  # first of equals
            used.add(_value_key(fixed[key]))
        # a claim read with the full stop after it ("4:10 pm.") keeps the original's punctuation
        surface = fixed[key].surface.removesuffix(".") + ("." if c.surface.endswith(".") else "")
        out += [summary[pos:c.start], surface]
        edits.append((c.surface, surface))
        pos = c.end
    out.append(summary[pos:])
    return "".join(out), edits


def aggregate(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Macro means over summaries (recall/F1 only where the document had facts) and micro rates."""
    def mean(key: str) -> float | None:
        xs = [r[key] for r in results if r[key] is not None]
        return sum(xs) / len(xs) if xs else None

    n = len(results)
    claims = sum(r["n_claims"] for r in results)
    false = sum(r["n_hallucinated"] for r in results)
    facts = sum(r["n_facts"] for r in results)
    return {
        "n": n,
        "recall": mean("recall"), "precision": mean("precision"), "f1": mean("f1"),
        "micro_recall": sum(r["n_stated"] for r in results) / facts if facts else None,
        "hallucination_rate": false / claims if claims else 0.0,  # share of all claims unsupported
        "hallucinated_per_summary": false / n if n else 0.0,
        "summaries_with_hallucination": sum(r["n_hallucinated"] > 0 for r in results) / n if n else 0.0,
    }
