"""Spoken/written number forms (golden values) and the size of the entity pools."""

import datetime as dt
import random

from speechsum.data import numbers as num
from speechsum.data import pools


def test_words_golden():
    assert num.words(0) == "zero"
    assert num.words(21) == "twenty-one"
    assert num.words(105) == "one hundred and five"
    assert num.words(2512) == "two thousand five hundred and twelve"
    assert num.words(2_000_050) == "two million and fifty"
    assert num.ordinal_words(21) == "twenty-first"
    assert num.ordinal_words(12) == "twelfth"
    assert num.ordinal_words(30) == "thirtieth"
    assert [num.ordinal_suffix(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == \
        ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd"]
    assert num.year(1998).spoken == "nineteen ninety-eight"
    assert num.year(2007).spoken == "two thousand and seven"


def test_surface_forms_cover_asr_variants():
    rng = random.Random(0)
    money = {num.money(2500, rng).written for _ in range(300)}
    assert {"$2,500", "2,500 dollars", "two and a half thousand dollars", "twenty-five hundred dollars", "$2.5k"} <= money
    times = {num.clock(22, 45, rng).written for _ in range(300)}
    assert {"10.45pm", "10:45 pm", "22:45", "quarter to eleven in the evening"} <= times
    assert num.clock_canonical(22, 45) == "10:45 pm"
    day = dt.date(2025, 3, 13)
    dates = {num.date(day, rng).written for _ in range(300)}
    assert {"March 13", "13 March", "the 13th of March", "Thursday, March 13th"} <= dates
    assert num.date_canonical(day) == "Thursday 13 March"
    # spoken forms are plain words: no digits or symbols for the TTS engine to misread
    for _ in range(200):
        for s in (num.money(rng.randrange(1, 10**7), rng), num.clock(rng.randrange(24), rng.randrange(60), rng),
                  num.date(day, rng), num.percent(rng.randrange(100), rng)):
            assert not any(c.isdigit() or c in "$%:" for c in s.spoken), s


def test_pools_are_large_and_deterministic():
    sizes = pools.pool_sizes()
    assert sizes["person_names"] > 100_000 and sizes["first_names"] > 1000 and sizes["places"] > 1000
    assert sizes["organisations"] > 500
    names = {pools.person_name(random.Random(i)) for i in range(2000)}
    assert len(names) > 1900
    invented = sum(n.split()[0] in pools.INVENTED_FIRST or n.split()[1] in pools.INVENTED_SURNAMES for n in names)
    assert 0.35 < invented / len(names) < 0.65  # about half the people are invented
    assert pools.person_name(random.Random(7)) == pools.person_name(random.Random(7))
