"""Projector context layers: shapes, block-diagonal attention, batch independence, save/load."""

import pytest
import torch
from tiny import tiny_speechlm, tone

from speechsum.models.projector import Projector


def _projector(**kw):
    torch.manual_seed(0)
    return Projector(16, 24, stack=2, hidden=32, **kw).eval()


def test_no_context_layers_is_the_plain_mlp():
    p = _projector()
    x = torch.randn(9, 16)
    stacked = torch.nn.functional.pad(x, (0, 0, 0, 1)).reshape(-1, 32)
    want = p.norm_out(p.fc2(torch.nn.functional.gelu(p.fc1(p.norm_in(stacked)))))
    assert len(p.context) == 0
    assert torch.allclose(p([x])[0], want)


def test_context_layers_attend_within_their_block_only():
    p = _projector(layers=2, block=5)
    a = torch.randn(23, 16)  # 12 tokens at stack 2: blocks of 5, 5, 2
    out = p([a])[0]
    changed = a.clone()
    changed[12:] = 0.0  # frames 12.. = tokens 6..: the second and third blocks
    out2 = p([changed])[0]
    assert out.shape == (12, 24)
    assert torch.equal(out[:5], out2[:5])  # the first block does not see the others
    assert not torch.allclose(out[5:], out2[5:])
    # tokens 5.. of the changed clip all differ: the context spreads the change over the block
    assert (out[5:10] - out2[5:10]).abs().amax(1).min() > 0


def test_context_output_does_not_depend_on_the_other_clips():
    p = _projector(layers=1, block=4)
    a, b, c = torch.randn(23, 16), torch.randn(7, 16), torch.randn(40, 16)
    alone = p([a])[0]
    together = p([b, a, c])
    assert [len(t) for t in together] == [4, 12, 20]
    assert torch.allclose(together[1], alone, atol=1e-6)


def test_default_block_is_one_whisper_window():
    assert _projector(layers=1).block == 750  # 1500 frames / stack 2
    assert Projector(512, 576, stack=8, layers=1).block == 188


def test_speechlm_with_context_layers_saves_and_loads(tiny_dir, tmp_path):
    from speechsum.models.speech_lm import SpeechLM

    m = tiny_speechlm(tiny_dir, projector_layers=1)
    assert any(n.startswith("projector.context.0.") for n in m.trainable_parameters())
    frames = m.encode_audio([tone(3.0)])
    with torch.no_grad():
        before = m.project(frames, readout=False)[0]
    m.save_pretrained(tmp_path / "m")
    loaded = SpeechLM.from_pretrained(tmp_path / "m")
    assert loaded.config.projector_layers == 1
    with torch.no_grad():
        assert torch.allclose(loaded.project(loaded.encode_audio([tone(3.0)]), readout=False)[0], before, atol=1e-6)


def test_negative_projector_layers_is_an_error():
    from speechsum.models.speech_lm import SpeechLMConfig

    with pytest.raises(ValueError, match="projector_layers"):
        SpeechLMConfig(projector_layers=-1)
