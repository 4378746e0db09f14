import os

import numpy as np
import pytest
import soundfile as sf
from conftest import ffmpeg_write

from speechsum.audio import SAMPLE_RATE, AudioError, encoder_frames, load_audio, read_blocks, split_windows


def _sine(seconds=1.0, sr=16000, channels=1):
    x = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * sr)) / sr)).astype("float32")
    return np.stack([x] * channels, 1) if channels > 1 else x


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("MP3", "mp3")])
def test_formats_rates_channels_to_16k_mono(tmp_path, fmt, ext):
    path = tmp_path / f"a.{ext}"
    sf.write(path, _sine(1.0, 44100, channels=2), 44100, format=fmt)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SAMPLE_RATE) < 0.02 * SAMPLE_RATE  # mp3/ogg add a few ms of padding
    assert 0.2 < np.abs(x).max() <= 1.0


def test_array_input_needs_rate_and_is_resampled():
    assert len(load_audio(_sine(2.0, 8000), sample_rate=8000)) == 32000
    with pytest.raises(AudioError, match="sample_rate is required"):
        load_audio(_sine(1.0))


def _expect(path, problem):
    with pytest.raises(AudioError) as e:
        load_audio(path)
    msg = str(e.value)
    assert msg.startswith(str(path) + ": ") and problem in msg and "\n" not in msg, msg


def test_bad_inputs_give_one_line_errors(tmp_path):
    _expect(tmp_path / "missing.wav", "no such file")
    _expect(tmp_path, "is a directory")
    (tmp_path / "empty.wav").write_bytes(b"")
    _expect(tmp_path / "empty.wav", "empty file")
    (tmp_path / "notes.wav").write_text("this is not audio\n" * 20)
    _expect(tmp_path / "notes.wav", "not a readable audio file")
    sf.write(tmp_path / "zero.wav", np.zeros((0,), "float32"), 16000)
    _expect(tmp_path / "zero.wav", "zero-length")
    sf.write(tmp_path / "silence.wav", np.zeros(16000, "float32"), 16000)
    _expect(tmp_path / "silence.wav", "all silence")
    nan = _sine(1.0)
    nan[100] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    _expect(tmp_path / "nan.wav", "NaN")


@pytest.mark.parametrize("fmt,ext", [("WAV", "wav"), ("FLAC", "flac"), ("MP3", "mp3"), ("OGG", "ogg")])
def test_truncated_files_are_errors(tmp_path, fmt, ext):
    full = tmp_path / f"full.{ext}"
    sf.write(full, _sine(1.0), 16000, format=fmt)
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    _expect(cut, "")  # the message differs per decoder; it must name the file and be one line
    with pytest.raises(AudioError, match="truncated|corrupt|not a readable"):
        load_audio(cut)


def test_ogg_cut_at_a_page_boundary_is_an_error_and_a_whole_one_is_not(tmp_path):
    # libvorbis decodes a cut Ogg file up to the cut without a word (a 24 s file read as 6.3 s):
    # a cut exactly between two pages parses, but its last page lacks the end-of-stream flag
    full = tmp_path / "full.ogg"
    sf.write(full, _sine(8.0), 16000, format="OGG")
    data = full.read_bytes()
    pages = [i for i in range(len(data)) if data.startswith(b"OggS", i)]
    assert len(pages) >= 3
    cut = tmp_path / "cut.ogg"
    cut.write_bytes(data[: pages[-1]])
    _expect(cut, "truncated or corrupt: the last Ogg page does not end the stream")
    with pytest.raises(AudioError, match="does not end the stream"):
        list(read_blocks(cut))
    assert abs(len(load_audio(full)) - 8 * SAMPLE_RATE) < 0.02 * SAMPLE_RATE


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file: permission errors cannot occur")
def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.wav"
    sf.write(p, _sine(), 16000)
    p.chmod(0)
    _expect(p, "permission denied")


def test_windows_cover_everything():
    x = np.ones(16000 * 65, "float32")
    w = split_windows(x)
    assert [len(a) for a in w] == [480000, 480000, 80000]
    assert encoder_frames(16000) == 50 and encoder_frames(16001) == 51


