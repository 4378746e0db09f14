"""Integration: whisper-base understands our synthesized speech (the TTS output is intelligible)."""

import random
import re
import shutil

import pytest
from conftest import real_model_dir

from speechsum.data import tts

SENTENCES = [
    "Good morning everyone, thanks for coming in today.",
    "We decided to move the product launch to next Thursday.",
    "Can you send the revised budget to the finance team by Friday?",
    "The new office will open in the spring.",
]


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]+", " ", text.lower()).split()


def _wer(ref: list[str], hyp: list[str]) -> float:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)] / len(ref)


@pytest.fixture(scope="module")
def whisper():
    model_dir = real_model_dir("whisper-base")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    return WhisperProcessor.from_pretrained(model_dir), WhisperForConditionalGeneration.from_pretrained(model_dir).eval()


@pytest.mark.integration
@pytest.mark.parametrize("voice", ["espeak:en-us", "espeak:en-gb+f3", "piper:en_US-joe-medium"])
def test_whisper_base_transcribes_synthesized_speech(voice, whisper):
    if voice.startswith("espeak") and shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng not installed")
    try:
        tts.check_voice(voice)
    except tts.VoiceError as e:
        pytest.skip(str(e))
    import torch

    proc, model = whisper
    audio, _ = tts.speak([(0, voice, s) for s in SENTENCES], tts.TTSCache(None), 1.0, random.Random(0))
    feats = proc(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(feats, language="en", task="transcribe", max_new_tokens=120)
    hyp = proc.batch_decode(ids, skip_special_tokens=True)[0]
    wer = _wer(_words(" ".join(SENTENCES)), _words(hyp))
    assert wer < 0.25, (wer, hyp)  # measured here: en-us 0.03, en-gb+f3 0.08, piper 0.0
