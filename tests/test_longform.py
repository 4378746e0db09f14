"""Long recordings in parts: where the cuts fall (golden), and the parts -> notes -> answer path on
a tiny in-code model, through `SpeechLM.summarize` and the CLI."""

import json

import numpy as np
import pytest
import soundfile as sf
from tiny import tone

from speechsum.cli import main
from speechsum.longform import LongSummary, Part, clock, notes_text, quiet_cuts, summarize_long

SR = 16000


def with_gaps(seconds: float, gaps: list[tuple[float, float]]) -> np.ndarray:
    x = tone(seconds)
    for a, b in gaps:
        x[int(a * SR) : int(b * SR)] = 0.0
    return x


def test_cuts_fall_in_the_pauses_near_each_boundary():
    x = with_gaps(10.0, [(3.2, 3.4), (6.9, 7.1), (5.0, 5.2)])  # (5.0, 5.2): a pause too far from any cut
    cuts = quiet_cuts(x, window_s=4.0)  # 3 parts of 3.33 s; a cut may move 0.5 s
    assert len(cuts) == 2
    assert 3.2 * SR <= cuts[0] <= 3.4 * SR and 6.9 * SR <= cuts[1] <= 7.1 * SR


def test_without_pauses_cuts_stay_at_their_nominal_place():
    x = np.full(12 * SR, 0.1, dtype="float32")  # equal energy everywhere: the nearest frame wins
    # 3 parts of 4 s; the 50 ms frames either side of 4.0 s are equally near: the earlier one
    assert quiet_cuts(x, window_s=5.0) == [int(3.975 * SR), int(7.975 * SR)]


def test_one_part_is_enough_and_bad_windows_are_errors():
    assert quiet_cuts(tone(3.0), window_s=3.0) == []
    assert quiet_cuts(tone(3.0), window_s=10.0) == []
    with pytest.raises(ValueError, match="window_s=0"):
        quiet_cuts(tone(3.0), window_s=0)


def test_notes_are_labelled_with_their_time_spans():
    parts = [Part(0.0, 65.4, "- budget agreed"), Part(65.4, 3725.0, "- Tina sends the report")]
    assert notes_text(parts) == "Part 1 (0:00-1:05):\n- budget agreed\n\nPart 2 (1:05-1:02:05):\n- Tina sends the report"
    assert clock(59.6) == "1:00"


def test_summarize_long_maps_every_part_then_reduces_their_notes(tiny_model):
    tiny_model.eval()
    x = with_gaps(3.0, [(0.95, 1.05), (1.95, 2.05)])
    seen = {}
    text_items = tiny_model.text_items

    def spy(texts, instructions, *a, **kw):
        seen["texts"], seen["instructions"] = texts, instructions
        return text_items(texts, instructions, *a, **kw)

    tiny_model.text_items = spy
    res = summarize_long(tiny_model, x, "summarize the meeting", window_s=1.0, max_new_tokens=5)
    assert isinstance(res, LongSummary) and len(res.parts) == 3
    spans = [(p.start_s, p.end_s) for p in res.parts]
    assert spans[0][0] == 0 and spans[-1][1] == pytest.approx(3.0) and all(
        a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, nothing dropped
    assert 0.95 <= spans[1][0] <= 1.05 and 1.95 <= spans[2][0] <= 2.05
    assert seen["texts"] == [notes_text(res.parts)] and seen["instructions"] == ["summarize the meeting"]
    # SpeechLM.summarize routes a recording longer than the window through the same path
    assert tiny_model.summarize(x, instruction="summarize the meeting", max_new_tokens=5, sample_rate=SR,
                                window_seconds=1.0) == res.text
    del tiny_model.text_items
    one = tiny_model.generate([x], ["summarize the meeting"], max_new_tokens=5, repeat_stop=3)[0].text
    assert tiny_model.summarize(x, instruction="summarize the meeting", max_new_tokens=5, sample_rate=SR,
                                window_seconds=0) == one


def test_cli_summarizes_a_long_file_in_parts(tmp_path, tiny_dir, capsys):
    from tiny import tiny_speechlm

    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    sf.write(tmp_path / "long.wav", tone(3.0), SR)
    sf.write(tmp_path / "short.wav", tone(0.8), SR)
    code = main(["summarize", str(tmp_path / "short.wav"), str(tmp_path / "long.wav"), "--model", str(tmp_path / "ckpt"),
                 "--json", "--max-new-tokens", "3", "--window-seconds", "1"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and [(r["file"].rsplit("/", 1)[-1], r["parts"]) for r in rows] == [("short.wav", 1), ("long.wav", 3)]
    assert main(["summarize", str(tmp_path / "long.wav"), "--window-seconds", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "speechsum: error: --window-seconds -1: expected >= 0 (0: one pass however long)"
