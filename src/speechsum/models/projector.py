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
import math

import torch
from torch import nn

from speechsum.audio import WINDOW_ENCODER_FRAMES
from speechsum.precision import bf16_native


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
        x = torch.cat(stacked).to(device=self.fc1.weight.device, dtype=self.fc1.weight.dtype)  # frames may live on the CPU
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
        pad = torch.arange(padded.shape[1], device=x.device)[None, :] >= torch.tensor(sizes, device=x.device)[:, None]
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


READOUT_TOPK = 64  # candidates per audio token that the coarse scores keep (0: the dense read-out)
READOUT_TAIL = 1e-6  # a token whose left-out probability may exceed this share is read out densely


def coarse_error(temperature: float) -> float:
    """An upper bound on |coarse - exact| read-out logits: unit vectors rounded to bf16 (2^-9
    relative per element, both sides) give a cosine off by at most 2^-8, and the bf16 product is
    rounded once more (2^-9 of |logit| <= 1/T); 2^-7 / T covers both."""
    return 2.0**-7 / temperature


def vocab_readout(audio: torch.Tensor, embedding: torch.Tensor, blank_id: int, temperature: float,
                  chunk: int = 0, unit_embedding: torch.Tensor | None = None,
                  coarse_unit: torch.Tensor | None = None, topk: int = READOUT_TOPK) -> torch.Tensor:
    """Projected audio tokens [A, D] -> soft LLM token embeddings [A', D] (A' <= A).

    Each audio token gets a distribution over the LLM vocabulary, softmax(cos(a, E_v) / T) (the
    same scores the embedding-space CTC term trains, with the `blank_id` row as the CTC blank),
    and is replaced by the probability-weighted mean of the LLM's own input embeddings, so the
    frozen LLM reads embeddings it was trained on (as in CTC-posterior connectors such as
    LegoSLM). Tokens whose most likely class is the blank are dropped and consecutive tokens with
    the same most likely token are averaged into one (the CTC collapse), so the LLM sees about
    one embedding per spoken token. Differentiable in the kept tokens. Made `chunk` audio tokens
    at a time (0: READOUT_CHUNK): whole, 30 min of audio (11k tokens x 49k vocabulary, three fp32
    copies) took ~6.6 GB. `unit_embedding` / `coarse_unit`: the embedding normalized in `audio`'s
    dtype / in bf16, for callers that read out many items against it (`SpeechLM.readouts`).

    With `topk` (the default), the [A, V] scores are made in bf16 (coarse, ~4x faster here) only
    to find each token's `topk` most likely tokens; the exact scores are then made for the union
    of those candidates over the chunk (~1,800 of 49,152 on the demo's speech) and the softmax,
    the most likely token and the gradient come from them. That is the dense read-out's result
    up to the probability left out, which is bounded per token from the coarse scores (their
    error is at most `coarse_error`): a token whose most likely token the candidates might miss,
    or (unless it is surely the blank, which needs no soft embedding) whose left-out mass may
    exceed READOUT_TAIL of its kept mass, is read out densely: 4.2 % of the tokens of the demo's
    24 test clips. There the most likely tokens were the dense read-out's and the embeddings
    within 1.4e-4 of them (relative; the fp32 dense read-out is itself 2e-5 from float64), far
    below the bf16 rounding of the LLM's input (4e-3); 2.5x faster without a gradient and 3.6x
    with one (16 clips in micro-batches of 2, this machine). `topk` 0: every token densely.
    """
    best, soft = token_readout(audio, embedding, blank_id, temperature, chunk, unit_embedding, coarse_unit, topk)
    return collapse_runs(best, soft, blank_id, audio)


def candidates_pay() -> bool:
    """Whether the candidate read-out runs here: its coarse scores are bf16 products, which where
    bf16 is not native (an AVX2-only CPU: 0.3 GFLOP/s against 83 in fp32) would cost more than the
    dense read-out saves."""
    return bf16_native()


def coarse_embedding(unit: torch.Tensor) -> torch.Tensor | None:
    """The normalized embedding's bf16 copy the candidate read-out's coarse scores use (None where
    that read-out does not run)."""
    return unit.to(torch.bfloat16) if candidates_pay() else None


