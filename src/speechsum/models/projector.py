"""Projector: encoder frames -> LLM embedding space.

Frame stacking (concatenate S consecutive frames) reduces 50 Hz Whisper frames to 50/S Hz
audio tokens (S=8: 6.25 tokens/s, 30 min -> 11,250 tokens), then norm + 2-layer MLP.
"""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    def __init__(self, enc_dim: int, llm_dim: int, stack: int = 8, hidden: int = 1024):
        super().__init__()
        self.stack = stack
        self.norm_in = nn.LayerNorm(enc_dim * stack)
        self.fc1 = nn.Linear(enc_dim * stack, hidden)
        self.fc2 = nn.Linear(hidden, llm_dim)
        # match the LLM's embedding scale so the frozen LLM sees inputs of a familiar norm
        self.norm_out = nn.LayerNorm(llm_dim)

    def num_tokens(self, frames: int) -> int:
        return -(-frames // self.stack)

    def forward(self, clips: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per clip [T_i, C] -> [ceil(T_i/S), D]; clips are stacked separately, projected together."""
        stacked = []
        for frames in clips:
            t, c = frames.shape
            pad = (-t) % self.stack
            if pad:
                frames = nn.functional.pad(frames, (0, 0, 0, pad))  # zero frames at the end
            stacked.append(frames.reshape(-1, c * self.stack))  # T, C -> T/S, C*S
        x = torch.cat(stacked).to(self.fc1.weight.dtype)
        x = self.norm_out(self.fc2(nn.functional.gelu(self.fc1(self.norm_in(x)))))
        return list(x.split([len(s) for s in stacked]))
