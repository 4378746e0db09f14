"""SpeechLM on tiny random models: shapes, masks, padding invariance, gradients, IO, generation."""

import numpy as np
import pytest
import torch
from tiny import tone, tiny_speechlm

from speechsum.models.speech_lm import AudioTooLongError, SpeechLM, Text
from speechsum.precision import bf16_native
from speechsum.training.losses import token_cross_entropy

INSTR = ["summarize", "title", "bullets"]
TARGETS = ["the meeting was on friday", "a plan", "send report to the team"]


@pytest.fixture
def clips():
    return [tone(2.0), tone(5.3, 300), tone(31.0, 500)]


def test_long_audio_is_windowed_not_truncated(tiny_model, clips):
    frames = tiny_model.encode_audio(clips)
    # 50 Hz frames: 2 s -> 100, 5.3 s -> 265, 31 s -> 1500 (first window) + 50 (second)
    assert [len(f) for f in frames] == [100, 265, 1550]
    emb = tiny_model.project(frames)
    assert [len(e) for e in emb] == [25, 67, 388]  # stack 4, ceil


def test_real_length_mode_matches_frame_counts(tiny_dir, clips):
    m = tiny_speechlm(tiny_dir, encoder_mode="real-length")
    assert [len(f) for f in m.encode_audio(clips)] == [100, 265, 1550]


def test_audio_token_cap_is_an_error(tiny_dir):
    m = tiny_speechlm(tiny_dir, max_audio_tokens=10)
    frames = m.encode_audio([tone(2.0)])
    with pytest.raises(AudioTooLongError, match="max_audio_tokens=10"):
        m.project(frames)


def test_batch_layout_and_labels(tiny_model, clips):
    frames = tiny_model.encode_audio(clips)
    items = tiny_model.audio_items(frames, INSTR, TARGETS)
    batch = tiny_model.build_batch(items, padding_side="right")
    lengths = batch.attention_mask.sum(1)
    for b, segs in enumerate(items):
        n_target = len(segs[-1].ids)
        assert (batch.labels[b] != -100).sum() == n_target
        # right padding: real tokens first, labels are the last real tokens
        assert batch.attention_mask[b, : lengths[b]].all() and not batch.attention_mask[b, lengths[b]:].any()
        assert batch.labels[b, lengths[b] - n_target : lengths[b]].tolist() == segs[-1].ids
        assert segs[-1].ids[-1] == tiny_model.end_of_turn_id
    out = tiny_model.target_logits(batch)
    assert out.logits.shape == (sum(len(s[-1].ids) for s in items), len(tiny_model.tokenizer))


def test_padding_invariance_of_target_logits(tiny_model, clips):
    frames = tiny_model.encode_audio(clips)
    with torch.no_grad():
        for side in ("right", "left"):
            joint = tiny_model.target_logits(tiny_model.build_batch(tiny_model.audio_items(frames, INSTR, TARGETS), side))
            singles = [
                tiny_model.target_logits(tiny_model.build_batch(tiny_model.audio_items([f], [i], [t]), side)).logits
                for f, i, t in zip(frames, INSTR, TARGETS)
            ]
            torch.testing.assert_close(joint.logits, torch.cat(singles), atol=1e-4, rtol=1e-4)


def test_frozen_parts_get_no_gradient(tiny_model, clips):
    frames = tiny_model.encode_audio(clips[:2])
    out = tiny_model.target_logits(tiny_model.build_batch(tiny_model.audio_items(frames, INSTR[:2], TARGETS[:2])))
    token_cross_entropy(out.logits, out.targets).backward()
    for name, p in tiny_model.named_parameters():
        trainable = name.startswith("projector.") or "lora_" in name
        assert p.requires_grad == trainable, name
        if trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0 or "lora_A" in name, name  # lora_B starts at 0
        else:
            assert p.grad is None, name


def test_full_finetune_and_frozen_llm_modes(tiny_dir):
    full = tiny_speechlm(tiny_dir, llm_training="full")
    assert all(p.requires_grad for p in full.llm.parameters())
    frozen = tiny_speechlm(tiny_dir, llm_training="frozen")
    assert not any(p.requires_grad for p in frozen.llm.parameters())
    assert all(p.requires_grad for p in frozen.projector.parameters())
    assert not any(p.requires_grad for p in frozen.encoder.parameters())


