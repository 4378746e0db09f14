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
