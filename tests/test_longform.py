"""Long recordings in parts: where the cuts fall (golden), and the parts -> notes -> answer path on
a tiny in-code model, through `SpeechLM.summarize` and the CLI."""

import json

import numpy as np
import pytest
import soundfile as sf
from tiny import tone

from speechsum.cli import main
from speechsum.audio import load_audio
from speechsum.longform import (LongSummary, Part, Recording, clock, frame_energy, notes_text, quiet_cuts,
                                 summarize_long)

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


def test_frame_energy_in_blocks_is_the_mean_square_of_each_whole_frame():
    x = np.random.default_rng(0).standard_normal(1003).astype("float32")
    naive = np.square(x[:1000].astype(np.float64)).reshape(-1, 10).mean(1)
    assert np.allclose(frame_energy(x, 10, block_frames=7), naive, rtol=1e-12)
    assert len(frame_energy(x[:9], 10)) == 0


def test_a_file_is_scanned_then_read_part_by_part_never_whole(tmp_path, monkeypatch):
    """Recording.scan + pieces: the cuts and parts of load_audio's samples, from two passes over
    the file that hold a block and a part at a time."""
    import speechsum.audio as audio

    x = with_gaps(30.0, [(9.8, 10.1), (19.9, 20.2)])
    path = tmp_path / "long.flac"
    sf.write(path, x, SR)
    whole = load_audio(path)
    reads, real = [], audio.read_blocks

    def counting(source, block_seconds=60.0):
        for block in real(source, block_seconds=3.0):
            reads.append(len(block))
            yield block

    monkeypatch.setattr(audio, "read_blocks", counting)
    rec = Recording.scan(path)
    assert rec.samples is None and rec.num_samples == len(whole) and len(reads) == 10
    assert rec.cuts(12.0) == quiet_cuts(whole, 12.0)
    bounds = [0, *rec.cuts(12.0), rec.num_samples]
    assert len(bounds) == 4
    reads.clear()
    pieces = rec.pieces(bounds)
    first = next(pieces)
    assert np.array_equal(first, whole[: bounds[1]]) and sum(reads) < len(whole) / 2  # read only as far as needed
    rest = list(pieces)
    assert [len(p) for p in rest] == [b - a for a, b in zip(bounds[1:], bounds[2:])]
    assert np.array_equal(np.concatenate([first, *rest]), whole)
    mem = Recording.from_samples(whole)
    assert mem.num_samples == rec.num_samples and np.allclose(mem.energy, rec.energy)


def test_notes_are_labelled_with_their_time_spans():
    parts = [Part(0.0, 65.4, "- budget agreed"), Part(65.4, 3725.0, "- Tina sends the report")]
    assert notes_text(parts) == "Part 1 (0:00-1:05):\n- budget agreed\n\nPart 2 (1:05-1:02:05):\n- Tina sends the report"
    assert clock(59.6) == "1:00"


def test_summarize_long_maps_every_part_then_reduces_their_notes(tiny_model, tmp_path):
    tiny_model.eval()
    x = with_gaps(3.0, [(0.95, 1.05), (1.95, 2.05)])
    seen = {}
    text_items = tiny_model.text_items

    def spy(texts, instructions, *a, **kw):
        seen["texts"], seen["instructions"] = texts, instructions
        return text_items(texts, instructions, *a, **kw)

    tiny_model.text_items = spy
    res = summarize_long(tiny_model, x, "summarize the meeting", window_s=1.0, max_new_tokens=5, min_speech=0)
    assert isinstance(res, LongSummary) and len(res.parts) == 3
    spans = [(p.start_s, p.end_s) for p in res.parts]
    assert spans[0][0] == 0 and spans[-1][1] == pytest.approx(3.0) and all(
        a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, nothing dropped
    assert 0.95 <= spans[1][0] <= 1.05 and 1.95 <= spans[2][0] <= 2.05
    assert seen["texts"] == [notes_text(res.parts)] and seen["instructions"] == ["summarize the meeting"]
    # SpeechLM.summarize routes a recording longer than the window through the same path
    assert tiny_model.summarize(x, instruction="summarize the meeting", max_new_tokens=5, sample_rate=SR,
                                window_seconds=1.0, min_speech=0) == res.text
    del tiny_model.text_items
    # a file goes through Recording.scan (read part by part): the same parts and answer
    sf.write(tmp_path / "x.wav", x, SR)
    assert summarize_long(tiny_model, Recording.scan(tmp_path / "x.wav"), "summarize the meeting", window_s=1.0,
                          max_new_tokens=5, min_speech=0) == res
    assert tiny_model.summarize(tmp_path / "x.wav", instruction="summarize the meeting", max_new_tokens=5,
                                window_seconds=1.0, min_speech=0) == res.text
    one = tiny_model.generate([x], ["summarize the meeting"], max_new_tokens=5, repeat_stop=3)[0].text
    assert tiny_model.summarize(x, instruction="summarize the meeting", max_new_tokens=5, sample_rate=SR,
                                window_seconds=0, min_speech=0) == one


def test_cli_summarizes_a_long_file_in_parts(tmp_path, tiny_dir, capsys):
    from tiny import tiny_speechlm

    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    sf.write(tmp_path / "long.wav", tone(3.0), SR)
    sf.write(tmp_path / "short.wav", tone(0.8), SR)
    code = main(["summarize", str(tmp_path / "short.wav"), str(tmp_path / "long.wav"), "--model", str(tmp_path / "ckpt"),
                 "--json", "--max-new-tokens", "3", "--window-seconds", "1", "--min-speech", "0"])
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and [(r["file"].rsplit("/", 1)[-1], r["parts"]) for r in rows] == [("short.wav", 1), ("long.wav", 3)]
    assert main(["summarize", str(tmp_path / "long.wav"), "--window-seconds", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "speechsum: error: --window-seconds -1: expected >= 0 (0: one pass however long)"


def test_cli_reports_a_file_that_fails_on_its_second_read_in_one_line(tmp_path, tiny_dir, capsys, monkeypatch):
    """A long file is read twice (scan, then part by part): if the second read fails (the file
    changed in between), that file gets one error line and a non-zero exit; the others still run."""
    from tiny import tiny_speechlm

    from speechsum.audio import AudioError

    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    sf.write(tmp_path / "long.wav", tone(3.0), SR)
    sf.write(tmp_path / "short.wav", tone(0.8), SR)

    def gone(self, bounds):
        raise AudioError(self.path, "no such file")
        yield

    monkeypatch.setattr(Recording, "pieces", gone)
    code = main(["summarize", str(tmp_path / "long.wav"), str(tmp_path / "short.wav"), "--model", str(tmp_path / "ckpt"),
                 "--json", "--max-new-tokens", "3", "--window-seconds", "1", "--min-speech", "0"])
    out, err = capsys.readouterr()
    assert code != 0 and [json.loads(x)["file"] for x in out.strip().splitlines()] == [str(tmp_path / "short.wav")]
    assert [x for x in err.strip().splitlines() if "error" in x] == [f"speechsum: error: {tmp_path / 'long.wav'}: no such file"]
