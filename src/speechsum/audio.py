"""Load, validate and resample audio; cut long audio into encoder windows.

Every audio input goes through `load_audio` (or `read_blocks`, block by block), which returns
16 kHz mono float32 in [-1, 1] or raises `AudioError("<file>: <problem>")` - one line, naming
the input and the problem, for the CLI to print.

Decoders: libsndfile (soundfile) for what it reads (wav, flac, ogg/vorbis/opus, mp3, aiff, ...);
anything else through FFmpeg's decoders in PyAV (m4a/aac, mp4/mov/mkv/webm with an audio track,
wma, amr, ...: what phones and meeting tools record). Both give samples at the file's rate that
the same code downmixes (the channels' mean) and resamples (soxr), so a recording decodes to the
same samples whichever container it came in, up to the codec's own loss.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16_000  # Whisper's input rate
HOP_LENGTH = 160  # samples between log-mel frames (10 ms)
WINDOW_SECONDS = 30  # Whisper encodes fixed 30 s windows
WINDOW_SAMPLES = WINDOW_SECONDS * SAMPLE_RATE  # 480_000
WINDOW_FRAMES = WINDOW_SAMPLES // HOP_LENGTH  # 3000 mel frames per window
ENCODER_DOWNSAMPLE = 2  # Whisper's second conv has stride 2
WINDOW_ENCODER_FRAMES = WINDOW_FRAMES // ENCODER_DOWNSAMPLE  # 1500 encoder frames per window (50 Hz)
SAMPLES_PER_ENCODER_FRAME = HOP_LENGTH * ENCODER_DOWNSAMPLE  # 320 samples = 20 ms
SILENCE_PEAK = 1e-4  # a peak below this (-80 dBFS) is treated as all-silence


class AudioError(ValueError):
    """Unusable audio input; str(e) is '<source>: <problem>'."""

    def __init__(self, source: str | os.PathLike, problem: str):
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{source}: {problem}")


def load_audio(source: str | os.PathLike | np.ndarray, sample_rate: int | None = None) -> np.ndarray:
    """Return 16 kHz mono float32 samples from a file path or an array.

    An array must come with its `sample_rate` (shape [T] or [T, channels]).
    """
    if isinstance(source, np.ndarray):
        if sample_rate is None:
            raise AudioError("<array>", "sample_rate is required for array input")
        return _finish(np.asarray(source), sample_rate, "<array>")
    path = _checked_path(source)
    _check_container(path)
    with _decode_errors(path), _quiet_stderr(), _open_decoder(path) as f:
        data = f.read(-1)
    f.check_complete(len(data))
    return _finish(data, f.rate, path)


@contextlib.contextmanager
def _decode_errors(path: Path):
    """A decoder's failure as one AudioError line naming the file."""
    import soundfile as sf

    try:
        yield
    except AudioError:
        raise
    except sf.LibsndfileError as e:
        msg = str(e).split(": ", 1)[-1] if ": " in str(e) else str(e)
        raise AudioError(path, f"not a readable audio file ({msg.strip()})") from None
    except Exception as e:
        if _is_ffmpeg_error(e):  # "[Errno N] <reason>: '<file>'": the reason alone
            raise AudioError(path, f"not a readable audio file ({e.strerror or e})") from None
        if isinstance(e, (RuntimeError, TypeError, ValueError, EOFError)):
            raise AudioError(path, f"not a readable audio file ({e})") from None
        raise


def _is_ffmpeg_error(e: BaseException) -> bool:
    av_error = sys.modules.get("av.error")  # imported only when a file needed FFmpeg
    return av_error is not None and isinstance(e, av_error.FFmpegError)


def _check_complete(path: Path, expected: int, read: int, slack: int = 0) -> None:
    # the header's frame count; a short read means the file was cut off (frames may be unknown, 0
    # or huge for some streamed formats: only compare when plausible). `slack`: frames a decoder may
    # fall short of a declared duration that is only approximate.
    if 0 < expected < 2**62 and read < expected - slack:
        raise AudioError(path, f"truncated or corrupt: header says {expected} frames, read {read}")


