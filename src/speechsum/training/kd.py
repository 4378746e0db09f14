"""Stage 2: on-policy knowledge distillation from a text LLM that reads the transcript.

    speechsum train kd --config configs/kd/tiny.yaml [key=value ...] [--resume]

Each micro-batch is on-policy with probability `lam` (GKD's lambda): the student samples a
completion from the *audio* + instruction (batched, KV cache, cached encoder outputs); otherwise
the gold target is the completion (off-policy). The teacher is given the *transcript* + the same
instruction and scores exactly those completion token ids; the loss is a divergence between
student and teacher distributions at the completion positions only (forward KL, reverse KL or
generalised JSD with `beta`, at `temperature`), plus an optional SFT term on the gold target.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from speechsum.models.speech_lm import SpeechLMConfig
from speechsum.training import common
from speechsum.training.common import LoopConfig, OptimConfig
from speechsum.training.sft import DataConfig, item_frames, load_items


@dataclass
class KDConfig:
    model: SpeechLMConfig = field(default_factory=SpeechLMConfig)
    """Used only without `init`; with `init`, the saved model config is inherited."""
    init: str = ""
    """The SFT run (or checkpoint) folder to start from."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-4))
    loop: LoopConfig = field(default_factory=LoopConfig)
    teacher: str = "smollm2-135m-instruct"
    """Local teacher (registry name or folder, same vocabulary as the student) or openai:URL#MODEL (vLLM)."""
    teacher_top_k: int = 20
    """Remote teacher only: top-k log-probs per position (the rest is one tail bucket)."""
    teacher_weights: Literal["fp32", "bf16"] = "fp32"
    """Local teacher: how its weights are stored. bf16 halves the teacher's memory (the reference
    preset's Qwen2.5-1.5B: 7.1 -> 3.6 GB, and no autocast copy of them per step); its LM head
    multiplies in fp32 either way. fp32: the weights as loaded, the decoder under bf16 autocast when
    `loop.bf16` (the tiny preset)."""
    teacher_system_prompt: str = ""
    """System message of the teacher's prompt ('' = the student's own system prompt, which is also
    what a text-mode SFT teacher was trained with and what `speechsum eval text:MODEL` uses)."""
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "jsd"
    """Token-level divergence between student and teacher."""
    beta: float = 0.5
    """JSD interpolation (0: forward KL, 1: reverse KL)."""
    temperature: float = 1.0
    """Temperature of both distributions in the divergence."""
    lam: float = 0.5
    """Fraction of on-policy micro-batches (student samples); the rest use the gold target."""
    sample_temperature: float = 1.0
    """Sampling temperature of the student's on-policy completions."""
    max_new_tokens: int = 96
    """Length cap of sampled completions."""
    sft_weight: float = 0.0
    """Weight of an extra cross-entropy term on the gold target (0: off)."""
    loss_chunk: int = 0
    """Completion positions per chunk of the divergence (0: all at once). Each chunk's vocabulary-
    sized intermediates live only while it is computed, in forward and again in backward: at 1024
    positions of a 152k vocabulary the loss's extra peak goes from ~6 GB to ~1 GB with 128 (the
    reference preset), for the same value and gradient (bench/kd_loss.py)."""

    def __post_init__(self):
        if self.loss_chunk < 0:
            raise ValueError(f"loss_chunk must be >= 0 (0: all positions at once), got {self.loss_chunk}")
        if not 0 <= self.lam <= 1 or not 0 <= self.beta <= 1:
            raise ValueError("lam and beta must be in [0, 1]")
        if self.temperature <= 0 or self.sample_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        if self.teacher_weights != "fp32" and self.teacher.startswith("openai:"):
            raise ValueError(f"teacher_weights={self.teacher_weights!r} sets how a local teacher is stored; "
                             f"{self.teacher} is an endpoint (leave teacher_weights at fp32)")


def build_teacher(cfg: KDConfig, model, log=None, device="cpu"):
    """The KD teacher; a local one is placed on `device` (the training accelerator's)."""
    from speechsum.training.teachers import LocalTeacher, RemoteTeacher, check_same_vocabulary

    system_prompt = cfg.teacher_system_prompt or model.config.system_prompt
    if cfg.teacher.startswith("openai:"):
        url, _, name = cfg.teacher.removeprefix("openai:").partition("#")
        if not url or not name:
            raise ValueError(f"teacher={cfg.teacher}: expected openai:BASE_URL#MODEL")
        return RemoteTeacher(url, name, model.tokenizer, system_prompt, cfg.teacher_top_k)
    teacher = LocalTeacher.from_pretrained(cfg.teacher, system_prompt, bf16=cfg.loop.bf16,
                                           bf16_weights=cfg.teacher_weights == "bf16").to(device)
    check_same_vocabulary(model.tokenizer, teacher.tokenizer, model.config.llm, cfg.teacher)
    if log:
        log(f"kd: teacher {cfg.teacher} (local, {sum(p.numel() for p in teacher.llm.parameters()) / 1e6:.0f}M)")
    return teacher


def completions_for(model, frames, mb, on_policy: bool, cfg: KDConfig, gen: torch.Generator):
    """Completion ids per item: the student's samples (ending in end-of-turn when it stopped) or gold."""
    if not on_policy:
        return [model.target_ids(r["target"]) for r in mb], 0.0
    t = time.time()
    was = model.training
    model.eval()
    with torch.no_grad():
        prompts = model.audio_items(frames, [r["instruction"] for r in mb])
    gens = model.generate_items(prompts, max_new_tokens=cfg.max_new_tokens, do_sample=True,
                                temperature=cfg.sample_temperature, generator=gen)
    model.train(was)
    return [g.ids + ([model.end_of_turn_id] if g.finished or not g.ids else []) for g in gens], time.time() - t


