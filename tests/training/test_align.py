"""Alignment stage (MTBI): spans, interleaving layout, behaviour targets, a short run."""

import json
import math

import torch
from tiny import save_tiny_models

from speechsum.models.speech_lm import Audio, SpeechLM, SpeechLMConfig, Text
from speechsum.training import align, common
from speechsum.training.sft import DataConfig, load_items


def _item(n_sent=4, dur=4.0):
    step = dur / n_sent
    return {"doc_id": "d0", "audio_path": "", "sentences": [
        {"text": f"the meeting {i}", "start": i * step, "end": (i + 1) * step, "speaker": 0} for i in range(n_sent)]}


def test_interleaved_spans_cover_the_transcript_in_order(tiny_model):
    cfg = align.AlignConfig(interleave_prob=1.0, audio_ratio=0.5, max_sentences=4, examples_per_doc=30,
                            tasks=["transcribe"])
    item = _item()
    exs = align.make_examples([item], cfg, seed=1)
    frames = torch.randn(200, tiny_model.encoder.dim)  # 4 s at 50 Hz
    seen_mixed = 0
    for ex in exs:
        ex.target = ex.text
        (segs,), _ = align.align_segments(tiny_model, [ex], {"d0": frames})
        body = segs[1:-2]  # between the prompt parts and before the target
        kinds = [isinstance(s, Audio) for s in body]
        if len(ex.audio_mask) >= 2:
            assert any(ex.audio_mask) and not all(ex.audio_mask)
            seen_mixed += 1
        # rebuild the covered content: audio spans map back to their sentences by frame count,
        # text spans decode to their sentences; together they are the span's sentences in order
        sents = item["sentences"][ex.first : ex.last]
        expected_groups, cur = [], None
        for s, a in zip(sents, ex.audio_mask):
            if cur and cur[0] == a:
                cur[1].append(s)
            else:
                cur = (a, [s])
                expected_groups.append(cur)
        assert kinds == [a for a, _ in expected_groups]
        for seg, (is_audio, group) in zip(body, expected_groups):
            if is_audio:
                n_frames = sum(len(align.span_frames(frames, s)) for s in group)
                assert len(seg.embeds) == -(-n_frames // tiny_model.config.stack)
            else:
                assert tiny_model.tokenizer.decode(seg.ids).split() == " ".join(s["text"] for s in group).split()
        assert segs[-1].target and isinstance(segs[-1], Text)
    assert seen_mixed > 5


def test_span_frames_use_timestamps():
    frames = torch.arange(500).float()[:, None]
    f = align.span_frames(frames, {"start": 1.0, "end": 2.5})
    assert f[0, 0] == 50 and len(f) == 75  # 50 frames/s


def test_align_run_trains_projector_only(tmp_path, tiny_data):
    enc, llm = save_tiny_models(tmp_path / "models")
    cfg = align.AlignConfig(
        model=SpeechLMConfig(encoder=str(enc), llm=str(llm), stack=4, projector_hidden=32, llm_training="frozen",
                             system_prompt="you are a helpful assistant"),
        data=DataConfig(path=str(tiny_data)), examples_per_doc=2, feature_weight=0.5,
        optim=common.OptimConfig(lr=1e-2, warmup_steps=1),
        loop=common.LoopConfig(out_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, save_every=2, bf16=False),
    )
    final = align.train(cfg, log=lambda *a: None)
    assert (final / "projector.safetensors").is_file() and not (final / "adapter").exists()
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"feature"' in lines[0]
    # behaviour targets were cached: a second target fill sends nothing new to the teacher
    assert any((tiny_data / "teacher_cache").rglob("*.json"))
    items = load_items(DataConfig(path=str(tiny_data)), "train")
    assert len(align.make_examples(items, cfg, 0)) == 2 * len({r["doc_id"] for r in items})


def test_ctc_only_alignment_skips_llm_and_teacher(tmp_path, tiny_data):
    """lm_weight=0: only the embedding-space CTC term trains the projector; no teacher call."""
    enc, llm = save_tiny_models(tmp_path / "models")
    cfg = align.AlignConfig(
        model=SpeechLMConfig(encoder=str(enc), llm=str(llm), stack=2, projector_hidden=32, llm_training="frozen",
                             system_prompt="you are a helpful assistant"),
        data=DataConfig(path=str(tiny_data)), examples_per_doc=2, lm_weight=0.0, ctc_weight=1.0, ctc_blank="<pad>",
        teacher_cache=str(tmp_path / "tcache"), tasks=["one_line"],
        optim=common.OptimConfig(lr=1e-2, warmup_steps=1),
        loop=common.LoopConfig(out_dir=str(tmp_path / "run"), max_steps=3, batch_size=2, save_every=3, bf16=False),
    )
    common.seed_everything(cfg.loop.seed)  # the same initial projector as the run's
    start = {n: p.clone() for n, p in SpeechLM.from_config(cfg.model).projector.named_parameters()}
    final = align.train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["ctc_spans"] > 0 and math.isfinite(r["ctc"]) and r["ctc"] > 0 for r in rows)
    assert not (tmp_path / "tcache").exists()  # no behaviour targets were generated
    trained = dict(SpeechLM.from_pretrained(final).projector.named_parameters())
    assert all(not torch.equal(start[n], trained[n]) for n in ("fc1.weight", "fc2.weight"))


def test_align_config_refuses_an_objective_of_nothing():
    import pytest

    with pytest.raises(ValueError, match="nothing to train"):
        align.AlignConfig(lm_weight=0.0)
    with pytest.raises(ValueError, match="ctc_temperature"):
        align.AlignConfig(ctc_weight=1.0, ctc_temperature=0.0)


class _ScriptedChat:
    """A chat backend answering "answer to <text>"; raises once it has answered `fail_after` requests."""

    identity = "scripted"

    def __init__(self, fail_after=None):
        self.fail_after, self.asked = fail_after, []

    def chat(self, conversations, max_new_tokens=256, temperature=0.0, batch_size=8, seed=0):
        if self.fail_after is not None and len(self.asked) + len(conversations) > self.fail_after:
            raise KeyboardInterrupt("killed")
        self.asked += [c[0]["content"] for c in conversations]
        return [f"```\nanswer to {c[0]['content'].split(chr(10))[0]}\n```" for c in conversations]


def test_behaviour_targets_are_cached_batch_by_batch_and_kept_as_written(tmp_path):
    """A run killed while the teacher writes targets keeps every finished batch; the rerun asks only
    for the rest, and the targets are the teacher's answers as written (no clean-up)."""
    from speechsum.models.text_lm import CachedChat

    items = [dict(_item(), doc_id=f"d{i}") for i in range(6)]
    for i, item in enumerate(items):  # six different transcripts, so no two requests are the same
        item["sentences"] = [dict(s, text=f"{s['text']} of team {i}") for s in item["sentences"]]
    cfg = align.AlignConfig(examples_per_doc=1, tasks=["one_line"], max_sentences=2)
    examples = align.make_examples(items, cfg, 0)
    killed = CachedChat(_ScriptedChat(fail_after=4), tmp_path / "cache")
    try:
        align.fill_targets(examples, killed, batch_size=2)
        raise AssertionError("the scripted teacher should have been killed")
    except KeyboardInterrupt:
        pass
    assert len(killed.backend.asked) == 4
    rerun = CachedChat(_ScriptedChat(), tmp_path / "cache")
    align.fill_targets(examples, rerun, batch_size=2)
    assert len(rerun.backend.asked) == 2  # the 4 answered before the kill came from the cache
    assert all(ex.target == f"```\nanswer to {ex.text}\n```" for ex in examples)
