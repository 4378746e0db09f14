"""On-policy KD: teacher positions are exactly the student's completion tokens, the remote
teacher speaks vLLM's prompt_logprobs over a real loopback server, and a short run trains."""

import json

import pytest
import torch
from servers import LoopbackServer
from tiny import save_tiny_models, tiny_tokenizer

from speechsum.models.speech_lm import SpeechLMConfig
from speechsum.training import common, kd
from speechsum.training.sft import DataConfig
from speechsum.training.teachers import (LocalTeacher, RemoteTeacher, VocabularyMismatch, check_same_vocabulary,
                                         teacher_prompt_ids)

TRANSCRIPTS = ["the budget meeting on friday", "send the report", "team plan review notes and action items"]
INSTR = ["summarize", "title", "bullets"]
COMPLETIONS = [[40, 41, 42, 4], [50, 4], [60, 61, 62, 63, 64, 4]]


@pytest.fixture
def teacher(tiny_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_dir / "tiny-llm"
    return LocalTeacher(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), "be faithful")


def _manual(teacher, t, i, comp):
    ids = teacher_prompt_ids(teacher.tokenizer, teacher.system_prompt, t, i)
    with torch.no_grad():
        logits = teacher.llm(torch.tensor([ids + comp])).logits[0]
    return torch.log_softmax(logits[len(ids) - 1 : len(ids) - 1 + len(comp)], -1)


def test_teacher_positions_are_the_completion_tokens(teacher):
    scores = teacher.score(TRANSCRIPTS, INSTR, COMPLETIONS)
    assert scores.rows.tolist() == [0] * 4 + [1] * 2 + [2] * 6
    for b, (t, i, c) in enumerate(zip(TRANSCRIPTS, INSTR, COMPLETIONS)):
        torch.testing.assert_close(scores.logp[scores.rows == b], _manual(teacher, t, i, c), atol=1e-5, rtol=1e-5)


def test_teacher_with_bf16_weights_keeps_an_fp32_head_and_the_same_scores(tiny_dir, teacher):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_dir / "tiny-llm"
    fp32_head = AutoModelForCausalLM.from_pretrained(path).get_output_embeddings().weight.detach().clone()
    half = LocalTeacher(AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), "be faithful",
                        bf16_weights=True)
    assert {p.dtype for p in half.llm.parameters()} == {torch.bfloat16}  # the decoder is stored in bf16
    assert half.head_weight.dtype == torch.float32 and torch.equal(half.head_weight, fp32_head)  # copied before the cast
    autocast = LocalTeacher(teacher.llm, teacher.tokenizer, "be faithful", bf16=True)
    a = autocast.score(TRANSCRIPTS, INSTR, COMPLETIONS)
    b = half.score(TRANSCRIPTS, INSTR, COMPLETIONS)
    assert b.logp.dtype == torch.float32 and torch.equal(a.rows, b.rows)
    # the same model up to bf16 rounding of the residual stream (autocast keeps it in fp32)
    torch.testing.assert_close(b.logp.exp(), a.logp.exp(), atol=2e-3, rtol=0)


def test_teacher_weights_is_refused_for_an_endpoint_teacher():
    from speechsum.training.kd import KDConfig

    with pytest.raises(ValueError, match="teacher_weights='bf16'.*endpoint"):
        KDConfig(teacher="openai:http://127.0.0.1:8000/v1#qwen", teacher_weights="bf16")


@pytest.mark.parametrize("divergence,temperature,remote", [("jsd", 1.0, False), ("forward_kl", 2.0, False),
                                                          ("reverse_kl", 1.0, False), ("jsd", 0.5, True)])
def test_chunked_kd_loss_is_the_whole_loss_in_value_and_gradient(divergence, temperature, remote):
    """loss_chunk computes the divergence a few positions at a time (checkpointed): the same loss
    and the same gradient on the student's logits as all positions at once, for 10 positions in
    chunks of 3 (the last chunk shorter), with full teacher log-probs and with remote top-k buckets."""
    from speechsum.training.teachers import TeacherScores

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 50, generator=g).to(torch.bfloat16)
    t_logp = torch.log_softmax(torch.randn(10, 50, generator=g) * 2, -1)
    if remote:
        top = t_logp.topk(5, -1)
        scores = TeacherScores(rows=torch.zeros(10, dtype=torch.long), topk_ids=top.indices, topk_logp=top.values)
    else:
        scores = TeacherScores(rows=torch.zeros(10, dtype=torch.long), logp=t_logp)
    out = []
    for chunk in (0, 3):
        cfg = kd.KDConfig(divergence=divergence, temperature=temperature, loss_chunk=chunk)
        x = logits.clone().requires_grad_(True)
        loss = kd.kd_loss(cfg, x, scores)
        loss.backward()
        out.append((loss.detach(), x.grad.float()))
    assert out[0][0] > 0
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-2, atol=1e-6)  # bf16 gradients