def _perturb(model):
    with torch.no_grad():  # make LoRA non-trivial (B starts at zero) so the round trip tests it
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("mode", ["lora", "full", "frozen"])
def test_save_load_round_trip_identical_logits(tiny_dir, tmp_path, clips, mode):
    m = tiny_speechlm(tiny_dir, llm_training=mode)
    _perturb(m)
    frames = m.encode_audio(clips[:2])
    with torch.no_grad():
        before = m.target_logits(m.build_batch(m.audio_items(frames, INSTR[:2], TARGETS[:2]))).logits
    m.save_pretrained(tmp_path / "ckpt")
    files = sorted(p.name for p in (tmp_path / "ckpt").rglob("*") if p.is_file())
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files), files  # no pickle
    m2 = SpeechLM.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        after = m2.target_logits(m2.build_batch(m2.audio_items(frames, INSTR[:2], TARGETS[:2]))).logits
    torch.testing.assert_close(before, after)


def _greedy_without_cache(model, items, n):
    """Reference decoder: recompute the whole sequence each step (no KV cache)."""
    out = []
    for segs in items:
        ids: list[int] = []
        for _ in range(n):
            batch = model.build_batch([segs + [Text(ids + [0], target=True)]])
            logits = model.target_logits(batch).logits  # predicts ids[0..] and one extra
            nxt = int(logits[-1].argmax())
            if nxt in model.stop_ids:
                break
            ids.append(nxt)
        out.append(ids)
    return out


def test_generate_cache_equals_no_cache_and_batch_equals_single(tiny_dir, clips):
    m = tiny_speechlm(tiny_dir)
    _perturb(m)
    frames = m.encode_audio(clips)
    with torch.no_grad():
        items = m.audio_items(frames, INSTR)
        ref = _greedy_without_cache(m, items, 8)
    gens = m.generate_items(items, max_new_tokens=8)
    assert [g.ids for g in gens] == ref
    singles = [m.generate_items([it], max_new_tokens=8)[0] for it in items]
    assert [g.ids for g in gens] == [g.ids for g in singles]
    for g, s in zip(gens, singles):
        np.testing.assert_allclose(g.logprobs, s.logprobs, atol=1e-4)
        assert len(g.logprobs) == len(g.ids) and all(lp <= 0 for lp in g.logprobs)


def test_sampling_is_seeded_and_logprobs_match_forward(tiny_dir, clips):
    m = tiny_speechlm(tiny_dir)
    _perturb(m)
    frames = m.encode_audio(clips[:2])
    with torch.no_grad():
        items = m.audio_items(frames, INSTR[:2])
    a = m.generate_items(items, max_new_tokens=6, do_sample=True, generator=torch.Generator().manual_seed(1))
    b = m.generate_items(items, max_new_tokens=6, do_sample=True, generator=torch.Generator().manual_seed(1))
    assert [g.ids for g in a] == [g.ids for g in b]
    # the returned log-probs are the model's: rescoring the sampled ids gives the same values
    with torch.no_grad():
        scored = m.target_logits(m.build_batch([s + [Text(g.ids, target=True)] for s, g in zip(items, a)]))
        lp = torch.log_softmax(scored.logits, -1).gather(1, scored.targets[:, None])[:, 0]
    np.testing.assert_allclose(lp.numpy(), np.concatenate([g.logprobs for g in a]), atol=1e-4)


def test_text_mode_prompt_contains_transcript(tiny_model):
    pre, post = tiny_model.prompt_ids("summarize", text="the budget meeting")
    assert post == []
    text = tiny_model.tokenizer.decode(pre)
    assert "the budget meeting" in text and "summarize" in text and text.rstrip().endswith("assistant")


def test_system_prompt_replaces_template_default(tiny_model):
    pre, post = tiny_model.prompt_ids("summarize")
    rendered = tiny_model.tokenizer.decode(pre + post)
    assert rendered.count("system") == 1 and "helpful" in rendered


