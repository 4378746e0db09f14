"""Training-step throughput and MFU: speechsum's SFT and align steps vs TRL's SFTTrainer.

    .venv/bin/python bench/train.py [--steps 5] [--warmup 2] [--batch 4] [--audio-seconds 15]
                                    [--target-tokens 60] [--profile]
    .venv/bin/python bench/train.py --threads 1 --clock cpu   # when other processes share the CPU
    # needs `pip install trl` for the baseline rows (they are reported as skipped without it)

One run (~6-10 min on 2 cores) measures, with torch's default threads unless --threads is given:

1. the matmul peak: best GFLOP/s of a 2048x2048 @ 2048x2048 matmul in fp32 and in bf16 (best of
   5 repetitions, sampled at the start, the end and in every worker process);
2. speechsum's SFT step (SmolLM2-135M + LoRA r16 on q,k,v,o,gate,up,down, projector trained,
   stack 8) exactly as `training/sft.py` runs it: segments from cached encoder frames (chat
   template, projector), `build_batch`, forward under accelerate's autocast, summed target-token
   cross-entropy / n_tokens, backward, clip, AdamW step; bf16 autocast (the loop's default) and fp32;
3. the align step (`training/align.py` default: connector only, LLM frozen), same shapes;
4. TRL's SFTTrainer on the text-only equivalent: the same LLM folder, the same LoRA config, the
   same batch and the same per-item sequence lengths (transcript tokens stand in for the audio
   tokens), completion-only loss, `use_cpu=True`, gradient checkpointing off like ours (TRL's
   default, on, is a separate row); step time from a TrainerCallback (on_step_begin ->
   on_step_end), so TRL's collation is *not* in its time while our segment building is in ours.

Every configuration runs in its own subprocess (accelerate's state is per process). Encoder
frames come from whisper-base on synthetic 15 s clips, encoded once before timing: the encoder
is frozen and cached in real training, so a step starts from frames.

Tokens/s counts every sequence token (prompt + audio + target, no padding); the batch is the
same every step. FLOP conventions (per step; N = LLM parameters outside the embedding/LM head,
N_lora = LoRA parameters, P = projector matmul weights, L layers, d hidden size, V vocabulary,
T_i the length of item i, n_i its target tokens, A_i its audio tokens):

- useful: LLM body 4N per token (forward 2N + activation gradients 2N; frozen weights get no
  weight gradient) + LoRA 6 N_lora per token (SFT only) + causal attention 6 L d T_i^2 per item
  (QK^T and AV: forward 2 T^2 d, backward twice that) + LM head 4 V d only at the n_i target
  positions + projector 6 P per audio token (speechsum only; ~3 % of the total). Padding is not
  counted. The same work is needed by both implementations, so useful MFU compares them fairly.
- raw: what the implementation computes: body, LoRA and attention over the padded batch
  (B x T_max) and the LM head where it is applied (speechsum: target positions; TRL on CPU: every
  position of the padded batch, its fused head compacts to label positions only on Triton
  devices). Recomputation by gradient checkpointing is not counted (MFU, not HFU).
- classic 6N: 6 x (all LLM parameters, tied embedding counted once) per token, as if every weight
  were trained; for reference only.

MFU = model FLOPs / step time / measured matmul peak of the step's compute dtype (bf16 autocast
rows against the bf16 peak, fp32 rows against the fp32 peak). Prints a table and writes JSON to
bench/results/train.json. Goals (issue 4): >= 50 % MFU and >= 1.2x TRL's tokens/s.

A shared machine: with 2 cores and 2 OpenMP threads, one busy neighbour process makes a step
5-20x slower (a descheduled thread stalls every parallel region). Each timed step first waits
(<= 90 s) until other processes leave our threads their cores, the CPU they used during the step
is recorded (`other_load`, cores), and the step time is the median over undisturbed steps (the
"clean" column). When the machine is never quiet, `--threads 1 --clock cpu` times the peak and
the steps in this process's CPU time on one thread, which a neighbour does not inflate: MFU is
then per core and the TRL ratio stays a like-for-like comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch

LLM = "smollm2-135m-instruct"
ENCODER = "whisper-base"
SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 50  # Whisper encoder frames (20 ms)
SFT_INSTRUCTIONS = [
    "Summarize this recording in one short paragraph.",
    "List the key points as bullets.",
    "Write a short title for this recording.",
    "Summarize the decisions and action items.",
]
ALIGN_INSTRUCTION = "Summarize what was said in one sentence."  # one of align.TASKS
TRANSCRIPT = (
    "Hi Dana, it's Marcus from facilities. We agreed to push the office move to Thursday the fourteenth. "
    "The budget stays at twelve thousand five hundred dollars, and the movers arrive at eight in the morning. "
    "Please send the floor plan to Priya by Wednesday, and remind the team to pack their desks on Tuesday. "
    "If anything changes, call me on my mobile, not the office line, because I will be on site all week."
)
SUMMARY = (
    "Marcus from facilities says the office move is pushed to Thursday the fourteenth. The budget stays at "
    "twelve thousand five hundred dollars and movers arrive at eight. Dana should send the floor plan to Priya "
    "by Wednesday; the team packs desks on Tuesday. Call Marcus on his mobile if anything changes this week."
)
CLEAN_MARGIN = 0.3  # a step is "clean" when other processes used <= (cores - torch threads + this) cores
CONFIGS = [  # (impl, stage, dtype, gradient checkpointing); compared rows run back to back
    ("speechsum", "sft", "bf16", False),
    ("trl", "sft", "bf16", False),
    ("speechsum", "sft", "fp32", False),
    ("trl", "sft", "fp32", False),
    ("trl", "sft", "bf16", True),  # TRL's SFTConfig default: gradient_checkpointing=True
    ("speechsum", "align", "bf16", False),
    ("speechsum", "align", "fp32", False),
]


# ------------------------------------------------------------------------------------ peak


# Step clock. "wall" (default): time.perf_counter. "cpu" (with --threads 1 only): this process's CPU
# time, which does not advance while a busy neighbour holds the core, so a shared machine still
# gives usable numbers (with 2 OpenMP threads, CPU time would count spin-waiting instead).
clock = time.perf_counter


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = clock()
        a @ b
        best = min(best, clock() - t)
    return 2 * n**3 / best / 1e9


# ------------------------------------------------------------------------------------ contention


def spare_cores() -> int:
    """Cores left over by torch's threads (0 with the default: one thread per core)."""
    return max(0, (os.cpu_count() or 1) - torch.get_num_threads())


