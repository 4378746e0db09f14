"""Stage 1: supervised fine-tuning on (audio, instruction, summary) items.

    speechsum train sft --config configs/sft/tiny.yaml [key=value ...] [--resume]
    accelerate launch --multi_gpu --num_processes 2 -m speechsum.cli train sft --config ...
        # 2 ranks; on a CPU-only machine the torchrun launcher gives gloo DDP (`--cpu` would
        # start a single process)

Cross-entropy on the target summary tokens only (audio, instruction and chat template are
masked), starting from `init` (the alignment run) or from the untrained assembly. Trainable:
projector + LoRA (default) or the full LLM; the encoder stays frozen and its outputs are cached
on disk once per clip. The loss of one optimizer step is the sum of target-token NLLs over
the whole global batch (all ranks, all micro-batches) divided by its token count, so 2 ranks
give the same update as 1 rank with the same global batch, and B x grad_accum 2 the same as 2B x 1.
The step's items are sorted by length before they are cut into micro-batches, so with
grad_accum > 1 each forward pads to similar lengths (`common.by_length`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from speechsum.models.speech_lm import SpeechLMConfig
from speechsum.training import common
from speechsum.training.common import LoopConfig, OptimConfig


@dataclass
class DataConfig:
    path: str = "runs/data"
    """Dataset folder written by `speechsum synth` (train/, dev/ splits with manifest.parquet)."""
    train_split: str = "train"
    """Split trained on."""
    dev_split: str = "dev"
    """Split used for periodic evaluation."""
    style_weights: dict[str, float] = field(default_factory=dict)
    """Sampling weight per style (missing styles weigh 1.0); empty: uniform over items."""
    source_weights: dict[str, float] = field(default_factory=dict)
    """Sampling weight per data source (procedural, user, ...), multiplied with the style weight."""
    encoder_cache: str = ""
    """Folder of cached encoder outputs (default: <path>/encoder_cache)."""
    max_items: int = 0
    """Use only the first N training items (0: all); for smoke tests."""
    input: str = "audio"
    """What the model reads: `audio` (the SpeechLM task) or `transcript` (text mode: the gold
    transcript where the audio would be; trains a text teacher for KD from the same data)."""

    def __post_init__(self):
        if self.input not in ("audio", "transcript"):
            raise ValueError(f"data.input={self.input!r}: expected 'audio' or 'transcript'")
        if self.max_items < 0:
            raise ValueError(f"data.max_items={self.max_items}: expected >= 0 (0: every item)")


@dataclass
class SFTConfig:
    model: SpeechLMConfig = field(default_factory=SpeechLMConfig)
    """The SpeechLM to assemble when `init` is empty; with `init`, the saved config is inherited."""
    init: str = ""
    """Previous stage's run folder or checkpoint folder to start from ('' = untrained assembly)."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)


# ------------------------------------------------------------------------------------ data


def load_items(cfg: DataConfig, split: str) -> list[dict]:
    from speechsum.data.dataset import read_manifest

    split_dir = Path(cfg.path) / split
    if not (split_dir / "manifest.parquet").is_file():
        raise FileNotFoundError(f"{split_dir}: no manifest.parquet (run `speechsum synth` first)")
    # items without a target, or whose target failed the fact check (a teacher that invented a
    # fact on an LLM-written document), are not trained or scored on
    items = [r for r in read_manifest(split_dir) if r["target"] and not r.get("target_problems")]
    for r in items:
        r["audio_path"] = str(split_dir / r["audio"])
    if not items and split == cfg.train_split:
        raise common.InputError(f"{split_dir}: no item with a target to train on")
    return items


def item_weights(items: list[dict], cfg: DataConfig) -> np.ndarray | None:
    if not cfg.style_weights and not cfg.source_weights:
        return None
    return np.array([cfg.style_weights.get(r["style"], 1.0) * cfg.source_weights.get(r["source"], 1.0)
                     for r in items], dtype=np.float64)


def item_frames(model, items: list[dict]) -> list[torch.Tensor]:
    """Encoder frames of each item's audio (through the model's on-disk encoder cache)."""
    from speechsum.audio import load_audio

    return model.encode_audio([load_audio(r["audio_path"]) for r in items])


