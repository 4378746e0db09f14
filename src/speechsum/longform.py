"""Long recordings: summarize each part, then the notes of all parts.

A SpeechLM reads its whole input at once, so one pass over an hour of speech asks the LLM to
attend over ~22,500 audio tokens: past SmolLM2's 8,192-token context, far past the 17-120 s clips
the tiny preset trains on, and with a prefill that grows quadratically. `summarize_long` instead

1. cuts the recording into parts of at most `window_s` seconds (equal lengths, each cut moved to
   the quietest 50 ms within `search` of a part's length around its nominal place, so cuts fall
   in pauses rather than inside words: `quiet_cuts`);
2. leaves out the parts in which a voice-activity detector hears too little speech (vad.py: hold
   music or silence would otherwise be "summarized" into invented notes), and asks the model for
   each other part's main points (`PART_STYLE`, at most `PART_TOKENS`), the parts
   decoded together in batches (map: decoding is memory-bound, so a batch of 8 parts costs little
   more per step than one);
3. gives the model the parts' notes as text, in order and labelled with their times, with the
   user's instruction (reduce, text mode: the same LLM and LoRA).

No attention ever spans more than one part, and the cost grows with the number of parts, in
steps of `batch_size` parts decoded together. The notes and the answer are decoded after the
parts, so a recording costs 1.6-2x the time of one pass here. `bench/summarize.py` measured
more facts this way on 5- and 10-minute recordings; `bench/long_audio.py` measures the cost of
both modes per audio minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from speechsum.audio import SAMPLE_RATE
from speechsum.vad import MIN_SPEECH_S

WINDOW_S = 120.0  # the longest clips the tiny preset trains on (configs/synth/tiny.yaml: 17-120 s)
SEARCH = 0.15  # a cut may move this fraction of a part's length to find a pause
FRAME_S = 0.05
PART_STYLE = "bullets"
PART_TOKENS = 96  # cap on a part's notes (a few bullets); the final answer gets the caller's cap


@dataclass
class Part:
    start_s: float
    end_s: float
    notes: str
    speech: bool = True  # False: the detector heard too little speech; not summarized, not in the notes


@dataclass
class LongSummary:
    text: str
    parts: list[Part]
    finished: bool  # the final answer ended on a stop token
    looped: bool  # the final answer was stopped by `repeat_stop`


def num_parts(num_samples: int, window_s: float, rate: int = SAMPLE_RATE) -> int:
    """How many parts a recording of `num_samples` is summarized in: ceil(duration / window_s),
    and 1 when `window_s` is 0 (one pass however long)."""
    if window_s < 0:
        raise ValueError(f"window_s={window_s}: expected >= 0 (0: one pass)")
    return max(1, int(np.ceil(num_samples / (window_s * rate)))) if window_s else 1


def quiet_cuts(samples: np.ndarray, window_s: float, search: float = SEARCH, rate: int = SAMPLE_RATE,
               frame_s: float = FRAME_S) -> list[int]:
    """Sample indices that cut `samples` into ceil(duration / window_s) parts of about equal length,
    each cut at the quietest frame (lowest mean square; the nearest to the nominal place on ties)
    within `search` x the part length of where it would fall. [] when one part is enough."""
    frame = _frame(frame_s, rate)
    return cuts_from_energy(frame_energy(samples, frame), len(samples), frame, window_s, search, rate)


def frame_energy(samples: np.ndarray, frame: int, block_frames: int = 4096) -> np.ndarray:
    """Mean square (float64) of every whole `frame` of samples; a trailing partial frame is left
    out. Computed `block_frames` at a time, so no float64 copy of a long recording is made."""
    n = len(samples) // frame
    out = np.empty(n)
    for f0 in range(0, n, block_frames):
        f1 = min(n, f0 + block_frames)
        block = samples[f0 * frame : f1 * frame].astype(np.float64).reshape(-1, frame)
        out[f0:f1] = np.square(block, out=block).mean(1)
    return out


def cuts_from_energy(energy: np.ndarray, num_samples: int, frame: int, window_s: float, search: float = SEARCH,
                     rate: int = SAMPLE_RATE) -> list[int]:
    """`quiet_cuts` from the frame energies of a recording of `num_samples` samples."""
    if window_s <= 0:
        raise ValueError(f"window_s={window_s}: expected > 0")
    parts = num_parts(num_samples, window_s, rate)
    if parts <= 1:
        return []
    part_len = num_samples / parts
    cuts = []
    for k in range(1, parts):
        nominal = k * part_len
        lo = max(1, int((nominal - search * part_len) // frame))
        hi = min(len(energy) - 1, int((nominal + search * part_len) // frame))
        if hi < lo:
            cuts.append(int(nominal))
            continue
        frames = np.arange(lo, hi + 1)
        centre = (frames + 0.5) * frame
        best = frames[np.lexsort((np.abs(centre - nominal), energy[lo : hi + 1]))[0]]
        cuts.append(int((best + 0.5) * frame))
    return cuts


@dataclass
class Recording:
    """A recording to summarize in parts: its length, the energy of every `FRAME_S` frame (where
    the cuts go), and its samples - in memory, or a file read block by block twice and never whole
    (`scan`, then `pieces`), so that a file of hours costs the memory of a few parts."""

    num_samples: int
    energy: np.ndarray
    path: str | None = None
    samples: np.ndarray | None = None
    speech_s: float = 0.0
    """Seconds of speech the voice-activity detector heard so far (vad.py); the scan for it stops
    once there is enough, so this is a lower bound unless `speech_scanned`."""
    speech_scanned: bool = False

    @classmethod
    def from_samples(cls, samples: np.ndarray) -> Recording:
        return cls(len(samples), frame_energy(samples, _frame()), samples=samples)

    @classmethod
    def scan(cls, path, min_speech: float = 0.0) -> Recording:
        """First pass over a file: validates it as `load_audio` does (AudioError), counts its 16 kHz
        samples and measures its frame energies; holds one block at a time. With `min_speech` > 0
        it also listens for speech (vad.py, until that much is heard) and raises AudioError when the
        file has less."""
        from speechsum.audio import read_blocks

        frame = _frame()
        n, energies, rest = 0, [], np.zeros(0, np.float32)
        for block in read_blocks(path):
            n += len(block)
            x = np.concatenate([rest, block])
            whole = len(x) // frame * frame
            energies.append(frame_energy(x[:whole], frame))
            rest = x[whole:]
        rec = cls(n, np.concatenate(energies), path=str(path))
        rec.require_speech(min_speech)  # reads again only as far as it must: the first block, with speech
        return rec

    def require_speech(self, min_seconds: float) -> None:
        """Raise AudioError (naming the file) unless the detector hears `min_seconds` of speech in
        the recording (0: no check); listens only as far as it must."""
        from speechsum.audio import AudioError
        from speechsum.vad import speech_seconds, too_little_speech

        if min_seconds <= 0 or self.speech_s >= min_seconds:
            return
        if not self.speech_scanned:
            from speechsum.audio import read_blocks

            heard, blocks = 0.0, iter((self.samples,)) if self.samples is not None else read_blocks(self.path)
            try:
                for block in blocks:
                    heard += speech_seconds(block, enough=min_seconds - heard)
                    if heard >= min_seconds:
                        break
            finally:
                getattr(blocks, "close", lambda: None)()  # the file, when the scan stopped early
            self.speech_s, self.speech_scanned = heard, heard < min_seconds
        if self.speech_s < min_seconds:
            raise AudioError(self.path or "<array>",
                             too_little_speech(self.speech_s, self.num_samples / SAMPLE_RATE, min_seconds))

    def cuts(self, window_s: float) -> list[int]:
        return cuts_from_energy(self.energy, self.num_samples, _frame(), window_s)

    def whole(self) -> np.ndarray:
        """All samples (a file: `load_audio`, the same samples as a short file always got)."""
        from speechsum.audio import load_audio

        return self.samples if self.samples is not None else load_audio(self.path)

    def pieces(self, bounds: list[int]) -> Iterator[np.ndarray]:
        """The samples between consecutive `bounds`, in order (a file: a second pass, holding at
        most one part and one block)."""
        if self.samples is not None:
            yield from (self.samples[a:b] for a, b in zip(bounds, bounds[1:]))
            return
        from speechsum.audio import read_blocks

        blocks = read_blocks(self.path)
        pending, offset = np.zeros(0, np.float32), 0  # pending holds samples [offset, offset + len)
        try:
            for a, b in zip(bounds, bounds[1:]):
                chunks, have = [pending], offset + len(pending)
                while have < b and (block := next(blocks, None)) is not None:
                    chunks.append(block)
                    have += len(block)
                buf = np.concatenate(chunks)
                yield buf[a - offset : b - offset].copy()  # copies: no part keeps the joined buffer alive
                pending, offset = buf[b - offset :].copy(), b
        finally:
            blocks.close()


def _frame(frame_s: float = FRAME_S, rate: int = SAMPLE_RATE) -> int:
    """Samples per energy frame (where a cut may fall)."""
    return max(1, int(frame_s * rate))


def clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def notes_text(parts: list[Part]) -> str:
    """The reduce step's input: the notes of every part with speech in order, labelled with its
    time span."""
    spoken = [p for p in parts if p.speech]
    return "\n\n".join(f"Part {i + 1} ({clock(p.start_s)}-{clock(p.end_s)}):\n{p.notes}" for i, p in enumerate(spoken))


def summarize_long(model, audio: np.ndarray | Recording, instruction: str, window_s: float = WINDOW_S,
                   max_new_tokens: int = 256, repeat_stop: int = 3, batch_size: int = 8,
                   part_tokens: int = PART_TOKENS, min_speech: float = MIN_SPEECH_S) -> LongSummary:
    """Summary of a recording of any length by `model` (a SpeechLM): parts -> notes -> answer
    (`window_s` 0: one pass however long). `audio`: 16 kHz samples, or a `Recording.scan` of a
    file (read part by part, never whole).
    `min_speech` (vad.py; 0: off): a recording with less speech raises AudioError, and a part
    with less is left out (`Part.speech` False, no notes) instead of being summarized."""
    from speechsum.audio import AudioError
    from speechsum.data.styles import instruction_for
    from speechsum.vad import has_speech, no_speech_problem

    rec = audio if isinstance(audio, Recording) else Recording.from_samples(audio)
    rec.require_speech(min_speech)
    bounds = [0, *(rec.cuts(window_s) if window_s else []), rec.num_samples]  # window_s 0: one pass
    if len(bounds) == 2:
        g = model.generate([rec.whole()], [instruction], max_new_tokens=max_new_tokens, repeat_stop=repeat_stop)[0]
        return LongSummary(g.text, [Part(0.0, rec.num_samples / SAMPLE_RATE, g.text)], g.finished, g.looped)
    part_instruction = instruction_for(PART_STYLE)
    spoken, notes = [], {}
    chunk: list[tuple[int, np.ndarray]] = []
    pieces = rec.pieces(bounds)
    for i, piece in enumerate(pieces):  # parts are read as they are needed, `batch_size` at a time
        spoken.append(has_speech(piece, min_speech))
        if spoken[-1]:
            chunk.append((i, piece))
        if chunk and (len(chunk) == batch_size or i == len(bounds) - 2):
            gens = model.generate([p for _, p in chunk], [part_instruction] * len(chunk),
                                  max_new_tokens=min(part_tokens, max_new_tokens), repeat_stop=repeat_stop)
            notes.update((k, g.text) for (k, _), g in zip(chunk, gens))
            chunk = []
    if not any(spoken):  # enough speech in all, too little in every part
        raise AudioError(rec.path or "<array>", no_speech_problem(
            f"no part of {window_s:g} s has {min_speech:g} s of speech (silero VAD)"))
    parts = [Part(a / SAMPLE_RATE, b / SAMPLE_RATE, notes.get(k, ""), spoken[k])
             for k, (a, b) in enumerate(zip(bounds, bounds[1:]))]
    item = model.text_items([notes_text(parts)], [instruction])
    g = model.generate_items(item, max_new_tokens=max_new_tokens, repeat_stop=repeat_stop)[0]
    return LongSummary(g.text, parts, g.finished, g.looped)
