"""Whisper encoder wrapper: 16 kHz samples of any length -> encoder frames [T, C] (50 Hz).

Long audio is cut into 30 s windows (`audio.split_windows`); each window is encoded and its
output trimmed to the frames that carry real audio, then the windows are concatenated, so
nothing is truncated. Two modes:

- "padded": every window is padded to 30 s, as Whisper was trained (HF's encoder insists on
  3000 mel frames). Costs a full 30 s window per clip whatever its length.
- "real-length": the encoder runs on the real frames only (position table sliced). Measured
  in a prototype: ~10x faster on 3.6 s clips, but the outputs differ a lot from the padded
  ones, so a model must be trained and used with the same mode.

The frozen encoder runs under bf16 autocast where bf16 is native (`precision.bf16_native`:
1.7x faster here, outputs within ~1.2 % mean relative difference of fp32) and in fp32 elsewhere;
the precision is part of the encoder's identity, so cached outputs of the two never mix.

`EncoderCache` stores outputs on disk per clip, keyed by the content hash of the samples and
the encoder's identity, so later stages and epochs never run the encoder twice on one clip.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from speechsum.audio import SAMPLE_RATE, WINDOW_SAMPLES, encoder_frames, split_windows
from speechsum.precision import bf16_native

EncoderMode = Literal["padded", "real-length"]
# 30 s windows per encoder forward: a whole training batch of long clips at once (64 windows)
# holds ~5 GB of attention scores per layer and ran slower per window than batches of 8
WINDOW_BATCH = 8


class WhisperEncoder(nn.Module):
    """The encoder half of an HF Whisper model plus its feature extractor."""

    def __init__(self, encoder: nn.Module, feature_extractor, mode: EncoderMode = "padded", name: str = "",
                 bf16: bool | None = None):
        super().__init__()
        self.encoder = encoder
        self.feature_extractor = feature_extractor
        self.mode = mode
        self.name = name  # which weights (registry name, or a trained encoder's folder)
        self.bf16 = bf16_native() if bf16 is None else bf16

    @property
    def identity(self) -> str:
        """What the cache key uses to tell encoders apart: weights, mode and compute precision."""
        return f"{self.name}:{self.mode}" + (":bf16" if self.bf16 else "")

    @classmethod
    def from_pretrained(cls, path: str | Path, mode: EncoderMode = "padded", dtype=torch.float32) -> "WhisperEncoder":
        from transformers import WhisperFeatureExtractor, WhisperModel

        whisper = WhisperModel.from_pretrained(path, dtype=dtype)
        fe = WhisperFeatureExtractor.from_pretrained(path)
        return cls(whisper.get_encoder(), fe, mode, name=Path(path).name)

    @property
    def dim(self) -> int:
        return self.encoder.config.d_model

    def features(self, window: np.ndarray, pad: bool) -> torch.Tensor:
        """Log-mel features [n_mels, frames] of one window (<= 30 s)."""
        out = self.feature_extractor(
            window, sampling_rate=SAMPLE_RATE, return_tensors="pt",
            padding="max_length" if pad else "longest", max_length=WINDOW_SAMPLES if pad else None,
        )
        return out.input_features[0]

    def forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, F] -> [B, F/2, C] float32 on the CPU (where the frame cache lives); F may be
        shorter than 3000 (real-length mode). The features go to the encoder's device."""
        feats = feats.to(self.encoder.conv1.weight.device)
        with torch.autocast(feats.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self._forward_features(feats).float().cpu()

    def _forward_features(self, feats: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        if feats.shape[-1] == enc.config.max_source_positions * 2:
            return enc(feats.to(enc.conv1.weight.dtype)).last_hidden_state
        # real-length: the same computation as HF's forward with the position table sliced
        x = nn.functional.gelu(enc.conv1(feats.to(enc.conv1.weight.dtype)))
        x = nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)  # B, C, T -> B, T, C
        x = x + enc.embed_positions.weight[: x.shape[1]]
        for layer in enc.layers:
            x = layer(x, None)
        return enc.layer_norm(x)

    @torch.no_grad()
    def encode(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """Encode each clip; returns one [T_i, C] float tensor per clip (T_i = ceil(samples/320))."""
        windows, owners = [], []
        for i, clip in enumerate(clips):
            for w in split_windows(clip):
                windows.append(w)
                owners.append(i)
        outs: list[torch.Tensor] = []
        if self.mode == "padded":
            for s in range(0, len(windows), WINDOW_BATCH):
                chunk = windows[s : s + WINDOW_BATCH]
                hidden = self.forward_features(torch.stack([self.features(w, pad=True) for w in chunk]))
                outs += [hidden[j, : encoder_frames(len(w))] for j, w in enumerate(chunk)]
        else:
            for w in windows:
                n = encoder_frames(len(w))
                f = self.features(w, pad=False)[:, : 2 * n]
                if f.shape[-1] < 2 * n:  # conv2 has stride 2: keep an even number of mel frames
                    f = nn.functional.pad(f, (0, 2 * n - f.shape[-1]))
                outs.append(self.forward_features(f[None])[0, :n])
        per_clip: list[list[torch.Tensor]] = [[] for _ in clips]
        for j, i in enumerate(owners):
            per_clip[i].append(outs[j])
        return [torch.cat(p).float() for p in per_clip]


class EncoderCache:
    """On-disk cache of encoder outputs, one safetensors file per (clip content, encoder)."""

    def __init__(self, root: str | Path, dtype: torch.dtype = torch.float16):
        self.root = Path(root)
        self.dtype = dtype  # storage dtype: fp16 halves disk use (whisper-base: 1.5 MB per 30 s)

    def key(self, samples: np.ndarray, identity: str) -> str:
        h = hashlib.sha256(identity.encode())
        h.update(np.ascontiguousarray(samples, dtype=np.float32).tobytes())
        return h.hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        p = self._path(key)
        if not p.is_file():
            return None
        try:
            return load_file(p)["frames"].float()
        except Exception:  # a torn file from a killed run: recompute
            return None

    def put(self, key: str, frames: torch.Tensor) -> None:
        from safetensors.torch import save_file

        p = self._path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, suffix=".tmp")
        os.close(fd)
        save_file({"frames": frames.to(self.dtype).contiguous()}, tmp)
        os.replace(tmp, p)

    def encode(self, encoder: WhisperEncoder, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """Like `encoder.encode` but reads/writes the cache; only missing clips are encoded."""
        keys = [self.key(c, encoder.identity) for c in clips]
        out: list[torch.Tensor | None] = [self.get(k) for k in keys]
        # each distinct missing clip once (a document's items share one clip)
        missing = list({k: i for i, (k, o) in reversed(list(enumerate(zip(keys, out)))) if o is None}.values())
        if missing:
            fresh = {}
            for i, f in zip(missing, encoder.encode([clips[i] for i in missing])):
                self.put(keys[i], f)
                fresh[keys[i]] = f.to(self.dtype).float()  # same values as a later cache hit
            out = [fresh[k] if o is None else o for k, o in zip(keys, out)]
        return out  # type: ignore[return-value]
