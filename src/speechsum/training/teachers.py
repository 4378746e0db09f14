"""KD teachers: a text LLM reading the transcript scores exactly the student's completion tokens.

The teacher gets the same instruction as the student, with the gold transcript where the
student has audio, rendered with the teacher's own chat template; the completion is appended
as token ids (never re-tokenized text), so position j of the teacher's scores is the
distribution over the token the student wrote at its position j.

- `LocalTeacher`: an HF causal LM with the student's vocabulary; full distributions [N, V].
- `RemoteTeacher`: an OpenAI-compatible `/v1/completions` endpoint with vLLM's `prompt_logprobs`
  (top-k log-probs per prompt position); the rest of the mass becomes a tail bucket.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speechsum.models.text_lm import OpenAIChat, RemoteError


@dataclass
class TeacherScores:
    rows: torch.Tensor  # N: which completion each scored position belongs to
    logp: torch.Tensor | None = None  # N, V full log-probs (local teacher)
    topk_ids: torch.Tensor | None = None  # N, K (remote teacher)
    topk_logp: torch.Tensor | None = None  # N, K

    def to(self, device) -> "TeacherScores":
        """The scores where the student's logits are (a remote teacher's arrive on the CPU)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return TeacherScores(move(self.rows), move(self.logp), move(self.topk_ids), move(self.topk_logp))


class VocabularyMismatch(ValueError):
    pass


def check_same_vocabulary(student_tok, teacher_tok, student_name: str, teacher_name: str) -> None:
    """Token-level KD compares distributions over the same token ids: refuse different vocabularies."""
    if student_tok.get_vocab() != teacher_tok.get_vocab():
        raise VocabularyMismatch(
            f"teacher {teacher_name} has a different tokenizer ({len(teacher_tok)} tokens) from the student's "
            f"{student_name} ({len(student_tok)} tokens); token-level KD needs the same vocabulary "
            "(pick a teacher of the student's family, or configure a cross-tokenizer method)")


