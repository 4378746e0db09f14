"""Tiny random models built in code (no downloads) for unit tests."""

from __future__ import annotations

from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WORDS = (
    "the a of to and in is was for on that with as by at from it be are this have an or will not were "
    "meeting summary budget friday monday tuesday team report send review plan project action items "
    "decided agreed owner deadline dollars hours call notes system user assistant audio you helpful answer "
    "faithfully never invent names numbers dates summarize bullets email title one line short paragraph"
).split()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(WORDS)) + chars)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit()])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llm(vocab_size: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def tiny_whisper(seed: int = 0):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    cfg = WhisperConfig(
        vocab_size=100, num_mel_bins=80, d_model=16, encoder_layers=2, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=64, pad_token_id=1, bos_token_id=2, eos_token_id=3,
        decoder_start_token_id=2,
    )
    return WhisperForConditionalGeneration(cfg)


def save_tiny_models(root: Path) -> tuple[Path, Path]:
    """Write a tiny Whisper and a tiny LLM as ordinary HF folders; returns (encoder_dir, llm_dir)."""
    from transformers import WhisperFeatureExtractor

    enc_dir, llm_dir = root / "tiny-whisper", root / "tiny-llm"
    if not (llm_dir / "config.json").is_file():
        w = tiny_whisper()
        w.save_pretrained(enc_dir)
        WhisperFeatureExtractor(feature_size=80).save_pretrained(enc_dir)
        tok = tiny_tokenizer()
        tiny_llm(len(tok)).save_pretrained(llm_dir)
        tok.save_pretrained(llm_dir)
    return enc_dir, llm_dir


def tiny_speechlm(root: Path, **overrides):
    from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig

    enc_dir, llm_dir = save_tiny_models(root)
    cfg = SpeechLMConfig(**{"encoder": str(enc_dir), "llm": str(llm_dir), "stack": 4, "projector_hidden": 32,
                            "lora_r": 4, "lora_alpha": 8, "system_prompt": "you are a helpful assistant", **overrides})
    model = SpeechLM.from_config(cfg)
    model.decode_bf16 = False  # exact decoding tests compare fp32 paths; the bf16 copy has its own test
    return model


def speech(seconds: float, start: float = 0.0):
    """`seconds` of real speech at 16 kHz (examples/voicemail.flac, 24 s, espeak-ng), for paths
    that check a recording has speech (speechsum.vad) before summarizing it."""
    from pathlib import Path

    from speechsum.audio import load_audio

    x = load_audio(Path(__file__).parents[1] / "examples" / "voicemail.flac")
    assert (start + seconds) * 16000 <= len(x), "the example holds 24 s"
    return x[int(start * 16000) : int((start + seconds) * 16000)]


def tone(seconds: float, freq: float = 440.0, sr: int = 16000):
    import numpy as np

    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(int(freq))
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(len(t))).astype("float32")


WORDS_DS = ["the meeting", "send report", "budget friday", "team plan", "review notes", "action items"]


def make_dataset(root, n_train=6, n_dev=2):
    """A tiny dataset in the synth format (Parquet manifest + FLAC) built in code."""
    import json

    import soundfile as sf

    from speechsum.data.dataset import write_manifest

    for split, n in (("train", n_train), ("dev", n_dev)):
        d = root / split
        (d / "audio").mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n):
            doc = f"{split}{i}"
            audio = tone(1.0 + 0.25 * i, 200 + 40 * i)
            sf.write(d / "audio" / f"{doc}.flac", audio, 16000)
            words = WORDS_DS[i % len(WORDS_DS)]
            rows.append({
                "id": f"{doc}-0", "doc_id": doc, "split": split, "audio": f"audio/{doc}.flac",
                "duration": len(audio) / 16000, "language": "en", "voice": "test", "voices": ["test"], "speed": 1.0,
                "genre": "meeting", "register": "neutral", "transcript": f"{words} on friday",
                "sentences": [{"text": f"{words} on friday", "start": 0.0, "end": len(audio) / 16000, "speaker": 0}],
                "instruction": "summarize", "style": "one-line" if i % 2 else "bullets", "paraphrase_id": 0,
                "held_out": False, "held_out_kind": "", "target": f"{words} on friday",
                "target_author": "facts-template", "target_problems": [], "facts": json.dumps([]),
                "source": "procedural",
            })
        write_manifest(d, rows)
    return root


class FakePairwiseJudge:
    """A local pairwise judge backend for DPO's LLM judge: its next-token log-odds of "1" against
    "2" come from `margin(first, second)`, its written answer is its likelier digit, and it keeps
    the (first, second) summaries of every prompt it saw. `patch(monkeypatch)` routes
    `judge.local_judge_logprobs` to it (the real function is tested on a tiny Llama)."""

    llm = tokenizer = None  # what make_llm_verdict hands to local_judge_logprobs

    def __init__(self, margin):
        self.margin, self.seen = margin, []

    def pair(self, messages) -> float:
        text = messages[0]["content"]
        first = text.split("Summary 1:\n")[1].split("\n\nSummary 2:")[0]
        second = text.split("Summary 2:\n")[1].split("\n\nAnswer")[0]
        self.seen.append((first, second))
        return self.margin(first, second)

    def chat(self, conversations, max_new_tokens=8):
        return ["1" if self.pair(c) > 0 else "2" for c in conversations]

    def patch(self, monkeypatch) -> "FakePairwiseJudge":
        from speechsum.evaluation import judge

        monkeypatch.setattr(judge, "local_judge_logprobs",
                            lambda model, tok, prompt, labels: {"1": self.pair(prompt), "2": 0.0})
        return self



def dev_with_facts(data):
    """The tiny dataset's dev items, each given one known fact (its day): what DPO's dev selection scores."""
    import json

    from speechsum.data.dataset import read_manifest, write_manifest

    rows = read_manifest(data / "dev")
    for r in rows:
        r["facts"] = json.dumps([{"id": "f1", "kind": "date", "value": "Friday", "mention": "friday", "attrs": {}}])
    write_manifest(data / "dev", rows)
    return data