class CpuMeter:
    """CPU time used by *other* processes while a step runs (the machine may be shared): busy
    jiffies of the whole machine (/proc/stat) minus this process's own CPU time, per wall second.
    0 = the step had the machine to itself; 1 = another process kept one core busy."""

    def __init__(self, max_wait: float | None = None):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[float] = []
        self.quiet = spare_cores() + 0.15  # other load that leaves our threads their cores
        # waiting is pointless when the step clock is CPU time
        self.max_wait = (0.0 if clock is time.process_time else 90.0) if max_wait is None else max_wait
        self.waited = 0.0

    def _busy(self) -> float:
        try:
            f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return float("nan")
        v = [int(x) for x in f]
        return (sum(v[:8]) - v[3] - v[4]) / self.tick  # all but idle and iowait

    def wait_quiet(self, window: float = 0.5) -> None:
        """Sleep until other processes leave our threads their cores for one window (at most
        `max_wait` s): with 2 cores and 2 OpenMP threads, one busy neighbour makes a step 5-20x slower
        (a descheduled thread stalls every parallel region)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.max_wait:
            b, own = self._busy(), time.process_time()
            time.sleep(window)
            if (self._busy() - b - (time.process_time() - own)) / window < self.quiet:
                break
        self.waited += time.perf_counter() - t0

    def start(self) -> None:
        self.wait_quiet()
        self._t, self._own, self._b = time.perf_counter(), time.process_time(), self._busy()

    def stop(self) -> None:
        wall = time.perf_counter() - self._t
        other = (self._busy() - self._b) - (time.process_time() - self._own)
        self.samples.append(round(max(0.0, other) / wall, 2))


# ------------------------------------------------------------------------------------ workload


def synthetic_clips(batch: int, seconds: float) -> list:
    """Noisy tone clips: the encoder's output shape, not its content, matters here."""
    import numpy as np

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    return [(0.3 * np.sin(2 * np.pi * (220 + 60 * i) * t) + 0.05 * rng.standard_normal(len(t))).astype("float32")
            for i in range(batch)]