# ------------------------------------------------------------------------------------ vocab readout
def test_vocab_readout_drops_blanks_collapses_runs_and_reads_as_embeddings():
    from speechsum.models.projector import vocab_readout

    emb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])  # row 0 = blank
    # audio tokens pointing at: tok1, tok1, blank, tok2, tok1 -> runs [tok1] [tok2] [tok1]
    audio = torch.tensor([[0.0, 1.0, 0.0], [0.0, 5.0, 0.1], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
                         requires_grad=True)
    out = vocab_readout(audio, emb, blank_id=0, temperature=0.01)
    assert out.shape == (3, 3)
    # sharp temperature: each output is (almost exactly) the LLM's own embedding of its token
    assert torch.allclose(out.detach(), torch.stack([emb[1], emb[2], emb[1]]), atol=1e-3)
    out.sum().backward()
    assert audio.grad is not None and torch.isfinite(audio.grad).all()
    assert vocab_readout(torch.tensor([[1.0, 0.0, 0.0]]), emb, 0, 0.01).shape == (0, 3)  # all blank
    # scored in blocks of audio tokens (memory: 30 min of audio is 11k tokens x the vocabulary):
    # the same result whatever the block size, runs across block edges included
    soft = vocab_readout(audio.detach(), emb, 0, 0.5)
    for chunk in (1, 2, 3):
        assert torch.allclose(vocab_readout(audio.detach(), emb, 0, 0.5, chunk=chunk), soft)


def test_vocab_readout_matches_the_dense_definition():
    # the definition, written out densely: every token's soft embedding, then keep + collapse
    from speechsum.models.projector import vocab_readout

    g = torch.Generator().manual_seed(0)
    emb, audio = torch.randn(50, 8, generator=g), torch.randn(40, 8, generator=g)
    audio[::3] = emb[0] * 2  # every third token reads as the blank
    audio[10:14] = emb[7]  # a run of one token
    cos = torch.nn.functional.normalize(audio, dim=-1) @ torch.nn.functional.normalize(emb, dim=-1).T / 0.3
    best = cos.argmax(-1)
    soft = cos.masked_fill(torch.arange(50) == 0, float("-inf")).softmax(-1) @ emb
    runs, prev = [], None
    for k in range(40):
        if best[k] == 0:
            prev = None
            continue
        if prev is not None and best[k] == prev:
            runs[-1].append(soft[k])
        else:
            runs.append([soft[k]])
        prev = best[k]
    want = torch.stack([torch.stack(r).mean(0) for r in runs])
    for chunk in (0, 7):
        assert torch.allclose(vocab_readout(audio, emb, 0, 0.3, chunk=chunk), want, atol=1e-6)


def test_vocab_readout_gradient_is_the_dense_definitions():
    """With a graph, the kept tokens' scores are made again (the blanks' never enter backward):
    the same output and the same gradient as differentiating the dense definition."""
    from speechsum.models.projector import vocab_readout

    g = torch.Generator().manual_seed(1)
    emb, base = torch.randn(30, 8, generator=g), torch.randn(25, 8, generator=g)
    base[::2] = emb[0] * 3  # half the tokens read as the blank
    weights = torch.randn(25, 8, generator=g)

    def dense(audio):
        cos = torch.nn.functional.normalize(audio, dim=-1) @ torch.nn.functional.normalize(emb, dim=-1).T / 0.3
        keep = cos.argmax(-1) != 0
        best = cos.argmax(-1)[keep]
        soft = cos[keep].masked_fill(torch.arange(30) == 0, float("-inf")).softmax(-1) @ emb
        new_run = torch.ones(len(best), dtype=torch.bool)
        idx = keep.nonzero()[:, 0]
        new_run[1:] = (best[1:] != best[:-1]) | (idx[1:] != idx[:-1] + 1)
        run_id = new_run.cumsum(0) - 1
        out = torch.zeros(int(run_id[-1]) + 1, 8).index_add(0, run_id, soft)
        return out / torch.bincount(run_id)[:, None]

    for chunk in (0, 4):
        a1, a2 = base.clone().requires_grad_(), base.clone().requires_grad_()
        got, want = vocab_readout(a1, emb, 0, 0.3, chunk=chunk), dense(a2)
        assert torch.allclose(got, want, atol=1e-6)
        (got * weights[: len(got)]).sum().backward()
        (want * weights[: len(want)]).sum().backward()
        assert torch.allclose(a1.grad, a2.grad, atol=1e-6) and a1.grad[::2].abs().max() == 0  # blanks: no gradient


@pytest.mark.skipif(not bf16_native(),
                    reason="the candidate read-out runs only where bf16 is native (elsewhere every token is read densely)")
def test_candidate_readout_is_the_dense_one_with_flat_tokens_read_densely(monkeypatch):
    """The default read-out scores each token exactly only against its chunk's candidates (the
    union of every token's top-k under coarse bf16 scores); a token whose left-out probability
    could exceed READOUT_TAIL goes through the dense scores. Peaked tokens (the speech case) take
    the first path, flat ones the second; a token surely read as the blank needs no soft embedding.
    Output, most likely tokens and gradient are the dense read-out's (topk 0)."""
    import speechsum.models.projector as P

    g = torch.Generator().manual_seed(2)
    emb = torch.randn(3000, 128, generator=g)
    base = torch.randn(60, 128, generator=g)  # random directions: flat enough to need the dense scores
    base[:40] = emb[torch.randint(1, 3000, (40,), generator=g)] * 4  # peaked at 0.02: candidates suffice
    base[::5] = emb[0] * 3  # blanks
    weights = torch.randn(60, 128, generator=g)
    dense_rows = []
    dense_chunk = P._dense_chunk
    monkeypatch.setattr(P, "_dense_chunk", lambda a, *args: dense_rows.append(len(a)) or dense_chunk(a, *args))
    for temperature in (0.02, 1.0):
        a1, a2 = base.clone().requires_grad_(), base.clone().requires_grad_()
        dense_rows.clear()
        got = P.vocab_readout(a1, emb, 0, temperature, topk=8)
        sparse_dense_rows = sum(dense_rows)
        want = P.vocab_readout(a2, emb, 0, temperature, topk=0)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-5, rtol=1e-5)
        (got * weights[: len(got)]).sum().backward()
        (want * weights[: len(want)]).sum().backward()
        assert torch.allclose(a1.grad, a2.grad, atol=1e-5, rtol=1e-4)
        # the 12 blanks are decided on the candidates (no soft embedding needed); at 0.02 the 32 other
        # peaked tokens too and the 16 random ones go dense; at 1.0 every non-blank token goes dense
        assert sparse_dense_rows == (48 if temperature == 1.0 else 16), (temperature, sparse_dense_rows)
        assert torch.equal(P.token_readout(base, emb, 0, temperature, topk=8)[0],
                           P.token_readout(base, emb, 0, temperature, topk=0)[0])  # the same most likely tokens