def sft_segments(model, items: list[dict], text_mode: bool = False):
    """Training sequences of items: audio (the default) or, in text mode, the gold transcript."""
    instructions, targets = [r["instruction"] for r in items], [r["target"] for r in items]
    if text_mode:
        return model.text_items([r["transcript"] for r in items], instructions, targets)
    with torch.no_grad():
        frames = item_frames(model, items)
    return model.audio_items(frames, instructions, targets)


# ------------------------------------------------------------------------------------ the loop


def train(cfg: SFTConfig, resume: bool = False, log=print) -> Path:
    """Run SFT; returns the folder of the final model (`<out_dir>/final`)."""
    from speechsum.training.losses import token_cross_entropy

    # --- model, optimizer
    text_mode = cfg.data.input == "transcript"
    run = common.start_run(cfg, log, freeze_projector=text_mode, resume=resume)
    model, acc = run.model, run.acc
    dev = Path(cfg.data.path) / cfg.data.dev_split / "manifest.parquet"
    if cfg.loop.eval_items and not dev.is_file() and run.main:
        log(f"sft: no dev evaluation: {dev} does not exist (data.dev_split={cfg.data.dev_split}; "
            "loop.eval_items=0 turns it off without this note)")

    # --- data
    train_items = load_items(cfg.data, cfg.data.train_split)
    if cfg.data.max_items:
        train_items = train_items[: cfg.data.max_items]
    order = common.DataOrder(len(train_items), cfg.loop.seed, weights=item_weights(train_items, cfg.data))
    common.resume_or_begin(run, order, resume)
    opt = run.opt  # under FSDP rebuilt on the sharded parameters
    segments = lambda m, items: sft_segments(m, items, text_mode)  # noqa: E731

    # --- train
    while run.step < cfg.loop.max_steps:
        t0 = time.time()
        lr = cfg.optim.lr * common.lr_at(run.step, cfg.optim, cfg.loop.max_steps)
        common.set_lr(opt, lr)
        # micro-batches of similar lengths pad less (with grad_accum > 1); the update does not change
        step_items = common.by_length([train_items[i] for i in order.take(run.per_step)],
                                      lambda r: (len(r["transcript"]) if text_mode else r["duration"], len(r["target"])))
        n_tokens = sum(len(model.target_ids(r["target"])) for r in step_items)  # global normaliser
        loss_sum, tokens = 0.0, 0
        for micro in range(cfg.optim.grad_accum):
            mb = common.rank_slice(step_items, micro, cfg.loop.batch_size, acc.process_index, acc.num_processes)
            with run.micro_batch(last=micro == cfg.optim.grad_accum - 1):
                out = run.ddp_model(model.build_batch(segments(model, mb)))
                # sum over this rank's tokens / global tokens, x ranks because DDP averages gradients
                loss = token_cross_entropy(out.logits, out.targets, reduction="sum") / n_tokens * acc.num_processes
                common.check_finite(loss, run.step, [r["id"] for r in mb])
                acc.backward(loss)
            loss_sum += loss.item() / acc.num_processes
            tokens += len(out.targets)
        grad_norm = common.clip_and_step(acc, run.params, opt, cfg.optim.grad_clip)
        run.step += 1
        loss_sum = common.all_reduce_sum(acc, loss_sum)
        tokens = int(common.all_reduce_sum(acc, tokens))
        dt = time.time() - t0
        if common.should_log(run):
            run.metrics.log(run.step, loss=loss_sum, lr=lr, grad_norm=grad_norm, target_tokens_per_s=tokens / dt,
                            epoch=order.epoch, seconds=dt)
        run.bar.update(loss=loss_sum, tok_s=tokens / dt)
        common.end_step(run, order)
        if (cfg.loop.eval_every and run.step % cfg.loop.eval_every == 0) or run.step == cfg.loop.max_steps:
            with run.full_params():  # (FSDP: every rank gathers the layers; the main process evaluates)
                if run.main:
                    common.evaluate_dev(model, cfg.data, run.run_dir, run.step, cfg.loop.eval_items, load_items,
                                        segments, run.metrics)
    return common.finish_run(run, "sft (text mode)" if text_mode else "sft")


__all__ = ["SFTConfig", "DataConfig", "train"]
