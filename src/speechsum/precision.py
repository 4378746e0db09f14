"""Where bf16 is worth using (shared by the model, the frozen encoder and the training loops), and
int8 weights for batch-1 decoding."""

from __future__ import annotations

import torch
from torch import nn


def bf16_native() -> bool:
    """Whether bf16 matmuls run natively here (CUDA with bf16, or a CPU with AVX512-BF16/AMX).

    On an AVX2-only CPU a bf16 matmul measured 0.3 GFLOP/s against 83 in fp32, so bf16 is only a
    speed-up where this is true (3x the fp32 matmul rate on an AVX512-BF16 CPU here)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


# ------------------------------------------------------------------ int8 weights for batch-1 decoding
#
# Decoding one sequence multiplies a single row by every weight matrix, so a step costs the bytes of
# the weights. On this CPU a bf16 [1 x 576] @ [576 x 1536] product took 135 us, fp32 100 us, and
# int8 weights with per-channel scales (torch._weight_int8pack_mm, bf16 in and out) 60 us; a whole
# SmolLM2-135M decode step went 57 -> 39 ms. With more rows (prefill, batched decoding) the int8
# kernel is slower than bf16 (171 us against 113 at 8 rows), so those keep the bf16 weights.


def write_state(tensors) -> tuple:
    """Changes whenever any of `tensors` is written in place (version counter) or replaced (storage):
    how a derived copy (an int8 weight, a merged decoding LLM) knows it is stale."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


class Int8DecodeLinear(nn.Linear):
    """An nn.Linear (same parameters, same state_dict) that multiplies a single bf16 row by an int8
    copy of its weight (absmax scale per output channel) when `int8_on`; every other input goes
    through the float weight. The int8 copy is made on first use and remade whenever the weight is
    written (its version counter changes), so a decoding copy refreshed in place stays exact."""

    int8_on: bool = False
    _int8_key: tuple | None = None

    def _int8(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = write_state([self.weight])
        if self._int8_key != key:
            wf = self.weight.detach().float()
            scale = wf.abs().amax(1).clamp(min=1e-12) / 127.0
            self._int8_weight = (wf / scale[:, None]).round_().clamp_(-127, 127).to(torch.int8).contiguous()
            self._int8_scale = scale.to(torch.bfloat16)
            self._int8_key = key
        return self._int8_weight, self._int8_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.int8_on and x.dtype == torch.bfloat16 and x.numel() == x.shape[-1] and x.device.type == "cpu"
                and not torch.is_grad_enabled()):
            q, scale = self._int8()
            y = torch._weight_int8pack_mm(x.reshape(1, -1), q, scale).reshape(*x.shape[:-1], -1)
            return y if self.bias is None else y + self.bias
        return super().forward(x)


def int8_decoding_available() -> bool:
    """The CPU int8-weight kernel exists in this torch build."""
    return hasattr(torch, "_weight_int8pack_mm")


def set_int8_decoding(model: nn.Module, on: bool) -> nn.Module:
    """Turn int8 batch-1 decoding on or off for every nn.Linear of `model` (converted in place the
    first time it is turned on: the class changes, the parameters and ties stay). Off, or where the
    kernel is missing, every Linear computes exactly as nn.Linear."""
    on = on and int8_decoding_available()
    for mod in model.modules():
        if type(mod) is nn.Linear and on:
            mod.__class__ = Int8DecodeLinear
        if isinstance(mod, Int8DecodeLinear):
            mod.int8_on = on
    return model