def test_readouts_of_several_items_are_each_items_own(tiny_model):
    """`SpeechLM.readouts` scores all items' tokens in one pass and collapses each item's runs on
    its own: the same as reading each item out alone (no run joins across items)."""
    import dataclasses

    from speechsum.models.projector import vocab_readout

    tiny_model.config = dataclasses.replace(tiny_model.config, readout="vocab", readout_blank="<pad>")
    try:
        emb = tiny_model.base_llm.get_input_embeddings().weight.detach()
        embeds = [emb[[5, 5, 7]] * 3, emb[[7, 7, 9, 9]] * 3, torch.randn(6, emb.shape[1])]
        together = tiny_model.readouts(embeds)
        for e, got in zip(embeds, together):
            alone = vocab_readout(e, emb, tiny_model.readout_blank_id, tiny_model.config.readout_temperature)
            assert got.shape == alone.shape and torch.allclose(got, alone, atol=1e-6)
        assert len(together[0]) == 2 and len(together[1]) == 2  # 5 5 7 | 7 7 9 9: runs stay in their item
    finally:
        tiny_model.config = dataclasses.replace(tiny_model.config, readout="embedding")


def test_speechlm_vocab_readout_config(tiny_model):
    import dataclasses

    frames = [torch.randn(40, tiny_model.encoder.dim)]
    raw = tiny_model.project(frames, readout=False)[0]
    tiny_model.config = dataclasses.replace(tiny_model.config, readout="vocab", readout_blank="<pad>")
    try:
        read = tiny_model.project(frames)[0]
        assert read.shape[1] == raw.shape[1] and len(read) <= len(raw)
        tiny_model.config = dataclasses.replace(tiny_model.config, readout_blank="two words")
        with pytest.raises(ValueError, match="readout_blank"):
            tiny_model.project(frames)
    finally:
        tiny_model.config = dataclasses.replace(tiny_model.config, readout="embedding", readout_blank=" ")


def test_greedy_readout_ids_collapse_runs_and_drop_blanks():
    from speechsum.models.projector import greedy_readout_ids

    emb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])  # row 0 = blank
    # tok1, tok1, blank, tok1, tok2, tok2 -> 1 1 2 (a blank separates a real repeat)
    audio = torch.tensor([[0, 1, 0], [0, 3, 0.2], [2, 0, 0], [0, 1, 0], [0, 0, 1], [0.1, 0, 1]], dtype=torch.float)
    assert greedy_readout_ids(audio, emb, blank_id=0) == [1, 1, 2]
    assert greedy_readout_ids(audio[2:3], emb, blank_id=0) == []


