"""Memory per rank and step time of SFT under FSDP (`loop.fsdp`, training/shard.py) against DDP and
one process, on real weights.

    .venv/bin/python bench/fsdp.py [--llm qwen2.5-0.5b-instruct] [--data runs/data] [--steps 3]
                                   [--modes one,ddp,fsdp] [--training full,lora]

Each row is `speechsum train sft` exactly as a user runs it (assembled from the registry encoder and
`--llm`, no aligned connector: the memory does not depend on it), for `--steps` optimizer steps of
`--batch` items per rank on the first training items of `--data` (a `speechsum synth` folder with
its encoder cache; `make demo` writes runs/data), bf16 autocast where native; the `full` rows train
at `FULL_LLM_LR` (the preset's rate is LoRA's):

- one:  1 process, batch 2 x batch;
- ddp:  2 CPU ranks (gloo) under `accelerate launch --multi_gpu`, the whole model on each;
- fsdp: 2 CPU ranks under `accelerate launch --use_fsdp`: the model sharded but the frozen encoder.

The two-rank rows have the one-rank row's global batch, so their losses must equal it up to bf16
rounding (the table shows step 1's). "training state MB" is what a rank holds of weights,
gradients and Adam state (`common.state_bytes`, the local shard of a sharded tensor; `state_mb` in
the run's memory.json, after its first step): what FSDP divides. "peak RSS MB" is the largest resident set of any rank (getrusage of the launched
processes) over the whole run, final save included; "by rank after step 1" is each rank's own peak
when its first step ends (`peak_rss_mb_by_rank` in memory.json): loading (under FSDP only rank 0
reads the weights, the others build a meta-device skeleton), sharding and one step (AdamW's state
only appears at that step's end, so from step 2 on each forward and backward runs beside it: the
later peaks add the state's two moments, 2.4 GB a rank for Qwen2.5-0.5B, measured); then each
rank's peak after the last step and its checkpoint, and after the final save (under FSDP the
trained weights gathered to rank 0 for `final/`). The allocator
keeps freed memory, so a peak falls less than the state. "step s" is the median step time after the first. On this 2-core machine two ranks share
the cores, so times say what sharding costs in communication, not what a GPU cluster would gain.
JSON to bench/results/fsdp.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL_LLM_LR = 1e-5  # a usual rate for fine-tuning a whole 0.5B LLM; memory and step time do not depend on it


def run_row(mode: str, training: str, args, work: Path) -> dict:
    out = work / f"{training}-{mode}"
    overrides = [
        "init=", f"model.llm={args.llm}", f"model.llm_training={training}", f"data.path={args.data}",
        f"data.max_items={2 * args.batch * args.steps}", f"loop.out_dir={out}", f"loop.max_steps={args.steps}",
        f"loop.batch_size={args.batch * (2 if mode == 'one' else 1)}", "optim.grad_accum=1", "optim.warmup_steps=1",
        f"loop.save_every={args.steps}", "loop.eval_items=0", "loop.keep_last=1",
        # the preset's rate is for LoRA; the whole LLM at 5e-4 diverged (loss 4.87 -> 13.6 in 3 steps)
        *([f"optim.lr={FULL_LLM_LR}"] if training == "full" else []),
    ]
    train = ["-m", "speechsum.cli", "train", "sft", "--config", str(ROOT / "configs/sft/tiny.yaml"), *overrides]
    launch = {"one": [], "ddp": ["--multi_gpu"], "fsdp": ["--use_fsdp", "--fsdp_version", "2"]}[mode]
    cmd = [sys.executable, *train] if mode == "one" else [
        sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", "2", "--num_machines", "1",
        "--dynamo_backend", "no", *train]
    # a fresh interpreter per row: getrusage(RUSAGE_CHILDREN) is the largest process it waited for
    probe = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{training}/{mode} failed:\n{proc.stderr[-3000:]}")
    peak_mb = int(proc.stdout.split()[-1]) / 1024
    rows = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    memory = json.loads((out / "memory.json").read_text())
    return {"training": training, "mode": mode, "ranks": 1 if mode == "one" else 2, "state_mb": memory["state_mb"],
            "peak_mb": round(peak_mb), "step1_peak_mb_by_rank": memory["peak_rss_mb_by_rank"],
            "before_final_peak_mb_by_rank": memory.get("peak_rss_mb_by_rank_before_final"),
            "end_peak_mb_by_rank": memory.get("peak_rss_mb_by_rank_end"),
            "skeleton_ranks": memory["skeleton_ranks"],
            "step_s": round(statistics.median(r["seconds"] for r in rows[1:]) if len(rows) > 1 else rows[0]["seconds"], 2),
            "loss_step1": rows[0]["loss"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llm", default="qwen2.5-0.5b-instruct")
    ap.add_argument("--data", default=str(ROOT / "runs/data"))
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="items per rank per step")
    ap.add_argument("--modes", default="one,ddp,fsdp")
    ap.add_argument("--training", default="full,lora")
    ap.add_argument("--out", default=str(ROOT / "bench/results/fsdp.json"))
    args = ap.parse_args()
    if not (Path(args.data) / "train").is_dir():
        raise SystemExit(f"--data {args.data}: no train/ split (make one with `make demo` or `speechsum synth`)")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-fsdp-") as tmp:
        for training in args.training.split(","):
            for mode in args.modes.split(","):
                row = run_row(mode, training, args, Path(tmp))
                results.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{args.llm}, {args.steps} SFT steps, global batch {2 * args.batch}\n")
    print("| LLM training | mode | ranks | training state MB per rank | peak RSS MB per rank | peak RSS MB by rank "
          "after step 1 | ... after the last step | ... after the final save | step s | loss at step 1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        by_rank = [" / ".join(map(str, r[k] or [])) or "-"
                   for k in ("step1_peak_mb_by_rank", "before_final_peak_mb_by_rank", "end_peak_mb_by_rank")]
        print(f"| {r['training']} | {r['mode']} | {r['ranks']} | {r['state_mb']} | {r['peak_mb']} | "
              f"{' | '.join(by_rank)} | {r['step_s']} | {r['loss_step1']:.5f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"llm": args.llm, "steps": args.steps, "batch_per_rank": args.batch,
                                          "rows": results}, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