def test_negative_loss_chunk_is_refused():
    with pytest.raises(ValueError, match="loss_chunk must be >= 0"):
        kd.KDConfig(loss_chunk=-1)


def test_student_and_teacher_rows_line_up_for_left_and_right_padding(tiny_model, teacher):
    frames = tiny_model.encode_audio([torch.randn(16000).numpy(), torch.randn(40000).numpy(),
                                      torch.randn(24000).numpy()])
    items = tiny_model.audio_items(frames, INSTR, COMPLETIONS)
    scores = teacher.score(TRANSCRIPTS, INSTR, COMPLETIONS)
    logits = {}
    for side in ("right", "left"):
        out = tiny_model.target_logits(tiny_model.build_batch(items, side))
        assert torch.equal(out.rows, scores.rows)
        assert out.targets.tolist() == [t for c in COMPLETIONS for t in c]
        logits[side] = out.logits
    # the same positions, not just the same count: each row's distributions do not depend on the padding side
    torch.testing.assert_close(logits["left"], logits["right"], atol=1e-4, rtol=1e-4)


def test_different_vocabulary_is_a_clear_error(tiny_model):
    other = tiny_tokenizer()
    other.add_tokens(["extra_token"])
    with pytest.raises(VocabularyMismatch, match="teacher big-teacher has a different tokenizer"):
        check_same_vocabulary(tiny_model.tokenizer, other, "student-llm", "big-teacher")


def _vllm(llm):
    """A loopback /v1/completions server with vLLM-style prompt_logprobs computed by a real model."""

    def respond(path, body):
        ids = body["prompt"]
        with torch.no_grad():
            lp = torch.log_softmax(llm(torch.tensor([ids])).logits[0], -1)
        plp = [None]
        for pos in range(1, len(ids)):
            top = lp[pos - 1].topk(body["prompt_logprobs"])
            entry = {str(t): {"logprob": v, "rank": r + 1, "decoded_token": "x"}
                     for r, (t, v) in enumerate(zip(top.indices.tolist(), top.values.tolist()))}
            entry.setdefault(str(ids[pos]), {"logprob": lp[pos - 1, ids[pos]].item(), "rank": 999})
            plp.append(entry)
        return 200, {"choices": [{"text": "x", "prompt_logprobs": plp}]}

    return LoopbackServer(respond)


def test_remote_teacher_matches_local_on_the_buckets(teacher):
    srv = _vllm(teacher.llm)
    try:
        remote = RemoteTeacher(srv.url, "tiny", teacher.tokenizer, teacher.system_prompt, top_k=5, timeout=10)
        r = remote.score(TRANSCRIPTS, INSTR, COMPLETIONS)
        local = teacher.score(TRANSCRIPTS, INSTR, COMPLETIONS)
    finally:
        srv.close()
    assert len(srv.requests) == 3 and torch.equal(r.rows, local.rows)
    assert all(path == "/v1/completions" and body["max_tokens"] == 1 for path, body in srv.requests)
    torch.testing.assert_close(r.topk_logp, local.logp.gather(1, r.topk_ids), atol=1e-5, rtol=1e-5)
    assert torch.equal(r.topk_ids, local.logp.topk(5).indices)


def test_kd_run_on_and_off_policy(tmp_path, tiny_data, tiny_dir):
    enc, llm = save_tiny_models(tiny_dir)
    cfg = kd.KDConfig(
        model=SpeechLMConfig(encoder=str(enc), llm=str(llm), stack=4, projector_hidden=32, lora_r=4, lora_alpha=8,
                             system_prompt="you are a helpful assistant"),
        data=DataConfig(path=str(tiny_data)), teacher=str(llm), lam=0.5, max_new_tokens=5, sft_weight=0.1,
        optim=common.OptimConfig(lr=1e-2, warmup_steps=1, grad_accum=2),
        loop=common.LoopConfig(out_dir=str(tmp_path / "run"), max_steps=2, batch_size=2, save_every=2, bf16=False),
    )
    kd.train(cfg, log=lambda *a: None)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert any(r["on_policy"] > 0 for r in rows) and any(r["on_policy"] < 1 for r in rows)
    assert all(r["seconds_sampling"] >= 0 and r["seconds_teacher"] > 0 for r in rows)
    assert (tmp_path / "run" / "final" / "adapter").is_dir()
