"""SFT step time on real data when a step's batch is cut into length-sorted micro-batches.

    .venv/bin/python bench/sft_batching.py [--data runs/tiny/data] [--steps 8] [--cuts 1 2 4]

The demo's training items run 17-120 s, so a batch of 8 drawn at random pads every sequence to
its longest (1.66x the real tokens on the demo's data). `sft.train` sorts a step's items by length
before it cuts them into `grad_accum` micro-batches (`training.common.by_length`); the update is
the same (the loss is the step's token sum over its token count; tests/training/test_sft.py). This
runs the real SFT loop (configs/sft/tiny.yaml: the shipped connector, projector + LoRA, bf16) for
`--steps` steps of the same global batch (8) cut into 1, 2 or 4 micro-batches, each in its own
process, and reports the median seconds per step after the first (warm-up) step, the padded and
real tokens per step, and the losses (equal across rows up to bf16 rounding: the same items in
the same steps). Prints a table and writes bench/results/sft_batching.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import machine_info, parse_args, run_worker, write_result

ROOT = Path(__file__).resolve().parent.parent
GLOBAL_BATCH = 8


def worker(name: str, args) -> dict:
    from speechsum.config import load_config
    from speechsum.models.speech_lm import SpeechLM
    from speechsum.training import sft

    cuts = int(name)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(sft.SFTConfig, str(ROOT / "configs/sft/tiny.yaml"), [
            f"data.path={args.data}", f"loop.out_dir={tmp}/run", f"loop.max_steps={args.steps}",
            f"loop.batch_size={GLOBAL_BATCH // cuts}", f"optim.grad_accum={cuts}", "loop.eval_every=0",
            f"loop.save_every={args.steps}", "loop.eval_items=1", f"init={ROOT / 'checkpoints/tiny-align'}"])
        padded, real = [], []  # tokens of each forward: rows x longest, and real ones
        build = SpeechLM.build_batch

        def counting(self, items, *a, **kw):
            batch = build(self, items, *a, **kw)
            padded.append(int(batch.attention_mask.numel()))
            real.append(int(batch.attention_mask.sum()))
            return batch

        SpeechLM.build_batch = counting
        try:
            sft.train(cfg, log=lambda *a: None)
        finally:
            SpeechLM.build_batch = build
        rows = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "seconds" in r]
    n = len(steps) * cuts  # the training forwards (the dev evaluation at the end builds more)
    return {"seconds": [round(r["seconds"], 3) for r in steps], "losses": [r["loss"] for r in steps],
            "padded_tokens": sum(padded[:n]) / len(steps), "real_tokens": sum(real[:n]) / len(steps)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT / "runs/tiny/data"), help="a synth folder with an encoder cache")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--cuts", type=int, nargs="+", default=[1, 2, 4], help="micro-batches per step of 8 items")
    args = parse_args(ap, argv, "sft_batching.json", worker)
    if args is None:
        return 0
    if not (Path(args.data) / "train" / "manifest.parquet").is_file():
        print(f"error: {args.data}: no train/manifest.parquet (run `make demo` first, or pass --data)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    argv = ["--data", args.data, "--steps", str(args.steps)]
    rows = []
    for cuts in args.cuts:
        print(f"  running {GLOBAL_BATCH // cuts} x {cuts} ...", flush=True)
        rows.append(run_worker(__file__, str(cuts), argv, {"batch_size": GLOBAL_BATCH // cuts, "grad_accum": cuts}))
    print(f"\n{'micro-batches':>13} {'s/step':>7} {'vs 1':>6} {'padded tok':>10} {'real tok':>8} {'losses (first 3)':>24}")
    base = None
    for r in rows:
        if "error" in r:
            print(f"{r['grad_accum']:>13}  failed: {r['error']}")
            continue
        r["seconds_per_step"] = round(statistics.median(r["seconds"][1:]), 3)
        base = base or r["seconds_per_step"]
        r["speedup"] = round(base / r["seconds_per_step"], 2)
        print(f"{r['batch_size']:>4} x {r['grad_accum']:<6} {r['seconds_per_step']:>7.2f} {r['speedup']:>5.2f}x "
              f"{r['padded_tokens']:>10.0f} {r['real_tokens']:>8.0f} "
              f"{', '.join(f'{x:.4f}' for x in r['losses'][:3]):>24}")
    write_result(args.out, {"data": args.data, "steps": args.steps, "global_batch": GLOBAL_BATCH, "note": args.note,
                            "clock": "wall time; the median of the steps after the first",
                            "machine": machine_info(), "rows": rows,
                            "bench_seconds": round(time.perf_counter() - t0, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
