"""The speech check before summarizing (speechsum.vad, the real silero VAD that faster-whisper
ships): it hears real speech, not noise or tones; a file without speech is refused in one line
naming it; a long recording's parts without speech are left out of its notes."""

import json

import numpy as np
import pytest
import soundfile as sf
from tiny import speech, tiny_speechlm, tone

from speechsum.audio import AudioError
from speechsum.cli import main
from speechsum.longform import Recording, notes_text, summarize_long
from speechsum.vad import has_speech, speech_probs, speech_seconds

SR = 16000


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return (0.05 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype("float32")


def sweep(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * (220 + 330 * t / seconds) * t)).astype("float32")


def test_speech_is_heard_in_speech_and_not_in_noise_tones_or_a_blip():
    voice = speech(8.0)
    assert 5.0 < speech_seconds(voice) <= 8.0
    assert len(speech_probs(voice)) == -(-len(voice) // 512)  # one probability per 32 ms window
    for x in (noise(8.0), sweep(8.0), tone(8.0), tone(0.05)):
        assert speech_seconds(x) == 0.0 and not has_speech(x)
        assert has_speech(x, min_seconds=0)  # 0: no check
    # speech under noise at 0 dB SNR is still speech
    loud = noise(8.0) * np.sqrt(np.mean(voice**2) / np.mean(noise(8.0) ** 2))
    assert speech_seconds(voice + loud) > 5.0


def test_the_scan_stops_once_enough_speech_is_heard():
    voice = speech(20.0)
    full = speech_seconds(voice, chunk_s=5.12)
    first = speech_seconds(voice, enough=1.0, chunk_s=5.12)  # the first chunk (160 windows) already has it
    assert 1.0 <= first == speech_seconds(voice[: 160 * 512]) < full


def test_a_file_without_speech_is_refused_naming_it(tmp_path):
    sf.write(tmp_path / "hum.wav", sweep(6.0), SR)
    sf.write(tmp_path / "talk.flac", speech(6.0), SR)
    with pytest.raises(AudioError) as e:
        Recording.scan(tmp_path / "hum.wav", min_speech=0.5)
    assert str(e.value).startswith(f"{tmp_path / 'hum.wav'}: no speech found: ") and "\n" not in str(e.value)
    assert "heard 0.0 s of speech in 6.0 s" in str(e.value)
    assert Recording.scan(tmp_path / "hum.wav").num_samples == 6 * SR  # min_speech 0: no check
    rec = Recording.scan(tmp_path / "talk.flac", min_speech=0.5)
    assert 0.5 <= rec.speech_s and not rec.speech_scanned
    # a Recording scanned without the check listens when first asked (file and in-memory alike)
    Recording.scan(tmp_path / "talk.flac").require_speech(0.5)
    with pytest.raises(AudioError, match=r"^<array>: no speech found"):
        Recording.from_samples(noise(3.0)).require_speech(0.5)


def test_parts_without_speech_are_left_out_of_the_notes(tiny_model):
    """noise | speech | noise in three 4-s parts: only the middle part is decoded and noted; the
    answer reads its notes alone. (Digital silence around the speech: the cuts go to the quietest
    frames, which would otherwise be the speech's own pauses.)"""
    tiny_model.eval()
    gap = np.zeros(int(0.7 * SR), np.float32)
    x = np.concatenate([noise(4.0, 1), gap, speech(2.6), gap, noise(4.0, 2)])
    rows, generate = [], tiny_model.generate

    def spy(audio, instructions, **kw):
        rows.extend(len(a) for a in audio)
        return generate(audio, instructions, **kw)

    tiny_model.generate = spy
    res = summarize_long(tiny_model, x, "summarize the meeting", window_s=4.0, max_new_tokens=4)
    del tiny_model.generate
    assert [p.speech for p in res.parts] == [False, True, False]
    assert len(rows) == 1 and abs(rows[0] - 4 * SR) < 0.7 * SR  # one part decoded: the speech
    assert res.parts[0].notes == res.parts[2].notes == ""
    assert notes_text(res.parts) == f"Part 1 (0:04-0:08):\n{res.parts[1].notes}"
    # with the check off every part is decoded, as before
    off = summarize_long(tiny_model, x, "summarize the meeting", window_s=4.0, max_new_tokens=4, min_speech=0)
    assert all(p.speech for p in off.parts) and notes_text(off.parts).count("Part ") == 3


def test_enough_speech_in_all_but_too_little_in_every_part_is_refused(tiny_model):
    x = np.concatenate([speech(1.2), noise(3.0), speech(1.2, start=6.0)])  # ~1 s of speech per part
    with pytest.raises(AudioError, match=r"^<array>: no speech found: no part of 3 s has 1.5 s of speech"):
        summarize_long(tiny_model.eval(), x, "summarize", window_s=3.0, max_new_tokens=4, min_speech=1.5)


def test_cli_refuses_a_file_without_speech_and_summarizes_the_others(tmp_path, tiny_dir, capsys):
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    sf.write(tmp_path / "hold-music.wav", sweep(5.0), SR)
    sf.write(tmp_path / "call.wav", speech(3.0), SR)
    code = main(["summarize", str(tmp_path / "hold-music.wav"), str(tmp_path / "call.wav"),
                 "--model", str(tmp_path / "ckpt"), "--json", "--max-new-tokens", "3"])
    out, err = capsys.readouterr()
    assert code == 2 and [json.loads(x)["file"] for x in out.strip().splitlines()] == [str(tmp_path / "call.wav")]
    assert [line for line in err.strip().splitlines() if "error" in line] == [
        f"speechsum: error: {tmp_path / 'hold-music.wav'}: no speech found: the voice-activity detector (silero "
        "VAD) heard 0.0 s of speech in 5.0 s of audio, less than 0.5 s; nothing to summarize (--min-speech 0 "
        "summarizes it anyway)"]
    assert main(["summarize", str(tmp_path / "hold-music.wav"), "--model", str(tmp_path / "ckpt"), "--json",
                 "--max-new-tokens", "3", "--min-speech", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["parts_without_speech"] == 0
    assert main(["summarize", str(tmp_path / "call.wav"), "--min-speech", "-1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "speechsum: error: --min-speech -1: expected seconds >= 0 (0: no speech check)")
    # a long file's silent parts are counted in the output
    sf.write(tmp_path / "long.wav", np.concatenate([speech(3.3), np.zeros(int(0.7 * SR), np.float32), noise(4.0)]), SR)
    assert main(["summarize", str(tmp_path / "long.wav"), "--model", str(tmp_path / "ckpt"), "--max-new-tokens", "3",
                 "--window-seconds", "4"]) == 0
    assert capsys.readouterr().out.startswith(f"== {tmp_path / 'long.wav'} (8.0 s audio, 2 parts, 1 without speech left out)")