def build_encoder_dir(tmp: Path) -> str:
    """whisper-base when its weights are ready; else a random 2-layer Whisper with whisper-base's
    width (512), since only the frame shape [T, 512] matters for the timed step."""
    from speechsum.models.registry import is_ready

    if is_ready(ENCODER):
        return ENCODER
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=100, num_mel_bins=80, d_model=512, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                        decoder_ffn_dim=2048, max_source_positions=1500, max_target_positions=64,
                        pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    out = tmp / "whisper-512"
    WhisperForConditionalGeneration(cfg).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return str(out)


def target_ids(tok, end_of_turn: int, n: int) -> list[int]:
    """A summary of exactly n tokens, the last one the end-of-turn token (as `SpeechLM.target_ids`)."""
    ids = tok(SUMMARY, add_special_tokens=False)["input_ids"]
    return ids[: n - 1] + [end_of_turn]


def item_specs(prompt_ids, tok, end_of_turn: int, stage: str, batch: int, audio_tokens: int,
               n_target: int) -> list[dict]:
    """Per item: prompt ids before and after the audio, audio token count, target ids."""
    out = []
    for i in range(batch):
        instr = ALIGN_INSTRUCTION if stage == "align" else SFT_INSTRUCTIONS[i % len(SFT_INSTRUCTIONS)]
        pre, post = prompt_ids(instr)
        out.append({"instruction": instr, "pre": pre, "post": post, "audio": audio_tokens,
                    "target": target_ids(tok, end_of_turn, n_target)})
    return out


# ------------------------------------------------------------------------------------ FLOPs


def llm_dims(llm) -> dict:
    """Parameter counts the FLOP conventions need, read from the (possibly peft-wrapped) LLM."""
    base = llm.get_base_model() if hasattr(llm, "get_base_model") else llm
    cfg = base.config
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    body = lora = 0
    for name, p in llm.named_parameters():
        if "lora_" in name:
            lora += p.numel()
        elif p.data_ptr() not in (emb.data_ptr(), head.data_ptr()):
            body += p.numel()
    tied = emb.data_ptr() == head.data_ptr()
    return {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size,
            "attn_dim": cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads),
            "body_params": body, "lora_params": lora, "tied_embeddings": tied,
            "all_params": body + emb.numel() + (0 if tied else head.numel())}


def step_flops(dims: dict, lengths: list[int], targets: list[int], audio: list[int], projector_params: int,
               head_positions_raw: int) -> dict:
    """FLOPs of one optimizer step under the three conventions of the module docstring."""
    L, d, V, da = dims["layers"], dims["hidden"], dims["vocab"], dims["attn_dim"]
    per_token = 4 * dims["body_params"] + 6 * dims["lora_params"]
    attn = lambda t: 6 * L * da * t * t  # noqa: E731  causal QK^T + AV, forward + backward
    head = 4 * V * d  # forward 2Vd + activation gradient 2Vd (frozen, usually tied, head)
    proj = 6 * projector_params * sum(audio)
    useful = sum(per_token * t + attn(t) for t in lengths) + head * sum(targets) + proj
    tmax, b = max(lengths), len(lengths)
    raw = b * (per_token * tmax + attn(tmax)) + head * head_positions_raw + proj
    classic = 6 * dims["all_params"] * sum(lengths)
    return {"useful": useful, "raw": raw, "classic_6n": classic}


# ------------------------------------------------------------------------------------ speechsum


