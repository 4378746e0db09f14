"""Helpers of bench/summarize.py, bench/long_audio.py and bench/common.py on tiny in-code models (no timing asserts)."""

import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tiny import speech

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
summarize = pytest.importorskip("summarize")


@pytest.mark.parametrize("decode_bf16", [False, True])
def test_speech_system_times_parts_and_exact_length(tiny_model, tmp_path, decode_bf16):
    # decode_bf16: decoding runs on a bf16 copy of the LLM (the default where bf16 is native); the
    # decoder hook must sit on that copy (on the base LLM it never fired: KeyError decode_s)
    tiny_model.decode_bf16 = decode_bf16
    path = tmp_path / "a.flac"
    sf.write(path, speech(3.0), 16000)
    system = summarize.SpeechSystem(tiny_model.eval())
    stops = list(tiny_model.stop_ids)
    with summarize.exact_length(tiny_model):
        r = system.run(str(path), "summarize", 5, 0)
    assert tiny_model.stop_ids == stops
    assert r["decode_steps"] == 4  # 5 tokens: the prefill gives the first, 4 decoder forwards the rest
    assert {"encoder_s", "projector_s", "prefill_s", "decode_s", "total_s"} <= set(r)
    assert r["encoder_s"] + r["prefill_s"] + r["decode_s"] <= r["total_s"] + 1e-3
    assert system.clock.take() == {}  # each run takes its own parts


def test_speech_system_counts_every_prefill_of_a_recording_in_parts(tiny_model, tmp_path):
    # in parts the LLM prefills twice (the batch of parts, then the answer's prompt of notes); the
    # split once took only the first forward as the prefill and counted the second as decoding
    path = tmp_path / "a.flac"
    sf.write(path, speech(3.0), 16000)
    system = summarize.SpeechSystem(tiny_model.eval())
    with summarize.exact_length(tiny_model):
        r = system.run(str(path), "summarize", 5, 0, window_seconds=1.5)
    assert r["prefills"] == 2
    assert r["decode_steps"] == 4 + 4  # 5 tokens for the notes (min(PART_TOKENS, 5)) and 5 for the answer,
    # the first of each from its prefill


def test_cut_document_keeps_only_voiced_facts():
    from speechsum.data.documents import make_document

    doc = make_document("d", "voicemail", random.Random(0))
    cut = summarize.cut_document(doc, 1)
    text = cut.sentences[0].text.lower()
    assert len(cut.sentences) == 1 and cut.facts
    assert all(f.mention.lower() in text for f in cut.facts)
    assert len(cut.facts) < len(doc.facts)


def test_recording_joins_documents_and_cuts_at_a_sentence(monkeypatch, tmp_path):
    from speechsum.data.documents import make_document

    docs = [make_document(f"d{i}", "voicemail", random.Random(i)) for i in range(3)]

    def fake_spoken(index, root):  # 2 s per sentence, no TTS
        doc = docs[index]
        spans = [(2.0 * k + 0.2, 2.0 * k + 1.8) for k in range(len(doc.sentences))]
        return doc, spans, np.zeros(int(2.0 * len(spans) * 16000), dtype=np.float32)

    monkeypatch.setattr(summarize, "spoken_document", fake_spoken)
    first = 2.0 * len(docs[0].sentences)
    item = summarize.recording(first + 5.0, tmp_path)
    assert item["documents"] == ["d0", "d1"] and item["cut_last"]
    assert first + 3.0 < item["duration"] <= first + 5.0  # two 2 s sentences of d1 and the tail
    assert item["transcript"].startswith(docs[0].transcript)
    ids = [f["id"] for f in json.loads(item["facts"])]
    assert len(ids) == len(set(ids)) and ids[0].startswith("d0/")


