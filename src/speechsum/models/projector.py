"""Projector: encoder frames -> LLM embedding space.

Frame stacking (concatenate S consecutive frames) reduces 50 Hz Whisper frames to 50/S Hz
audio tokens (S=8: 6.25 tokens/s, 30 min -> 11,250 tokens), then norm + 2-layer MLP, then
optionally `layers` pre-norm Transformer layers over the audio tokens (the MLP sees 160 ms at a
time; the layers let neighbouring tokens agree on which text token each carries, as a CTC read-out
needs). Their attention is block-diagonal over `block` tokens (default: one 30 s Whisper window),
so a long recording costs linear time and memory, not quadratic.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from speechsum.audio import WINDOW_ENCODER_FRAMES


class Projector(nn.Module):
    def __init__(self, enc_dim: int, llm_dim: int, stack: int = 8, hidden: int = 1024, layers: int = 0,
                 block: int = 0):
        super().__init__()
        self.stack = stack
        self.norm_in = nn.LayerNorm(enc_dim * stack)
        self.fc1 = nn.Linear(enc_dim * stack, hidden)
        self.fc2 = nn.Linear(hidden, llm_dim)
        self.block = block or self.num_tokens(WINDOW_ENCODER_FRAMES)  # one 30 s Whisper window
        heads = next(h for h in (8, 4, 2, 1) if llm_dim % h == 0)
        self.context = nn.ModuleList(
            nn.TransformerEncoderLayer(llm_dim, heads, dim_feedforward=hidden, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(layers))
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
        x = self.fc2(nn.functional.gelu(self.fc1(self.norm_in(x))))
        lengths = [len(s) for s in stacked]
        if self.context:
            x = self._contextualize(x, lengths)
        return list(self.norm_out(x).split(lengths))

    def _contextualize(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """The context layers over each clip's tokens, cut into blocks of `self.block` that attend
        within themselves only; [sum(lengths), D] -> the same shape."""
        blocks = [b for clip in x.split(lengths) for b in clip.split(self.block)]
        sizes = [len(b) for b in blocks]
        padded = nn.utils.rnn.pad_sequence(blocks, batch_first=True)  # [B, block, D]
        pad = torch.arange(padded.shape[1])[None, :] >= torch.tensor(sizes)[:, None]
        for layer in self.context:
            padded = layer(padded, src_key_padding_mask=pad)
        return torch.cat([b[:n] for b, n in zip(padded, sizes)])


READOUT_CHUNK = 512  # audio tokens per [chunk, vocab] score block of the read-outs (~100 MB fp32 for 49k tokens)


def readout_logits(audio: torch.Tensor, embedding: torch.Tensor, temperature: float = 1.0,
                   unit_embedding: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine of each audio token [A, D] to every LLM input embedding [V, D] / temperature -> [A, V]
    (the scores the embedding-space CTC term trains). `unit_embedding`: the embedding already
    normalized, for callers that score many chunks against it."""
    unit = nn.functional.normalize(embedding, dim=-1) if unit_embedding is None else unit_embedding
    # the temperature on the [A, D] side, not on the [A, V] scores: the same values, 1/85 of the divisions
    return (nn.functional.normalize(audio, dim=-1) / temperature) @ unit.T


def greedy_readout_ids(audio: torch.Tensor, embedding: torch.Tensor, blank_id: int) -> list[int]:
    """CTC greedy decoding of projected audio [A, D]: the nearest LLM token per audio token, runs
    collapsed, blanks dropped. What the connector "says" without the LLM: the alignment gate's
    read-out transcript."""
    best = torch.cat([readout_logits(a, embedding.float()).argmax(-1)
                      for a in audio.float().split(READOUT_CHUNK)]).tolist()
    return [b for k, b in enumerate(best) if b != blank_id and (k == 0 or b != best[k - 1])]


def vocab_readout(audio: torch.Tensor, embedding: torch.Tensor, blank_id: int, temperature: float,
                  chunk: int = 0, unit_embedding: torch.Tensor | None = None) -> torch.Tensor:
    """Projected audio tokens [A, D] -> soft LLM token embeddings [A', D] (A' <= A).

    Each audio token gets a distribution over the LLM vocabulary, softmax(cos(a, E_v) / T) (the
    same scores the embedding-space CTC term trains, with the `blank_id` row as the CTC blank),
    and is replaced by the probability-weighted mean of the LLM's own input embeddings, so the
    frozen LLM reads embeddings it was trained on (as in CTC-posterior connectors such as
    LegoSLM). Tokens whose most likely class is the blank are dropped and consecutive tokens with
    the same most likely token are averaged into one (the CTC collapse), so the LLM sees about
    one embedding per spoken token. Differentiable in the kept tokens. The [A, V] scores are made
    `chunk` audio tokens at a time (0: READOUT_CHUNK): whole, 30 min of audio (11k tokens x 49k
    vocabulary, three fp32 copies) took ~6.6 GB. `unit_embedding`: the embedding normalized in
    `audio`'s dtype, for callers that read out many items against it (`SpeechLM.readouts`).

    When a gradient can flow to `audio` (training the connector), the most likely tokens come from
    scores made without a graph, and the kept tokens' scores are made again with one: about half
    of the tokens are blanks, whose [V]-wide scores then never enter the backward pass (on the
    demo's SFT steps the [A, V] gradient scatter of the indexed scores cost ~0.7 s per step).
    """
    e = embedding.to(audio.dtype)
    unit = nn.functional.normalize(e, dim=-1) if unit_embedding is None else unit_embedding  # once per call
    is_blank = torch.arange(len(e)) == blank_id
    graph = torch.is_grad_enabled() and audio.requires_grad
    best_parts, soft_parts = [], []
    for a in audio.split(chunk or READOUT_CHUNK):
        with torch.no_grad() if graph else contextlib.nullcontext():
            logits = readout_logits(a, e, temperature, unit)  # chunk, V
            best = logits.argmax(-1)
        best_parts.append(best)
        # the soft embedding only of the tokens kept (best not the blank): the dropped ones never
        # reach the output, and about half the tokens of speech are blanks. The [chunk, V] blocks
        # go as soon as they are used (the blank masked in place); bench/long_audio.py measured no
        # peak-memory change either way (README: the read-out change)
        kept = readout_logits(a[best != blank_id], e, temperature, unit) if graph else logits[best != blank_id]
        del logits
        soft_parts.append(kept.masked_fill_(is_blank, float("-inf")).softmax(-1) @ e)  # kept, D
        del kept
    best, soft = torch.cat(best_parts), torch.cat(soft_parts)  # A; kept, D
    keep = best != blank_id
    if not bool(keep.any()):
        return audio[:0]
    # runs of equal best tokens among the kept ones -> one embedding each (mean)
    idx = keep.nonzero().squeeze(1)
    b = best[idx]
    new_run = torch.ones_like(b, dtype=torch.bool)
    new_run[1:] = (b[1:] != b[:-1]) | (idx[1:] != idx[:-1] + 1)
    run_id = new_run.cumsum(0) - 1
    n = int(run_id[-1]) + 1
    sums = torch.zeros(n, soft.shape[1], dtype=soft.dtype).index_add(0, run_id, soft)
    counts = torch.zeros(n, dtype=soft.dtype).index_add(0, run_id, torch.ones_like(run_id, dtype=soft.dtype))
    return sums / counts[:, None]