def teacher_prompt_ids(tokenizer, system_prompt: str, transcript: str, instruction: str) -> list[int]:
    """The teacher's chat prompt: transcript where the student has audio, then the same instruction."""
    messages = [{"role": "system", "content": system_prompt},
                {"role": "user", "content": f"{transcript}\n\n{instruction}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class LocalTeacher:
    def __init__(self, llm, tokenizer, system_prompt: str, name: str = "local", bf16: bool = False,
                 bf16_weights: bool = False):
        self.llm = llm.eval()
        # the decoder under bf16 autocast (the prefill of transcript + completion is the cost);
        # the LM head in fp32, so the KD targets keep fp32 logits (bf16 rounds a logit of 20 to 0.125)
        self.bf16 = bf16 or bf16_weights
        for p in self.llm.parameters():
            p.requires_grad_(False)
        head = self.llm.get_output_embeddings()
        self.head_weight = head.weight.detach().float().clone() if bf16_weights else head.weight
        self.head_bias = None if getattr(head, "bias", None) is None else head.bias.detach().float()
        if bf16_weights:  # stored in bf16: half the memory, and autocast has nothing to cast per step
            self.llm.to(torch.bfloat16)
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt
        self.name = name

    @classmethod
    def from_pretrained(cls, model: str, system_prompt: str, dtype=torch.float32, bf16: bool = False,
                        bf16_weights: bool = False) -> "LocalTeacher":
        """`bf16`: the decoder runs under bf16 autocast; `bf16_weights`: the weights are loaded
        into bf16 and the LM head multiplies in fp32 by an fp32 copy of its bf16 weights."""
        from speechsum.models.text_lm import load_causal_lm

        llm, tok = load_causal_lm(model, torch.bfloat16 if bf16_weights else dtype)
        return cls(llm, tok, system_prompt, name=model, bf16=bf16, bf16_weights=bf16_weights)

    def to(self, device) -> "LocalTeacher":
        """Put the teacher (decoder and its fp32 head) on `device`, e.g. the training accelerator's."""
        self.llm.to(device)
        self.head_weight = self.head_weight.to(device)  # the head's own parameter (fp32 path) has moved already
        self.head_bias = None if self.head_bias is None else self.head_bias.to(device)
        return self

    @torch.no_grad()
    def score(self, transcripts: list[str], instructions: list[str], completions: list[list[int]]) -> TeacherScores:
        """Teacher log-probs at every completion position (right-padded batch, head only there)."""
        prompts = [teacher_prompt_ids(self.tokenizer, self.system_prompt, t, i)
                   for t, i in zip(transcripts, instructions)]
        seqs = [p + c for p, c in zip(prompts, completions)]
        tmax = max(map(len, seqs))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(self.llm.parameters()).device  # inputs go where the teacher is (GPU or CPU)
        ids = torch.tensor([s + [pad] * (tmax - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (tmax - len(s)) for s in seqs], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16):
            hidden = self.llm.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        # position t predicts token t+1: completion token j of row b sits at len(prompt_b) + j
        sel = torch.zeros(mask.shape, dtype=torch.bool)
        for b, (p, c) in enumerate(zip(prompts, completions)):
            sel[b, len(p) - 1 : len(p) - 1 + len(c)] = True
        rows = torch.arange(len(seqs))[:, None].expand_as(sel)[sel]
        logits = torch.nn.functional.linear(hidden[sel.to(device)].float(), self.head_weight, self.head_bias)
        return TeacherScores(rows=rows, logp=torch.log_softmax(logits, -1))


class RemoteTeacher:
    """vLLM-style `prompt_logprobs` over the OpenAI completions protocol (prompt given as token ids)."""

    def __init__(self, base_url: str, model: str, tokenizer, system_prompt: str, top_k: int = 20,
                 api_key: str | None = None, timeout: float = 120.0, retries: int = 3, backoff: float = 1.0):
        self.client = OpenAIChat(base_url, model, api_key, timeout, retries, backoff)
        self.tokenizer = tokenizer  # the student's: a remote teacher must share its vocabulary
        self.system_prompt = system_prompt
        self.top_k = top_k
        self.name = self.client.identity

    def score(self, transcripts: list[str], instructions: list[str], completions: list[list[int]]) -> TeacherScores:
        rows, ids, lps = [], [], []
        for b, (t, i, comp) in enumerate(zip(transcripts, instructions, completions)):
            prompt = teacher_prompt_ids(self.tokenizer, self.system_prompt, t, i)
            data = self.client.post("/completions", {"model": self.client.model, "prompt": prompt + list(comp),
                                                     "max_tokens": 1, "temperature": 0.0,
                                                     "prompt_logprobs": self.top_k})
            try:
                plp = data["choices"][0]["prompt_logprobs"]
            except (KeyError, IndexError, TypeError):
                raise RemoteError(f"{self.client.base_url}/completions: answer has no choices[0].prompt_logprobs "
                                  "(is it a vLLM server?)") from None
            if not isinstance(plp, list) or len(plp) != len(prompt) + len(comp):
                raise RemoteError(f"{self.client.base_url}/completions: prompt_logprobs has "
                                  f"{len(plp) if isinstance(plp, list) else 'no'} entries for "
                                  f"{len(prompt) + len(comp)} prompt tokens")
            for j in range(len(comp)):
                entry = plp[len(prompt) + j]  # distribution over completion token j given its prefix
                top = _top_k(entry, self.top_k, self.client.base_url)
                rows.append(b)
                ids.append([k for k, _ in top])
                lps.append([v for _, v in top])
        return TeacherScores(rows=torch.tensor(rows), topk_ids=torch.tensor(ids),
                             topk_logp=torch.tensor(lps, dtype=torch.float32))


def _top_k(entry, k: int, where: str) -> list[tuple[int, float]]:
    """vLLM gives {token_id: {logprob, rank, decoded_token}} with the top-k ranks plus the actual
    prompt token; keep exactly the k best (ids unique) so every position has K columns."""
    if not isinstance(entry, dict) or not entry:
        raise RemoteError(f"{where}/completions: a prompt_logprobs entry is empty or not a mapping")
    try:
        items = sorted(((int(tid), float(v["logprob"])) for tid, v in entry.items()), key=lambda x: -x[1])
    except (TypeError, ValueError, KeyError):
        raise RemoteError(f"{where}/completions: malformed prompt_logprobs entry {str(entry)[:80]}") from None
    if len(items) < k:
        raise RemoteError(f"{where}/completions: {len(items)} log-probs per position, fewer than top_k={k}")
    return items[:k]