def test_peak_rss_increase_sees_a_freed_allocation():
    import mmap

    from common import peak_rss_increase

    row = {}
    with peak_rss_increase(row):
        # 64 MB of fresh pages, touched, then unmapped before the block ends (a fresh mapping: an
        # allocator could serve a malloc from memory that earlier tests left resident)
        size = 64 * 2**20
        with mmap.mmap(-1, size) as m:
            for i in range(0, size, mmap.PAGESIZE):
                m[i] = 1
    assert row["peak_increase_mb"] >= 48 and row["peak_rss_mb"] >= row["rss_before_mb"] + 48
    quiet = {}
    with peak_rss_increase(quiet):  # the peak was reset: the earlier allocation does not count
        pass
    assert quiet["peak_increase_mb"] < 16


def test_judge_bench_counts_agreement_in_both_verdict_modes(monkeypatch):
    from tiny import FakePairwiseJudge

    judge = pytest.importorskip("judge")
    item = {"instruction": "Summarize.", "transcript": "Ann pays $5."}
    pairs = [{"item": item, "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(4)]

    def margin(first, second):  # log-odds of "1": +3 for the first position, +1 for a good summary
        return 3.0 + (1.0 if first.startswith("good") else -1.0) * (-1 if "3" in first else 1)

    rec = judge.Recorder(FakePairwiseJudge(margin).patch(monkeypatch))  # writes "1": the position bias wins
    r = judge.run_judge("fake", pairs, "answers", rec)
    assert (r["agree"], r["disagree"], r["dropped"]) == (0.0, 0.0, 1.0)  # "1" in both orders: all dropped
    assert rec.answers == ["1"] * 8
    r = judge.run_judge("fake", pairs, "logprobs", rec)
    # the bias cancels: pairs 0-2 agree with the fact judge, pair 3 (margin flipped) disagrees
    assert (r["agree"], r["disagree"], r["dropped"]) == (0.75, 0.25, 0.0)
    assert r["verdicts"] == ["agree"] * 3 + ["disagree"]


def test_parts_count_and_long_recording_means(capsys):
    assert [summarize.parts_of(s, w) for s, w in ((300, 120), (240, 120), (119, 120), (300, 0))] == [3, 2, 1, 1]
    row = lambda rec, mode, recall, invented: {"recording": rec, "mode": mode, "fact_recall": recall,  # noqa: E731
                                               "fact_precision": 1.0, "invented_per_summary": invented, "rouge_l": 0.2}
    means = summarize.report_long([row("a", "parts", 0.2, 1), row("a", "one pass", 0.1, 3),
                                   row("b", "parts", None, 0), row("b", "one pass", 0.3, 1)])
    assert means["parts"] == {"fact_recall": 0.2, "fact_precision": 1.0, "invented_per_summary": 0.5, "rouge_l": 0.2, "n": 2}
    assert means["one pass"]["fact_recall"] == 0.2 and means["one pass"]["invented_per_summary"] == 2.0
    assert "over 2 recordings" in capsys.readouterr().out
    assert summarize.report_long([]) == {}


def test_summarize_judges_quality_on_the_mean_over_recordings():
    def row(system, total):
        return {"length": "10s", "system": system, "total_s": total, "first_token_s": total / 2}

    rows = [row("speechsum", 1.0), row("cascade", 3.0), row("speechsum @ cascade length", 1.2)]

    def q(system, k, recall, invented, rouge, total):
        return {"length": "10s", "set": k, "system": system, "fact_recall": recall, "invented_per_summary": invented,
                "rouge_l": rouge, "total_s": total}

    # the timed recording (set 0) alone says worse; the mean over three says better
    quality = [q("speechsum", 0, 0.0, 2, 0.2, 1.0), q("cascade", 0, 0.5, 1, 0.3, 3.0),
               q("speechsum", 1, 0.6, 0, 0.5, 2.0), q("cascade", 1, 0.1, 1, 0.2, 3.0),
               q("speechsum", 2, 0.5, 1, 0.4, 1.0), q("cascade", 2, None, 1, 0.2, 3.0)]
    g = summarize.judge(rows, True, quality)["by_length"]["10s"]
    assert g["quality_equal_or_better"] is True
    assert g["mean_quality"]["cascade"]["fact_recall"] == pytest.approx(0.2)  # a missing recall counts 0
    assert g["speedup"] == 3.0 and g["speedup_over_sets"] == pytest.approx(9.0 / 4.0, abs=0.01)
    quality[2]["invented_per_summary"] = 5  # now more inventions on average
    assert summarize.judge(rows, True, quality)["by_length"]["10s"]["quality_equal_or_better"] is False


def test_long_audio_memory_is_bounded_only_when_the_longest_call_adds_no_more():
    import long_audio

    rows = [{"peak_increase_mb": 60.0}, {"peak_increase_mb": 58.0}, {"peak_increase_mb": 70.0}]
    assert long_audio.bounded(rows) == {"ratio": 1.17, "bounded": True, "mb": [60.0, 70.0]}
    rows[-1]["peak_increase_mb"] = 848.0  # +16 MB per minute from 1 to 30 min: grows
    assert long_audio.bounded(rows)["bounded"] is False
    assert long_audio.bounded(rows[:1]) == {"ratio": None, "bounded": None}
    nothing_first = [{"peak_increase_mb": 0.0}, {"peak_increase_mb": 0.5}]
    assert long_audio.bounded(nothing_first)["bounded"] is True
    assert long_audio.bounded([{"peak_increase_mb": 0.0}, {"peak_increase_mb": 80.0}])["bounded"] is False


def test_long_audio_row_is_the_median_of_its_runs_and_an_error_wins():
    import long_audio

    runs = [{k: v for k in long_audio.MEDIAN_KEYS} | {"minutes": 5, "parts": 3} for v in (3.0, 1.0, 2.0)]
    row = long_audio.median_row(runs)
    assert all(row[k] == 2.0 for k in long_audio.MEDIAN_KEYS) and row["parts"] == 3
    assert row["runs_total_s"] == [3.0, 1.0, 2.0] and row["runs_peak_increase_mb"] == [3.0, 1.0, 2.0]
    assert long_audio.median_row(runs[:1]) == runs[0]  # one run: as it was, no lists
    failed = {"minutes": 5, "error": "boom"}
    assert long_audio.median_row([runs[0], failed]) == failed


def test_release_free_heap_hands_freed_small_blocks_back():
    import ctypes.util

    from common import proc_status_mb, release_free_heap

    if not ctypes.util.find_library("c"):
        pytest.skip("no C library to trim")
    # 96 MB in 64-kB blocks (below glibc's mmap threshold: on the heap), every other one freed: the
    # holes stay resident (only free space at the top of the heap is returned by itself) until trimmed
    blocks = [ctypes.create_string_buffer(64 * 1024) for _ in range(1536)]
    kept = blocks[1::2]
    del blocks
    held = proc_status_mb("VmRSS")
    assert release_free_heap() is True
    assert proc_status_mb("VmRSS") < held - 32
    assert len(kept) == 768


def test_long_audio_refuses_zero_repeats(capsys):
    import long_audio

    with pytest.raises(SystemExit) as e:
        long_audio.main(["--repeats", "0"])
    assert e.value.code == 2 and "--repeats 0: must be at least 1" in capsys.readouterr().err


@pytest.mark.integration
def test_human_speech_recording_and_its_hand_written_facts(tmp_path):
    # the real recording comes from the pinned pyannote.audio wheel (pip download, SHA-256 checked);
    # its hand-written facts are ones the fact scorer accepts and the gold transcript states
    human = pytest.importorskip("human_speech")
    from speechsum.data.user import load_user_manifest
    from speechsum.evaluation.facts import score_summary
    from speechsum.models.registry import ModelError

    try:
        wav = human.fetch_recording(tmp_path / "src")
    except ModelError as e:
        pytest.skip(f"the package index is not reachable: {e}")
    (item,) = load_user_manifest(tmp_path / "src")
    assert item.audio == wav and sf.info(wav).duration == pytest.approx(30.0, abs=0.1)
    assert "This is Diane in New Jersey." in item.transcript and len(item.facts) == 5
    assert score_summary(item.transcript, item.facts, item.transcript)["recall"] == 1.0
    assert score_summary(human.SUMMARY, item.facts, item.transcript)["recall"] == 1.0
