"""Batched decoding from input embeddings with a KV cache, shared by SpeechLM and TextLM.

Returns, per row, the generated ids (stop token excluded), the log-probability of each id
under the model at temperature 1 (what KD and DPO need, independent of the sampling
temperature), and whether the row stopped on a stop token.

`repeat_stop=K` (0: off) stops a row whose answer has begun to loop, the commonest failure of
small LMs on long inputs ("Agreed to run the news for now." x 30 until the token cap): once the
answer ends with K back-to-back copies of one block, the extra copies are dropped and the row
stops (`looped`). Short blocks need more copies (at least `LOOP_MIN_SPAN` tokens in all), so
"1,000,000" or "very very" never trigger it. It also stops a row at the first sentence or line
that repeats an earlier one word for word (`RepeatedUnits`; at least `UNIT_MIN_WORDS` words),
which the copies rule misses when the repeats alternate: the 400-document demo's DPO model wrote
bullets A B C D C C D for the bundled voicemail. The repeated sentence is dropped, also when it
is the answer's last line, ended by the stop token rather than a newline (`LOOP_RULE`
"copies+units+last" since 2026-12-07: a DPO model's bullets for the voicemail ended on a copy of
the line before). `summarize`
and `eval` use both (`LOOP_RULE` names them in eval's metrics.json); the training stages sample
without them (their samples are the policy's, loops included).

Measured here (SmolLM2-135M, 2 cores, fp32): a decode step is memory-bound (~540 MB of
weights read per step): 65 ms at batch 1, 81 ms at batch 8, so batch size is the lever for
throughput; a hand-written decoder with a preallocated cache was no faster than HF's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


@dataclass
class Generation:
    ids: list[int]  # generated token ids, stop token excluded
    logprobs: list[float]  # log p(token) under the model at temperature 1, one per id
    text: str
    finished: bool  # stopped on a stop token (False: hit max_new_tokens, or looped)
    looped: bool = False  # stopped by `repeat_stop`: the answer began to repeat itself


LOOP_MIN_SPAN = 16  # tokens the repeated copies must span before a loop stops a row
LOOP_MAX_PERIOD = 64  # longest repeated block looked for, in tokens


def check_repeat_stop(value: int, name: str = "repeat_stop") -> int:
    """0 (off) or the number of copies (>= 2) that stops a looping answer."""
    if not isinstance(value, int) or value < 0 or value == 1:
        raise ValueError(f"{name}={value!r}: expected 0 (off) or a number of copies >= 2")
    return value


def loop_cut(ids: list[int], copies: int, max_period: int = LOOP_MAX_PERIOD,
             min_span: int = LOOP_MIN_SPAN) -> int | None:
    """If `ids` ends with back-to-back copies of one block of p tokens (at least `copies` of them
    and at least `min_span` tokens in all), the length that keeps only the first copy; else None."""
    n = len(ids)
    for p in range(1, min(max_period, n // 2) + 1):
        if ids[-1] != ids[-1 - p]:
            continue
        need = max(copies, -(-min_span // p))
        if need * p > n:
            continue
        block = ids[n - p:]
        if all(ids[n - k * p : n - (k - 1) * p] == block for k in range(2, need + 1)):
            return n - (need - 1) * p
    return None


UNIT_MIN_WORDS = 3  # a repeated sentence or line shorter than this ("Thank you.") is not a loop
LOOP_RULE = "copies+units+last"  # what repeat_stop > 0 stops (eval records it: another rule decodes differently)
_UNIT_END = (".", "!", "?")
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*")


def unit_words(text: str) -> tuple[str, ...]:
    """The words of a sentence or line, compared for repeats: lower case, bullet or list number
    and punctuation dropped ("- Send the plan on Friday." == "send the plan on friday")."""
    return tuple(re.findall(r"\w+", _BULLET.sub("", text).lower()))


def ends_unit(piece: str) -> bool:
    """A token's text ends a sentence or line: it holds a newline or ends in . ! or ?"""
    return "\n" in piece or piece.rstrip().endswith(_UNIT_END)


