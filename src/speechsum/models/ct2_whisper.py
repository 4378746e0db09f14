"""CTranslate2 Whisper checkpoint -> ordinary HF `WhisperForConditionalGeneration` folder.

Input: a CT2 Whisper folder (`model.bin`, `config.json`, `tokenizer.json`, `vocabulary.txt`).
Output: config.json, model.safetensors, generation_config.json, preprocessor_config.json and
tokenizer files, written to a temp folder next to `out_dir` and renamed into place.

`model.bin` layout (little endian; CT2's Model::load, binary versions 4..6):
    u32 binary_version
    str spec_name ("WhisperSpec"), u32 spec_revision
    u32 n_variables, then per variable:
        str name, u8 rank, u32[rank] shape, u8 dtype_id, u32 n_bytes, n_bytes of raw data
    u32 n_aliases, then per alias: str alias, str target   (proj_out -> decoder embeddings)
where `str` is a u16 length (counting a trailing NUL) followed by the bytes. Scalars (rank 0)
carry model options (num_heads, activation, ...). Int8/int16 weights come with a float
`<name>_scale` (quantized = round(weight * scale), per output row for int8).

Name mapping (CT2 -> HF), per layer:
    self_attention/linear_0 -> fused [q; k; v] of self-attention (split in three along dim 0)
    self_attention/linear_1 -> self_attn.out_proj
    attention/linear_0      -> encoder_attn.q_proj
    attention/linear_1      -> fused [k; v] of cross-attention
    attention/linear_2      -> encoder_attn.out_proj
    ffn/linear_0|1          -> fc1|fc2
    */layer_norm/gamma|beta -> *_layer_norm.weight|bias
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import torch

SPEC_NAME = "WhisperSpec"
SUPPORTED_BINARY_VERSIONS = range(4, 7)  # 4 introduced explicit dtype ids; 6 is current
MAX_VARIABLES = 100_000  # sanity bound: garbage headers give absurd counts
# CT2's DataType enum order (include/ctranslate2/types.h)
CT2_DTYPES = {0: torch.float32, 1: torch.int8, 2: torch.int16, 3: torch.int32, 4: torch.float16, 5: torch.bfloat16}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# CT2's ActivationType enum -> HF activation names (Whisper uses exact GELU, id 3)
CT2_ACTIVATIONS = {0: "relu", 1: "gelu_pytorch_tanh", 2: "silu", 3: "gelu"}
HEAD_DIM = 64  # every Whisper size; only used when the file lacks num_heads
MULTILINGUAL_MIN_VOCAB = 51865  # OpenAI's rule: the English-only models have 51864 tokens
TIMESTAMP_STEP = 0.02  # seconds per timestamp token
MAX_INITIAL_TIMESTAMP_INDEX = 50
SAMPLING_RATE = 16_000
DEFAULT_LANGUAGE = "en"  # multilingual models transcribe English unless generate(language=...)

SOT, EOT, NO_TIMESTAMPS = "<|startoftranscript|>", "<|endoftext|>", "<|notimestamps|>"
TRANSCRIBE, TRANSLATE, PREV = "<|transcribe|>", "<|translate|>", "<|startofprev|>"


# ---------------------------------------------------------------------------------------------
# model.bin reader


class _Cursor:
    """Bounds-checked reads over the file bytes; every failure names the file."""

    def __init__(self, data: bytearray, path: Path):
        self.data, self.path, self.pos = data, path, 0

    def fail(self, why: str) -> ValueError:
        return ValueError(f"{self.path}: not a readable CTranslate2 Whisper model.bin ({why})")

    def take(self, n: int, what: str) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.data):
            raise self.fail(f"truncated: {what} needs {n} bytes at offset {start}, file has {len(self.data)}")
        self.pos += n
        return start

    def unpack(self, fmt: str, what: str):
        start = self.take(struct.calcsize(fmt), what)
        return struct.unpack_from(fmt, self.data, start)

    def string(self, what: str) -> str:
        (n,) = self.unpack("<H", what)
        start = self.take(n, what)
        try:
            return bytes(self.data[start : start + n]).rstrip(b"\0").decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not text at offset {start}") from None


def read_ct2_model(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(variables, aliases) of a CT2 Whisper model.bin; raises ValueError naming the file."""
    path = Path(path)
    cur = _Cursor(bytearray(path.read_bytes()), path)
    (version,) = cur.unpack("<I", "binary version")
    if version not in SUPPORTED_BINARY_VERSIONS:
        lo, hi = SUPPORTED_BINARY_VERSIONS.start, SUPPORTED_BINARY_VERSIONS.stop - 1
        raise cur.fail(f"binary version {version}, supported {lo}..{hi}")
    spec = cur.string("spec name")
    if spec != SPEC_NAME:
        raise cur.fail(f"spec {spec!r}, expected {SPEC_NAME!r}")
    cur.unpack("<I", "spec revision")
    (n_vars,) = cur.unpack("<I", "variable count")
    if n_vars > MAX_VARIABLES:
        raise cur.fail(f"{n_vars} variables")
    variables: dict[str, torch.Tensor] = {}
    for _ in range(n_vars):
        name = cur.string("variable name")
        (rank,) = cur.unpack("<B", f"rank of {name}")
        shape = cur.unpack(f"<{rank}I", f"shape of {name}")
        type_id, n_bytes = cur.unpack("<BI", f"dtype of {name}")
        if type_id not in CT2_DTYPES:
            raise cur.fail(f"{name} has unknown dtype id {type_id}")
        dtype = CT2_DTYPES[type_id]
        if n_bytes != math.prod(shape) * dtype.itemsize:
            raise cur.fail(f"{name}: {n_bytes} bytes for shape {list(shape)} of {dtype}")
        start = cur.take(n_bytes, f"data of {name}")
        if n_bytes == 0:
            variables[name] = torch.empty(shape, dtype=dtype)
            continue
        # the bytearray is writable, so frombuffer shares it without a copy or a warning
        variables[name] = torch.frombuffer(cur.data, dtype=dtype, count=math.prod(shape), offset=start).reshape(shape)
    (n_aliases,) = cur.unpack("<I", "alias count")
    aliases = {cur.string("alias"): cur.string("alias target") for _ in range(n_aliases)}
    if cur.pos != len(cur.data):
        # e.g. a model.bin concatenated from parts twice
        raise cur.fail(f"{len(cur.data) - cur.pos} unexpected bytes after the last alias")
    return variables, aliases


