"""SpeechLM: Whisper encoder -> projector -> causal LLM (LoRA by default).

Inputs are sequences of *segments*: token ids (prompt or target text) and audio spans
(projected encoder frames). The chat template of the LLM is rendered with an audio
placeholder which is then replaced by the audio embeddings; the same builder serves training
(right padding, logits only at target positions), generation (left padding, KV cache) and
speech-text interleaving (several audio and text spans in one sequence).

The model knows nothing of training objectives: `target_logits` returns logits at the
positions that predict target tokens; losses live in `speechsum.training.losses`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
from torch import nn

from speechsum.config import from_dict, to_dict
from speechsum.models.encoder import EncoderCache, EncoderMode, WhisperEncoder
from speechsum.models.generation import Generation, Prefill, decode_from, prefill, stop_token_ids
from speechsum.models.projector import Projector
from speechsum.precision import bf16_native, set_int8_decoding, write_state

AUDIO_PLACEHOLDER = "<|speechsum_audio|>"  # never tokenized: the rendered prompt is split on it
CONFIG_NAME = "speechlm_config.json"
FORMAT_VERSION = 1


@dataclass
class SpeechLMConfig:
    encoder: str = "whisper-base"
    """Whisper checkpoint for the audio encoder: local folder, hub id or registry name."""
    llm: str = "smollm2-135m-instruct"
    """Causal LLM: local folder, hub id or registry name."""
    encoder_mode: EncoderMode = "padded"
    """'padded' (each 30 s window padded, as Whisper was trained) or 'real-length' (faster on short clips)."""
    stack: int = 8
    """Encoder frames (50 Hz) concatenated per audio token: 8 -> 6.25 audio tokens per second."""
    projector_hidden: int = 1024
    """Hidden width of the projector MLP (and of its context layers' feed-forward)."""
    projector_layers: int = 0
    """Transformer layers over the audio tokens after the projector MLP (0: the MLP alone, each
    token from its own 160 ms). Attention stays within 30 s blocks, so cost is linear in length."""
    llm_training: Literal["lora", "full", "frozen"] = "lora"
    """How the LLM is trained: LoRA adapters (peft), all weights, or not at all (connector only)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA path."""
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Linear layer names that get LoRA adapters."""
    train_encoder: bool = False
    """Must stay off: the Whisper encoder is frozen (its frames are computed without gradient and
    cached on disk). Kept so that saved model configs that name it still load."""
    train_projector: bool = True
    """Train the projector (off: a connector aligned on hours of speech stays as aligned while a
    small task set trains LoRA, and no gradient flows back through the readout)."""
    max_audio_tokens: int = 12_000
    """Cap on audio tokens per item (12,000 at stack 8 = 32 min); exceeding it is an error, not a cut."""
    readout: Literal["embedding", "vocab"] = "embedding"
    """How projected audio reaches the LLM: 'embedding' as it is, or 'vocab' as soft LLM token
    embeddings with CTC blanks dropped (`projector.vocab_readout`; for connectors aligned with the
    embedding-space CTC term)."""
    readout_temperature: float = 0.1
    """Temperature of the vocab readout (use the CTC term's temperature)."""
    readout_blank: str = " "
    """Text of the single LLM token that is the CTC blank of the vocab readout."""
    system_prompt: str = "You are a helpful assistant. Answer from the audio faithfully; never invent names, numbers or dates."
    """System message of every prompt (also replaces chat templates' silent default system prompts)."""

    def __post_init__(self):
        if self.stack < 1:
            raise ValueError(f"stack must be >= 1, got {self.stack}")
        if self.max_audio_tokens < 1:
            raise ValueError(f"max_audio_tokens must be >= 1, got {self.max_audio_tokens}")
        if self.projector_layers < 0:
            raise ValueError(f"projector_layers must be >= 0, got {self.projector_layers}")
        if self.lora_r < 1:
            raise ValueError(f"lora_r must be >= 1, got {self.lora_r}")
        if self.train_encoder:
            raise ValueError("train_encoder: training the Whisper encoder is not supported (its frames are computed "
                             "without gradient and cached); leave it false")


# A segment is token ids or audio embeddings; `target` marks ids that are trained on.
@dataclass
class Text:
    ids: list[int]
    target: bool = False


@dataclass
class Audio:
    embeds: torch.Tensor  # [A, D] projected audio tokens


Segment = Union[Text, Audio]


@dataclass
class Batch:
    embeds: torch.Tensor  # B, T, D
    attention_mask: torch.Tensor  # B, T (1 = real)
    position_ids: torch.Tensor  # B, T
    labels: torch.Tensor  # B, T; -100 where not a target


@dataclass
class TargetLogits:
    logits: torch.Tensor  # N, V at the positions that predict target tokens
    targets: torch.Tensor  # N
    rows: torch.Tensor  # N: which batch item each position belongs to


def saved_adapter(path: Path) -> Path:
    """The LoRA adapter folder of a SpeechLM folder saved with `llm_training: lora`; a folder
    without it is an incomplete copy (loading it would silently give the untrained LLM)."""
    from speechsum.models.registry import ModelError

    adapter = Path(path) / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise ModelError(f"{path}: saved with llm_training=lora but has no {adapter.name}/adapter_config.json "
                         "(an incomplete copy of the folder?)")
    return adapter


@contextmanager
def model_file_errors(file: Path | None):
    """Turns a saved file that cannot be read or does not fit the model (truncated, another
    config's shapes) into a ModelError naming it, instead of safetensors' or torch's traceback."""
    from safetensors import SafetensorError

    from speechsum.models.registry import ModelError

    try:
        yield
    except ModelError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, SafetensorError) as e:
        if file is None:
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelError(f"{file}: cannot be loaded into this model ({first[:200]})") from e


class AudioTooLongError(ValueError):
    pass


class SpeechLM(nn.Module):
    def __init__(self, config: SpeechLMConfig, encoder: WhisperEncoder, llm: nn.Module, tokenizer):
        super().__init__()
        self.config = config
        self.encoder = encoder
        self.tokenizer = tokenizer
        base = llm
        self.projector = Projector(encoder.dim, base.config.hidden_size, config.stack, config.projector_hidden,
                                   config.projector_layers)
        with torch.no_grad():
            # start at the LLM's embedding scale (LayerNorm weight = per-dim RMS of the embeddings)
            emb = base.get_input_embeddings().weight
            self.projector.norm_out.weight.copy_(emb.float().pow(2).mean(0).sqrt())
        self.llm = llm
        self._apply_trainability()
        self.stop_ids = self._stop_ids()
        self.encoder_cache: EncoderCache | None = None
        # decode with a bf16 copy of the LLM (LoRA merged) where bf16 is native: decoding is
        # memory-bound, so half the bytes per step is ~2x the tokens/s; training stages set it
        # from loop.bf16
        self.decode_bf16 = bf16_native()
        # and on that copy, a single sequence (`summarize`, the last row of a batch) multiplies by
        # int8 weights (precision.py: ~1.9x the tokens/s of bf16 here); training stages turn it off
        self.decode_int8 = self.decode_bf16
        self._decode_copy: dict[str, nn.Module] = {}  # a plain dict: not a registered submodule
        self._decode_copy_key: tuple | None = ()
        # `readout: vocab` scores every audio token against the whole vocabulary (~0.1 s per clip
        # here): with a frozen connector it is a function of the clip alone, so stages that
        # read one clip many times (KD, DPO, eval) keep it, up to this many MB (0: off)
        self.readout_cache_mb = 0.0
        self._readout_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._readout_state: tuple | None = ()
        self._readout_emb_key: tuple | None = ()
        self._readout_emb: tuple = ()
        # the copies above are keyed on their weights' write state; FSDP (training/shard.py) refills
        # gathered weights in place with their version counters kept, turns this off and has the
        # loop drop the copies of trained weights itself (`forget_copies`)
        self.copies_follow_writes = True

    # ------------------------------------------------------------------ building and IO

    @classmethod
    def from_config(cls, config: SpeechLMConfig, dtype: torch.dtype = torch.float32,
                    skeleton: bool = False) -> "SpeechLM":
        """Assemble an untrained SpeechLM from pretrained encoder and LLM (projector random).
        `skeleton`: the LLM, LoRA and projector on the meta device, no LLM weights read (see
        `_assemble`)."""
        from transformers import AutoTokenizer

        from speechsum.models.registry import resolve_model

        enc_dir, llm_dir = resolve_model(config.encoder), resolve_model(config.llm)
        encoder = WhisperEncoder.from_pretrained(enc_dir, config.encoder_mode, dtype=dtype)
        encoder.name = config.encoder
        model = cls._assemble(config, encoder, llm_dir, AutoTokenizer.from_pretrained(llm_dir), dtype, skeleton)
        model._wrap_lora(skeleton=skeleton)
        return model

    @classmethod
    def _assemble(cls, config: SpeechLMConfig, encoder: WhisperEncoder, llm_dir: Path, tok, dtype: torch.dtype,
                  skeleton: bool) -> "SpeechLM":
        """The SpeechLM around the LLM in `llm_dir`. `skeleton`: the LLM built from its config on the
        meta device (no weights read, no memory) and the projector there too; the encoder is real.
        That is how FSDP's ranks other than 0 start (training/shard.py: rank 0's weights are sent
        to them shard by shard), so they never hold the whole LLM."""
        from transformers import AutoConfig, AutoModelForCausalLM

        if not skeleton:
            return cls(config, encoder, AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype), tok)
        with torch.device("meta"):
            llm = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(llm_dir), dtype=dtype)
            return cls(config, encoder, llm, tok)

    def _wrap_lora(self, adapter_dir: Path | None = None, trainable: bool = True, skeleton: bool = False) -> None:
        """LoRA around the LLM (a saved adapter, or fresh); `skeleton`: fresh, on the meta device."""
        if self.config.llm_training != "lora":
            return
        if skeleton:
            with torch.device("meta"):
                return self._wrap_lora(trainable=trainable)
        from peft import LoraConfig, PeftModel, get_peft_model

        if adapter_dir is not None:
            self.llm = PeftModel.from_pretrained(self.llm, str(adapter_dir), is_trainable=trainable)
        else:
            cfg = LoraConfig(
                r=self.config.lora_r, lora_alpha=self.config.lora_alpha, lora_dropout=self.config.lora_dropout,
                target_modules=list(self.config.lora_targets), bias="none",
            )
            self.llm = get_peft_model(self.llm, cfg)
        self._apply_trainability()

    def _apply_trainability(self) -> None:
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        for name, p in self.llm.named_parameters():
            if self.config.llm_training == "full":
                p.requires_grad_(True)
            elif self.config.llm_training == "lora":
                p.requires_grad_("lora_" in name)
            else:
                p.requires_grad_(False)
        for p in self.projector.parameters():
            p.requires_grad_(self.config.train_projector)

    @property
    def base_llm(self) -> nn.Module:
        """The causal LM under any peft wrapper (LoRA layers stay injected in it)."""
        return self.llm.get_base_model() if hasattr(self.llm, "get_base_model") else self.llm

    @property
    def device(self) -> torch.device:
        """Where the LLM (and the batches built for it) live. Encoder frames stay on the CPU (the
        on-disk cache's side); `project` and `build_batch` move what they make to this device."""
        return self.base_llm.get_input_embeddings().weight.device

    def _saved_key(self, name: str) -> bool:
        """Whether a parameter of this model is one `save_pretrained` writes."""
        if name.startswith("projector."):
            return True
        if not name.startswith("llm."):
            return False
        return self.config.llm_training == "full" or (self.config.llm_training == "lora" and "lora_" in name)

    def saved_parameter_names(self) -> set[str]:
        """Names of the parameters `save_pretrained` writes; a shared one (a head tied to the
        embedding) once, under its first name."""
        return {n for n, _ in self.named_parameters() if self._saved_key(n)}

    def trainable_state(self, keep: bool = True) -> dict[str, torch.Tensor]:
        """What `save_pretrained` writes (projector; LoRA weights or the whole LLM), by parameter
        name, whole: under FSDP the sharded ones are gathered (a collective: every rank calls it;
        `keep=False` on the ranks that do not write drops each gathered tensor at once)."""
        from speechsum.training.shard import full_tensor

        out = {}
        for k, v in self.state_dict().items():
            if self._saved_key(k):
                v = full_tensor(v.detach())
                if keep:
                    out[k] = v
        return out

    def save_pretrained(self, out_dir: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write config JSON + safetensors (projector, LoRA adapter or full LLM); atomic rename.
        `state`: this model's `trainable_state`, gathered beforehand (a sharded model's)."""
        from safetensors.torch import save_file

        state = self.trainable_state() if state is None else state
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
        try:
            meta = {"format_version": FORMAT_VERSION, "config": to_dict(self.config)}
            (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=1))
            save_file({k.removeprefix("projector."): v.contiguous() for k, v in state.items()
                       if k.startswith("projector.")}, tmp / "projector.safetensors")
            llm_state = {k.removeprefix("llm."): v for k, v in state.items() if k.startswith("llm.")}
            if self.config.llm_training == "lora":
                self.llm.save_pretrained(tmp / "adapter", safe_serialization=True, state_dict=llm_state)
            elif self.config.llm_training == "full":
                self.base_llm.save_pretrained(tmp / "llm", safe_serialization=True, state_dict=llm_state)
                self.tokenizer.save_pretrained(tmp / "llm")
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out_dir, old)
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @staticmethod
    def read_config(path: str | Path, **overrides) -> SpeechLMConfig:
        """The SpeechLMConfig saved in a SpeechLM folder (format checked)."""
        path = Path(path)
        cfg_file = path / CONFIG_NAME
        if not cfg_file.is_file():
            raise FileNotFoundError(f"{path}: not a SpeechLM checkpoint (no {CONFIG_NAME})")
        try:
            meta = json.loads(cfg_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
            raise ValueError(f"{cfg_file}: expected a JSON object with a \"config\" object, as save_pretrained writes")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: checkpoint format {meta.get('format_version')} is not {FORMAT_VERSION}")
        return from_dict(SpeechLMConfig, {**meta["config"], **overrides})

    @staticmethod
    def text_llm_from_pretrained(path: str | Path, dtype: torch.dtype = torch.float32):
        """(causal LM, tokenizer) of a SpeechLM folder's LLM alone, LoRA deltas merged: no encoder,
        no projector. What a text-mode run (the KD teacher, a judge, a baseline) needs; a shipped
        text model may omit projector.safetensors."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from speechsum.models.registry import resolve_model

        path = Path(path)
        config = SpeechLM.read_config(path)
        llm_dir = path / "llm" if (path / "llm").is_dir() else resolve_model(config.llm)
        llm = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=dtype)
        if config.llm_training == "lora":
            from peft import PeftModel

            adapter = saved_adapter(path)
            with model_file_errors(adapter):
                llm = PeftModel.from_pretrained(llm, str(adapter)).merge_and_unload()
        return llm.to(dtype), AutoTokenizer.from_pretrained(llm_dir)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, trainable: bool = False, dtype: torch.dtype = torch.float32,
                        skeleton: bool = False, **overrides) -> "SpeechLM":
        """Load a saved SpeechLM folder; `overrides` replace config fields (printed by callers).
        `skeleton`: only the encoder's weights are read, the rest is built on the meta device (see
        `_assemble`)."""
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        from speechsum.models.registry import resolve_model

        path = Path(path)
        config = SpeechLM.read_config(path, **overrides)
        if not (path / "projector.safetensors").is_file():
            raise FileNotFoundError(f"{path}: no projector.safetensors (a text-only model: use it as text:{path})")
        encoder = WhisperEncoder.from_pretrained(resolve_model(config.encoder), config.encoder_mode, dtype=dtype)
        encoder.name = config.encoder
        if (path / "encoder.safetensors").is_file():
            with model_file_errors(path / "encoder.safetensors"):
                encoder.encoder.load_state_dict(load_file(path / "encoder.safetensors"))
            encoder.name += f":{path.resolve()}"
        llm_dir = path / "llm" if (path / "llm").is_dir() else resolve_model(config.llm)
        model = cls._assemble(config, encoder, llm_dir, AutoTokenizer.from_pretrained(llm_dir), dtype, skeleton)
        if skeleton:  # a fresh LoRA of the saved shape; its weights come from rank 0
            model._wrap_lora(skeleton=True)
            return model
        with model_file_errors(path / "projector.safetensors"):
            model.projector.load_state_dict(load_file(path / "projector.safetensors"))
        if config.llm_training == "lora":
            # saved without LoRA (an aligned connector that a stage now trains with LoRA): a fresh one
            adapter = saved_adapter(path) if SpeechLM.read_config(path).llm_training == "lora" else None
            with model_file_errors(adapter):
                model._wrap_lora(adapter, trainable=trainable)
        return model

    # ------------------------------------------------------------------ prompts

    def _stop_ids(self) -> list[int]:
        return stop_token_ids(self.tokenizer, self.base_llm)

    @property
    def end_of_turn_id(self) -> int:
        tid = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        return tid if isinstance(tid, int) and tid >= 0 and tid != self.tokenizer.unk_token_id else self.tokenizer.eos_token_id

    def prompt_ids(self, instruction: str, text: str | None = None) -> tuple[list[int], list[int]]:
        """Chat-templated prompt split around the audio: (ids before audio, ids after audio).

        With `text` (a transcript), the same prompt is rendered with the text where the audio
        would be and everything is returned in the first list (text mode, for teachers/cascades).
        """
        content = f"{AUDIO_PLACEHOLDER if text is None else text}\n\n{instruction}"
        messages = [{"role": "system", "content": self.config.system_prompt}, {"role": "user", "content": content}]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = lambda s: self.tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        if text is not None:
            return enc(rendered), []
        before, after = rendered.split(AUDIO_PLACEHOLDER)
        return enc(before), enc(after)

    def target_ids(self, text: str) -> list[int]:
        """Target text -> ids ending with the end-of-turn token, so the model learns to stop."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.end_of_turn_id]

    # ------------------------------------------------------------------ audio

    def encode_audio(self, clips: list[np.ndarray]) -> list[torch.Tensor]:
        """16 kHz samples -> encoder frames [T_i, C] (through the on-disk cache when one is set)."""
        if self.encoder_cache is not None:
            return self.encoder_cache.encode(self.encoder, clips)
        return self.encoder.encode(clips)

    def project(self, frames: list[torch.Tensor], readout: bool = True) -> list[torch.Tensor]:
        """Encoder frames -> audio embeddings [A_i, D] (after the readout unless `readout=False`);
        an item over the cap is an error."""
        for f in frames:
            n = self.projector.num_tokens(len(f))
            if n > self.config.max_audio_tokens:
                seconds = len(f) / 50
                raise AudioTooLongError(
                    f"audio of {seconds:.0f} s is {n} audio tokens, over max_audio_tokens={self.config.max_audio_tokens}; "
                    f"raise the cap (model config max_audio_tokens) or split the recording"
                )
        if readout and self.readout_cache_mb > 0 and self.config.readout != "embedding" and (
                not torch.is_grad_enabled() or not any(p.requires_grad for p in self.projector.parameters())):
            return self._cached_readouts(frames)  # no gradient can reach the connector
        embeds = self.projector(frames)
        return self.readouts(embeds) if readout else embeds

    def _cached_readouts(self, frames: list[torch.Tensor]) -> list[torch.Tensor]:
        """`project` through the read-out cache: keyed by the clip's frames (a hash of their bytes)
        and by the write state of the projector and the embedding matrix, so a changed connector
        never hits an old entry; least recently used entries go past `readout_cache_mb`."""
        import hashlib

        state = self._written([*self.projector.parameters(), self.base_llm.get_input_embeddings().weight])
        if state != self._readout_state:  # the connector (or the embeddings) changed: every entry is stale
            self._readout_cache.clear()
            self._readout_state = state
        keys = [(f.shape, hashlib.blake2b(f.detach().cpu().contiguous().view(torch.uint8).numpy(), digest_size=16).digest())
                for f in frames]
        todo = list({k: i for i, k in reversed(list(enumerate(keys))) if k not in self._readout_cache}.values())
        if todo:  # plain tensors even inside inference_mode: a later training forward may read them
            with torch.inference_mode(False), torch.no_grad():
                for i, r in zip(todo, self.readouts(self.projector([frames[i] for i in todo]))):
                    self._readout_cache[keys[i]] = r
        out = []
        for k in keys:
            self._readout_cache.move_to_end(k)
            out.append(self._readout_cache[k])
        held, budget = sum(t.nbytes for t in self._readout_cache.values()), self.readout_cache_mb * 2**20
        while held > budget and len(self._readout_cache) > len(keys):
            held -= self._readout_cache.popitem(last=False)[1].nbytes
        return out

    @property
    def readout_blank_id(self) -> int:
        ids = self.tokenizer(self.config.readout_blank, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"readout_blank: {self.config.readout_blank!r} is {len(ids)} tokens, not 1")
        return ids[0]

    def readout(self, embeds: torch.Tensor) -> torch.Tensor:
        """Projected audio [A, D] -> what the LLM reads (see `SpeechLMConfig.readout`)."""
        return self.readouts([embeds])[0]

    def readouts(self, embeds: list[torch.Tensor]) -> list[torch.Tensor]:
        """`readout` of several items, the embedding matrix cast and normalized once for all."""
        if self.config.readout == "embedding" or not embeds:
            return list(embeds)
        from speechsum.models.projector import collapse_runs, token_readout

        emb, unit, coarse = self._readout_embedding(embeds[0].dtype)
        # every item's tokens in one pass (full 512-token blocks; a block's fixed costs paid once),
        # then each item's runs collapsed on its own
        best, soft = token_readout(torch.cat(embeds), emb, self.readout_blank_id, self.config.readout_temperature,
                                   unit_embedding=unit, coarse_unit=coarse)
        bests = best.split([len(e) for e in embeds])
        softs = soft.split([int((b != self.readout_blank_id).sum()) for b in bests])
        return [collapse_runs(b, s, self.readout_blank_id, e) for b, s, e in zip(bests, softs, embeds)]

    def _readout_embedding(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The LLM's input embedding in `dtype`, normalized, and normalized in bf16 (the read-out's
        coarse scores, only where that read-out runs): made once and kept until the embedding is written
        (~40 ms a call here)."""
        from speechsum.models.projector import coarse_embedding

        weight = self.base_llm.get_input_embeddings().weight
        key = (dtype, *self._written([weight]))
        if self._readout_emb_key != key:
            # plain tensors even inside inference_mode: a later training forward may read them
            with torch.inference_mode(False), torch.no_grad():
                emb = weight.detach().to(dtype)
                unit = nn.functional.normalize(emb, dim=-1)
                self._readout_emb = (emb, unit, coarse_embedding(unit))
            self._readout_emb_key = key
        return self._readout_emb

    @torch.no_grad()
    def readout_text(self, frames: list[torch.Tensor]) -> list[str]:
        """The connector's greedy CTC read-out of each clip's frames (nearest LLM token per audio
        token, runs collapsed, blanks dropped), decoded: how much of the speech reaches the LLM."""
        from speechsum.models.projector import greedy_readout_ids

        emb = self.base_llm.get_input_embeddings().weight.detach()
        return [self.tokenizer.decode(greedy_readout_ids(e, emb, self.readout_blank_id)).strip()
                for e in self.project(frames, readout=False)]

    def audio_items(self, frames: list[torch.Tensor], instructions: list[str],
                    targets: list[str | list[int]] | None = None) -> list[list[Segment]]:
        """Segments for the usual [prompt, audio, prompt, (target)] sequence of each item."""
        embeds = self.project(frames)
        items = []
        for i, (emb, instr) in enumerate(zip(embeds, instructions)):
            pre, post = self.prompt_ids(instr)
            segs: list[Segment] = [Text(pre), Audio(emb), Text(post)]
            if targets is not None:
                t = targets[i]
                segs.append(Text(self.target_ids(t) if isinstance(t, str) else list(t), target=True))
            items.append(segs)
        return items

    def text_items(self, texts: list[str], instructions: list[str],
                   targets: list[str | list[int]] | None = None) -> list[list[Segment]]:
        """Segments for the text-mode prompt (transcript instead of audio)."""
        items = []
        for i, (text, instr) in enumerate(zip(texts, instructions)):
            pre, _ = self.prompt_ids(instr, text=text)
            segs: list[Segment] = [Text(pre)]
            if targets is not None:
                t = targets[i]
                segs.append(Text(self.target_ids(t) if isinstance(t, str) else list(t), target=True))
            items.append(segs)
        return items

    # ------------------------------------------------------------------ batching and forward

    def build_batch(self, items: list[list[Segment]], padding_side: Literal["right", "left"] = "right") -> Batch:
        """Pad segment lists into one batch of input embeddings, masks, positions and labels."""
        emb_layer = self.base_llm.get_input_embeddings()
        lengths = [sum(len(s.ids) if isinstance(s, Text) else len(s.embeds) for s in segs) for segs in items]
        bsz, tmax = len(items), max(lengths)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((bsz, tmax), pad_id, dtype=torch.long)
        labels = torch.full((bsz, tmax), -100, dtype=torch.long)
        audio_mask = torch.zeros(bsz, tmax, dtype=torch.bool)
        attn = torch.zeros(bsz, tmax, dtype=torch.long)
        audio_chunks = []
        for b, segs in enumerate(items):
            pos = tmax - lengths[b] if padding_side == "left" else 0
            attn[b, pos : pos + lengths[b]] = 1
            for s in segs:
                if isinstance(s, Text):
                    n = len(s.ids)
                    ids[b, pos : pos + n] = torch.tensor(s.ids, dtype=torch.long)
                    if s.target:
                        labels[b, pos : pos + n] = ids[b, pos : pos + n]
                else:
                    n = len(s.embeds)
                    audio_mask[b, pos : pos + n] = True
                    audio_chunks.append(s.embeds)
                pos += n
        dev = self.device  # built on the CPU (many small writes), moved once
        ids, labels, audio_mask, attn = ids.to(dev), labels.to(dev), audio_mask.to(dev), attn.to(dev)
        embeds = emb_layer(ids)
        if audio_chunks:
            embeds = embeds.masked_scatter(audio_mask[..., None], torch.cat(audio_chunks).to(embeds.device, embeds.dtype))
        position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
        return Batch(embeds, attn, position_ids, labels)

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        out = self.base_llm.get_decoder()(
            inputs_embeds=batch.embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
            use_cache=False,
        )
        return out.last_hidden_state

    def target_logits(self, batch: Batch) -> TargetLogits:
        """Logits only where the next token is a target: the LM head (49k-152k vocab) is the
        costliest matmul, so it is never applied to audio or prompt positions."""
        hidden = self.hidden_states(batch)
        next_labels = batch.labels[:, 1:]  # position t predicts token t+1
        sel = next_labels != -100
        rows = torch.arange(len(next_labels), device=sel.device)[:, None].expand_as(next_labels)[sel]
        logits = self.base_llm.get_output_embeddings()(hidden[:, :-1][sel])
        return TargetLogits(logits.float(), next_labels[sel], rows)

    def forward(self, batch: Batch) -> TargetLogits:
        """Training forward = `target_logits` (so a DDP wrapper sees a normal forward; under FSDP the
        stages call `target_logits` itself, training/shard.py says why)."""
        return self.target_logits(batch)

    def load_trainable(self, path: str | Path) -> None:
        """Load the trainable weights of a saved folder into this model (resume)."""
        from safetensors.torch import load_file

        from speechsum.training.shard import is_sharded

        path = Path(path)
        if any(is_sharded(p) for p in self.parameters()):
            return self._load_trainable_sharded(path)
        with model_file_errors(path / "projector.safetensors"):
            self.projector.load_state_dict(load_file(path / "projector.safetensors"))
        if self.config.llm_training == "lora":
            from peft import set_peft_model_state_dict

            with model_file_errors(path / "adapter" / "adapter_model.safetensors"):
                set_peft_model_state_dict(self.llm, load_file(path / "adapter" / "adapter_model.safetensors"))
        elif self.config.llm_training == "full":
            with model_file_errors(path / "llm" / "model.safetensors"):
                self.base_llm.load_state_dict(load_file(path / "llm" / "model.safetensors"), strict=False)

    def _load_trainable_sharded(self, path: Path) -> None:
        """`load_trainable` into a model whose layers FSDP sharded: the saved tensors are whole, each
        rank copies its shard of them (training/shard.py)."""
        from safetensors.torch import load_file

        from speechsum.training.shard import load_full_state

        state = {f"projector.{k}": v for k, v in load_file(path / "projector.safetensors").items()}
        names = [n for n, _ in self.named_parameters() if self._saved_key(n) and n.startswith("llm.")]
        if self.config.llm_training == "lora":
            # peft saves `...q_proj.lora_A.weight` for the parameter `llm.` + `...q_proj.lora_A.<adapter>.weight`
            adapter = self.llm.active_adapter
            saved = load_file(path / "adapter" / "adapter_model.safetensors")
            state.update({n: saved[n.removeprefix("llm.").replace(f".{adapter}.", ".")] for n in names})
        elif self.config.llm_training == "full":  # a tied head is one parameter, saved once
            saved = load_file(path / "llm" / "model.safetensors")
            state.update({n: saved[n.removeprefix("llm.")] for n in names})
        load_full_state(self, state)
        self.forget_copies(frozen_too=True)  # the shards were written, behind any gathered tensor

    # ------------------------------------------------------------------ generation

    @torch.no_grad()
    def decoding_llm(self) -> nn.Module:
        """The LLM decoding runs on: the model itself, or (`decode_bf16`) a bf16 copy with the LoRA
        deltas merged, refreshed from the current weights whenever any of them was written since
        the last call (~0.2 s for 135M parameters), so a training loop always samples its policy.
        `decode_int8` (bf16 only): batch-1 steps use int8 weights (precision.py)."""
        base = self.base_llm
        if not self.decode_bf16 or next(base.parameters()).dtype == torch.bfloat16:
            return set_int8_decoding(base, self.decode_int8 and next(base.parameters()).dtype == torch.bfloat16)
        key = self._written(base.parameters())
        if "llm" in self._decode_copy and key == self._decode_copy_key:
            return set_int8_decoding(self._decode_copy["llm"], self.decode_int8)
        if "llm" not in self._decode_copy:
            from transformers import AutoModelForCausalLM

            cfg = base.config.__class__.from_dict(base.config.to_dict())
            cfg.quantization_config = None
            copy = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
            copy.to(next(base.parameters()).device)
            self._decode_copy["llm"] = copy.requires_grad_(False)
        merged = {}
        for name, mod in base.named_modules():  # peft LoRA layers: base weight + each active delta
            if hasattr(mod, "base_layer") and hasattr(mod, "get_delta_weight"):
                w = mod.base_layer.weight
                for adapter in mod.active_adapters:
                    w = w + mod.get_delta_weight(adapter)
                merged[f"{name}.weight"] = w
                if mod.base_layer.bias is not None:
                    merged[f"{name}.bias"] = mod.base_layer.bias
        # parameters and buffers by name, not `state_dict()`: under FSDP (inside shard.full_params) that
        # would hand back the shards, the named tensors are the gathered weights
        for k, v in [*base.named_parameters(remove_duplicate=False), *base.named_buffers()]:
            if "lora_" not in k and ".base_layer." not in k:
                merged.setdefault(k, v)
        llm = self._decode_copy["llm"]
        llm.load_state_dict({k: merged[k] for k in llm.state_dict()})  # copies into the bf16 parameters
        self._decode_copy_key = key
        return set_int8_decoding(llm, self.decode_int8)

    def _written(self, tensors) -> tuple:
        """What a copy made from `tensors` is keyed on: their write state, or nothing while
        `copies_follow_writes` is off (then only `forget_copies` makes it again)."""
        return write_state(tensors) if self.copies_follow_writes else ()

    def forget_copies(self, frozen_too: bool = False) -> None:
        """Make the copies of trained weights (of every weight with `frozen_too`) again at their next
        use: the decoding LLM, the read-out's embedding and its cache. For a loop that writes the
        weights where their write state does not show it (FSDP's shards, behind gathered tensors)."""
        changed = lambda params: frozen_too or any(p.requires_grad for p in params)  # noqa: E731
        emb = self.base_llm.get_input_embeddings().weight
        if changed(self.base_llm.parameters()):
            self._decode_copy_key = None
        if changed([emb]):
            self._readout_emb_key = None
        if changed([emb, *self.projector.parameters()]):
            self._readout_state = None

    def prefill_items(self, items: list[list[Segment]]) -> Prefill:
        """The prompts' prefill (left-padded, on the decoding LLM): `decode_prefilled` starts there,
        and `Prefill.repeat(n)` shares it among n samples of each prompt."""
        with torch.inference_mode():
            batch = self.build_batch(items, padding_side="left")
        llm = self.decoding_llm()
        embeds = batch.embeds.to(llm.get_input_embeddings().weight.dtype)
        return prefill(llm, embeds, batch.attention_mask, batch.position_ids)

    def decode_prefilled(self, start: Prefill, max_new_tokens: int = 128, do_sample: bool = False,
                         temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                         generator: torch.Generator | None = None, repeat_stop: int = 0) -> list[Generation]:
        """Batched decoding from a prefill (KV cache); see models/generation.py (`repeat_stop`: stop a
        row once its answer loops)."""
        return decode_from(self.decoding_llm(), self.tokenizer, start, self.stop_ids, max_new_tokens, do_sample,
                           temperature, top_p, top_k, generator, repeat_stop)

    def generate_items(self, items: list[list[Segment]], max_new_tokens: int = 128, do_sample: bool = False,
                       temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                       generator: torch.Generator | None = None, repeat_stop: int = 0) -> list[Generation]:
        """Batched decoding (left padding, KV cache) of segment lists; see models/generation.py
        (`repeat_stop`: stop a row once its answer loops)."""
        return self.decode_prefilled(self.prefill_items(items), max_new_tokens, do_sample, temperature, top_p, top_k,
                                     generator, repeat_stop)

    def generate(self, audio: list[np.ndarray], instructions: list[str], **kw) -> list[Generation]:
        """Summaries (or any answer) for 16 kHz clips and one instruction each."""
        frames = self.encode_audio(audio)
        with torch.inference_mode():
            items = self.audio_items(frames, instructions)
        return self.generate_items(items, **kw)

    def summarize(self, audio: str | os.PathLike | np.ndarray, style: str = "paragraph",
                  instruction: str | None = None, max_new_tokens: int = 256, sample_rate: int | None = None,
                  repeat_stop: int = 3, window_seconds: float | None = None,
                  min_speech: float | None = None) -> str:
        """Summary of one recording (path or array) in a named style or for a free instruction;
        an answer that starts to loop stops at its first copy or before a repeated sentence
        (`repeat_stop`, 0: off). A recording longer than `window_seconds` (default
        `longform.WINDOW_S`; 0: never) is summarized in parts, then from the parts' notes
        (speechsum/longform.py). A recording in which the voice-activity detector hears less than
        `min_speech` seconds of speech (default `vad.MIN_SPEECH_S`; 0: no check) raises AudioError,
        and a long one's parts with less are left out of its notes."""
        from speechsum.audio import load_audio
        from speechsum.data.styles import instruction_for
        from speechsum.longform import WINDOW_S, Recording, summarize_long
        from speechsum.vad import MIN_SPEECH_S

        instr = instruction if instruction is not None else instruction_for(style)
        window = WINDOW_S if window_seconds is None else window_seconds
        speech = MIN_SPEECH_S if min_speech is None else min_speech
        # a file is read part by part (Recording), so an hour costs the memory of a few parts
        rec = (Recording.from_samples(load_audio(audio, sample_rate=sample_rate)) if isinstance(audio, np.ndarray)
               else Recording.scan(audio, min_speech=speech))
        return summarize_long(self, rec, instr, window, max_new_tokens, repeat_stop,
                              min_speech=speech).text

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}


def freeze_report(model: SpeechLM) -> str:
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"{train / 1e6:.2f}M trainable of {total / 1e6:.1f}M parameters"


__all__ = ["SpeechLM", "SpeechLMConfig", "Text", "Audio", "Segment", "Batch", "TargetLogits", "Generation",
           "AudioTooLongError", "freeze_report"]
