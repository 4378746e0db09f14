"""int8 weights for batch-1 decoding: which inputs take the int8 kernel, its error, re-quantizing
after a write, and the conversion keeping parameters, ties and state_dict keys."""

import pytest
import torch
from torch import nn

from speechsum.precision import Int8DecodeLinear, int8_decoding_available, set_int8_decoding

pytestmark = pytest.mark.skipif(not int8_decoding_available(), reason="no torch._weight_int8pack_mm in this torch")


def _linear(bias=True):
    torch.manual_seed(0)
    return nn.Linear(64, 48, bias=bias).to(torch.bfloat16)


def test_a_single_bf16_row_goes_through_int8_weights():
    lin = _linear()
    x = torch.randn(1, 1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        want = lin(x)
        set_int8_decoding(lin, True)
        got = lin(x)
    assert isinstance(lin, Int8DecodeLinear) and got.shape == want.shape == (1, 1, 48)
    assert not torch.equal(got, want)  # a different kernel and weights
    # absmax int8 per output channel: error within a few rounding steps of the weight scale
    scale = lin.weight.float().abs().amax(1) / 127
    bound = 0.5 * scale * x.float().abs().sum() + 0.02 * want.float().abs()
    assert ((got.float() - want.float()).abs() <= bound).all()


def test_more_rows_fp32_grad_or_off_use_the_float_weight_exactly():
    lin = _linear()
    with torch.no_grad():
        rows = torch.randn(3, 64, dtype=torch.bfloat16)
        before = [lin(rows), lin(rows[:1])]
    set_int8_decoding(lin, True)
    with torch.no_grad():
        assert torch.equal(lin(rows), before[0])  # 3 rows: prefill / batched decoding
    assert torch.equal(lin(rows[:1]).detach(), before[1])  # autograd on: training never sees int8
    set_int8_decoding(lin, False)
    with torch.no_grad():
        assert torch.equal(lin(rows[:1]), before[1])
    f = nn.Linear(64, 48)
    set_int8_decoding(f, True)
    with torch.no_grad():
        x = torch.randn(1, 64)
        assert torch.equal(f(x), nn.functional.linear(x, f.weight, f.bias))  # fp32 rows: float weight


def test_int8_copy_is_remade_after_the_weight_is_written():
    lin = set_int8_decoding(_linear(bias=False), True)
    x = torch.randn(1, 64, dtype=torch.bfloat16)
    with torch.no_grad():
        first = lin(x)
        lin.load_state_dict({"weight": -lin.weight})  # in place, as a decoding copy's refresh
        second = lin(x)
    assert torch.allclose(second, -first)


def test_conversion_keeps_parameters_ties_and_state_dict_keys():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(48, 64)
            self.body = nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64))
            self.head = nn.Linear(64, 48, bias=False)
            self.head.weight = self.emb.weight

    m = Tied().to(torch.bfloat16)
    keys, params = list(m.state_dict()), [id(p) for p in m.parameters()]
    set_int8_decoding(m, True)
    assert all(isinstance(l, Int8DecodeLinear) for l in (m.body[0], m.body[2], m.head))
    assert list(m.state_dict()) == keys and [id(p) for p in m.parameters()] == params
    assert m.head.weight is m.emb.weight
    with torch.no_grad():
        m.head(torch.randn(1, 64, dtype=torch.bfloat16))
    assert list(m.state_dict()) == keys  # the int8 copy is not state


def test_speechlm_decoding_copy_is_reused_until_the_weights_change(tiny_dir):
    from tiny import tiny_speechlm

    m = tiny_speechlm(tiny_dir)
    m.decode_bf16 = m.decode_int8 = True
    copy = m.decoding_llm()
    assert all(l.int8_on for l in copy.modules() if isinstance(l, Int8DecodeLinear))
    w = copy.get_input_embeddings().weight
    with torch.no_grad():
        w.add_(1.0)  # marks the copy: a refresh would undo it
    assert m.decoding_llm() is copy and w.float().mean() > 0.5  # weights unchanged: no refresh
    with torch.no_grad():
        m.base_llm.get_input_embeddings().weight.mul_(1.0)  # a write (an optimizer step) bumps the version
    m.decode_int8 = False
    assert m.decoding_llm() is copy and w.float().mean().abs() < 0.5  # refreshed from the model
    assert not any(l.int8_on for l in copy.modules() if isinstance(l, Int8DecodeLinear))