def _as_float(variables: dict[str, torch.Tensor], name: str, dtype: torch.dtype) -> torch.Tensor:
    """A weight in `dtype`, dequantized when CT2 stored it as int8/int16 plus a scale."""
    w = variables[name]
    if w.dtype in FLOAT_DTYPES:
        return w.to(dtype, copy=True)  # a copy: never hand out views of the file buffer
    scale = variables.get(f"{name}_scale")
    if scale is None or w.dtype not in (torch.int8, torch.int16):
        raise ValueError(f"{name}: dtype {w.dtype} without a quantization scale is not supported")
    scale = scale.float()
    if scale.numel() > 1:  # int8: one scale per output row
        scale = scale.reshape(-1, *[1] * (w.dim() - 1))
    return (w.float() / scale).to(dtype)


def _scalar(variables: dict[str, torch.Tensor], name: str, default: int) -> int:
    v = variables.get(name)
    return default if v is None else int(v.item())


# ---------------------------------------------------------------------------------------------
# mapping


def _layer_count(variables: dict[str, torch.Tensor], stack: str) -> int:
    pattern = re.compile(rf"^{stack}/layer_(\d+)/")
    found = [int(m.group(1)) for n in variables if (m := pattern.match(n))]
    return max(found) + 1 if found else 0


