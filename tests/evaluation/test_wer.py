from speechsum.evaluation.wer import edit_distance, normalize_words, wer


def test_golden():
    assert wer(["the cat sat"], ["the cat sat"]) == 0.0
    assert wer(["the cat sat"], [""]) == 1.0
    assert wer(["the cat sat"], ["the bat sat on"]) == 2 / 3  # one substitution, one insertion
    assert edit_distance(list("abc"), list("axcd")) == 2
    assert normalize_words("Send $2,500 to Priya, it's due!") == ["send", "2,500", "to", "priya", "it's", "due"]
    assert wer(["a b", "c d e f"], ["a b", "c x e"]) == 2 / 6  # corpus-level, not a mean of rates
