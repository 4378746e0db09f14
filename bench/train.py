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
   on_step_end), so TRL's collation is *not* in its time while our segment building is in ours;
5. speechsum's SFT step with `loop.activation_checkpointing` (bf16), beside TRL's default row;
6. speechsum's SFT step with `loop.compile` (the decoder layers under torch.compile) in bf16 and
   fp32: the compilation happens in the warm-up steps (its time is reported as `first_step_s`, the
   warm-up's first step), the timed steps run the compiled layers.

Memory ("+MB"): the peak resident set during the warm-up and timed steps minus the resident set
before them (activations, gradients, optimizer state), one process per row.

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
import os
import sys
import tempfile
import time

import torch
from common import (ENCODER, INSTRUCTIONS, LLM, CpuMeter, best_peak, clean_load, lora_config, machine_argv,
                    parse_args, peak_rss_increase, peak_sample, per_step, result_header, run_configs, speech_model,
                    speedups, summary_ids, time_steps, trl_baseline, trl_step_timer, trl_train, trl_training_args,
                    write_result)

ALIGN_INSTRUCTION = "Summarize what was said in one sentence."  # one of align.TASKS
CONFIGS = [  # (impl, stage, dtype, variant: "" | "gc" gradient checkpointing | "compile"); compared rows back to back
    ("speechsum", "sft", "bf16", ""),
    ("trl", "sft", "bf16", ""),
    ("speechsum", "sft", "fp32", ""),
    ("trl", "sft", "fp32", ""),
    ("trl", "sft", "bf16", "gc"),  # TRL's SFTConfig default: gradient_checkpointing=True
    ("speechsum", "sft", "bf16", "gc"),  # loop.activation_checkpointing
    ("speechsum", "sft", "bf16", "compile"),  # loop.compile
    ("speechsum", "sft", "fp32", "compile"),
    ("speechsum", "align", "bf16", ""),
    ("speechsum", "align", "fp32", ""),
]


# ------------------------------------------------------------------------------------ workload


def item_specs(prompt_ids, tok, end_of_turn: int, stage: str, batch: int, audio_tokens: int,
               n_target: int) -> list[dict]:
    """Per item: prompt ids before and after the audio, audio token count, target ids."""
    out = []
    for i in range(batch):
        instr = ALIGN_INSTRUCTION if stage == "align" else INSTRUCTIONS[i % len(INSTRUCTIONS)]
        pre, post = prompt_ids(instr)
        out.append({"instruction": instr, "pre": pre, "post": post, "audio": audio_tokens,
                    "target": summary_ids(tok, end_of_turn, n_target)})
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


def run_speechsum(stage: str, dtype: str, grad_ckpt: bool, args, compiled: bool = False) -> dict:
    """Time the real loop's optimizer step (sft.py / align.py) on a fixed batch."""
    from speechsum.training import common
    from speechsum.training.losses import token_cross_entropy

    acc, model, ddp_model, opt, params, frames, encoder = speech_model(
        args.batch, args.audio_seconds, dtype, llm_training="lora" if stage == "sft" else "frozen")
    if grad_ckpt:
        common.enable_activation_checkpointing(model)
    if compiled:  # into an empty inductor cache: the first step pays the whole compilation, as on a fresh machine
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-bench-")
        common.compile_decoder_layers(model)
    audio_tokens = model.projector.num_tokens(len(frames[0]))
    spec = item_specs(model.prompt_ids, model.tokenizer, model.end_of_turn_id, stage, args.batch, audio_tokens,
                      args.target_tokens)

    def step():
        n_tokens = sum(len(s["target"]) for s in spec)
        items = model.audio_items(frames, [s["instruction"] for s in spec], [s["target"] for s in spec])
        out = ddp_model(model.build_batch(items))
        loss = token_cross_entropy(out.logits, out.targets, reduction="sum") / n_tokens
        acc.backward(loss)
        common.clip_and_step(acc, params, opt, 1.0)
        return loss.item()

    memory = {}
    with peak_rss_increase(memory):
        timed = time_steps(step, args.warmup, args.steps)
    profile = profile_step(step) if args.profile and stage == "sft" and dtype == "bf16" and not grad_ckpt else None
    lengths = [len(s["pre"]) + s["audio"] + len(s["post"]) + len(s["target"]) for s in spec]
    targets = [len(s["target"]) for s in spec]
    dims = llm_dims(model.llm)
    proj = sum(m.weight.numel() for m in (model.projector.fc1, model.projector.fc2))
    flops = step_flops(dims, lengths, targets, [s["audio"] for s in spec], proj, head_positions_raw=sum(targets))
    return {"lengths": lengths, "targets": targets, "audio_tokens": audio_tokens, "seconds": timed["seconds"],
            "first_step_s": timed["warmup_seconds"][0] if timed["warmup_seconds"] else None,
            "losses": timed["losses"], "other_load": timed["other_load"],
            "waited_for_quiet_s": timed["waited_for_quiet_s"], "flops": flops, "dims": dims, "projector_params": proj,
            "encoder": encoder, "trainable_params": sum(p.numel() for p in params), "profile": profile, **memory}


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


def profile_step(step) -> dict:
    CpuMeter().wait_quiet()
    p = StepProfiler()
    p.start()
    step()
    return p.stop()


# ------------------------------------------------------------------------------------ TRL


def run_trl(dtype: str, grad_ckpt: bool, args) -> dict:
    """TRL SFTTrainer, text-only: the same token lengths per item, transcript tokens for audio."""
    import trl
    from datasets import Dataset

    side = trl_baseline(args.audio_seconds, args.batch)
    target = summary_ids(side.tok, side.end_of_turn, args.target_tokens)
    rows = [{"input_ids": p + target, "completion_mask": [0] * len(p) + [1] * len(target)} for _, p in side.prompts]
    profile = args.profile and dtype == "bf16" and not grad_ckpt
    n_steps = args.warmup + args.steps + (1 if profile else 0)  # the profiled step is not timed
    data = Dataset.from_list(rows * n_steps)  # sequential sampler: the same batch every step

    timer = trl_step_timer(args.warmup, profile_step=n_steps if profile else None, profiler_cls=StepProfiler)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = trl.SFTConfig(**trl_training_args(tmp, args.batch, n_steps, dtype, grad_ckpt),
                            completion_only_loss=True, max_length=None)
        trainer = trl.SFTTrainer(model=side.model, args=cfg, train_dataset=data, processing_class=side.tok,
                                 peft_config=lora_config(), callbacks=[timer])
        memory = {}
        with peak_rss_increase(memory):
            row = trl_train(trainer, timer)
    lengths = [len(r["input_ids"]) for r in rows]
    targets = [len(target)] * len(rows)
    dims = llm_dims(trainer.model)
    # CPU: the fused head scores every position of the padded batch (shifted: T_max - 1 per row)
    flops = step_flops(dims, lengths, targets, [0] * len(lengths), 0,
                       head_positions_raw=len(lengths) * (max(lengths) - 1))
    return {**row, "lengths": lengths, "targets": targets, "audio_tokens": side.audio_tokens, "flops": flops,
            "dims": dims, "profile": timer.profile, **memory}


# ------------------------------------------------------------------------------------ driver


def worker(name: str, args) -> dict:
    impl, stage, dtype, variant = name.split(":")
    peak = peak_sample()  # every process samples the peak: the best sample is the run's peak
    if impl == "speechsum":
        row = run_speechsum(stage, dtype, variant == "gc", args, compiled=variant == "compile")
    else:
        row = run_trl(dtype, variant == "gc", args)
    return {**row, "peak_samples": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5, help="timed optimizer steps per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--audio-seconds", type=float, default=15.0)
    ap.add_argument("--target-tokens", type=int, default=60)
    ap.add_argument("--profile", action="store_true", help="profile one SFT bf16 step of each implementation")
    ap.add_argument("--only", nargs="*", default=None, help="impl names to run (speechsum, trl)")
    args = parse_args(ap, argv, "train.json", worker)
    if args is None:
        return 0

    t_start = time.perf_counter()
    start_peak = peak_sample()
    argv = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
            "--audio-seconds", str(args.audio_seconds), "--target-tokens", str(args.target_tokens)]
    argv += machine_argv(args) + (["--profile"] if args.profile else [])
    rows = run_configs(__file__, [(f"{impl}:{stage}:{dt}:{variant or 'plain'}",
                                   {"impl": impl, "stage": stage, "dtype": dt, "gradient_checkpointing": variant == "gc",
                                    "compile": variant == "compile", "batch": args.batch})
                                  for impl, stage, dt, variant in CONFIGS], argv, args.only)

    peak, samples = best_peak(start_peak, rows)
    print(f"\nmatmul peak (2048^3, {torch.get_num_threads()} torch threads, best of {len(samples['fp32'])} "
          f"processes): fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    limit = clean_load(args)
    per_step(rows, args, args.batch)
    for r in rows:
        if "error" in r:
            continue
        s = r["seconds_per_step"]
        r["seq_tokens"] = sum(r["lengths"])
        r["padded_tokens"] = len(r["lengths"]) * max(r["lengths"])
        r["tokens_per_s"] = round(r["seq_tokens"] / s, 1)
        r["peak_gflops"] = round(peak[r["dtype"]], 1)
        r["mfu"] = {k: round(v / s / (peak[r["dtype"]] * 1e9), 4) for k, v in r["flops"].items()}
    speedups(rows, lambda r, x: x["impl"] == "trl" and x["stage"] == r["stage"] and x["dtype"] == r["dtype"]
             and not x["gradient_checkpointing"] and not x["compile"], key="tokens_per_s")

    print(f"\n{'impl':10} {'stage':6} {'dtype':5} {'batch':>5} {'tokens':>6} {'s/step':>7} {'tok/s':>7} "
          f"{'MFU use':>7} {'MFU raw':>7} {'MFU 6N':>7} {'vs TRL':>7} {'clean':>5} {'+MB':>6}")
    for r in rows:
        label = r["impl"] + ("+gc" if r["gradient_checkpointing"] else "") + ("+compile" if r["compile"] else "")
        if "error" in r:
            print(f"{label:10} {r['stage']:6} {r['dtype']:5} {r['batch']:>5}  not run: {r['error']}")
            continue
        sp = f"{r['speedup_vs_trl']:.2f}x" if "speedup_vs_trl" in r else "n/a"
        m = r["mfu"]
        print(f"{label:10} {r['stage']:6} {r['dtype']:5} {r['batch']:>5} {r['seq_tokens']:>6} "
              f"{r['seconds_per_step']:>7.3f} {r['tokens_per_s']:>7.0f} {m['useful']:>7.1%} {m['raw']:>7.1%} "
              f"{m['classic_6n']:>7.1%} {sp:>7} {r['clean_steps']:>2}/{len(r['seconds'])} "
              f"{r.get('peak_increase_mb', float('nan')):>6.0f}")
    for r in rows:
        if r.get("compile") and "error" not in r:
            print(f"{r['impl']}+compile {r['stage']} {r['dtype']}: first step {r['first_step_s']:.1f} s "
                  f"(compilation into an empty inductor cache) against {r['seconds_per_step']:.2f} s per step after")
    if any(r.get("clean_steps", 1) == 0 for r in rows):
        print(f"warning: in some rows no timed step ran on a quiet machine (other processes used > {limit} "
              "cores): their times are inflated; re-run when the machine is idle (or with --threads 1)")
    for r in rows:
        prof = r.get("profile")
        if prof:
            print(f"\nprofile of one {r['impl']} {r['stage']} {r['dtype']} step ({prof['wall_s']:.2f} s under the "
                  f"profiler; matmuls run at {prof['matmul_gflops_inside_mm']:.0f} GFLOP/s inside mm ops):")
            for k, v in prof["buckets_s"].items():
                print(f"  {k:40} {v:6.3f} s  {v / prof['wall_s']:5.1%}")
    print("align has no TRL equivalent (a frozen LLM with a trained connector is not a text-only SFT run).")

    result = {
        "llm": LLM, "encoder": ENCODER, "batch": args.batch, "audio_seconds": args.audio_seconds,
        "target_tokens": args.target_tokens,
        "flop_conventions": {
            "useful": "4N/token body + 6 N_lora/token + causal attention 6 L d T^2 per item + LM head 4Vd at target "
                      "positions + projector 6P per audio token (speechsum only); no padding",
            "raw": "as useful but body/LoRA/attention over the padded batch and the LM head where the "
                   "implementation applies it (speechsum: target positions; TRL on CPU: all positions)",
            "classic_6n": "6 x all LLM parameters (tied embedding once) per sequence token",
        },
        "goals": {"mfu": 0.5, "speedup_vs_trl": 1.2}, **result_header(args, peak, samples, t_start), "rows": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
