"""Checkable claims in free text: names, numbers, money, percents, dates, weekdays, months, times
and phone numbers, each with a normalized value so different surface forms compare equal.

"$2,500", "2,500 dollars", "two and a half thousand dollars", "twenty-five hundred dollars" and
"$2.5k" all become money 2500.0; "quarter to eleven in the evening", "10.45pm" and "22:45" all
become the time (10, 45, "pm"); "the fourteenth of March" and "March 14th" the date (3, 14).

Number words are first rewritten as digits (keeping a map back to the original text, so every
claim carries its original surface and span), then one pass of patterns per kind runs over the
rewritten text, most specific first (phone, time, date, money, percent, plain number); a span
claimed by one kind is not claimed again by a later one.

Names are heuristics (see `_name_claims`): capitalised words that are known pool entities, or
that are capitalised where an ordinary word would not be.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Hashable

from speechsum.data.numbers import MONTHS, WEEKDAYS

_UNITS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_TENS = {w: 10 * (i + 2) for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split())}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_ORDINALS = {w: i + 1 for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth".split())}
_ORDINALS.update({w: 10 * (i + 2) for i, w in enumerate(
    "twentieth thirtieth fortieth fiftieth sixtieth seventieth eightieth ninetieth".split())})
_NUMBER_WORD = set(_UNITS) | set(_TENS) | set(_SCALES) | set(_ORDINALS) | {"hundred"}
# a run of number words and the glue between them ("two and a half thousand", "one point five")
_RUN = re.compile(r"\b(?:%s)(?:[\s-]+(?:%s|and|a|half|point))*\b" % (
    "|".join(sorted(_NUMBER_WORD | {"a"}, key=len, reverse=True)),
    "|".join(sorted(_NUMBER_WORD, key=len, reverse=True))), re.I)

_MONTH_RE = "|".join(MONTHS)
_WEEKDAY_RE = "|".join(WEEKDAYS)
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_MULT = {"k": 10**3, "thousand": 10**3, "m": 10**6, "million": 10**6, "mn": 10**6, "bn": 10**9, "billion": 10**9}
_PERIOD = r"(?:\s+(?P<period>in the morning|in the afternoon|in the evening|at night|tonight))?"

KINDS = ("name", "number", "money", "percent", "date", "weekday", "month", "time", "phone")


@dataclasses.dataclass(frozen=True)
class Claim:
    kind: str  # one of KINDS
    # float (number, money, percent); (month, day); "Tuesday"; "March"; (h12, minute, "am"|"pm"|None);
    # phone digits; the name as written
    value: Hashable
    surface: str  # as written in the original text
    start: int
    end: int


# ---------------------------------------------------------------------------------------------
# number words -> digits


def _parse_words(words: list[str]) -> list[tuple[float, bool, int, int]]:
    """Numbers in a run of number words: (value, is_ordinal, first word, last word) each."""
    out, i = [], 0
    while i < len(words):
        value, ordinal, j = _parse_one(words, i)
        if j == i:
            i += 1
            continue
        out.append((value, ordinal, i, j - 1))
        i = j
    return out


def _parse_one(w: list[str], i: int) -> tuple[float, bool, int]:
    """One number starting at word i: (value, ordinal, index after it); index i when none."""
    total, current, last, j = 0.0, 0.0, None, i

    def at(k: int) -> str:
        return w[k] if k < len(w) else ""

    while j < len(w):
        t = w[j]
        if t == "a" and last is None and (at(j + 1) == "hundred" or at(j + 1) in _SCALES):
            current, last = 1, "unit"  # "a thousand dollars"
        elif t in _UNITS:
            n = _UNITS[t]
            if last == "tens" and n >= 10 and current == 20 and total == 0:
                current = 2000 + n  # "twenty fifteen"
                last = "teen"
                j += 1
                continue
            if last in ("unit", "teen") or (last == "tens" and n >= 10):
                break  # "five six": two numbers
            current += n
            last = "teen" if n >= 10 else "unit"
        elif t in _TENS:
            if total == 0 and (last == "teen" or (last == "tens" and current == 20)):
                current *= 100  # a year said in pairs: "nineteen ninety-eight", "twenty twenty-five"
            elif last in ("unit", "tens", "teen"):
                break
            current += _TENS[t]
            last = "tens"
        elif t in _ORDINALS:
            n = _ORDINALS[t]
            if last in ("unit", "teen") or (last == "tens" and n >= 10):
                break
            return total + current + n, True, j + 1  # an ordinal ends the number: "twenty-first"
        elif t == "hundred":
            if last not in ("unit", "teen", "tens"):
                break
            current *= 100
            last = "hundred"
        elif t in _SCALES:
            if last is None or last == "scale":
                break
            total += current * _SCALES[t]
            current, last = 0, "scale"
        elif t == "and":
            if last in ("hundred", "scale") and (at(j + 1) in _UNITS or at(j + 1) in _TENS):
                pass  # "two hundred and five", "two thousand and seven"
            elif last in ("unit", "teen", "tens") and at(j + 1) == "a" and at(j + 2) == "half" and \
                    (at(j + 3) in _SCALES or at(j + 3) == "hundred"):
                current += 0.5  # "two and a half thousand"
                j += 2
            else:
                break
        elif t == "point" and last in ("unit", "teen", "tens") and at(j + 1) in _UNITS:
            digits = ""
            while at(j + 1) in _UNITS and _UNITS[at(j + 1)] < 10:
                digits += str(_UNITS[at(j + 1)])
                j += 1
            current += float("0." + digits)
            last = "unit"
        else:
            break
        j += 1
    if last is None:
        return 0.0, False, i
    return total + current, False, j


@dataclasses.dataclass
class _Rewritten:
    """Text with number words replaced by digits, and the pieces that map it back."""

    text: str
    pieces: list[tuple[int, int, int, int, bool]]  # (new start, new end, old start, old end, replaced)

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        return self._map(start, False), self._map(end, True)

    def _map(self, pos: int, is_end: bool) -> int:
        for ns, ne, os_, oe, replaced in self.pieces:
            if ns <= pos < ne or (is_end and pos == ne):
                if replaced:
                    return oe if is_end else os_
                return os_ + (pos - ns)
        return self.pieces[-1][3] if self.pieces else 0


def _format_number(value: float, ordinal: bool) -> str:
    digits = f"{int(value)}" if value == int(value) else f"{value:g}"
    if not ordinal:
        return digits
    n = int(value)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{digits}{suffix}"


def rewrite_number_words(text: str) -> _Rewritten:
    """'two and a half thousand dollars' -> '2500 dollars' (lone 'one'/'zero'/'a' stay words)."""
    pieces, out, pos, new_pos = [], [], 0, 0
    for run in _RUN.finditer(text):
        tokens = list(re.finditer(r"[A-Za-z]+", run.group()))
        numbers = _parse_words([t.group().lower() for t in tokens])
        for value, ordinal, a, b in numbers:
            if a == b and value < 2 and not ordinal:
                continue  # "one of them", "zero": too common to be a claim
            start, end = run.start() + tokens[a].start(), run.start() + tokens[b].end()
            if start > pos:
                out.append(text[pos:start])
                pieces.append((new_pos, new_pos + start - pos, pos, start, False))
                new_pos += start - pos
            digits = _format_number(value, ordinal)
            out.append(digits)
            pieces.append((new_pos, new_pos + len(digits), start, end, True))
            new_pos += len(digits)
            pos = end
    out.append(text[pos:])
    pieces.append((new_pos, new_pos + len(text) - pos, pos, len(text), False))
    return _Rewritten("".join(out), pieces)


# ---------------------------------------------------------------------------------------------
# patterns over the rewritten text


def _num(s: str) -> float:
    return float(s.replace(",", ""))


def _mult(s: str | None) -> int:
    return _MULT[s.lower()] if s else 1


def _ampm(letter: str | None, period: str | None) -> str | None:
    if letter:
        return "am" if letter.lower() == "a" else "pm"
    if period:
        return "am" if "morning" in period else "pm"
    return None


def _time_24(m: re.Match) -> tuple:
    hour, minute = int(m["h"]), int(m["m"])
    if hour >= 13 or hour == 0 or m["h"].startswith("0"):
        return hour % 12 or 12, minute, "am" if hour < 12 else "pm"  # 24 h clock ("22:45", "08:30")
    return hour, minute, None


def _month(name: str) -> int:
    return MONTHS.index(name.capitalize()) + 1


# (kind, pattern, value of a match), most specific first
_PATTERNS: list[tuple[str, re.Pattern, Callable[[re.Match], Hashable]]] = [
    ("phone", re.compile(r"(?<![\d,.])(?:\(\d{3}\)\s?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![\d,])"),
     lambda m: re.sub(r"\D", "", m.group())),
    ("time", re.compile(r"\b(?P<h>\d{1,2})[:.](?P<m>\d{2})\s*(?P<ap>[ap])\.?\s?m\b\.?" + _PERIOD, re.I),
     lambda m: (int(m["h"]) % 12 or 12, int(m["m"]), _ampm(m["ap"], None))),
    ("time", re.compile(r"\b(?P<h>\d{1,2}):(?P<m>\d{2})\b" + _PERIOD, re.I),
     lambda m: _time_24(m) if not m["period"] else (int(m["h"]) % 12 or 12, int(m["m"]), _ampm(None, m["period"]))),
    ("time", re.compile(r"\b(?P<h>\d{1,2})\s*(?P<ap>[ap])\.?m\b\.?", re.I),
     lambda m: (int(m["h"]) % 12 or 12, 0, _ampm(m["ap"], None))),
    ("time", re.compile(r"\b(?P<q>quarter past|quarter to|half past)\s+(?P<h>\d{1,2})\b" + _PERIOD, re.I),
     lambda m: _phrase_time(m)),
    ("time", re.compile(r"\b(?P<h>\d{1,2})\s+o['’]?\s?clock\b" + _PERIOD, re.I),
     lambda m: (int(m["h"]) % 12 or 12, 0, _ampm(None, m["period"]))),
    ("time", re.compile(r"\b(?P<w>noon|midday|midnight)\b", re.I),
     lambda m: (12, 0, "pm" if m["w"].lower() != "midnight" else "am")),
    ("date", re.compile(rf"\b(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?(?P<mo>{_MONTH_RE})\b"),
     lambda m: (_month(m["mo"]), int(m["d"]))),
    ("date", re.compile(rf"\b(?P<mo>{_MONTH_RE})\s+(?:the\s+)?(?P<d>\d{{1,2}})(?:st|nd|rd|th)?\b"),
     lambda m: (_month(m["mo"]), int(m["d"]))),
    ("weekday", re.compile(rf"\b(?P<w>{_WEEKDAY_RE})s?\b", re.I), lambda m: m["w"].capitalize()),
    # months are case-sensitive: "may", "march" are ordinary words
    ("month", re.compile(rf"\b(?:{_MONTH_RE})\b"), lambda m: m.group()),
    ("money", re.compile(rf"(?P<cur>[$€£])\s?(?P<n>{_NUM})"
                         r"(?:\s*(?P<mult>k|m|mn|bn)\b|\s+(?P<mult2>thousand|million|billion)\b)?", re.I),
     lambda m: _num(m["n"]) * _mult(m["mult"] or m["mult2"])),
    ("money", re.compile(rf"\b(?P<n>{_NUM})(?:(?P<mult>k|m|mn|bn)|\s+(?P<mult2>thousand|million|billion))?\s+"
                         r"(?:dollars?|euros?|pounds?|bucks|usd|eur|gbp)\b", re.I),
     lambda m: _num(m["n"]) * _mult(m["mult"] or m["mult2"])),
    ("percent", re.compile(rf"\b(?P<n>{_NUM})\s*(?:%|percent\b|per cent\b)", re.I), lambda m: _num(m["n"])),
    # plain numbers; ordinals ("3rd item") are not claims unless a date pattern took them, nor is the
    # number of a name glued to it by a hyphen ("COVID-19", "B-12"); a range ("10-20") is two numbers
    ("number", re.compile(rf"(?<![\w.,])(?<![^\W\d_]-)(?P<n>{_NUM})(?:(?P<mult>k)\b|\s+(?P<mult2>thousand|million|billion)\b)?"
                          r"(?!\d|st\b|nd\b|rd\b|th\b)", re.I),
     lambda m: _num(m["n"]) * _mult(m["mult"] or m["mult2"])),
]


def _phrase_time(m: re.Match) -> tuple:
    hour = int(m["h"]) % 12 or 12
    if m["q"].lower() == "quarter to":
        return (hour - 1) or 12, 45, _ampm(None, m["period"])
    return hour, 15 if m["q"].lower() == "quarter past" else 30, _ampm(None, m["period"])


_LIST_MARKER = re.compile(r"\d{1,2}[.)](?:\s|$)")


def _line_start(text: str, pos: int) -> bool:
    return not text[text.rfind("\n", 0, pos) + 1:pos].strip()


CLAIM_KINDS = ("name",) + tuple(dict.fromkeys(kind for kind, _, _ in _PATTERNS))
"""Every kind of claim `extract_claims` makes: names and the kinds of the number patterns."""


def number_claims(text: str) -> list[Claim]:
    """Phone, time, date, weekday, month, money, percent and number claims, in text order."""
    rw = rewrite_number_words(text)
    taken: list[tuple[int, int]] = []
    claims = []
    for kind, pattern, value in _PATTERNS:
        for m in pattern.finditer(rw.text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            if kind == "number" and _LIST_MARKER.match(rw.text, m.start()) and _line_start(rw.text, m.start()):
                continue  # "1. first point": list numbering, not a claim
            taken.append((m.start(), m.end()))
            start, end = rw.original_span(m.start(), m.end())
            claims.append(Claim(kind, value(m), text[start:end], start, end))
    return sorted(claims, key=lambda c: c.start)


# ---------------------------------------------------------------------------------------------
# names


# Capitalised words that are not names: sentence openers, email and list furniture, headings.
STOPWORDS = frozenset("""
A An And As At Also After All Any Are Before Best Both But By Cheers Dear During Each Every Everyone For From
Good Hello Hey Hi How I If In It Its Kind Many More Most My No Not Of On Or Our Overall Regards Re So Some
Subject Thanks Thank That The Their Then There These They This Those To Today Tomorrow Too Up We What When
Where Which While Who Why Will With Yes You Your Q Okay OK Key Action Actions Item Items Decision Decisions
Deadline Due Next Note Notes Owner Summary Title Topic Update Recap Agenda Meeting Question Questions Answer
Team Budget Task Tasks Follow Main Point Points Numbers Dates People Roles Figures Total Amount Amounts Date
Time Times Status Outcome Result Results Project Here Please Just Only Quick First Second Third Last Finally
Mr Mrs Ms Dr Prof He She His Her Him Them Us Me Was Were Is Be Been Has Have Had
Lecture Interview Voicemail Podcast Episode News Brief Call Recording Audio Status Weekly Monthly Daily
Participants Attendees Topics Steps Overview Highlights Risks Issues Background Context Discussion Conclusion
Conclusions Details Timeline Deadlines Owners Responsibilities Goals Objectives Findings Recommendations
Answers Updates Costs Metrics Open Other General Important Final Additional Upcoming Current Previous
""".split())
_GENERIC = frozenset({"New", "Port", "Falls", "Group", "Partners", "Bank", "Labs", "Systems", "Logistics",
                      "Health", "Foods", "Energy", "Media", "Robotics", "Analytics", "Materials", "Mobility",
                      "Studios", "Project", "Room", "Office"})
_CAP_WORD = re.compile(r"\b[A-Z][a-z][\w'’]*(?:-[A-Z][a-z]+)*\b")
_NAME_VERB = re.compile(r"\s*(?:,? (?:will|said|says|wants|wanted|asked|agreed|argued|proposed|suggested|"
                        r"mentioned|noted|explained|reported|thinks|thought)\b)")


@functools.lru_cache(maxsize=1)
def _entity_words() -> frozenset[str]:
    from speechsum.data import pools

    return pools.entity_words()


def _sentence_initial(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'“(")
    before = re.sub(r"(?:^|\n)\s*(?:[-*•]|\d+[.)]|[QA]:)\s*$", "\n", before)
    return not before or before[-1] in ".!?:;\n"


def name_claims(text: str, known_words: frozenset[str] = frozenset()) -> list[Claim]:
    """Groups of adjacent capitalised words that look like names, places or organisations.

    A capitalised word counts when it is a pool entity word, or when it is capitalised where an
    ordinary word would not be: mid-sentence, or at a sentence start followed by another
    capitalised word or a reporting verb ("Marco will", "Marco said") and not a word that
    `known_words` (the lowercased document vocabulary) uses in lower case. A single capitalised
    word before a colon is taken for a heading ("Participants:"), not an owner.
    """
    entities = _entity_words()
    tokens = [m for m in _CAP_WORD.finditer(text) if m.group() not in MONTHS and m.group() not in WEEKDAYS]
    groups: list[list[re.Match]] = []
    for m in tokens:
        if groups and text[groups[-1][-1].end():m.start()] == " ":
            groups[-1].append(m)
        else:
            groups.append([m])
    claims = []
    for group in groups:
        while group and group[0].group() in STOPWORDS:
            group = group[1:]
        while group and group[-1].group() in STOPWORDS:
            group = group[:-1]
        if not group or all(t.group() in _GENERIC for t in group):
            continue
        first = group[0]
        if not any(t.group() in entities for t in group) and _sentence_initial(text, first.start()):
            followed = len(group) > 1 or _NAME_VERB.match(text, group[-1].end())
            if not followed or first.group().lower() in known_words:
                continue
        start, end = first.start(), group[-1].end()
        claims.append(Claim("name", text[start:end], text[start:end], start, end))
    return claims


def extract_claims(text: str, known_words: frozenset[str] = frozenset()) -> list[Claim]:
    """All claims in text order; name words inside a number claim (none today) are not doubled."""
    numbers = number_claims(text)
    names = [c for c in name_claims(text, known_words)
             if not any(c.start < n.end and n.start < c.end for n in numbers)]
    return sorted(numbers + names, key=lambda c: c.start)


def name_parts(name: str) -> list[str]:
    """The distinctive words of a name ('Nakamura Labs' -> ['Nakamura'])."""
    return [w for w in re.findall(r"[\w'’-]+", name) if w not in _GENERIC and w[:1].isupper()]