class _Decoder:
    """A decoder opened on one file: `rate`, `read(frames)` -> float32 [frames, channels] (-1: the
    rest), `check_complete(read)`; closes at the end of a `with` block."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SndFile(_Decoder):
    """libsndfile's reader: float32 [frames, channels] at the file's rate, the header's frame count."""

    def __init__(self, path: Path):
        import soundfile as sf

        self.path = path
        self.f = sf.SoundFile(str(path))
        self.rate, self.expected = self.f.samplerate, self.f.frames

    def read(self, frames: int) -> np.ndarray:
        return self.f.read(frames, dtype="float32", always_2d=True)

    def check_complete(self, read: int) -> None:
        _check_complete(self.path, self.expected, read)

    def close(self) -> None:
        self.f.close()


class _FFmpegFile(_Decoder):
    """The first audio stream of any container FFmpeg reads (PyAV), as `_SndFile` reads: float32
    [frames, channels] at the stream's rate. The declared duration (the stream's, else the
    container's) is approximate (codec priming and padding), so a read may fall short of it by
    0.25 s before the file counts as cut off."""

    SLACK_S = 0.25

    def __init__(self, path: Path):
        import av

        self.path = path
        self.c = av.open(str(path))
        try:
            if not self.c.streams.audio:
                raise AudioError(path, "not a readable audio file (no audio stream)")
            stream = self.c.streams.audio[0]
            cc = stream.codec_context
            self.rate = cc.sample_rate
            if not self.rate:
                raise AudioError(path, "not a readable audio file (its audio stream has no sample rate)")
            if stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = self.c.duration / 1e6 if self.c.duration else 0.0  # AV_TIME_BASE: microseconds
            self.expected = round(seconds * self.rate)
            self.resampler = av.AudioResampler(format="flt", layout=cc.layout, rate=self.rate)  # to packed float32
            self.frames = self.c.decode(stream)
            self.buffer: list[np.ndarray] = []
            self.buffered = 0
            self.done = False
        except BaseException:
            self.c.close()
            raise

    def _pull(self) -> None:
        frame = next(self.frames, None)
        for out in self.resampler.resample(frame):  # None flushes the resampler
            a = out.to_ndarray().reshape(-1, out.layout.nb_channels)
            self.buffer.append(a)
            self.buffered += len(a)
        self.done = frame is None

    def read(self, frames: int) -> np.ndarray:
        while not self.done and (frames < 0 or self.buffered < frames):
            self._pull()
        data = np.concatenate(self.buffer) if self.buffer else np.zeros((0, 1), np.float32)
        take = len(data) if frames < 0 else min(frames, len(data))
        rest = data[take:]
        self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)
        return data[:take]

    def check_complete(self, read: int) -> None:
        _check_complete(self.path, self.expected, read, slack=round(self.SLACK_S * self.rate))

    def close(self) -> None:
        self.c.close()


def _open_decoder(path: Path) -> _Decoder:
    """libsndfile's reader for what it reads, FFmpeg's (PyAV) for the rest: a format libsndfile
    does not know (m4a, mp4, webm, wma, ...) goes to FFmpeg; when FFmpeg cannot read it either,
    the error is FFmpeg's."""
    import soundfile as sf

    try:
        return _SndFile(path)
    except sf.LibsndfileError:
        return _FFmpegFile(path)


def _checked_path(source: str | os.PathLike) -> Path:
    """The path of an audio file that exists, is a readable, non-empty file (else AudioError)."""
    path = Path(source)
    if not path.exists():
        raise AudioError(path, "no such file")
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if not os.access(path, os.R_OK):
        raise AudioError(path, "permission denied")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file (0 bytes)")
    return path


def _check_riff(path: Path) -> None:
    """libsndfile silently shortens a WAV whose data chunk runs past the end of the file: a
    download or copy that was cut off. Compare the declared chunk size with the file size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk = f.read(8)
            cid, n = chunk[:4], int.from_bytes(chunk[4:8], "little")
            if cid == b"data":
                if n != 0xFFFFFFFF and pos + 8 + n > size:  # 0xFFFFFFFF: streamed WAV of unknown size
                    raise AudioError(path, f"truncated or corrupt: data chunk declares {n} bytes, file has {size - pos - 8}")
                return
            pos += 8 + n + (n & 1)


OGG_MAX_PAGE = 27 + 255 + 255 * 255  # header, lacing table, payload: the largest page Ogg allows


def _check_ogg(path: Path) -> None:
    """libvorbis/libopus decode a cut-off Ogg file up to the cut without a word: a complete stream
    ends with a page that reaches the end of the file and carries the end-of-stream flag. Look for
    that page among the file's last bytes."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(4) != b"OggS":
            return
        f.seek(max(0, size - 2 * OGG_MAX_PAGE))
        tail = f.read()
    at = len(tail)
    while (at := tail.rfind(b"OggS", 0, at)) >= 0:
        head = tail[at : at + 27]
        if len(head) == 27 and head[4] == 0:  # stream structure version 0
            lacing = tail[at + 27 : at + 27 + head[26]]
            if len(lacing) == head[26] and at + 27 + head[26] + sum(lacing) == len(tail):
                if not head[5] & 0x04:
                    raise AudioError(path, "truncated or corrupt: the last Ogg page does not end the stream")
                return
    raise AudioError(path, "truncated or corrupt: the file ends inside an Ogg page")