def kd_loss(cfg: KDConfig, student_logits: torch.Tensor, scores) -> torch.Tensor:
    """The divergence between student and teacher at every completion position (mean), computed
    `cfg.loss_chunk` positions at a time (`losses.chunked_row_mean`)."""
    from speechsum.training.losses import DIVERGENCES, chunked_row_mean, topk_buckets

    def divergence(logits, t_full, topk_ids, topk_logp):
        s_logp = torch.log_softmax(logits.float() / cfg.temperature, -1)
        if t_full is not None:  # log_softmax(logp / T) == log_softmax(logits / T)
            t_logp = t_full if cfg.temperature == 1.0 else torch.log_softmax(t_full / cfg.temperature, -1)
        else:  # remote: compare on the teacher's top-k + tail buckets
            s_logp, t_logp = topk_buckets(s_logp, topk_ids, topk_logp / cfg.temperature)
            t_logp = torch.log_softmax(t_logp, -1) if cfg.temperature != 1.0 else t_logp
        return DIVERGENCES[cfg.divergence](s_logp, t_logp, cfg.beta)

    return chunked_row_mean(divergence, [student_logits, scores.logp, scores.topk_ids, scores.topk_logp],
                            cfg.loss_chunk)


def train(cfg: KDConfig, resume: bool = False, log=print) -> Path:
    """Run on-policy KD; returns `<out_dir>/final`."""
    from speechsum.training.losses import token_cross_entropy

    # --- model, teacher, optimizer
    run = common.start_run(cfg, log, resume=resume)
    model, acc = run.model, run.acc
    teacher = build_teacher(cfg, model, log if run.main else None, acc.device)

    # --- data
    train_items = load_items(cfg.data, cfg.data.train_split)
    if cfg.data.max_items:
        train_items = train_items[: cfg.data.max_items]
    order = common.DataOrder(len(train_items), cfg.loop.seed)
    common.resume_or_begin(run, order, resume)
    opt = run.opt  # under FSDP rebuilt on the sharded parameters

    # --- train
    while run.step < cfg.loop.max_steps:
        t0 = time.time()
        lr = cfg.optim.lr * common.lr_at(run.step, cfg.optim, cfg.loop.max_steps)
        common.set_lr(opt, lr)
        step_items = [train_items[i] for i in order.take(run.per_step)]
        loss_sum, tokens, t_sample, t_teacher, n_on = 0.0, 0, 0.0, 0.0, 0
        for micro in range(cfg.optim.grad_accum):
            mb = common.rank_slice(step_items, micro, cfg.loop.batch_size, acc.process_index, acc.num_processes)
            # the on/off-policy draw and the sampling RNG depend only on (seed, step, micro, rank): resumable
            on_policy = random.Random(f"{cfg.loop.seed}-{run.step}-{micro}").random() < cfg.lam
            gen = torch.Generator().manual_seed(hash((cfg.loop.seed, run.step, micro, acc.process_index)) % 2**31)
            with torch.no_grad():
                frames = item_frames(model, mb)
            with run.full_params() if on_policy else contextlib.nullcontext():  # FSDP: every rank samples
                completions, dt_sample = completions_for(model, frames, mb, on_policy, cfg, gen)
            t = time.time()
            scores = teacher.score([r["transcript"] for r in mb], [r["instruction"] for r in mb], completions)
            scores = scores.to(acc.device)
            t_teacher += time.time() - t
            t_sample += dt_sample
            n_on += on_policy
            # each micro-batch is a token mean over all ranks' items: x local / global tokens (the
            # divergence is a mean over this rank's), x ranks because DDP averages gradients, so
            # 1 rank x batch 2B == 2 ranks x batch B
            n_comp = common.all_reduce_sum(acc, sum(map(len, completions)))
            with run.micro_batch(last=micro == cfg.optim.grad_accum - 1):
                items = model.audio_items(frames, [r["instruction"] for r in mb], completions)
                out = run.ddp_model(model.build_batch(items))
                assert torch.equal(out.rows, scores.rows), "teacher and student positions must be the same tokens"
                share = len(out.targets) / n_comp * acc.num_processes / cfg.optim.grad_accum
                loss = kd_loss(cfg, out.logits, scores) * share
                if cfg.sft_weight > 0:
                    gold = run.ddp_model(model.build_batch(
                        model.audio_items(frames, [r["instruction"] for r in mb], [r["target"] for r in mb])))
                    n_gold = common.all_reduce_sum(acc, len(gold.targets))
                    ce = token_cross_entropy(gold.logits, gold.targets, reduction="sum")
                    loss = loss + cfg.sft_weight * ce / n_gold * acc.num_processes / cfg.optim.grad_accum
                common.check_finite(loss, run.step, [r["id"] for r in mb])
                acc.backward(loss)
            loss_sum += loss.item()
            tokens += len(out.targets)
        grad_norm = common.clip_and_step(acc, run.params, opt, cfg.optim.grad_clip)
        run.step += 1
        loss_sum = common.all_reduce_sum(acc, loss_sum) / acc.num_processes
        tokens = int(common.all_reduce_sum(acc, tokens))
        dt = time.time() - t0
        if common.should_log(run):
            run.metrics.log(run.step, loss=loss_sum, lr=lr, grad_norm=grad_norm, on_policy=n_on / cfg.optim.grad_accum,
                            completion_tokens=tokens, seconds=dt, seconds_sampling=t_sample,
                            seconds_teacher=t_teacher, seconds_student=dt - t_sample - t_teacher, epoch=order.epoch)
        run.bar.update(loss=loss_sum, sample_s=t_sample)
        common.end_step(run, order)
    return common.finish_run(run, "kd")
