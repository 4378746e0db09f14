"""Does a summary follow the requested style? Rule checks, no model.

`style_compliance(style, text, instruction)` returns the checks that apply to the style plus the
limits the instruction states ("in one sentence", "under 30 words", "at most 5 bullets", "in 3
sentences or fewer"); the score is the share of checks passed. Style names are those of
`speechsum.data.styles` (`one_line`, `bullets`, ...); hyphenated spellings and the older names
(`short-paragraph`, `numbers-and-dates`) are accepted too. An unknown style (user data: "summary")
gets only the generic checks and the instruction's limits.
"""

from __future__ import annotations

import re

_ALIASES = {"short_paragraph": "paragraph", "numbers_and_dates": "numbers_dates", "tl_dr": "tldr",
            "one_sentence": "one_line"}
_NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen twenty".split())}
_N = r"\b(\d+|" + "|".join(_NUMBER_WORDS) + r")\b"

_BULLET = re.compile(r"^\s*(?:[-*•‣◦–]|\d+[.)])\s+\S")
_BULLET_MARK = re.compile(r"^\s*(?:[-*•‣◦–]|\d+[.)])\s+")
_WORD = re.compile(r"\S*[^\W_]\S*")
# a sentence ends at . ! ? followed by space, unless the dot ends a common abbreviation
_SENT_SPLIT = re.compile(r"(?<!\b[Mm]r\.)(?<!\b[Mm]s\.)(?<!\b[Dd]r\.)(?<!\bSt\.)(?<!\bvs\.)(?<!\be\.g\.)"
                         r"(?<!\bi\.e\.)(?<!\ba\.m\.)(?<!\bp\.m\.)(?<=[.!?])\s+(?=\S)")

_GREETING = re.compile(r"^(?:hi|hello|hey|dear|good (?:morning|afternoon|evening)|greetings)\b.*$", re.I)
_SIGN_OFF = re.compile(r"^(?:best(?: regards| wishes)?|kind regards|regards|thanks(?: again)?|thank you|"
                       r"many thanks|cheers|sincerely|yours(?: sincerely| truly)?|all the best|talk soon|"
                       r"take care)\b[ ,.!]*$", re.I)
_SUBJECT = re.compile(r"^\s*subject\s*:", re.I | re.M)

# "Name: task", "Name - task", "Name will ...", a group owner, or "(owner: Name)" anywhere
_NAME = r"[A-Z][\w'’.-]*(?:\s+[A-Z][\w'’.-]*){0,3}"
_OWNER_PATTERNS = (
    re.compile(rf"^(?P<owner>{_NAME})\s*(?::|\s[-–—])\s*\S"),
    re.compile(rf"^(?P<owner>{_NAME})\s+(?:will|to|should|must|needs to|has to|is to|is going to|'ll|owns)\b"),
    re.compile(r"^(?P<owner>(?:the\s+)?(?:students|team|everyone|everybody|all|we|staff|attendees))\s*(?::|will\b)",
               re.I),
    re.compile(rf"\((?:owner|assigned to|assignee|who)\s*[:=-]?\s*(?P<owner>{_NAME})\)", re.I),
    re.compile(rf"\b(?:owner|assigned to|assignee|responsible)\s*[:=-]\s*(?P<owner>{_NAME})", re.I),
)
# capitalised words that head a list item without being an owner
_NOT_OWNERS = {"task", "tasks", "deadline", "due", "owner", "action", "actions", "action items", "note", "next",
               "next steps", "subject", "summary", "decision", "decisions", "todo", "to do", "follow-up", "q", "a"}
_QUESTION = re.compile(r"^\s*(?:[-*•]\s*)?(?:q\d*\s*[:.)]|question\s*\d*\s*:)", re.I)
_ANSWER = re.compile(r"^\s*(?:[-*•]\s*)?(?:a\d*\s*[:.)]|answer\s*\d*\s*:)", re.I)
_HAS_NUMBER = re.compile(
    r"\d|\b(?:January|February|March|April|May|June|July|August|September|October|November|December|"
    r"Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday|" + "|".join(_NUMBER_WORDS) +
    r"|hundred|thousand|million|billion|half|quarter|noon|midnight)\b", re.I)
