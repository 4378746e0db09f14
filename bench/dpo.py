"""DPO step throughput: speechsum's DPO step (training/dpo.py) vs TRL's DPOTrainer.

    .venv/bin/python bench/dpo.py [--steps 3] [--warmup 1] [--batch 4] [--audio-seconds 15]
                                  [--chosen-tokens 60] [--rejected-tokens 45] [--dtypes bf16 fp32]
    .venv/bin/python bench/dpo.py --threads 1 --clock cpu   # when other processes share the CPU
    # needs trl (extra `bench`) for the baseline rows (reported as skipped without it)

Rows, each in its own process, compared rows back to back:

1. speechsum: one optimizer step of the DPO loop: `dpo.pair_logps` (one forward over
   [chosen_1..chosen_P, rejected_1..rejected_P] with the audio, LM head at completion positions
   only), sigmoid DPO (beta 0.1) against reference log-probs computed once before training
   (`dpo.sequence_logps_of`, as `build_preferences` does), backward, clip, AdamW.
2. TRL DPOTrainer (trl 1.16) with `precompute_ref_log_probs=True`, the like-for-like baseline
   (the goal is measured against it): the same LLM folder, our LoRA (r16, alpha 32,
   q,k,v,o,gate,up,down), the same pairs per step, the same prompt length (transcript tokens
   stand in for the audio tokens) and completion lengths, sigmoid loss, beta 0.1, gradient
   checkpointing off like ours (TRL's default is on). TRL tokenizes text itself; its prompt is
   the decoded text of our text-mode prompt and its completions end in eos (<|im_end|>), so
   lengths match ours within a token (both are recorded).
3. TRL DPOTrainer with its default, a reference forward (adapter disabled) in every step.

The step has no sampling and no teacher: pairs are sampled and judged once before training
(`build_preferences`), with the reference log-probs; the one-time reference pass is reported
per pair for ours and for TRL's precompute. samples/s = preference pairs trained per second =
batch / step time (median of the timed steps; see bench/common.py for the shared-machine
rules). Prints a table, writes JSON to bench/results/dpo.json. Goal (issue 5): >= 1.2x TRL.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import torch
from common import (INSTRUCTIONS, LLM, TRANSCRIPT, Phases, best_peak, lora_config, machine_argv, now, parse_args,
                    peak_sample, per_step, result_header, run_configs, speech_model, speedups, summary_ids,
                    time_steps, trl_baseline, trl_step_timer, trl_train, trl_training_args, write_result)

GOAL = 1.2  # samples/s vs TRL DPOTrainer with precomputed reference log-probs
BETA = 0.1


def configs(dtypes: list[str]) -> list[tuple[str, str, str]]:
    """(impl, reference, dtype); the compared rows run back to back."""
    out = []
    for dt in dtypes:
        out += [("speechsum", "precomputed", dt), ("trl", "precomputed", dt), ("trl", "every step", dt)]
    return out


def completions(tok, end_of_turn: int, args) -> tuple[list[int], list[int]]:
    """(chosen ids, rejected ids), each ending in the end-of-turn token, of the requested lengths."""
    return (summary_ids(tok, end_of_turn, args.chosen_tokens),
            summary_ids(tok, end_of_turn, args.rejected_tokens, text=TRANSCRIPT))


# ------------------------------------------------------------------------------------ speechsum


def run_speechsum(dtype: str, args) -> dict:
    from speechsum.training import common, dpo
    from speechsum.training.losses import dpo_loss

    acc, model, ddp_model, opt, params, frames, encoder = speech_model(args.batch, args.audio_seconds, dtype)
    chosen, rejected = completions(model.tokenizer, model.end_of_turn_id, args)
    instrs = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(args.batch)]
    p = args.batch
    t = now()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):  # as build_preferences
        ref = dpo.sequence_logps_of(model, frames + frames, instrs * 2, [chosen] * p + [rejected] * p)
    ref_s = now() - t
    pairs = [{"id": f"bench-{i}", "pair": {"instruction": instrs[i], "chosen_ids": chosen, "rejected_ids": rejected,
                                           "ref_chosen": float(ref[i]), "ref_rejected": float(ref[p + i])}}
             for i in range(p)]
    ref_c, ref_r = ref[:p], ref[p:]

    def step():
        seq, _ = dpo.pair_logps(ddp_model, model, frames, pairs)
        loss, _, _ = dpo_loss(seq[:p], seq[p:], ref_c, ref_r, BETA)
        acc.backward(loss)
        common.clip_and_step(acc, params, opt, 1.0)
        return loss.item()

    timed = time_steps(step, args.warmup, args.steps)
    audio_tokens = model.projector.num_tokens(len(frames[0]))
    return {**timed, "prompt_tokens": [len(a) + audio_tokens + len(b) for a, b in map(model.prompt_ids, instrs)],
            "chosen_tokens": len(chosen), "rejected_tokens": len(rejected), "audio_tokens": audio_tokens,
            "reference_seconds_per_pair": round(ref_s / p, 3), "encoder": encoder,
            "trainable_params": sum(x.numel() for x in params)}


# ------------------------------------------------------------------------------------ TRL


def run_trl(reference: str, dtype: str, args) -> dict:
    import trl
    from datasets import Dataset

    side = trl_baseline(args.audio_seconds, args.batch)
    tok = side.tok
    chosen, rejected = completions(tok, side.end_of_turn, args)
    # text rows (DPOTrainer tokenizes them itself and appends eos = <|im_end|> to each completion)
    rows = [{"prompt": tok.decode(p), "chosen": tok.decode(chosen[:-1]), "rejected": tok.decode(rejected[:-1])}
            for _, p in side.prompts]
    n_steps = args.warmup + args.steps
    data = Dataset.from_list(rows * n_steps)  # sequential sampler: the same pairs every step
    phases = Phases()
    # time the one-time reference pass (it runs inside the trainer's constructor)
    trl.DPOTrainer._precompute_ref_logps = phases.wrap(trl.DPOTrainer._precompute_ref_logps, "reference")
    timer = trl_step_timer(args.warmup)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = trl.DPOConfig(**trl_training_args(tmp, args.batch, n_steps, dtype), beta=BETA, loss_type=["sigmoid"],
                            precompute_ref_log_probs=reference == "precomputed", max_length=None)
        trainer = trl.DPOTrainer(model=side.model, args=cfg, train_dataset=data, processing_class=tok,
                                 peft_config=lora_config(), callbacks=[timer])
        ref_s = phases.take().get("reference")
        first = trainer.train_dataset[0]
        prompt_tokens = [len(trainer.train_dataset[i]["prompt_ids"]) for i in range(args.batch)]
        row = trl_train(trainer, timer)
    return {**row, "audio_tokens": side.audio_tokens, "prompt_tokens": prompt_tokens,
            "chosen_tokens": len(first["chosen_ids"]), "rejected_tokens": len(first["rejected_ids"]),
            "reference_seconds_per_pair": round(ref_s / len(data), 3) if ref_s is not None else None}


# ------------------------------------------------------------------------------------ driver


def worker(name: str, args) -> dict:
    impl, reference, dtype = name.split(":")
    peak = peak_sample()
    row = run_speechsum(dtype, args) if impl == "speechsum" else run_trl(reference, dtype, args)
    return {**row, "peak_samples": peak}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3, help="timed optimizer steps per configuration")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=4, help="preference pairs per step")
    ap.add_argument("--audio-seconds", type=float, default=15.0)
    ap.add_argument("--chosen-tokens", type=int, default=60)
    ap.add_argument("--rejected-tokens", type=int, default=45)
    ap.add_argument("--dtypes", nargs="+", choices=["bf16", "fp32"], default=["bf16"])
    ap.add_argument("--only", nargs="*", default=None, help="impl names to run (speechsum, trl)")
    args = parse_args(ap, argv, "dpo.json", worker)
    if args is None:
        return 0

    t_start = time.perf_counter()
    start_peak = peak_sample()
    argv = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch", str(args.batch),
            "--audio-seconds", str(args.audio_seconds), "--chosen-tokens", str(args.chosen_tokens),
            "--rejected-tokens", str(args.rejected_tokens)] + machine_argv(args)
    named = [(f"{impl}:{ref}:{dt}", {"impl": impl, "reference": ref, "dtype": dt, "batch": args.batch})
                for impl, ref, dt in configs(args.dtypes)]
    rows = run_configs(__file__, named, argv, args.only)
    peak, samples = best_peak(start_peak, rows)
    per_step(rows, args, args.batch)
    speedups(rows, lambda r, x: x["impl"] == "trl" and x["reference"] == "precomputed" and x["dtype"] == r["dtype"])

    print(f"\n{'impl':10} {'reference':11} {'dtype':5} {'pairs':>5} {'tokens':>13} {'s/step':>7} {'samples/s':>9} "
          f"{'ref s/pair':>10} {'vs TRL':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['impl']:10} {r['reference']:11} {r['dtype']:5} {r['batch']:>5}  not run: {r['error']}")
            continue
        lens = f"{r['prompt_tokens'][0]}+{r['chosen_tokens']}/{r['rejected_tokens']}"
        rs = f"{r['reference_seconds_per_pair']:.3f}" if r.get("reference_seconds_per_pair") is not None else "-"
        ratio = f"{r['speedup_vs_trl']:.2f}x" if "speedup_vs_trl" in r else "n/a"
        print(f"{r['impl']:10} {r['reference']:11} {r['dtype']:5} {r['batch']:>5} {lens:>13} "
              f"{r['seconds_per_step']:>7.2f} {r['samples_per_s']:>9.3f} {rs:>10} {ratio:>7}")
    for r in rows:
        if r["impl"] == "speechsum" and "speedup_vs_trl" in r:
            print(f"goal: {r['dtype']} DPO >= {GOAL}x TRL DPOTrainer (precomputed reference): "
                  f"{r['speedup_vs_trl']:.2f}x, {'met' if r['speedup_vs_trl'] >= GOAL else 'NOT met'}")

    result = {
        "llm": LLM, "batch_pairs": args.batch, "audio_seconds": args.audio_seconds,
        "chosen_tokens": args.chosen_tokens, "rejected_tokens": args.rejected_tokens, "beta": BETA,
        "tokens": "prompt tokens (first item) + chosen/rejected completion tokens, as each side tokenized them",
        "goal": {"speedup_vs_trl_precomputed": GOAL}, **result_header(args, peak, samples, t_start), "rows": rows,
    }
    write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
