"""Text LLMs that read transcripts: a local HF causal LM or an OpenAI-compatible endpoint.

Both expose `chat(conversations, max_new_tokens, temperature) -> list[str]` and an `identity`
string for cache keys; `CachedChat` wraps either with the content-addressed `JsonCache`.
Used for teacher-written targets (synthetic data), behaviour-imitation targets (MTBI) and
LLM judges.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import torch

from speechsum.cache import JsonCache
from speechsum.models.generation import decode, left_pad, stop_token_ids
from speechsum.precision import set_int8_decoding

Conversation = list[dict[str, str]]  # [{"role": "system"|"user"|"assistant", "content": ...}]


def load_causal_lm(model: str, dtype: torch.dtype = torch.float32):
    """(causal LM, tokenizer) of a registry name, hub id or HF folder, or of a SpeechLM folder /
    run folder (e.g. an SFT run with `data.input: transcript`): its LLM with the LoRA adapter
    merged, so a text model fine-tuned by speechsum serves as a teacher, judge or baseline."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from speechsum.models.registry import resolve_model

    from speechsum.models.speech_lm import SpeechLM
    from speechsum.training.common import resolve_init

    try:
        speechlm_dir = resolve_init(model)
    except FileNotFoundError:  # not a speechsum folder: a plain causal LM
        speechlm_dir = None
    if speechlm_dir is not None:
        return SpeechLM.text_llm_from_pretrained(speechlm_dir, dtype=dtype)
    path = resolve_model(model)
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype), AutoTokenizer.from_pretrained(path)


class TextLM:
    """A local HF causal LM with its chat template; batched greedy or sampled decoding."""

    def __init__(self, llm, tokenizer, identity: str = "local"):
        self.llm = llm.eval()
        self.tokenizer = tokenizer
        self.identity = identity
        self.stop_ids = stop_token_ids(tokenizer, llm)
        # int8 weights for batch-1 steps of bf16 weights (precision.py); off by default so synthetic
        # data and judges decode as they always have; eval's baselines and the benches turn it on
        # as the SpeechLMs have it
        self.decode_int8 = False

    @classmethod
    def from_pretrained(cls, model: str, dtype: torch.dtype = torch.float32) -> "TextLM":
        llm, tok = load_causal_lm(model, dtype)
        return cls(llm, tok, identity=f"local:{model}:{str(dtype).removeprefix('torch.')}")

    def prompt_ids(self, conversation: Conversation) -> list[int]:
        text = self.tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def chat(self, conversations: list[Conversation], max_new_tokens: int = 256, temperature: float = 0.0,
             batch_size: int = 8, seed: int = 0, repeat_stop: int = 0) -> list[str]:
        """Answers in order; `repeat_stop` stops an answer once it loops (models/generation.py)."""
        gen = torch.Generator().manual_seed(seed)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        # sort by prompt length so each batch wastes little padding; answers go back in order
        prompts = [self.prompt_ids(c) for c in conversations]
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[str] = [""] * len(prompts)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            ids, mask, pos = left_pad([prompts[i] for i in idx], pad)
            with torch.inference_mode():
                emb_layer = self.llm.get_input_embeddings()
                dev = emb_layer.weight.device
                ids, mask, pos = ids.to(dev), mask.to(dev), pos.to(dev)
                embeds = emb_layer(ids)
            set_int8_decoding(self.llm, self.decode_int8)
            gens = decode(self.llm, self.tokenizer, embeds, mask, pos, self.stop_ids, max_new_tokens,
                          do_sample=temperature > 0, temperature=max(temperature, 1e-5), generator=gen,
                          repeat_stop=repeat_stop)
            for i, g in zip(idx, gens):
                out[i] = g.text
        return out


class RemoteError(RuntimeError):
    """The endpoint is down, refused the request, or answered something that is not the protocol."""


class OpenAIChat:
    """Client of an OpenAI-compatible `/v1/chat/completions` endpoint (vLLM, llama.cpp server,
    OpenAI): timeouts, bounded retries with backoff on connection errors / 429 / 5xx, and a
    clear `RemoteError` otherwise."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 1.0):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.identity = f"openai:{self.base_url}:{model}"

    def post(self, path: str, payload: dict) -> dict:
        url = f"{self.base_url}{path}"
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, json.dumps(payload).encode(), headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read()
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode(errors="replace")
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}: {detail}"
                    continue
                raise RemoteError(f"{url}: HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"unreachable ({reason})"
                continue
            try:
                return json.loads(body)
            except json.JSONDecodeError:
                raise RemoteError(f"{url}: answered with non-JSON: {body[:120]!r}") from None
        raise RemoteError(f"{url}: {last} after {self.retries + 1} attempts; is the server running?")

    def chat(self, conversations: list[Conversation], max_new_tokens: int = 256, temperature: float = 0.0,
             batch_size: int = 8, seed: int = 0) -> list[str]:
        out = []
        for conv in conversations:
            data = self.post("/chat/completions", {"model": self.model, "messages": conv, "max_tokens": max_new_tokens,
                                                  "temperature": temperature, "seed": seed})
            try:
                text = data["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise RemoteError(f"{self.base_url}/chat/completions: answer has no choices[0].message.content: "
                                  f"{json.dumps(data)[:160]}") from None
            if not isinstance(text, str):
                raise RemoteError(f"{self.base_url}/chat/completions: content is not a string: {text!r}"[:200])
            out.append(text.strip())
        return out


class CachedChat:
    """Any chat backend behind the content-addressed cache: only uncached requests are sent."""

    def __init__(self, backend, cache_dir: str | Path):
        self.backend = backend
        self.cache = JsonCache(cache_dir)
        self.identity = backend.identity

    def chat(self, conversations: list[Conversation], max_new_tokens: int = 256, temperature: float = 0.0,
             batch_size: int = 8, seed: int = 0) -> list[str]:
        reqs = [{"backend": self.identity, "messages": c, "max_new_tokens": max_new_tokens,
                 "temperature": temperature, "seed": seed} for c in conversations]
        out = [self.cache.get(r) for r in reqs]
        todo = [i for i, o in enumerate(out) if o is None]
        if todo:
            fresh = self.backend.chat([conversations[i] for i in todo], max_new_tokens, temperature, batch_size, seed)
            for i, text in zip(todo, fresh):
                self.cache.put(reqs[i], text)
                out[i] = text
        return out  # type: ignore[return-value]


def chat_backend(spec: str, cache_dir: str | Path | None = None, timeout: float = 60.0):
    """'local:NAME_OR_DIR' or 'openai:BASE_URL#MODEL' (api key from $OPENAI_API_KEY) -> backend."""
    import os

    if spec.startswith("openai:"):
        url, _, model = spec.removeprefix("openai:").partition("#")
        if not url or not model:
            raise ValueError(f"{spec}: expected openai:BASE_URL#MODEL, e.g. openai:http://127.0.0.1:8000/v1#qwen")
        backend = OpenAIChat(url, model, os.environ.get("OPENAI_API_KEY"), timeout=timeout)
    else:
        backend = TextLM.from_pretrained(spec.removeprefix("local:"))
    return CachedChat(backend, cache_dir) if cache_dir is not None else backend
