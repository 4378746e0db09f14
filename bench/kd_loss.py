"""Peak memory and time of the KD loss, whole or in chunks of positions (`kd.loss_chunk`).

    .venv/bin/python bench/kd_loss.py [--positions 1024] [--vocabs 49152 151936] [--chunks 0 128 32]
                                      [--steps 2] [--divergence jsd]

Each row, in its own process: the student's logits at N completion positions (bf16, as the LM head
gives them under autocast, requiring grad) and a local teacher's full log-probs [N, V] (fp32, as
`LocalTeacher.score` gives them) go through `kd.kd_loss` (generalised JSD, beta 0.5, T 1 by default)
and backward, the way the KD stage calls it. Reported: the resident set's peak increase over the
block (inputs already allocated, so it is what the loss and its backward add) and the seconds per
forward + backward (median of `--steps`, after one untimed call). 49,152 is SmolLM2's vocabulary
(tiny preset), 151,936 Qwen2.5's (reference preset); 1024 positions = the reference KD's batch of
8 x 128 new tokens. The loss and the gradient's sum are printed too: chunking must not change them.
Prints a table, writes JSON to bench/results/kd_loss.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine_argv, machine_info, parse_args, peak_rss_increase, run_worker, write_result


def worker(name: str, args) -> dict:
    from speechsum.training import kd
    from speechsum.training.teachers import TeacherScores

    vocab, chunk = (int(x) for x in name.split(":"))
    g = torch.Generator().manual_seed(0)
    n = args.positions
    logits = torch.randn(n, vocab, generator=g).to(torch.bfloat16).requires_grad_(True)
    scores = TeacherScores(rows=torch.zeros(n, dtype=torch.long),
                           logp=torch.log_softmax(torch.randn(n, vocab, generator=g) * 2, -1))
    cfg = kd.KDConfig(divergence=args.divergence, loss_chunk=chunk)

    def step():
        logits.grad = None
        loss = kd.kd_loss(cfg, logits, scores)
        loss.backward()
        return loss

    step()  # untimed: first-call allocations
    row: dict = {}
    seconds = []
    with peak_rss_increase(row):
        for _ in range(args.steps):
            t = time.perf_counter()
            loss = step()
            seconds.append(time.perf_counter() - t)
    return {**row, "seconds": round(statistics.median(seconds), 3), "loss": loss.item(),
            "grad_abs_sum": logits.grad.float().abs().sum().item()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--positions", type=int, default=1024, help="completion positions N (batch x new tokens)")
    ap.add_argument("--vocabs", type=int, nargs="+", default=[49152, 151936])
    ap.add_argument("--chunks", type=int, nargs="+", default=[0, 128, 32], help="loss_chunk values (0: whole)")
    ap.add_argument("--steps", type=int, default=2, help="timed forward + backward calls per row")
    ap.add_argument("--divergence", default="jsd", choices=["jsd", "forward_kl", "reverse_kl"])
    args = parse_args(ap, argv, "kd_loss.json", worker)
    if args is None:  # a worker process: its row is printed
        return
    t0 = time.perf_counter()
    argv_w = machine_argv(args) + ["--positions", str(args.positions), "--steps", str(args.steps),
                                   "--divergence", args.divergence]
    rows = []
    for vocab in args.vocabs:
        for chunk in args.chunks:
            print(f"  running vocab {vocab}, loss_chunk {chunk} ...", flush=True)
            rows.append(run_worker(__file__, f"{vocab}:{chunk}", argv_w,
                                   {"vocab": vocab, "loss_chunk": chunk, "positions": args.positions}))
    print(f"\nKD loss ({args.divergence}) forward + backward at {args.positions} positions\n")
    print("| vocab | loss_chunk | peak increase (MB) | s / call | loss | sum abs grad |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['vocab']} | {r['loss_chunk']} | failed: {r['error']} | | | |")
            continue
        print(f"| {r['vocab']} | {r['loss_chunk'] or 'whole'} | {r['peak_increase_mb']:.0f} | {r['seconds']:.2f} "
              f"| {r['loss']:.6f} | {r['grad_abs_sum']:.4f} |")
    result = {"benchmark": "kd_loss", "divergence": args.divergence, "rows": rows, "note": args.note,
              "machine": machine_info(), "bench_seconds": round(time.perf_counter() - t0, 1)}
    write_result(args.out, result)


if __name__ == "__main__":
    main()