def hf_state_dict(variables: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """HF Whisper state dict (without the tied proj_out) from CT2 variables."""
    get = lambda name: _as_float(variables, name, dtype)  # noqa: E731
    sd: dict[str, torch.Tensor] = {}

    def linear(ct2: str, hf: str):
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = get(f"{ct2}/weight"), get(f"{ct2}/bias")

    def norm(ct2: str, hf: str):
        sd[f"{hf}.weight"], sd[f"{hf}.bias"] = get(f"{ct2}/gamma"), get(f"{ct2}/beta")

    def split_linear(ct2: str, hf_names: list[str]):
        weights = get(f"{ct2}/weight").chunk(len(hf_names), dim=0)
        biases = get(f"{ct2}/bias").chunk(len(hf_names), dim=0)
        for hf, w, b in zip(hf_names, weights, biases):
            sd[f"{hf}.weight"] = w.clone()  # clone: safetensors refuses tensors sharing storage
            # trap: HF's k_proj has no bias; CT2 stores zeros there, so dropping it loses nothing
            # (softmax is invariant to a per-query constant, which is all a k bias could add)
            if not hf.endswith("k_proj"):
                sd[f"{hf}.bias"] = b.clone()

    for stack in ("encoder", "decoder"):
        sd[f"model.{stack}.embed_positions.weight"] = get(f"{stack}/position_encodings/encodings")
        norm(f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        for i in range(_layer_count(variables, stack)):
            c, h = f"{stack}/layer_{i}", f"model.{stack}.layers.{i}"
            split_linear(f"{c}/self_attention/linear_0", [f"{h}.self_attn.{p}_proj" for p in "qkv"])
            linear(f"{c}/self_attention/linear_1", f"{h}.self_attn.out_proj")
            norm(f"{c}/self_attention/layer_norm", f"{h}.self_attn_layer_norm")
            if stack == "decoder":
                linear(f"{c}/attention/linear_0", f"{h}.encoder_attn.q_proj")
                split_linear(f"{c}/attention/linear_1", [f"{h}.encoder_attn.{p}_proj" for p in "kv"])
                linear(f"{c}/attention/linear_2", f"{h}.encoder_attn.out_proj")
                norm(f"{c}/attention/layer_norm", f"{h}.encoder_attn_layer_norm")
            linear(f"{c}/ffn/linear_0", f"{h}.fc1")
            linear(f"{c}/ffn/linear_1", f"{h}.fc2")
            norm(f"{c}/ffn/layer_norm", f"{h}.final_layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    sd["model.decoder.embed_tokens.weight"] = get("decoder/embeddings/weight")
    return sd


# ---------------------------------------------------------------------------------------------
# configs and tokenizer


def _token_ids(ct2_dir: Path) -> dict[str, int]:
    """Special token text -> id, from tokenizer.json's added tokens."""
    path = ct2_dir / "tokenizer.json"
    ids = {t["content"]: t["id"] for t in json.loads(path.read_text(encoding="utf-8")).get("added_tokens", [])}
    missing = [t for t in (SOT, EOT, NO_TIMESTAMPS, TRANSCRIBE, TRANSLATE) if t not in ids]
    if missing:
        raise ValueError(f"{path}: lacks the Whisper special tokens {missing}")
    return ids


def _configs(variables, sd, ct2_cfg: dict, ids: dict[str, int], dtype: torch.dtype):
    from transformers import GenerationConfig, WhisperConfig

    vocab_size, d_model = sd["model.decoder.embed_tokens.weight"].shape
    multilingual = vocab_size >= MULTILINGUAL_MIN_VOCAB
    enc_layers, dec_layers = _layer_count(variables, "encoder"), _layer_count(variables, "decoder")
    activation = _scalar(variables, "decoder/activation", 3)
    if activation not in CT2_ACTIVATIONS:
        raise ValueError(f"unsupported CT2 activation id {activation}")
    suppress = ct2_cfg.get("suppress_ids", [])
    begin_suppress = ct2_cfg.get("suppress_ids_begin", [220, ids[EOT]])
    alignment_heads = [list(map(int, p)) for p in ct2_cfg.get("alignment_heads", [])]
    eot, sot = ids[EOT], ids[SOT]
    config = WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=sd["model.encoder.conv1.weight"].shape[1],
        d_model=d_model,
        encoder_layers=enc_layers,
        decoder_layers=dec_layers,
        encoder_attention_heads=_scalar(variables, "encoder/num_heads", d_model // HEAD_DIM),
        decoder_attention_heads=_scalar(variables, "decoder/num_heads", d_model // HEAD_DIM),
        encoder_ffn_dim=sd["model.encoder.layers.0.fc1.weight"].shape[0] if enc_layers else 4 * d_model,
        decoder_ffn_dim=sd["model.decoder.layers.0.fc1.weight"].shape[0] if dec_layers else 4 * d_model,
        max_source_positions=sd["model.encoder.embed_positions.weight"].shape[0],
        max_target_positions=sd["model.decoder.embed_positions.weight"].shape[0],
        activation_function=CT2_ACTIVATIONS[activation],
        scale_embedding=bool(_scalar(variables, "decoder/scale_embeddings", 0)),
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        tie_word_embeddings=True,
    )
    config.dtype = dtype
    gen = dict(
        decoder_start_token_id=sot,
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        max_length=config.max_target_positions,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        no_timestamps_token_id=ids[NO_TIMESTAMPS],
        max_initial_timestamp_index=MAX_INITIAL_TIMESTAMP_INDEX,
        return_timestamps=False,
        is_multilingual=multilingual,
    )
    if PREV in ids:
        gen["prev_sot_token_id"] = ids[PREV]
    if alignment_heads:
        gen["alignment_heads"] = alignment_heads
    if multilingual:
        by_id = {i: t for t, i in ids.items()}
        gen["lang_to_id"] = {by_id[i]: i for i in ct2_cfg.get("lang_ids", []) if i in by_id}
        gen["task_to_id"] = {"transcribe": ids[TRANSCRIBE], "translate": ids[TRANSLATE]}
        # HF's generate reads these as defaults: <|sot|><|en|><|transcribe|><|notimestamps|>
        # instead of detecting the language (which can pick a wrong one on short synthetic clips);
        # generate(language="fr") overrides; generation_config.language = None restores detection
        gen["language"], gen["task"] = DEFAULT_LANGUAGE, "transcribe"
    # .en models: no lang/task tokens at all; generate prompts <|sot|><|notimestamps|>
    return config, GenerationConfig(**gen)


def _save_tokenizer(ct2_dir: Path, out: Path, vocab_size: int, model_max_length: int) -> None:
    """tokenizer.json + tokenizer_config.json through transformers' own WhisperTokenizer."""
    from transformers import AddedToken, WhisperTokenizer

    staging = Path(tempfile.mkdtemp(prefix="ct2tok-"))
    try:
        shutil.copy(ct2_dir / "tokenizer.json", staging / "tokenizer.json")
        added = json.loads((staging / "tokenizer.json").read_text(encoding="utf-8")).get("added_tokens", [])
        specials = [t["content"] for t in added if t.get("special")]
        tok = WhisperTokenizer.from_pretrained(
            str(staging), extra_special_tokens=specials, pad_token=EOT, model_max_length=model_max_length
        )
        # CT2's tokenizer.json stops at <|notimestamps|>; the model's vocab goes on with the
        # timestamp tokens <|0.00|>..<|30.00|>, which HF's decode(..., decode_with_timestamps)
        # expects right after the last special token
        first = len(tok)
        vocab_file = ct2_dir / "vocabulary.txt"
        if vocab_file.is_file():
            # one token per "\n"-ended line: splitlines() would also cut at U+2028, \x1c, ...
            lines = vocab_file.read_text(encoding="utf-8").split("\n")
            names = lines[first:vocab_size]
        else:
            names = [f"<|{k * TIMESTAMP_STEP:.2f}|>" for k in range(vocab_size - first)]
        tok.add_tokens([AddedToken(n, special=False, normalized=False) for n in names])
        if len(tok) != vocab_size:
            raise ValueError(f"{ct2_dir}: tokenizer has {len(tok)} tokens, the model {vocab_size}")
        tok.save_pretrained(str(out))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------------------------------


def convert_ct2_whisper(ct2_dir: Path, out_dir: Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `out_dir` as an HF Whisper folder converted from the CT2 folder `ct2_dir`."""
    from safetensors.torch import save_file
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    ct2_dir, out_dir = Path(ct2_dir), Path(out_dir)
    for name in ("model.bin", "tokenizer.json"):
        if not (ct2_dir / name).is_file():
            raise FileNotFoundError(f"{ct2_dir / name}: missing (not a CTranslate2 Whisper folder?)")
    cfg_path = ct2_dir / "config.json"
    ct2_cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}

    model_bin = ct2_dir / "model.bin"
    variables, aliases = read_ct2_model(model_bin)
    try:
        sd = hf_state_dict(variables, dtype)
    except KeyError as e:
        raise ValueError(f"{model_bin}: not a CT2 Whisper model (no variable {e})") from None
    except ValueError as e:  # e.g. int32 weights
        raise ValueError(f"{model_bin}: {e}") from None
    config, gen = _configs(variables, sd, ct2_cfg, _token_ids(ct2_dir), dtype)
    # CT2 normally aliases the output projection to the embedding (tied); a stored copy that
    # differs means an untied checkpoint
    projection = "decoder/projection/weight"
    if projection in variables and projection not in aliases:
        if not torch.equal(variables[projection], variables["decoder/embeddings/weight"]):
            config.tie_word_embeddings = False
            sd["proj_out.weight"] = _as_float(variables, projection, dtype)
    del variables  # release the file buffer before the checks below allocate

    # check names and shapes against the real architecture, without allocating weights
    with torch.device("meta"):
        expected = WhisperForConditionalGeneration(config).state_dict()
    if config.tie_word_embeddings:
        expected.pop("proj_out.weight", None)
    wrong = sorted(set(expected) ^ set(sd)) + [k for k in sd if k in expected and sd[k].shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{model_bin}: does not map onto HF Whisper (first mismatches {wrong[:4]})")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}-"))
    try:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        gen.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=config.num_mel_bins, sampling_rate=SAMPLING_RATE).save_pretrained(tmp)
        _save_tokenizer(ct2_dir, tmp, config.vocab_size, config.max_target_positions)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
