"""KD step throughput: speechsum's on-policy KD step (training/kd.py) vs TRL's GKDTrainer.

    .venv/bin/python bench/kd.py [--steps 3] [--warmup 1] [--batch 4] [--audio-seconds 15]
                                 [--new-tokens 60] [--dtypes bf16 fp32]
    .venv/bin/python bench/kd.py --threads 1 --clock cpu   # when other processes share the CPU
    # needs trl (extra `bench`) for the baseline rows (reported as skipped without it)

Rows, each in its own process, compared rows back to back:

1. speechsum, on-policy (lam=1): one optimizer step of the KD loop built from the stage's own
   functions: the student *samples* a completion per item from the audio (`kd.completions_for`:
   batched decoding with a KV cache from cached encoder frames), the teacher scores exactly
   those token ids from the transcript (`LocalTeacher.score`: one forward, LM head at the
   completion positions only), then the student's forward over [prompt, audio, completion]
   (LM head at completion positions), generalised JSD (beta 0.5, T 1, `kd.kd_loss`), backward,
   clip, AdamW. Time split: sampling / teacher / student (forward + loss + backward + optimizer).
2. TRL GKDTrainer (trl.experimental.gkd, trl 1.16), on-policy (lmbda=1), on the text-only
   equivalent: the same LLM folder, our LoRA (r16, alpha 32, q,k,v,o,gate,up,down), the same
   batch, the student's prompt of the same length (transcript tokens stand in for the audio
   tokens), JSD beta 0.5, sampling temperature 1, gradient checkpointing off like ours (TRL's
   default is on). GKD's student and teacher read the same sequence; the split comes from a
   wrapper around `generate_on_policy_outputs` (sampling) and forward hooks on the teacher.
3. and 4. the same two off-policy (lam=0): the gold target is the completion, no sampling.

The KD teacher here is SmolLM2-135M itself (a second copy, fp32, the same vocabulary): for a
throughput benchmark only its size matters, not its quality (the real tiny preset needs a
stronger teacher, see the README). Ours reads the transcript stand-in as text (its prompt is
within a few tokens of the student's); TRL's reads the student's own sequence.

Both sides sample exactly `--new-tokens` tokens per item (ours with an empty stop list, TRL's
with `min_new_tokens`), so completion lengths match; in real training finished rows leave our
decoding batch early, which this fixed-length workload does not show. bf16 rows run as
`loop.bf16: true` runs: ours samples from a bf16 copy of the LLM with the LoRA deltas merged
(`SpeechLM.decoding_llm`, refreshed every step, its cost inside "sampling"), its teacher's
decoder runs under bf16 autocast (LM head fp32) and the student's training forward autocasts;
TRL's bf16 rows autocast whatever runs inside its autocast-wrapped forward (its sampling uses
the fp32 weights). fp32 rows are fp32 on both sides.

samples/s = completions trained per second = batch / step time (median of the timed steps;
see bench/common.py for the shared-machine rules). Prints a table, writes JSON to
bench/results/kd.json. Goal (issue 5): on-policy KD >= 1.5x TRL's samples/s.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from common import (INSTRUCTIONS, LLM, Phases, best_peak, lora_config, machine_argv, parse_args, peak_sample,
                    per_step, result_header, run_configs, speech_model, speedups, standin_ids, summary_ids,
                    time_steps, trl_baseline, trl_step_timer, trl_train, trl_training_args, write_result)

GOAL = 1.5  # on-policy samples/s vs TRL GKDTrainer
BETA = 0.5


def configs(dtypes: list[str]) -> list[tuple[str, float, str]]:
    """(impl, lam, dtype); the compared rows run back to back."""
    return [(impl, lam, dt) for lam in (1.0, 0.0) for dt in dtypes for impl in ("speechsum", "trl")]


# ------------------------------------------------------------------------------------ speechsum


def run_speechsum(lam: float, dtype: str, args) -> dict:
    from speechsum.training import common, kd
    from speechsum.training.teachers import LocalTeacher, teacher_prompt_ids

    acc, model, ddp_model, opt, params, frames, encoder = speech_model(args.batch, args.audio_seconds, dtype)
    tok = model.tokenizer
    model.stop_ids = []  # every sample is exactly --new-tokens long (the TRL row: min_new_tokens)
    cfg = kd.KDConfig(lam=lam, max_new_tokens=args.new_tokens, sample_temperature=1.0, divergence="jsd",
                      beta=BETA, temperature=1.0, teacher=LLM, teacher_system_prompt=model.config.system_prompt)
    teacher = LocalTeacher.from_pretrained(LLM, cfg.teacher_system_prompt, bf16=dtype == "bf16")
    audio_tokens = model.projector.num_tokens(len(frames[0]))
    transcript = tok.decode(standin_ids(tok, audio_tokens))  # what the teacher reads where the student hears
    gold = tok.decode(summary_ids(tok, model.end_of_turn_id, args.new_tokens)[:-1])
    mb = [{"id": f"bench-{i}", "instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)], "transcript": transcript,
           "target": gold} for i in range(args.batch)]
    instrs = [r["instruction"] for r in mb]
    phases, lengths = Phases(), []

    def step():
        gen = torch.Generator().manual_seed(len(lengths))  # a fresh seed per step
        with phases.phase("sampling"):
            completions, _ = kd.completions_for(model, frames, mb, lam == 1.0, cfg, gen)
        with phases.phase("teacher"):
            scores = teacher.score([r["transcript"] for r in mb], instrs, completions)
        out = ddp_model(model.build_batch(model.audio_items(frames, instrs, completions)))
        assert torch.equal(out.rows, scores.rows)
        loss = kd.kd_loss(cfg, out.logits, scores)
        acc.backward(loss)
        common.clip_and_step(acc, params, opt, 1.0)
        lengths.append([len(c) for c in completions])
        return loss.item()

    timed = time_steps(step, args.warmup, args.steps, phases)
    return {**timed, "student_prompt_tokens": [len(p) + audio_tokens + len(q) for p, q in map(model.prompt_ids, instrs)],
            "teacher_prompt_tokens": [len(teacher_prompt_ids(teacher.tokenizer, teacher.system_prompt, transcript, i))
                                      for i in instrs],
            "completion_lengths": lengths[args.warmup:], "audio_tokens": audio_tokens, "encoder": encoder,
            "trainable_params": sum(p.numel() for p in params)}


# ------------------------------------------------------------------------------------ TRL


def run_trl(lam: float, dtype: str, args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    side = trl_baseline(args.audio_seconds, args.batch)
    teacher = AutoModelForCausalLM.from_pretrained(side.llm_dir, dtype=torch.float32)
    target = summary_ids(side.tok, side.end_of_turn, args.new_tokens)
    # pre-tokenized rows: DataCollatorForChatML takes input_ids + completion_mask as given (the
    # prompt text is only read when they are missing)
    rows = [{"prompt": side.tok.decode(p), "input_ids": p + target,
             "completion_mask": [0] * len(p) + [1] * len(target)} for _, p in side.prompts]
    n_steps = args.warmup + args.steps
    data = Dataset.from_list(rows * n_steps)  # sequential sampler: the same batch every step
    phases = Phases()
    timer = trl_step_timer(args.warmup, phases)
    completion_lengths = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = GKDConfig(**trl_training_args(tmp, args.batch, n_steps, dtype), lmbda=lam, beta=BETA,
                        temperature=1.0, max_new_tokens=args.new_tokens)
        trainer = GKDTrainer(model=side.model, teacher_model=teacher, args=cfg, train_dataset=data,
                             processing_class=side.tok, peft_config=lora_config(), callbacks=[timer])
        trainer.generation_config.min_new_tokens = args.new_tokens  # same completion length as ours
        sample = trainer.generate_on_policy_outputs  # a staticmethod, called as self.generate_on_policy_outputs

        def sample_and_record(*a):
            ids, mask, labels = sample(*a)
            completion_lengths.append((labels != -100).sum(1).tolist())
            return ids, mask, labels

        trainer.generate_on_policy_outputs = phases.wrap(sample_and_record, "sampling")
        phases.hook(trainer.teacher_model, "teacher")
        row = trl_train(trainer, timer)
    prompt_tokens = [len(p) for _, p in side.prompts]
    gold = [[len(target)] * len(rows)] * args.steps
    return {**row, "audio_tokens": side.audio_tokens, "student_prompt_tokens": prompt_tokens,
            "teacher_prompt_tokens": prompt_tokens,
            "completion_lengths": completion_lengths[args.warmup:] if lam == 1.0 else gold}


# ------------------------------------------------------------------------------------ driver


def worker(name: str, args) -> dict:
    impl, lam, dtype = name.split(":")
    peak = peak_sample()
    row = (run_speechsum if impl == "speechsum" else run_trl)(float(lam), dtype, args)
    return {**row, "peak_samples": peak}


def summarize(rows: list[dict], args) -> None:
    """Step time, samples/s, mean phase split and the ratio to TRL, per row (in place)."""
    per_step(rows, args, args.batch)
    for r in rows:
        if "error" in r:
            continue
        split = {}
        for p in r["phase_seconds"]:
            for k, v in p.items():
                split[k] = split.get(k, 0.0) + v / len(r["phase_seconds"])
        mean_step = sum(r["seconds"]) / len(r["seconds"])
        split["student"] = mean_step - sum(split.values())  # forward + loss + backward + optimizer
        r["mean_split_seconds"] = {k: round(split.get(k, 0.0), 3) for k in ("sampling", "teacher", "student")}
    speedups(rows, lambda r, x: x["impl"] == "trl" and x["lam"] == r["lam"] and x["dtype"] == r["dtype"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--audio-seconds", type=float, default=15.0)
    ap.add_argument("--new-tokens", type=int, default=60, help="completion tokens per item (sampled or gold)")
    ap.add_argument("--dtypes", nargs="+", choices=["bf16", "fp32"], default=["bf16"])
    ap.add_argument("--only", nargs="*", default=None, help="impl names to run (speechsum, trl)")
    args = parse_args(ap, argv, "kd.json", worker)
    if args is None:
        return 0

    t_start = time.perf_counter()
    start_peak = peak_sample()
    argv = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
            "--audio-seconds", str(args.audio_seconds), "--new-tokens", str(args.new_tokens)] + machine_argv(args)
    rows = run_configs(__file__, [(f"{impl}:{lam}:{dt}", {"impl": impl, "lam": lam, "dtype": dt, "batch": args.batch})
                                  for impl, lam, dt in configs(args.dtypes)], argv, args.only)
    peak, samples = best_peak(start_peak, rows)
    summarize(rows, args)

    print(f"\n{'impl':10} {'policy':6} {'dtype':5} {'batch':>5} {'s/step':>7} {'samples/s':>9} {'sampling':>8} "
          f"{'teacher':>7} {'student':>7} {'vs TRL':>7}")
    for r in rows:
        policy = "on" if r["lam"] == 1.0 else "off"
        if "error" in r:
            print(f"{r['impl']:10} {policy:6} {r['dtype']:5} {r['batch']:>5}  not run: {r['error']}")
            continue
        sp = r["mean_split_seconds"]
        ratio = f"{r['speedup_vs_trl']:.2f}x" if "speedup_vs_trl" in r else "n/a"
        print(f"{r['impl']:10} {policy:6} {r['dtype']:5} {r['batch']:>5} {r['seconds_per_step']:>7.2f} "
              f"{r['samples_per_s']:>9.3f} {sp['sampling']:>8.2f} {sp['teacher']:>7.2f} {sp['student']:>7.2f} "
              f"{ratio:>7}")
    ours = [r for r in rows if r["impl"] == "speechsum" and r["lam"] == 1.0 and "speedup_vs_trl" in r]
    for r in ours:
        print(f"goal: on-policy {r['dtype']} KD >= {GOAL}x TRL GKDTrainer: {r['speedup_vs_trl']:.2f}x, "
              f"{'met' if r['speedup_vs_trl'] >= GOAL else 'NOT met'}")

    result = {
        "llm": LLM, "teacher": f"{LLM} (a second copy; throughput only, not a useful teacher)",
        "batch": args.batch, "audio_seconds": args.audio_seconds, "new_tokens": args.new_tokens,
        "split": "seconds per step, mean of the timed steps: sampling (student generation), teacher (its "
                 "forward), student (the rest: forward, loss, backward, clip, optimizer step)",
        "goal": {"on_policy_speedup_vs_trl": GOAL}, **result_header(args, peak, samples, t_start), "rows": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