def test_readout_text_per_clip(tiny_dir):
    model = tiny_speechlm(tiny_dir, readout_blank="<pad>")  # the tiny tokenizer splits a lone space
    frames = [torch.randn(40, model.encoder.dim), torch.randn(9, model.encoder.dim)]
    texts = model.readout_text(frames)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_bf16_decoding_copy_has_the_lora_deltas_and_the_models_logits(tiny_dir, clips):
    m = tiny_speechlm(tiny_dir)
    _perturb(m)  # LoRA B is zero at init: make the adapters matter
    ids = torch.tensor([[5, 9, 13, 2, 7]])
    with torch.no_grad():
        want = m.base_llm(input_ids=ids).logits
        m.decode_bf16 = True
        copy = m.decoding_llm()
        got = copy(input_ids=ids).logits.float()
        with m.llm.disable_adapter():
            no_lora = m.base_llm(input_ids=ids).logits
    assert next(copy.parameters()).dtype == torch.bfloat16 and not any(p.requires_grad for p in copy.parameters())
    assert not any(n.startswith("_decode") for n, _ in m.named_parameters())  # not a submodule
    assert (got - want).abs().max() < 0.1 * (want - no_lora).abs().max()  # LoRA merged, bf16 rounding only
    assert len(m.generate_items(m.audio_items(m.encode_audio(clips[:1]), INSTR[:1]), max_new_tokens=3)) == 1


def test_frozen_connector_readout_is_cached_per_clip_and_never_stale(tiny_dir):
    """readout: vocab through the cache: the same embeddings as without it, computed once per
    clip, recomputed after the connector changes, bounded by readout_cache_mb, and never used
    where a gradient must reach a trainable connector."""
    model = tiny_speechlm(tiny_dir, readout="vocab", readout_blank="<pad>")
    rng = np.random.default_rng(0)
    clips = [torch.tensor(rng.standard_normal((40 + 8 * i, model.encoder.dim)), dtype=torch.float32) for i in range(3)]
    with torch.no_grad():
        plain = model.project(clips)
    calls = []
    readouts = model.readouts
    model.readouts = lambda es: calls.extend(len(e) for e in es) or readouts(es)
    model.readout_cache_mb = 64
    with torch.no_grad():
        first = model.project(clips)
        again = model.project([clips[1], clips[0]])
    assert len(calls) == 3  # the second call hit the cache for both clips
    model._readout_cache.clear()
    with torch.no_grad():
        twice = model.project([clips[0], clips[0]])  # one clip twice in a batch: read out once
    assert len(calls) == 4 and twice[0] is twice[1]
    calls.pop()
    for a, b in zip(first, plain):
        torch.testing.assert_close(a, b)
    assert again[0] is first[1] and again[1] is first[0]
    with torch.no_grad():
        model.projector.fc2.bias.add_(torch.randn_like(model.projector.fc2.bias))  # a changed connector: new keys
        changed = model.project(clips[:1])
    assert len(calls) == 4 and not torch.allclose(changed[0][: len(first[0])], first[0][: len(changed[0])])
    assert len(model._readout_cache) == 1  # the stale entries went with the old connector
    model.readout_cache_mb = 1e-6  # over budget: only the clips of the current call stay
    with torch.no_grad():
        model.project(clips[2:])
    assert len(model._readout_cache) == 1
    # a trainable connector in a training forward: no cache, the gradient reaches it
    model.readout_cache_mb = 64
    assert any(p.requires_grad for p in model.projector.parameters())
    out = model.project(clips[:1])
    assert out[0].requires_grad and len(calls) == 6


def test_project_and_build_batch_put_everything_on_the_models_device(tiny_model, clips):
    """On a GPU the frames (read from the on-disk cache) and the ids and masks (written on the CPU)
    start on another device than the model: `project` and `build_batch` move them. Checked with the
    model on the meta device, where a CPU tensor mixed with the model's weights is an error and
    every tensor a batch carries must come out on meta."""
    frames = tiny_model.encode_audio(clips[:2])
    assert all(f.device.type == "cpu" for f in frames)
    tiny_model.to("meta")
    assert tiny_model.device.type == "meta"
    assert all(e.device.type == "meta" for e in tiny_model.project(frames, readout=False))
    batch = tiny_model.build_batch(tiny_model.audio_items(frames, INSTR[:2], TARGETS[:2]))
    for t in (batch.embeds, batch.attention_mask, batch.position_ids, batch.labels):
        assert t.device.type == "meta"


def test_training_the_encoder_is_refused():
    """The encoder's frames are computed without gradient and cached: a config asking to train it
    would have trained nothing there, so it is an error."""
    from speechsum.models.speech_lm import SpeechLMConfig

    with pytest.raises(ValueError, match="train_encoder"):
        SpeechLMConfig(train_encoder=True)
