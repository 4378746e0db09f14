"""Where bf16 is worth using: shared by the model (frozen encoder) and the training loops."""

from __future__ import annotations

import torch


def bf16_native() -> bool:
    """Whether bf16 matmuls run natively here (CUDA with bf16, or a CPU with AVX512-BF16/AMX).

    On an AVX2-only CPU a bf16 matmul measured 0.3 GFLOP/s against 83 in fp32, so bf16 is only a
    speed-up where this is true (3x the fp32 matmul rate on an AVX512-BF16 CPU here)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