def token_readout(audio: torch.Tensor, embedding: torch.Tensor, blank_id: int, temperature: float,
                  chunk: int = 0, unit_embedding: torch.Tensor | None = None,
                  coarse_unit: torch.Tensor | None = None, topk: int = READOUT_TOPK
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`vocab_readout`'s per-token part: each audio token's most likely LLM token [A] and the soft
    embeddings of the tokens whose most likely token is not the blank [kept, D], in order. Tokens
    are independent here, so several items' tokens may go in one call (`SpeechLM.readouts`)."""
    e = embedding.to(audio.dtype)
    unit = nn.functional.normalize(e, dim=-1) if unit_embedding is None else unit_embedding  # once per call
    topk = min(topk, len(e) - 1) if candidates_pay() else 0
    if topk > 0 and coarse_unit is None:
        coarse_unit = coarse_embedding(unit)
    is_blank = torch.arange(len(e), device=e.device) == blank_id
    graph = torch.is_grad_enabled() and audio.requires_grad
    best_parts, soft_parts = [], []
    for a in audio.split(chunk or READOUT_CHUNK):
        if topk > 0:
            best, soft = _sparse_chunk(a, e, unit, coarse_unit, blank_id, temperature, topk, is_blank)
        else:
            best, soft = _dense_chunk(a, e, unit, blank_id, temperature, is_blank, graph)
        best_parts.append(best)
        soft_parts.append(soft)
    return torch.cat(best_parts), torch.cat(soft_parts)


def collapse_runs(best: torch.Tensor, soft: torch.Tensor, blank_id: int, audio: torch.Tensor) -> torch.Tensor:
    """One item's read-out from its tokens' `token_readout`: blanks dropped, and each run of equal
    most likely tokens among the kept ones averaged into one embedding. `audio`: the item's
    projected tokens (only for the empty result's shape and dtype)."""
    keep = best != blank_id
    if not bool(keep.any()):
        return audio[:0]
    idx = keep.nonzero().squeeze(1)
    b = best[idx]
    new_run = torch.ones_like(b, dtype=torch.bool)
    new_run[1:] = (b[1:] != b[:-1]) | (idx[1:] != idx[:-1] + 1)
    run_id = new_run.cumsum(0) - 1
    n = int(run_id[-1]) + 1
    sums = soft.new_zeros(n, soft.shape[1]).index_add(0, run_id, soft)
    counts = soft.new_zeros(n).index_add(0, run_id, torch.ones_like(run_id, dtype=soft.dtype))
    return sums / counts[:, None]


def _dense_chunk(a, e, unit, blank_id, temperature, is_blank, graph):
    """The most likely token [c] and the soft embeddings of the kept ones [kept, D], from all V scores.
    When a gradient can flow to `a` (training the connector), the most likely tokens come from
    scores made without a graph, and the kept tokens' scores are made again with one: about half
    of the tokens are blanks, whose [V]-wide scores then never enter the backward pass."""
    with torch.no_grad() if graph else contextlib.nullcontext():
        logits = readout_logits(a, e, temperature, unit)  # chunk, V
        best = logits.argmax(-1)
    # the [chunk, V] blocks go as soon as they are used (the blank masked in place)
    kept = readout_logits(a[best != blank_id], e, temperature, unit) if graph else logits[best != blank_id]
    del logits
    return best, kept.masked_fill_(is_blank, float("-inf")).softmax(-1) @ e


def _sparse_chunk(a, e, unit, coarse_unit, blank_id, temperature, topk, is_blank):
    """`_dense_chunk`'s result from the exact scores of the chunk's candidate tokens (see
    `vocab_readout`); the tokens the candidates may not cover go through `_dense_chunk`."""
    au = nn.functional.normalize(a, dim=-1) / temperature  # the exact side, with a graph when training
    vocab, err = len(e), coarse_error(temperature)
    with torch.no_grad():
        coarse = au.detach().to(torch.bfloat16) @ coarse_unit.T  # chunk, V (bf16)
        coarse[:, blank_id] = float("-inf")
        top = coarse.topk(topk, dim=-1)
        cand = torch.unique(torch.cat([top.indices.reshape(-1), top.indices.new_tensor([blank_id])]))  # sorted
        # any token outside the candidates scores at most the row's k-th coarse score + err, exactly
        outside = top.values[:, -1].float() + err
    exact = au @ unit[cand].T  # chunk, U: exact scores of the candidates (the blank among them)
    blank_col = int(torch.searchsorted(cand, blank_id))
    with torch.no_grad():
        top_exact = exact.detach().max(-1)
        sure = top_exact.values > outside  # the most likely token is surely a candidate
        blank = sure & (top_exact.indices == blank_col)  # surely a blank: dropped, no soft embedding needed
        x = exact.detach().clone()
        x[:, blank_col] = float("-inf")
        inside = x.logsumexp(-1)  # the candidates' share of the softmax (without the blank), in log
        others, log_tail = vocab - len(cand), math.log(READOUT_TAIL)
        # the left-out mass over the kept mass, bounded by (V - U) tokens at the `outside` score
        ok = (math.log(others) + outside - inside < log_tail) if others else inside.new_ones(len(a), dtype=torch.bool)
        ok |= blank
        loose = (~ok & sure).nonzero().squeeze(1)
        if len(loose):  # a tighter bound for the rest: their left-out coarse scores summed
            rest = coarse[loose].float()
            rest[:, cand] = float("-inf")
            ok[loose] = rest.logsumexp(-1) + err - inside[loose] < log_tail
        ok &= sure
    del coarse
    best = cand.new_empty(len(a))
    best[ok] = cand[exact.detach()[ok].argmax(-1)]
    keep_ok = ok & (best != blank_id)
    parts = []
    if bool(keep_ok.any()):
        s = exact[keep_ok].masked_fill(cand == blank_id, float("-inf"))
        parts.append((keep_ok, s.softmax(-1) @ e[cand]))
    dense = (~ok).nonzero().squeeze(1)
    if len(dense):
        graph = torch.is_grad_enabled() and a.requires_grad
        b, soft_d = _dense_chunk(a[dense], e, unit, blank_id, temperature, is_blank, graph)
        best[dense] = b
        keep_d = torch.zeros_like(ok)
        keep_d[dense[b != blank_id]] = True
        parts.append((keep_d, soft_d))
    if not parts:
        return best, e[:0]
    if len(parts) == 1:
        return best, parts[0][1]
    # both kinds kept: back into the chunk's token order
    order = torch.cat([m.nonzero().squeeze(1) for m, _ in parts]).argsort()
    return best, torch.cat([v for _, v in parts])[order]
