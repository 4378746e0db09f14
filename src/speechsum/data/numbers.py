"""Numbers, money, times and dates as a (written, spoken) pair of surface forms.

`written` is what an ASR transcript would show ("10.45pm", "$2,500"); `spoken` is plain words
for the TTS engine ("ten forty-five p m", "two thousand five hundred dollars"), so the audio never
depends on how a TTS engine happens to read punctuation. Each kind of value has several forms
because ASR output varies ("quarter to eleven", "10:45 pm", "22:45" are the same time), and a
model trained on one form would miss the others.

`canonical` gives the one form used in rendered targets; the fact check compares digits, so
every canonical form keeps the value's digits visible.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import NamedTuple

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORD_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
MONTHS = ("January February March April May June July August September October November "
          "December").split()
WEEKDAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()


class Surface(NamedTuple):
    written: str
    spoken: str


def words(n: int) -> str:
    """Cardinal in English words: 2512 -> 'two thousand five hundred and twelve'."""
    if n < 0:
        return "minus " + words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" and {words(rest)}" if rest else "")
    for size, name in ((10**9, "billion"), (10**6, "million"), (1000, "thousand")):
        if n >= size:
            big, rest = divmod(n, size)
            tail = ""
            if rest:
                tail = (" and " if rest < 100 else " ") + words(rest)
            return f"{words(big)} {name}{tail}"
    raise AssertionError(n)


def ordinal_words(n: int) -> str:
    """21 -> 'twenty-first'."""
    w = words(n)
    head, sep, last = w.rpartition("-") if "-" in w else w.rpartition(" ")
    if last in _ORD_IRREGULAR:
        last = _ORD_IRREGULAR[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def ordinal_suffix(n: int) -> str:
    if 10 <= n % 100 <= 20:
        return f"{n}th"
    return f"{n}{ {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th') }"


def _grouped(n: int) -> str:
    return f"{n:,}"


def count(n: int, unit: str, rng: random.Random) -> Surface:
    """'12 engineers' / 'twelve engineers'; ASR writes small counts as words, large ones as digits."""
    if n <= 10 and rng.random() < 0.7:
        return Surface(f"{words(n)} {unit}", f"{words(n)} {unit}")
    return Surface(f"{_grouped(n)} {unit}", f"{words(n)} {unit}")


def percent(p: int, rng: random.Random) -> Surface:
    form = rng.choice((f"{p}%", f"{p} percent", f"{p} per cent"))
    return Surface(form, f"{words(p)} percent")


def money(amount: int, rng: random.Random, currency: str = "dollars") -> Surface:
    """Whole amounts in several forms: '$2,500', '2,500 dollars', 'two and a half thousand dollars'."""
    symbol = {"dollars": "$", "euros": "€", "pounds": "£"}[currency]
    spoken = f"{words(amount)} {currency}"
    forms = [Surface(f"{symbol}{_grouped(amount)}", spoken), Surface(f"{_grouped(amount)} {currency}", spoken)]
    thousands, rest = divmod(amount, 1000)
    if amount >= 1000 and rest in (0, 500) and amount < 10**6:
        half = " and a half" if rest == 500 else ""
        colloquial = f"{words(thousands)}{half} thousand {currency}"
        forms.append(Surface(colloquial, colloquial))
        if rest == 500 and thousands < 10:
            # 2,500 -> "twenty-five hundred dollars"
            hundreds = f"{words(amount // 100)} hundred {currency}"
            forms.append(Surface(hundreds, hundreds))
        short = f"{symbol}{thousands}{'.5' if rest else ''}k"
        forms.append(Surface(short, f"{words(thousands)}{' point five' if rest else ''} kay {currency}"))
    millions, rest = divmod(amount, 10**6)
    if amount >= 10**6 and rest % (10**5) == 0:
        tenths = rest // 10**5
        figure = f"{millions}.{tenths}" if tenths else f"{millions}"
        spoken_m = f"{words(millions)}{' point ' + words(tenths) if tenths else ''} million {currency}"
        forms.append(Surface(f"{symbol}{figure} million", spoken_m))
        forms.append(Surface(f"{figure} million {currency}", spoken_m))
    return rng.choice(forms)


def money_canonical(amount: int, currency: str = "dollars") -> str:
    symbol = {"dollars": "$", "euros": "€", "pounds": "£"}[currency]
    return f"{symbol}{_grouped(amount)}"


def clock(hour: int, minute: int, rng: random.Random) -> Surface:
    """A time of day (24 h input) as ASR might write it: '10.45pm', '10:45 pm', 'quarter to eleven'."""
    h12 = hour % 12 or 12
    ampm = "am" if hour < 12 else "pm"
    spoken_ampm = "ay em" if hour < 12 else "pee em"  # letters, so no engine reads "a m" as "uh m"
    min_words = "" if minute == 0 else (f" oh {words(minute)}" if minute < 10 else f" {words(minute)}")
    forms = [
        Surface(f"{h12}.{minute:02d}{ampm}", f"{words(h12)}{min_words or ' o clock'} {spoken_ampm}"),
        Surface(f"{h12}:{minute:02d} {ampm}", f"{words(h12)}{min_words or ' o clock'} {spoken_ampm}"),
        Surface(f"{hour:02d}:{minute:02d}", f"{words(hour)} {words(minute) if minute else 'hundred'}"),
    ]
    nxt = h12 % 12 + 1
    period = "in the morning" if hour < 12 else ("in the afternoon" if hour < 18 else "in the evening")
    if minute in (0, 15, 30, 45):
        phrase = {0: f"{words(h12)} o'clock", 15: f"quarter past {words(h12)}",
                  30: f"half past {words(h12)}", 45: f"quarter to {words(nxt)}"}[minute]
        forms.append(Surface(f"{phrase} {period}", f"{phrase.replace(chr(39), ' ')} {period}"))
    if minute == 0:
        forms.append(Surface(f"{h12}{ampm}", f"{words(h12)} {spoken_ampm}"))
    return rng.choice(forms)


def clock_canonical(hour: int, minute: int) -> str:
    h12 = hour % 12 or 12
    return f"{h12}:{minute:02d} {'am' if hour < 12 else 'pm'}"


def date(day: dt.date, rng: random.Random, with_weekday: bool | None = None) -> Surface:
    """'Thursday, March 14' / 'the fourteenth of March' / '14 March' / 'March 14th'."""
    month = MONTHS[day.month - 1]
    weekday = WEEKDAYS[day.weekday()]
    if with_weekday is None:
        with_weekday = rng.random() < 0.5
    forms = [
        Surface(f"{month} {day.day}", f"{month} {ordinal_words(day.day)}"),
        Surface(f"{month} {ordinal_suffix(day.day)}", f"{month} {ordinal_words(day.day)}"),
        Surface(f"{day.day} {month}", f"the {ordinal_words(day.day)} of {month}"),
        Surface(f"the {ordinal_suffix(day.day)} of {month}", f"the {ordinal_words(day.day)} of {month}"),
    ]
    form = rng.choice(forms)
    if with_weekday:
        form = Surface(f"{weekday}, {form.written}", f"{weekday}, {form.spoken}")
    return form


def date_canonical(day: dt.date) -> str:
    return f"{WEEKDAYS[day.weekday()]} {day.day} {MONTHS[day.month - 1]}"


def year(y: int) -> Surface:
    """1998 -> 'nineteen ninety-eight'; 2007 -> 'two thousand and seven'."""
    if 2000 <= y < 2010:
        return Surface(str(y), words(y))
    hi, lo = divmod(y, 100)
    return Surface(str(y), f"{words(hi)} {words(lo) if lo >= 10 else ('hundred' if lo == 0 else 'oh ' + words(lo))}")


def phone(digits: str) -> Surface:
    """A call-back number read digit by digit ('oh' for zero, as people say it)."""
    spoken = " ".join("oh" if d == "0" else _ONES[int(d)] for d in digits)
    written = f"{digits[:3]} {digits[3:6]} {digits[6:]}"
    return Surface(written, spoken)