def run_speechsum(stage: str, dtype: str, args) -> dict:
    """Time the real loop's optimizer step (sft.py / align.py) on a fixed batch."""
    from accelerate import Accelerator

    from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig
    from speechsum.training import common
    from speechsum.training.common import OptimConfig
    from speechsum.training.losses import token_cross_entropy

    acc = Accelerator(cpu=True, mixed_precision="bf16" if dtype == "bf16" else "no")
    common.seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        encoder = build_encoder_dir(Path(tmp))
        cfg = SpeechLMConfig(encoder=encoder, llm=LLM, llm_training="lora" if stage == "sft" else "frozen")
        model = SpeechLM.from_config(cfg)
    frames = model.encode_audio(synthetic_clips(args.batch, args.audio_seconds))  # cached in real training
    audio_tokens = model.projector.num_tokens(len(frames[0]))
    spec = item_specs(model.prompt_ids, model.tokenizer, model.end_of_turn_id, stage, args.batch, audio_tokens,
                      args.target_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    optim_cfg = OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant")
    opt = common.build_optimizer(params, optim_cfg)
    model.train()
    ddp_model, opt = acc.prepare(model, opt)

    def step():
        common.set_lr(opt, optim_cfg.lr)
        n_tokens = sum(len(s["target"]) for s in spec)
        items = model.audio_items(frames, [s["instruction"] for s in spec], [s["target"] for s in spec])
        out = ddp_model(model.build_batch(items))
        loss = token_cross_entropy(out.logits, out.targets, reduction="sum") / n_tokens
        acc.backward(loss)
        common.clip_and_step(acc, params, opt, 1.0)
        return loss.item()

    times, losses, meter = [], [], CpuMeter()
    for i in range(args.warmup + args.steps):
        meter.start()
        t = clock()
        losses.append(step())
        if i >= args.warmup:
            times.append(clock() - t)
            meter.stop()
    profile = profile_step(step, meter) if args.profile and stage == "sft" and dtype == "bf16" else None
    lengths = [len(s["pre"]) + s["audio"] + len(s["post"]) + len(s["target"]) for s in spec]
    targets = [len(s["target"]) for s in spec]
    dims = llm_dims(model.llm)
    proj = sum(m.weight.numel() for m in (model.projector.fc1, model.projector.fc2))
    flops = step_flops(dims, lengths, targets, [s["audio"] for s in spec], proj, head_positions_raw=sum(targets))
    return {"lengths": lengths, "targets": targets, "audio_tokens": audio_tokens, "seconds": times,
            "losses": losses, "other_load": meter.samples, "waited_for_quiet_s": round(meter.waited, 1),
            "flops": flops, "dims": dims, "projector_params": proj,
            "encoder": encoder, "trainable_params": sum(p.numel() for p in params), "profile": profile}


class StepProfiler:
    """One step under torch.profiler: seconds in matmuls, attention, copies/casts, other ops and
    outside ops (wall time not inside any op: Python, autograd engine, optimizer bookkeeping)."""

    GROUPS = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn"),
              "attention (sdpa)": ("scaled_dot_product", "_flash_attention", "_efficient_attention"),
              "copies and dtype casts": ("aten::copy_", "aten::_to_copy", "aten::to")}

    def start(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.prof = profile(activities=[ProfilerActivity.CPU], with_flops=True)
        self.prof.__enter__()
        self.t = time.perf_counter()

    def stop(self, top: int = 12) -> dict:
        wall = time.perf_counter() - self.t
        self.prof.__exit__(None, None, None)
        events = self.prof.key_averages()
        buckets = {k: 0.0 for k in self.GROUPS} | {"other ops": 0.0}
        mm_flops = 0
        for e in events:
            group = next((k for k, pats in self.GROUPS.items() if any(p in e.key for p in pats)), "other ops")
            buckets[group] += e.self_cpu_time_total / 1e6
            if group == "matmul":
                mm_flops += e.flops or 0
        buckets["outside ops (python, autograd engine)"] = max(0.0, wall - sum(buckets.values()))
        rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
        return {"wall_s": round(wall, 3), "note": "a profiled step is slower than an unprofiled one",
                "buckets_s": {k: round(v, 3) for k, v in buckets.items()},
                "matmul_gflops_inside_mm": round(mm_flops / max(buckets["matmul"], 1e-9) / 1e9, 1),
                "top_ops": [{"op": e.key, "self_s": round(e.self_cpu_time_total / 1e6, 4), "calls": e.count}
                            for e in rows]}


def profile_step(step, meter: CpuMeter) -> dict:
    meter.wait_quiet()
    p = StepProfiler()
    p.start()
    step()
    return p.stop()


# ------------------------------------------------------------------------------------ TRL


def run_trl(dtype: str, grad_ckpt: bool, args) -> dict:
    """TRL SFTTrainer, text-only: the same token lengths per item, transcript tokens for audio."""
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging

    from speechsum.models.registry import resolve_model
    from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    llm_dir = resolve_model(LLM)
    tok = AutoTokenizer.from_pretrained(llm_dir)
    model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)

    # prompts rendered by SpeechLM's own code, which only reads `tokenizer` and `config.system_prompt`
    # (no encoder or projector needed here)
    speech = SimpleNamespace(tokenizer=tok, config=SpeechLMConfig(llm=LLM))
    audio_tokens = -(-int(args.audio_seconds * FRAMES_PER_SECOND) // speech.config.stack)
    spec = item_specs(partial(SpeechLM.prompt_ids, speech), tok, SpeechLM.end_of_turn_id.fget(speech), "sft",
                      args.batch, audio_tokens, args.target_tokens)
    standin = tok(" " + TRANSCRIPT, add_special_tokens=False)["input_ids"]
    standin = (standin * (audio_tokens // len(standin) + 1))[:audio_tokens]
    rows = []
    for s in spec:
        prompt = s["pre"] + standin + s["post"]
        rows.append({"input_ids": prompt + s["target"], "completion_mask": [0] * len(prompt) + [1] * len(s["target"])})
    profile = args.profile and dtype == "bf16" and not grad_ckpt
    n_steps = args.warmup + args.steps + (1 if profile else 0)  # the profiled step is not timed
    data = Dataset.from_list(rows * n_steps)  # sequential sampler: the same batch every step

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.step_s, self.end_to_end_s, self.meter = None, None, [], [], CpuMeter()
            self.profile = None

        def on_step_begin(self, a, state, control, **kw):
            self.meter.start()
            if profile and state.global_step == n_steps - 1:
                self.profiler = StepProfiler()
                self.profiler.start()
            self.begin = clock()

        def on_step_end(self, a, state, control, **kw):
            now = clock()
            if profile and state.global_step == n_steps:
                self.profile = self.profiler.stop()
            elif state.global_step > args.warmup:  # global_step is already incremented here
                self.step_s.append(now - self.begin)
                self.end_to_end_s.append(now - self.end)
                self.meter.stop()
            self.end = now

    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = trl.SFTConfig(
            output_dir=tmp, per_device_train_batch_size=args.batch, max_steps=n_steps, use_cpu=True,
            bf16=dtype == "bf16", fp16=False, gradient_checkpointing=grad_ckpt, completion_only_loss=True,
            max_length=None, learning_rate=1e-4, lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
            train_sampling_strategy="sequential", logging_steps=10_000, save_strategy="no", report_to="none",
            disable_tqdm=True, dataloader_num_workers=0, seed=0,
        )
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                          target_modules=list(SpeechLMConfig().lora_targets))
        trainer = trl.SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora,
                                 callbacks=[timer])
        autocast = trainer.accelerator.mixed_precision
        t = time.perf_counter()
        result = trainer.train()
        total = time.perf_counter() - t
    lengths = [len(r["input_ids"]) for r in rows]
    targets = [len(s["target"]) for s in spec]
    dims = llm_dims(trainer.model)
    # CPU: the fused head scores every position of the padded batch (shifted: T_max - 1 per row)
    flops = step_flops(dims, lengths, targets, [0] * len(lengths), 0,
                       head_positions_raw=len(lengths) * (max(lengths) - 1))
    return {"lengths": lengths, "targets": targets, "audio_tokens": audio_tokens, "seconds": timer.step_s,
            "end_to_end_seconds": timer.end_to_end_s,
            "other_load": timer.meter.samples, "waited_for_quiet_s": round(timer.meter.waited, 1),
            "flops": flops, "dims": dims,
            "accelerate_mixed_precision": autocast, "train_loss": result.training_loss, "train_seconds": total,
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "trl": trl.__version__, "profile": timer.profile}


# ------------------------------------------------------------------------------------ driver


def worker(name: str, args) -> dict:
    impl, stage, dtype, gc = name.split(":")
    # peak samples from every process: the best of all of them is the run's peak (a busy
    # neighbour only ever lowers a sample)
    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    row = run_speechsum(stage, dtype, args) if impl == "speechsum" else run_trl(dtype, gc == "gc", args)
    return {**row, "peak_samples": peak}


def run_config(impl: str, stage: str, dtype: str, gc: bool, args) -> dict:
    """One configuration in a fresh process; its result is the last stdout line (JSON)."""
    name = f"{impl}:{stage}:{dtype}:{'gc' if gc else 'nogc'}"
    cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch", str(args.batch), "--audio-seconds", str(args.audio_seconds),
           "--target-tokens", str(args.target_tokens), "--threads", str(args.threads), "--clock", args.clock]
    cmd += ["--profile"] if args.profile else []
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    row = {"impl": impl, "stage": stage, "dtype": dtype, "gradient_checkpointing": gc, "batch": args.batch,
           "process_seconds": round(time.perf_counter() - t, 1)}
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        print(f"  {name}: FAILED: {err}", file=sys.stderr)
        return {**row, "error": err}
    return {**row, **json.loads(proc.stdout.strip().splitlines()[-1])}


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = "unknown"
    flags = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "amx")))
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "trl", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cpu_flags": flags, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": sys.version.split()[0], "versions": versions}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--audio-seconds", type=float, default=15.0)
    ap.add_argument("--target-tokens", type=int, default=60)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default, one per core); 1 leaves a core to a busy neighbour")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="step and peak timing: wall time, or process CPU time (needs --threads 1; for a busy machine)")
    ap.add_argument("--profile", action="store_true", help="profile one SFT bf16 step of each implementation")
    ap.add_argument("--only", nargs="*", default=None, help="impl names to run (speechsum, trl)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.json"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            ap.error("--clock cpu needs --threads 1 (with more threads, CPU time counts OpenMP spin-waiting)")
        global clock
        clock = time.process_time

    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0

    t_start = time.perf_counter()
    samples = {"fp32": [matmul_peak(torch.float32)], "bf16": [matmul_peak(torch.bfloat16)]}
    try:
        import trl  # noqa: F401

        trl_ok = True
    except ImportError:
        trl_ok = False
    rows = []
    for impl, stage, dtype, gc in CONFIGS:
        if args.only and impl not in args.only:
            continue
        if impl == "trl" and not trl_ok:
            rows.append({"impl": impl, "stage": stage, "dtype": dtype, "gradient_checkpointing": gc,
                         "batch": args.batch, "error": "trl is not installed (pip install trl)"})
            continue
        print(f"  running {impl} {stage} {dtype}{' (grad. checkpointing)' if gc else ''} ...", flush=True)
        rows.append(run_config(impl, stage, dtype, gc, args))

    for dt in samples:
        samples[dt] += [r["peak_samples"][dt] for r in rows if "peak_samples" in r] + [
            matmul_peak(torch.float32 if dt == "fp32" else torch.bfloat16)]
    peak = {dt: max(v) for dt, v in samples.items()}
    print(f"\nmatmul peak (2048^3, {torch.get_num_threads()} torch threads, best of {len(samples['fp32'])} "
          f"processes): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    clean_load = float("inf") if args.clock == "cpu" else spare_cores() + CLEAN_MARGIN
    for r in rows:
        if "error" in r:
            continue
        # median over the steps no other process disturbed (all steps when none was clean)
        clean = [t for t, o in zip(r["seconds"], r["other_load"]) if o <= clean_load] or r["seconds"]
        s = sorted(clean)[len(clean) // 2]
        r["seconds_per_step"] = round(s, 4)
        r["clean_steps"] = sum(o <= clean_load for o in r["other_load"])
        r["seq_tokens"] = sum(r["lengths"])
        r["padded_tokens"] = len(r["lengths"]) * max(r["lengths"])
        r["tokens_per_s"] = round(r["seq_tokens"] / s, 1)
        r["peak_gflops"] = round(peak[r["dtype"]], 1)
        r["mfu"] = {k: round(v / s / (peak[r["dtype"]] * 1e9), 4) for k, v in r["flops"].items()}
    for r in rows:
        ref = next((x for x in rows if x["impl"] == "trl" and x["stage"] == r["stage"] and x["dtype"] == r["dtype"]
                    and not x["gradient_checkpointing"] and "error" not in x), None)
        if "error" not in r and ref is not None:
            r["speedup_vs_trl"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2)

    print(f"\n{'impl':10} {'stage':6} {'dtype':5} {'batch':>5} {'tokens':>6} {'s/step':>7} {'tok/s':>7} "
          f"{'MFU use':>7} {'MFU raw':>7} {'MFU 6N':>7} {'vs TRL':>7} {'clean':>5}")
    for r in rows:
        label = r["impl"] + ("+gc" if r["gradient_checkpointing"] else "")
        if "error" in r:
            print(f"{label:10} {r['stage']:6} {r['dtype']:5} {r['batch']:>5}  not run: {r['error']}")
            continue
        sp = f"{r['speedup_vs_trl']:.2f}x" if "speedup_vs_trl" in r else "n/a"
        m = r["mfu"]
        print(f"{label:10} {r['stage']:6} {r['dtype']:5} {r['batch']:>5} {r['seq_tokens']:>6} "
              f"{r['seconds_per_step']:>7.3f} {r['tokens_per_s']:>7.0f} {m['useful']:>7.1%} {m['raw']:>7.1%} "
              f"{m['classic_6n']:>7.1%} {sp:>7} {r['clean_steps']:>2}/{len(r['seconds'])}")
    if any(r.get("clean_steps", 1) == 0 for r in rows):
        print(f"warning: in some rows no timed step ran on a quiet machine (other processes used > {clean_load} "
              "cores): their times are inflated; re-run when the machine is idle (or with --threads 1)")
    for r in rows:
        prof = r.get("profile")
        if prof:
            print(f"\nprofile of one {r['impl']} {r['stage']} {r['dtype']} step ({prof['wall_s']:.2f} s under the "
                  f"profiler; matmuls run at {prof['matmul_gflops_inside_mm']:.0f} GFLOP/s inside mm ops):")
            for k, v in prof["buckets_s"].items():
                print(f"  {k:40} {v:6.3f} s  {v / prof['wall_s']:5.1%}")
    print("align has no TRL equivalent (a frozen LLM with a trained connector is not a text-only SFT run).")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "llm": LLM, "encoder": ENCODER, "batch": args.batch, "audio_seconds": args.audio_seconds,
        "target_tokens": args.target_tokens, "timed_steps": args.steps, "warmup_steps": args.warmup,
        "clock": "process CPU time (1 thread)" if args.clock == "cpu" else "wall time",
        "step_time": "median of the timed steps (CPU time: other processes' load is not counted)"
                     if args.clock == "cpu" else
                     f"median of the timed steps during which other processes used <= {clean_load} cores "
                     "(all timed steps when none qualifies); each step first waits (<= 90 s) for that",
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()}, "matmul_peak_shape": "2048x2048 @ 2048x2048",
        "matmul_peak_samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
        "matmul_peak_method": "best of 5 repetitions, in the main process (start and end) and in every worker; "
                              "the run's peak is the best sample",
        "flop_conventions": {
            "useful": "4N/token body + 6 N_lora/token + causal attention 6 L d T^2 per item + LM head 4Vd at target "
                      "positions + projector 6P per audio token (speechsum only); no padding",
            "raw": "as useful but body/LoRA/attention over the padded batch and the LM head where the "
                   "implementation applies it (speechsum: target positions; TRL on CPU: all positions)",
            "classic_6n": "6 x all LLM parameters (tied embedding once) per sequence token",
        },
        "goals": {"mfu": 0.5, "speedup_vs_trl": 1.2},
        "machine": machine_info(), "bench_seconds": round(time.perf_counter() - t_start, 1), "rows": rows,
    }
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({result['bench_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