_DECISION_WORD = re.compile(r"\b(?:decid|agree|approv|settled|chose|choos|will|move|switch|pause|hire|cap|raise)",
                            re.I)
_TITLE_DEFAULT_WORDS = 12  # a "short" title when the instruction gives no number


def _n(token: str) -> int:
    return int(token) if token.isdigit() else _NUMBER_WORDS[token]


def parse_limits(instruction: str | None) -> dict[str, tuple[str, int]]:
    """Limits stated in an instruction: {"words" | "sentences" | "items": (op, n)}, op in <, <=, ==.

    "items" counts bullets or, for Q&A, question-answer pairs.
    """
    if not instruction:
        return {}
    s = instruction.lower().replace("-", " ")
    limits: dict[str, tuple[str, int]] = {}

    def first(unit: str, rules: list[tuple[str, str]]) -> None:
        for pattern, op in rules:
            m = re.search(pattern, s)
            if m:
                limits[unit] = (op, _n(m.group(1)))
                return

    upto = r"(?:at most|no more than|not more than|no longer than|up to|maximum(?: of)?|max(?:imum)?)"
    under = r"(?:under|fewer than|less than|below|shorter than)"
    first("words", [
        (rf"{upto} {_N} words", "<="), (rf"{_N} words? (?:max|maximum|or fewer|or less|at most)", "<="),
        (rf"{under} {_N} words", "<"), (rf"(?:in|of|with|using) exactly {_N} words", "=="),
        (rf"(?:in|of|with|using) {_N} words", "<="),
    ])
    first("sentences", [
        (rf"{upto} {_N} sentences", "<="), (rf"{_N} sentences? or (?:fewer|less)", "<="),
        (rf"{under} {_N} sentences", "<"), (rf"exactly {_N} sentences", "=="), (rf"in {_N} sentences", "<="),
    ])
    if "sentences" not in limits and re.search(r"\b(?:one|a single|1|single) (?:sentence|line)\b", s):
        limits["sentences"] = ("==", 1)
    # up to two adjectives between the number and the noun: "5 most important points"
    items = r"(?:[a-z]+ ){0,2}(?:bullet points|bullets|items|points|takeaways|" \
            r"question answer pairs|question and answer pairs|q&a pairs)\b"
    first("items", [
        (rf"{upto} {_N} {items}", "<="), (rf"{_N} {items} or (?:fewer|less)", "<="),
        (rf"{under} {_N} {items}", "<"), (rf"exactly {_N} {items}", "=="), (rf"{_N} {items}", "=="),
    ])
    return limits


# ---------------------------------------------------------------------------------------------
# counting


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def count_words(text: str) -> int:
    """Words with at least one letter or digit (bullet dashes do not count)."""
    return len(_WORD.findall(text))


def count_sentences(text: str) -> int:
    """Sentences over all lines: a line ends a sentence even without a full stop."""
    return sum(len(_SENT_SPLIT.split(_BULLET_MARK.sub("", line))) for line in _lines(text))


def bullet_lines(text: str) -> list[str]:
    return [line for line in _lines(text) if _BULLET.match(line)]


def _items(text: str) -> list[str]:
    """List items: bullet lines if there are any, else every non-empty line; markers removed."""
    lines = bullet_lines(text) or _lines(text)
    return [_BULLET_MARK.sub("", line).strip() for line in lines]


def _qa_pairs(text: str) -> tuple[int, bool]:
    """(number of questions, every question followed by an answer before the next question)."""
    questions, answered, pending = 0, True, False
    for line in _lines(text):
        if _QUESTION.match(line) or (line.endswith("?") and not _ANSWER.match(line)):
            answered &= not pending
            questions, pending = questions + 1, True
        elif pending:
            pending = False  # an "A:" line or any non-question line answers the question
    return questions, answered and not pending


def _is_none_statement(text: str) -> bool:
    """'No action items were assigned.' - the right answer when there is nothing to list."""
    lines = _lines(text)
    return len(lines) == 1 and bool(re.match(r"^(?:there (?:were|are) )?no\b", lines[0], re.I))


def has_owner(item: str) -> bool:
    for pattern in _OWNER_PATTERNS:
        m = pattern.search(item)
        if m and m.group("owner").strip().lower() not in _NOT_OWNERS:
            return True
    return False


