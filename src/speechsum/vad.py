"""Is anyone speaking? Silero VAD (v6, the ONNX model faster-whisper ships) before summarizing.

An audio LLM asked to summarize a recording writes a summary whatever the recording holds: the
demo's model, given 20 s of white noise or a tone sweep, answered "A podcast episode on the
podcast ..." and "A conversation on the topic of ...". Every fact in such an answer is invented.
`summarize` therefore first asks a voice-activity detector whether the recording has speech, and
refuses (one line naming the file) when it hears less than `MIN_SPEECH_S` of it; a long recording's
parts without speech are left out of its notes (longform.py) rather than summarized.

The detector scores every 32 ms window (512 samples at 16 kHz) with a speech probability; a window
at or above `THRESHOLD` counts as speech. The recording is scanned `CHUNK_S` at a time and the scan
stops once enough speech was heard, so a recording that has speech costs the detector's time on
its first seconds only (~0.01 s here); a recording without speech costs a full scan (~0.09 s per
minute on one thread).
"""

from __future__ import annotations

import functools

import numpy as np

from speechsum.audio import SAMPLE_RATE

MIN_SPEECH_S = 0.5  # less speech than this: nothing to summarize
THRESHOLD = 0.5  # silero's own default speech probability threshold
WINDOW = 512  # samples per speech probability (silero VAD at 16 kHz)
CHUNK_S = 10.0  # seconds scored per call; the scan stops at the first chunk that completes enough speech


@functools.lru_cache(maxsize=1)
def _model():
    from faster_whisper.vad import get_vad_model  # the packaged silero_vad_v6.onnx, on onnxruntime

    return get_vad_model()


def speech_probs(samples: np.ndarray) -> np.ndarray:
    """Silero's speech probability of every 512-sample window of 16 kHz mono `samples` (the last
    window zero-padded); one value per 32 ms."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected 1-D samples, got shape {x.shape}")
    if not len(x):
        return np.zeros(0, np.float32)
    x = np.pad(x, (0, -len(x) % WINDOW))
    return np.asarray(_model()(x), dtype=np.float32).reshape(-1)


def speech_seconds(samples: np.ndarray, enough: float | None = None, chunk_s: float = CHUNK_S) -> float:
    """Seconds of `samples` (16 kHz mono) the detector hears as speech, scored `chunk_s` at a
    time; with `enough`, the count stops at the first chunk that reaches it (the result is then
    >= `enough` but not the whole recording's)."""
    step = max(WINDOW, int(chunk_s * SAMPLE_RATE) // WINDOW * WINDOW)
    total = 0.0
    for a in range(0, len(samples), step):
        total += float((speech_probs(samples[a : a + step]) >= THRESHOLD).sum()) * WINDOW / SAMPLE_RATE
        if enough is not None and total >= enough:
            break
    return total


def has_speech(samples: np.ndarray, min_seconds: float = MIN_SPEECH_S) -> bool:
    """Whether the detector hears at least `min_seconds` of speech (always True at 0)."""
    return min_seconds <= 0 or speech_seconds(samples, enough=min_seconds) >= min_seconds


def no_speech_problem(heard: str) -> str:
    """The one-line problem of a recording without enough speech, for AudioError; `heard` says what
    the detector heard against what was needed."""
    return f"no speech found: {heard}; nothing to summarize (--min-speech 0 summarizes it anyway)"


def too_little_speech(seconds: float, audio_seconds: float, min_seconds: float) -> str:
    """`no_speech_problem` for a whole recording."""
    return no_speech_problem(f"the voice-activity detector (silero VAD) heard {seconds:.1f} s of speech in "
                             f"{audio_seconds:.1f} s of audio, less than {min_seconds:g} s")