def _check_container(path: Path) -> None:
    """The container checks libsndfile does not make (a cut-off WAV or Ogg file)."""
    _check_riff(path)
    _check_ogg(path)


@contextlib.contextmanager
def _quiet_stderr():
    """Silence decoder chatter (libmpg123 prints warnings straight to fd 2)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        sys.stderr.flush()
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


def _finish(data: np.ndarray, rate: int, source) -> np.ndarray:
    if data.ndim == 2:
        # [T, C] -> [T]; average channels rather than take the first (stereo calls often split speakers)
        data = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    elif data.ndim != 1:
        raise AudioError(source, f"expected 1-D or 2-D samples, got shape {data.shape}")
    if data.size == 0:
        raise AudioError(source, "zero-length audio")
    if not np.issubdtype(data.dtype, np.floating):
        info = np.iinfo(data.dtype)
        data = data.astype(np.float32) / max(abs(info.min), info.max)
    data = data.astype(np.float32, copy=False)
    # no full-size temporaries (np.abs, np.isfinite): a 30-min file is 115 MB at 16 kHz
    if not np.isfinite(data.sum(dtype=np.float64)):  # a float64 sum of finite float32 values cannot overflow
        raise AudioError(source, "contains NaN or infinite samples")
    if _peak(data) < SILENCE_PEAK:
        raise AudioError(source, "all silence (peak below -80 dBFS)")
    if rate != SAMPLE_RATE:
        import soxr

        data = soxr.resample(data, rate, SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    return np.ascontiguousarray(data)


def _peak(data: np.ndarray) -> float:
    return max(float(data.max()), -float(data.min())) if data.size else 0.0


def read_blocks(source: str | os.PathLike, block_seconds: float = 60.0) -> Iterator[np.ndarray]:
    """16 kHz mono float32 samples of a file in consecutive blocks, decoded and resampled block by
    block (soxr's streaming resampler), so that memory holds one block however long the file is.
    The blocks joined are `load_audio(source)` up to the resampler's rounding (the same filter, fed
    in pieces). The same checks as `load_audio`; the ones that need the whole file (all silence,
    truncated, zero length) raise after the last block."""
    path = _checked_path(source)
    _check_container(path)
    with _decode_errors(path):
        with _quiet_stderr():  # only around the decoder's calls: the caller runs between blocks
            f = _open_decoder(path)
        with f:
            rate = f.rate
            stream = None
            if rate != SAMPLE_RATE:
                import soxr

                stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
            read, peak = 0, 0.0
            step = max(1, int(block_seconds * rate))
            while True:
                with _quiet_stderr():
                    block = f.read(step)
                last = len(block) < step
                read += len(block)
                block = block.mean(axis=1) if block.shape[1] > 1 else block[:, 0]
                if not np.isfinite(block.sum(dtype=np.float64)):
                    raise AudioError(path, "contains NaN or infinite samples")
                peak = max(peak, _peak(block))
                if stream is not None:
                    block = stream.resample_chunk(block, last=last)
                if len(block):
                    yield np.ascontiguousarray(block, dtype=np.float32)
                if last:
                    break
    f.check_complete(read)
    if read == 0:
        raise AudioError(path, "zero-length audio")
    if peak < SILENCE_PEAK:
        raise AudioError(path, "all silence (peak below -80 dBFS)")


def split_windows(samples: np.ndarray) -> list[np.ndarray]:
    """Cut audio into consecutive 30 s windows (the last one shorter); nothing is dropped."""
    return [samples[i : i + WINDOW_SAMPLES] for i in range(0, len(samples), WINDOW_SAMPLES)]


def encoder_frames(num_samples: int) -> int:
    """Number of Whisper encoder frames (50 Hz) that carry real audio for `num_samples`."""
    return -(-num_samples // SAMPLES_PER_ENCODER_FRAME)