def _compare(value: int, op: str, n: int) -> bool:
    return {"<": value < n, "<=": value <= n, "==": value == n}[op]


# ---------------------------------------------------------------------------------------------
# per-style checks


def _normalize_style(style: str) -> str:
    name = style.strip().lower().replace("-", "_").replace(" ", "_")
    return _ALIASES.get(name, name)


def _style_checks(style: str, text: str, instruction: str) -> dict[str, bool]:
    lines = _lines(text)
    bullets = bullet_lines(text)
    asks = instruction.lower()
    none = _is_none_statement(text)
    if style == "one_line":
        return {"one_line": len(lines) == 1, "one_sentence": count_sentences(text) == 1}
    if style == "paragraph":
        # one block of prose: no list, no blank line splitting it into several paragraphs
        return {"prose": not bullets, "one_paragraph": not re.search(r"\S\s*\n\s*\n\s*\S", text.strip())}
    if style == "bullets":
        return {"bullets": len(bullets) >= 1 and len(bullets) == len(lines)}
    if style == "key_decisions":
        # a list, or a single decision stated in one sentence
        one = count_sentences(text) == 1 and bool(_DECISION_WORD.search(text))
        return {"list": none or bool(bullets) or len(lines) > 1 or one}
    if style == "action_items":
        items = _items(text)
        return {"items": none or bool(items), "owners": none or (bool(items) and all(has_owner(i) for i in items))}
    if style == "email":
        greeting = [i for i, line in enumerate(lines[:3]) if _GREETING.match(line)]
        sign_off = [i for i, line in enumerate(lines) if i >= len(lines) - 3 and _SIGN_OFF.match(line)]
        start = greeting[0] + 1 if greeting else 0
        body = lines[start:sign_off[0] if sign_off else len(lines)]
        checks = {"greeting": bool(greeting), "sign_off": bool(sign_off),
                  "body": any(count_words(line) >= 5 and not _SUBJECT.match(line) for line in body)}
        if "subject" in asks:
            checks["subject"] = bool(_SUBJECT.search(text))
        return checks
    if style == "title":
        checks = {"one_line": len(lines) == 1, "no_final_period": not text.rstrip().endswith(".")}
        if "words" not in parse_limits(instruction):
            checks["short"] = count_words(text) <= _TITLE_DEFAULT_WORDS
        return checks
    if style == "tldr":
        checks = {"short": len(lines) <= 2}
        if re.search(r"start with .?tl;?dr", asks):
            checks["tldr_prefix"] = bool(re.match(r"^\s*tl;?\s?dr\b", text, re.I))
        return checks
    if style == "questions_answered":
        n_q, answered = _qa_pairs(text)
        return {"questions": n_q >= 1, "answered": n_q >= 1 and answered}
    if style == "numbers_dates":
        items = _items(text)
        return {"list": none or bool(items),
                "numbers": none or (bool(items) and all(_HAS_NUMBER.search(i) for i in items))}
    if style == "people_roles":
        items = _items(text)
        return {"list": none or bool(items),
                "names": none or (bool(items) and all(re.search(r"\b[A-Z][a-z]", i) for i in items))}
    return {}


def style_compliance(style: str, text: str, instruction: str | None = None) -> dict:
    """{"style", "checks": {name: passed}, "score": share passed, "compliant": all passed, "limits"}."""
    name = _normalize_style(style or "")
    checks = {"non_empty": bool(text.strip())}
    if checks["non_empty"]:
        checks.update(_style_checks(name, text, instruction or ""))
    limits = parse_limits(instruction)
    q_pairs = _qa_pairs(text)[0]
    measured = {"words": count_words(text), "sentences": count_sentences(text),
                "items": q_pairs if name == "questions_answered" else len(_items(text))}
    for unit, (op, n) in limits.items():
        checks[f"{unit}{op}{n}"] = _compare(measured[unit], op, n)
    passed = sum(checks.values())
    return {"style": name, "checks": checks, "score": passed / len(checks), "compliant": passed == len(checks),
            "limits": {u: f"{op}{n}" for u, (op, n) in limits.items()}}