@pytest.mark.parametrize("sr,channels", [(16000, 1), (22050, 1), (44100, 2)])
def test_blocks_join_to_the_whole_file(tmp_path, sr, channels):
    """read_blocks: the same samples as load_audio, a block at a time (streamed resampling may
    differ from the one-shot resampler in rounding only)."""
    path = tmp_path / "a.flac"
    sf.write(path, _sine(7.3, sr, channels), sr)
    whole = load_audio(path)
    blocks = list(read_blocks(path, block_seconds=2.0))
    assert len(blocks) >= 3 and all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    joined = np.concatenate(blocks)
    assert len(joined) == len(whole)
    if sr == SAMPLE_RATE:
        assert np.array_equal(joined, whole)
    else:
        assert np.abs(joined - whole).max() < 1e-4


def test_blocks_check_what_load_audio_checks(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros(3 * 16000, "float32"), 16000)
    with pytest.raises(AudioError, match=r"silence\.wav: all silence"):
        list(read_blocks(tmp_path / "silence.wav", block_seconds=1.0))
    nan = _sine(3.0)
    nan[40000] = np.nan
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: contains NaN"):
        list(read_blocks(tmp_path / "nan.wav", block_seconds=1.0))
    with pytest.raises(AudioError, match="no such file"):
        list(read_blocks(tmp_path / "missing.wav"))
    full = tmp_path / "full.wav"
    sf.write(full, _sine(2.0), 16000)
    (tmp_path / "cut.wav").write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(AudioError, match=r"cut\.wav: (truncated|not a readable)"):
        list(read_blocks(tmp_path / "cut.wav", block_seconds=0.5))


@pytest.mark.parametrize("container,codec,ext,video", [
    ("ipod", "aac", "m4a", False), ("mp4", "aac", "mp4", True), ("webm", "libopus", "webm", False),
    ("matroska", "aac", "mkv", False), ("asf", "wmav2", "wma", False)])
def test_containers_libsndfile_cannot_read_go_through_ffmpeg(tmp_path, container, codec, ext, video):
    # m4a from a phone, a meeting's mp4 (its audio track), a browser's webm, mkv, wma: libsndfile knows
    # none of them; FFmpeg decodes them and the same downmix and resampler make 16 kHz mono
    path = tmp_path / f"a.{ext}"
    rate = 48000 if codec == "libopus" else 44100
    ffmpeg_write(path, container, codec, _sine(2.0, rate, 2), rate, video=video)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - 2 * SAMPLE_RATE) < 0.1 * SAMPLE_RATE  # codecs add priming and padding
    assert 0.25 < np.abs(x).max() < 0.35  # the tone's 0.3: channels averaged, not summed
    spectrum = np.abs(np.fft.rfft(x[SAMPLE_RATE // 4 : -SAMPLE_RATE // 4]))
    freq = np.fft.rfftfreq(len(x) - SAMPLE_RATE // 2, 1 / SAMPLE_RATE)[spectrum.argmax()]
    assert abs(freq - 220) < 3
    blocks = list(read_blocks(path, block_seconds=0.5))
    assert len(blocks) >= 4 and np.abs(np.concatenate(blocks) - x).max() < 1e-4


def test_ffmpeg_files_cut_off_or_without_sound_are_one_line_errors(tmp_path):
    ffmpeg_write(tmp_path / "full.webm", "webm", "libopus", _sine(4.0, 48000, 2), 48000)
    data = (tmp_path / "full.webm").read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) // 2])  # still declares 4 s
    _expect(tmp_path / "cut.webm", "truncated or corrupt: header says")
    with pytest.raises(AudioError, match="truncated or corrupt"):
        list(read_blocks(tmp_path / "cut.webm"))
    ffmpeg_write(tmp_path / "full.m4a", "ipod", "aac", _sine(2.0, 44100, 2), 44100)
    data = (tmp_path / "full.m4a").read_bytes()
    (tmp_path / "cut.m4a").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: gone
    _expect(tmp_path / "cut.m4a", "not a readable audio file (Invalid data found when processing input)")
    (tmp_path / "notes.m4a").write_text("minutes of the meeting\n" * 50)
    _expect(tmp_path / "notes.m4a", "not a readable audio file")
