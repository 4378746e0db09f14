"""Whisper encoder wrapper and the on-disk encoder cache."""

import torch
from tiny import tone

from speechsum.models.encoder import EncoderCache


def test_cache_hits_skip_the_encoder(tiny_model, tmp_path, monkeypatch):
    cache = EncoderCache(tmp_path / "enc")
    clips = [tone(1.0), tone(2.0, 300)]
    first = cache.encode(tiny_model.encoder, clips)
    assert len(list((tmp_path / "enc").rglob("*.safetensors"))) == 2
    calls = []
    real = tiny_model.encoder.encode
    monkeypatch.setattr(tiny_model.encoder, "encode", lambda cl: calls.append(len(cl)) or real(cl))
    again = cache.encode(tiny_model.encoder, clips + [tone(3.0, 500)])
    assert calls == [1]  # only the new clip was encoded
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, atol=0, rtol=0)  # a miss returns exactly what a later hit returns


def test_cache_key_depends_on_content_and_encoder(tmp_path):
    cache = EncoderCache(tmp_path)
    a, b = tone(1.0), tone(1.0)
    assert cache.key(a, "enc:padded") == cache.key(b, "enc:padded")
    b[10] += 1e-3
    assert cache.key(a, "enc:padded") != cache.key(b, "enc:padded")
    assert cache.key(a, "enc:padded") != cache.key(a, "enc:real-length")


def test_torn_cache_file_is_recomputed(tiny_model, tmp_path):
    cache = EncoderCache(tmp_path)
    clip = tone(1.0)
    cache.encode(tiny_model.encoder, [clip])
    f = next(tmp_path.rglob("*.safetensors"))
    f.write_bytes(f.read_bytes()[:20])  # a kill -9 mid-write cannot leave this (temp+rename), a disk fault can
    assert cache.encode(tiny_model.encoder, [clip])[0].shape[0] == 50


def test_speechlm_uses_the_cache(tiny_model, tmp_path):
    tiny_model.encoder_cache = EncoderCache(tmp_path)
    tiny_model.encode_audio([tone(1.0)])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1


def test_repeated_clip_in_one_call_is_encoded_once(tiny_model, tmp_path, monkeypatch):
    cache = EncoderCache(tmp_path)
    clip = tone(1.0)
    calls = []
    real = tiny_model.encoder.encode
    monkeypatch.setattr(tiny_model.encoder, "encode", lambda cl: calls.append(len(cl)) or real(cl))
    out = cache.encode(tiny_model.encoder, [clip, tone(2.0, 300), clip])  # two items of one document
    assert calls == [2]
    torch.testing.assert_close(out[0], out[2], atol=0, rtol=0)


def test_encoder_precision_is_part_of_the_cache_identity(tiny_model):
    enc = tiny_model.encoder
    was = enc.bf16
    try:
        enc.bf16 = False
        fp32 = enc.identity
        enc.bf16 = True
        assert enc.identity == fp32 + ":bf16"
        out = enc.encode([tone(1.0)])[0]  # autocast on any CPU (slow where bf16 is not native, still right)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
    finally:
        enc.bf16 = was
