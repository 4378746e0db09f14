"""TTS: the real espeak-ng and piper engines on one sentence each, voice checks, cache, timestamps."""

import random
import shutil

import numpy as np
import pytest

from speechsum.audio import SAMPLE_RATE
from speechsum.data import tts

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (apt-get install espeak-ng)")


@needs_espeak
def test_real_espeak_one_sentence():
    v = tts.get_voice("espeak:en-gb+f3")
    audio = v.synthesize("The budget was raised to five thousand dollars.", 1.0)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 1.5 < len(audio) / SAMPLE_RATE < 6 and np.abs(audio).max() > 0.05
    slower = v.synthesize("The budget was raised to five thousand dollars.", 0.7)
    assert len(slower) > len(audio) * 1.2  # speed reaches the engine


def _piper_or_skip():
    pytest.importorskip("piper", reason="piper-tts not installed (pip install 'speechsum[data]')")
    try:
        tts.check_voice("piper:en_US-joe-medium")
    except tts.VoiceError as e:
        pytest.skip(f"piper voice unavailable: {e}")


def test_real_piper_one_sentence():
    _piper_or_skip()
    audio = tts.get_voice("piper:en_US-joe-medium").synthesize("We meet again on Friday at ten.", 1.0)
    assert audio.dtype == np.float32 and 1.0 < len(audio) / SAMPLE_RATE < 5
    assert np.abs(audio).max() > 0.05


def test_piper_in_a_synth_worker_runs_on_one_thread(monkeypatch):
    _piper_or_skip()
    monkeypatch.setattr(tts, "ORT_THREADS", 0)
    main = tts.PiperVoice("en_US-joe-medium")
    default = main.session(0).get_session_options().intra_op_num_threads
    tts.one_thread_per_worker()  # what synth's worker processes run first
    assert tts.ORT_THREADS == 1
    worker = tts.PiperVoice("en_US-joe-medium")
    assert default != 1 and worker.session(0).get_session_options().intra_op_num_threads == 1
    audio = worker.synthesize("We meet again on Friday at ten.", 1.0)
    assert 1.0 < len(audio) / SAMPLE_RATE < 5 and np.abs(audio).max() > 0.05
    monkeypatch.setattr(tts, "ORT_THREADS", 0)
    assert np.array_equal(main.synthesize("We meet again on Friday at ten.", 1.0), audio)  # threads change nothing


def test_piper_noise_is_seeded_by_the_request():
    # unseeded, piper drew other noise on every call (33,994 vs 33,065 samples for one sentence):
    # a dataset could only repeat through the TTS cache
    _piper_or_skip()
    text = "Martin will send the report by Tuesday."
    voice = tts.PiperVoice("en_US-joe-medium")
    first = voice.synthesize(text, 1.0)
    voice.synthesize("Something else in between.", 1.0)
    assert np.array_equal(voice.synthesize(text, 1.0), first)
    assert np.array_equal(tts.PiperVoice("en_US-joe-medium").synthesize(text, 1.0), first)  # a new process's voice
    other = voice.synthesize(text + " ", 1.0)  # another request: another draw
    assert not (other.shape == first.shape and np.array_equal(other, first))
    assert "noise" in voice.request(text, 1.0)  # clips cached before the seeding are not reused


@needs_espeak
@pytest.mark.parametrize("voice, fragment", [
    ("espeak:en-us+nosuchvariant", "no variant"),
    ("espeak:xx-yy", "no language"),
    ("piper:nobody", "unknown piper voice"),
    ("festival:kal", "unknown TTS engine"),
    ("en-us", "expected"),
])
def test_check_voice_one_line_errors(voice, fragment):
    with pytest.raises(tts.VoiceError) as e:
        tts.check_voice(voice)
    assert fragment in str(e.value) and "\n" not in str(e.value)


class CountingVoice:
    """Fake engine (the real ones are tested above): a 440 Hz tone as long as the text."""

    def __init__(self):
        self.calls = 0

    def request(self, text, speed):
        return {"engine": "fake", "text": text, "speed": speed}

    def synthesize(self, text, speed):
        self.calls += 1
        t = np.arange(int(0.05 * len(text) * SAMPLE_RATE / speed)) / SAMPLE_RATE
        return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_cache_is_keyed_by_the_full_request(tmp_path):
    cache, v = tts.TTSCache(tmp_path), CountingVoice()
    a = cache.get(v, "hello there", 1.0)
    b = cache.get(v, "hello there", 1.0)
    assert v.calls == 1 and np.array_equal(a, b)
    cache.get(v, "hello there", 1.1)
    cache.get(v, "hello there!", 1.0)
    assert v.calls == 3
    assert len(list(tmp_path.rglob("*.flac"))) == 3


def test_speak_gives_sentence_spans_inside_the_audio(tmp_path, monkeypatch):
    v = CountingVoice()
    monkeypatch.setitem(tts._LOADED, "fake:a", v)
    sents = [(0, "fake:a", "first sentence here"), (0, "fake:a", "second"), (1, "fake:a", "a third, longer one")]
    audio, spans = tts.speak(sents, tts.TTSCache(None), 1.0, random.Random(0))
    dur = len(audio) / SAMPLE_RATE
    assert len(spans) == 3
    prev_end = 0.0
    for (start, end), (_, _, text) in zip(spans, sents):
        assert prev_end < start < end <= dur
        assert end - start == pytest.approx(0.05 * len(text), abs=0.05)
        seg = audio[int(start * SAMPLE_RATE): int(end * SAMPLE_RATE)]
        gap = audio[int(prev_end * SAMPLE_RATE) + 10: int(start * SAMPLE_RATE) - 10]
        assert np.abs(seg).max() > 0.3 and (gap.size == 0 or np.abs(gap).max() == 0)
        prev_end = end
