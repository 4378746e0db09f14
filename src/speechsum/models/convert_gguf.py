"""GGUF -> ordinary HF causal-LM folder (dequantized, safetensors).

transformers dequantizes GGUF tensors on load, but refuses `save_pretrained` on such a
model (it carries a GGUF quantization config). We rebuild the model from its config
without the quantization config, copy the dequantized state dict in (no missing keys for
the Llama/Qwen2 families here) and save that, with the tokenizer and generation config.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def load_gguf(gguf_path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) dequantized from a GGUF file by transformers' GGUF reader."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype)
    return model, tok


def convert_gguf(gguf_path: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `out_dir` as an HF folder (config, model.safetensors, tokenizer) from `gguf_path`."""
    from transformers import AutoModelForCausalLM

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: no such GGUF file")
    with open(gguf_path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{gguf_path}: not a GGUF file (bad magic)")
    model, tok = load_gguf(gguf_path, dtype)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = dtype
    fresh = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    # tied lm_head is absent from GGUFs that tie it; anything else missing is a converter bug
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"{gguf_path}: state dict mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    fresh.generation_config = model.generation_config
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