class RepeatedUnits:
    """Watches one answer token by token: `push` returns the length to keep when the token just
    appended ends a sentence or line (`ends_unit`) whose words (`unit_words`, at least
    `min_words`) are those of an earlier sentence or line of the same answer; else None. Units
    are cut at token boundaries, so a repeat tokenized the same way is cut the same way."""

    def __init__(self, min_words: int = UNIT_MIN_WORDS):
        self.min_words, self.start, self.seen = min_words, 0, set()

    def push(self, ids: list[int], decode_ids, last: bool = False) -> int | None:
        """`last`: the answer ends here (the stop token came), so its last sentence or line is
        complete even without a newline or full stop."""
        if not ids or not (last or ends_unit(decode_ids(ids[-1:]))):
            return None
        words = unit_words(decode_ids(ids[self.start:]))
        start, self.start = self.start, len(ids)
        if len(words) < self.min_words:
            return None
        if words in self.seen:
            return start
        self.seen.add(words)
        return None


def stop_token_ids(tokenizer, llm=None) -> list[int]:
    """eos plus the chat template's end-of-turn tokens (e.g. <|im_end|>), which chat models emit
    instead of eos; the generation config's eos list too."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid >= 0 and tid != tokenizer.unk_token_id:
            ids.add(tid)
    gen_eos = getattr(getattr(llm, "generation_config", None), "eos_token_id", None)
    for t in gen_eos if isinstance(gen_eos, list) else [gen_eos]:
        if t is not None:
            ids.add(int(t))
    return sorted(ids)


def pick_tokens(logits: torch.Tensor, do_sample: bool, temperature: float = 1.0, top_p: float = 1.0,
                top_k: int = 0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy or sampled next tokens [B] from logits [B, V]. A sampling `generator` on another
    device than the logits (the stages' seeded CPU generators, a model on a GPU) draws on its own
    device, so one seed gives the same tokens wherever the model runs."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / max(temperature, 1e-5)
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(probs.device)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@dataclass
class Prefill:
    """The prompts' KV cache and next-token logits: where decoding starts. Decoding extends the
    cache, so one Prefill serves one decode; `repeat(n)` gives an independent copy with each row
    n times (the n samples of one prompt share its prefill instead of computing it n times)."""
    cache: object  # transformers.DynamicCache
    logits: torch.Tensor  # [B, V] fp32, the next token's
    attention_mask: torch.Tensor  # [B, T]
    next_pos: torch.Tensor  # [B]

    @torch.inference_mode()
    def repeat(self, n: int) -> "Prefill":
        import copy

        cache = copy.deepcopy(self.cache)
        cache.batch_repeat_interleave(n)
        return Prefill(cache, self.logits.repeat_interleave(n, 0), self.attention_mask.repeat_interleave(n, 0),
                       self.next_pos.repeat_interleave(n, 0))


@torch.inference_mode()
@torch.compiler.set_stance("force_eager")  # eager even where training compiled the layers (`loop.compile`)
def prefill(llm, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> Prefill:
    """Run left-padded prompts (embeds [B, T, D], mask and positions [B, T]) through the decoder once."""
    from transformers import DynamicCache

    cache = DynamicCache()
    out = llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                            past_key_values=cache, use_cache=True)
    logits = llm.get_output_embeddings()(out.last_hidden_state[:, -1]).float()  # the LM head on the last position only
    return Prefill(cache, logits, attention_mask, position_ids[:, -1] + 1)


def decode(llm, tokenizer, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
           stop_ids: list[int], max_new_tokens: int = 128, do_sample: bool = False, temperature: float = 1.0,
           top_p: float = 1.0, top_k: int = 0, generator: torch.Generator | None = None,
           repeat_stop: int = 0) -> list[Generation]:
    """Decode from left-padded inputs (embeds [B, T, D], mask and positions [B, T]); `repeat_stop`:
    see the module docstring."""
    check_repeat_stop(repeat_stop)
    return decode_from(llm, tokenizer, prefill(llm, embeds, attention_mask, position_ids), stop_ids, max_new_tokens,
                       do_sample, temperature, top_p, top_k, generator, repeat_stop)


@torch.inference_mode()
@torch.compiler.set_stance("force_eager")  # one-token KV-cache steps: no use for the training graph
def decode_from(llm, tokenizer, start: Prefill, stop_ids: list[int], max_new_tokens: int = 128,
                do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                generator: torch.Generator | None = None, repeat_stop: int = 0) -> list[Generation]:
    """Decode from a prefill (which this consumes: its cache grows); see `decode`."""
    check_repeat_stop(repeat_stop)
    decoder, head, emb_layer = llm.get_decoder(), llm.get_output_embeddings(), llm.get_input_embeddings()
    cache, logits = start.cache, start.logits
    attn, next_pos = start.attention_mask, start.next_pos
    compact = head.weight.dtype != torch.float32
    n = len(logits)
    active = torch.arange(n, device=logits.device)  # original row of each live batch row
    ids_out: list[list[int]] = [[] for _ in range(n)]
    lps_out: list[list[float]] = [[] for _ in range(n)]
    finished = [False] * n
    looped = [False] * n
    units = [RepeatedUnits() for _ in range(n)]
    stop = torch.tensor(stop_ids, device=logits.device)
    for step in range(max_new_tokens):
        tok = pick_tokens(logits, do_sample, temperature, top_p, top_k, generator)
        tok_lp = torch.log_softmax(logits, dim=-1).gather(1, tok[:, None])[:, 0]
        is_stop = torch.isin(tok, stop)
        for orig, t, lp, s in zip(active.tolist(), tok.tolist(), tok_lp.tolist(), is_stop.tolist()):
            if finished[orig] or looped[orig]:
                continue  # a finished row still in the batch (not yet compacted)
            if s:
                finished[orig] = True
                # the answer's last line ends at the stop token: a repeat of an earlier one is dropped too
                if repeat_stop and (cut := units[orig].push(ids_out[orig], tokenizer.decode, last=True)) is not None:
                    del ids_out[orig][cut:], lps_out[orig][cut:]
                    looped[orig] = True
                continue
            ids_out[orig].append(t)
            lps_out[orig].append(lp)
            if repeat_stop and ((cut := loop_cut(ids_out[orig], repeat_stop)) is not None
                                or (cut := units[orig].push(ids_out[orig], tokenizer.decode)) is not None):
                del ids_out[orig][cut:], lps_out[orig][cut:]
                looped[orig] = True
        live = torch.tensor([not (finished[o] or looped[o]) for o in active.tolist()], device=logits.device)
        if not live.any() or step == max_new_tokens - 1:
            break
        # Dropping finished rows copies every layer's cache: worth it only once a quarter of the
        # batch is done (decoding is memory-bound, so a dead row costs little per step), and only
        # in bf16. In fp32 the CPU's products with a few rows are slower than with the full batch
        # (SmolLM2's head: 33.6 ms at 3 rows against 18.0 at 8, 2026-12-07), so fp32 keeps them.
        if compact and (~live).sum() * 4 >= len(active):
            keep = live.nonzero()[:, 0]
            cache.batch_select_indices(keep)
            active, tok, attn, next_pos = active[keep], tok[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones(len(active), 1)], dim=1)
        out = decoder(inputs_embeds=emb_layer(tok[:, None]), attention_mask=attn, position_ids=next_pos[:, None],
                      past_key_values=cache, use_cache=True)
        next_pos = next_pos + 1
        logits = head(out.last_hidden_state[:, -1]).float()
    return [Generation(ids, lps, tokenizer.decode(ids, skip_special_tokens=True).strip(), fin, loop)
            for ids, lps, fin, loop in zip(ids_out, lps_out, finished, looped)]


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-id prompts -> (ids, attention_mask, position_ids), left-padded for decoding."""
    tmax = max(map(len, prompts))
    ids = torch.tensor([[pad_id] * (tmax - len(p)) + list(p) for p in prompts], dtype=torch.long)
    mask = torch.tensor([[0] * (tmax - len(p)) + [1] * len(p) for p in prompts], dtype=torch.long)
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)
