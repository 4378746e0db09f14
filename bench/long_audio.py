"""Long recordings: time and peak memory of `summarize` per audio minute, 1 to 30 minutes.

    .venv/bin/python bench/long_audio.py [--minutes 1 2 5 10 20 30] [--model RUN/final] [--new-tokens 32]
                                         [--repeats 3]
    .venv/bin/python bench/long_audio.py --threads 1 --clock cpu   # when other processes share the CPU

Each length runs `SpeechLM.summarize(path)` (bench/summarize.py's timed `SpeechSystem`) once in
each of `--repeats` fresh processes (the row keeps the medians), after the model is loaded and
warmed up on 10 s: time per part (encoder, projector, LLM prefill, decoding) and memory - the
resident set before the call and its peak during the call (the kernel's high-water mark `VmHWM`,
reset through /proc/self/clear_refs just before the call, so model loading does not count; the
allocator's free heap is handed back first, so the resident set before the call does not depend on
what loading left cached). Decoding is fixed at `--new-tokens` (stop
tokens disabled): the answer's length is not a function of the audio, so it would only add noise.

Recordings come from bench/summarize.py's builder (procedural documents spoken by espeak-ng with
unseen test voices, joined and cut at a sentence boundary). `max_audio_tokens` (default 12,000 =
32 min at stack 8) caps an item; a length over it is reported as the error `summarize` raises.

`--window-seconds` is `summarize`'s: a longer recording is summarized in parts of at most that
many seconds, then from the parts' notes (speechsum/longform.py), so every part's decoding and
the final answer are counted; 0 runs the recording in one pass (one prefill over all of it).

Goal (issue 6): flat cost per audio minute. Judged on the marginal cost of a minute between
consecutive lengths (so fixed costs - the prompt, a padded last window, allocator noise - do not
count) of the call's time and of the memory the call adds: flat when the largest marginal value
is at most FLAT_TOLERANCE x the smallest. Memory is also judged as bounded or not: the longest
length's peak increase within FLAT_TOLERANCE x the shortest's (a file summarized in parts is read
part by part, so its memory need not grow). Averages per minute are in the table too. Prints a
table and writes JSON to bench/results/long_audio.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from common import (SAMPLE_RATE, add_machine_args, apply_machine_args, machine_argv, machine_info, peak_rss_increase,
                    run_worker, write_result)
from summarize import SpeechSystem, data_dir, exact_length, load_speech_model, parts_of, recording, write_flac

from speechsum.longform import WINDOW_S

FLAT_TOLERANCE = 1.25
WARMUP_SECONDS = 10


def worker(path: str, args) -> dict:
    import soundfile as sf

    from speechsum.audio import encoder_frames
    from speechsum.data.styles import instruction_for
    from summarize import STYLE

    model, label = load_speech_model(args.model)
    system = SpeechSystem(model)
    samples, _ = sf.read(path, dtype="float32")
    model.summarize(samples[: WARMUP_SECONDS * SAMPLE_RATE], sample_rate=SAMPLE_RATE, max_new_tokens=2)
    system.clock.take()
    memory = {}
    with exact_length(model), peak_rss_increase(memory):
        row = system.run(path, instruction_for(STYLE), args.new_tokens, 0, args.window_seconds)  # no loop stop
    return {**row, "audio_tokens": model.projector.num_tokens(encoder_frames(len(samples))), "model": label,
            "parts": parts_of(len(samples) / SAMPLE_RATE, args.window_seconds), **memory}


MEDIAN_KEYS = ("total_s", "encoder_s", "projector_s", "prefill_s", "decode_s", "rss_before_mb", "peak_rss_mb",
               "peak_increase_mb")


def median_row(runs: list[dict]) -> dict:
    """One length's row from its repeated processes: each timing and memory figure is the median
    over the runs (identical runs here differ by up to ~0.2 GB in peak and ~15 % in time), and the
    runs' own totals and peak increases are kept beside it. An error in any run is the row's error."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    row = dict(runs[0])
    if len(runs) > 1:
        for key in MEDIAN_KEYS:
            row[key] = round(statistics.median(r[key] for r in runs), 4)
        row["runs_total_s"] = [round(r["total_s"], 3) for r in runs]
        row["runs_peak_increase_mb"] = [r["peak_increase_mb"] for r in runs]
    return row


def bounded(rows: list[dict]) -> dict:
    """Memory that does not grow with the recording: the longest length's peak increase within
    FLAT_TOLERANCE x the shortest's. (The marginal criterion above asks for a constant cost per
    extra minute; for memory that stays put that cost is ~0 and its max/min ratio is noise.)"""
    if len(rows) < 2:
        return {"ratio": None, "bounded": None}
    # a 1-MB floor: a shortest call that adds nothing measurable must not divide by zero
    ratio = rows[-1]["peak_increase_mb"] / max(rows[0]["peak_increase_mb"], 1.0)
    return {"ratio": round(ratio, 2), "bounded": ratio <= FLAT_TOLERANCE,
            "mb": [rows[0]["peak_increase_mb"], rows[-1]["peak_increase_mb"]]}


def flat(values: list[float]) -> dict:
    if len(values) < 1:
        return {"max_over_min": None, "flat": None, "values": values}  # needs two lengths
    ratio = max(values) / min(values) if min(values) > 0 else float("inf")
    return {"max_over_min": round(ratio, 2), "flat": ratio <= FLAT_TOLERANCE, "values": values}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 2, 5, 10, 20, 30])
    ap.add_argument("--model", default=None, help="trained SpeechLM checkpoint folder (default: untrained assembly)")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per call (fixed)")
    ap.add_argument("--window-seconds", type=float, default=WINDOW_S,
                    help="as `speechsum summarize`: longer recordings go in parts (0: one pass however long)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="processes per length; the row keeps the median of each time and memory figure")
    ap.add_argument("--note", default="", help="free text recorded in the JSON (e.g. what else ran on the machine)")
    add_machine_args(ap)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "long_audio.json"))
    args = ap.parse_args(argv)
    apply_machine_args(ap, args)
    if args.repeats < 1:
        ap.error(f"--repeats {args.repeats}: must be at least 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return 0

    t_start = time.perf_counter()
    root = data_dir()
    rows = []
    for minutes in sorted(args.minutes):
        item = recording(minutes * 60, root)
        item["id"] = f"{minutes:g}min"
        path = write_flac(item, root)
        print(f"  {item['id']}: {item['duration'] / 60:.2f} min of speech, {len(item['documents'])} documents ...",
              flush=True)
        argv = (["--new-tokens", str(args.new_tokens), "--window-seconds", str(args.window_seconds)]
                + machine_argv(args) + (["--model", args.model] if args.model else []))
        first = {"minutes": minutes, "audio_seconds": round(item["duration"], 2)}
        row = median_row([run_worker(__file__, path, argv, first) for _ in range(args.repeats)])
        if "error" not in row:
            m = row["audio_seconds"] / 60
            row["audio_part_s"] = round(row["encoder_s"] + row["projector_s"] + row["prefill_s"], 4)
            row["total_s"] = round(row["total_s"], 4)
            row["s_per_min"] = round(row["total_s"] / m, 3)
            row["audio_part_s_per_min"] = round(row["audio_part_s"] / m, 3)
            for part in ("encoder", "prefill", "decode"):
                row[f"{part}_s_per_min"] = round(row[f"{part}_s"] / m, 3)
            row["peak_increase_mb_per_min"] = round(row["peak_increase_mb"] / m, 1)
        rows.append(row)

    ok = [r for r in rows if "error" not in r]
    for prev, r in zip(ok, ok[1:]):
        m = (r["audio_seconds"] - prev["audio_seconds"]) / 60
        for key in ("total_s", "audio_part_s", "encoder_s", "prefill_s", "peak_increase_mb"):
            r[f"marginal_{key}_per_min"] = round((r[key] - prev[key]) / m, 3)
    marginal = ok[1:]
    goals = {"tolerance": FLAT_TOLERANCE,
             "time": flat([r["marginal_total_s_per_min"] for r in marginal]),
             "memory": flat([r["marginal_peak_increase_mb_per_min"] for r in marginal]),
             "parts": {p: flat([r[f"marginal_{p}_s_per_min"] for r in marginal]) for p in ("encoder", "prefill")},
             "memory_bounded": bounded(ok),
             "judged_on": "marginal cost of a minute between consecutive lengths: the call's seconds (every part "
                          "of it: in parts each part decodes too), and the peak RSS increase"}
    report(rows, goals)
    result = {
        "model": ok[0]["model"] if ok else args.model, "trained": args.model is not None,
        "new_tokens": args.new_tokens, "window_seconds": args.window_seconds, "clock": "process CPU time (1 thread)" if args.clock == "cpu" else "wall time",
        "memory": "VmRSS before the call (after gc and malloc_trim), VmHWM (reset just before) at its end; "
                  "one process per run", "repeats": args.repeats,
        "note": args.note, "goals": goals, "machine": machine_info(),
        "bench_seconds": round(time.perf_counter() - t_start, 1),
        "rows": [{k: v for k, v in r.items() if k != "model"} for r in rows],
    }
    write_result(args.out, result)
    return 0


def report(rows: list[dict], goals: dict) -> None:
    print(f"\n{'min':>5} {'parts':>5} {'tokens':>6} {'encoder':>8} {'prefill':>8} {'decode':>7} {'total s':>8} {'s/min':>6} "
          f"{'enc/min':>7} {'pre/min':>7} {'audio s/min':>11} {'marg s/m':>8} {'RSS MB':>7} {'peak MB':>8} {'+MB':>6} "
          f"{'+MB/min':>7} {'marg +MB':>8}")
    for r in rows:
        if "error" in r:
            print(f"{r['minutes']:>5g}  not run: {r['error']}")
            continue
        print(f"{r['audio_seconds'] / 60:>5.2f} {r['parts']:>5} {r['audio_tokens']:>6} {r['encoder_s']:>8.2f} {r['prefill_s']:>8.2f} "
              f"{r['decode_s']:>7.2f} {r['total_s']:>8.2f} {r['s_per_min']:>6.2f} {r['encoder_s_per_min']:>7.2f} "
              f"{r['prefill_s_per_min']:>7.2f} {r['audio_part_s_per_min']:>11.2f} "
              f"{r.get('marginal_total_s_per_min', float('nan')):>8.2f} "
              f"{r['rss_before_mb']:>7.0f} {r['peak_rss_mb']:>8.0f} {r['peak_increase_mb']:>6.0f} "
              f"{r['peak_increase_mb_per_min']:>7.1f} {r.get('marginal_peak_increase_mb_per_min', float('nan')):>8.1f}")
    if goals["time"]["flat"] is None:
        print("flatness needs at least two lengths")
        return
    for name in ("time", "memory"):
        g = goals[name]
        print(f"{name}: marginal cost per minute max/min {g['max_over_min']:.2f} -> "
              f"{'flat' if g['flat'] else 'NOT flat'} (tolerance {goals['tolerance']}x)")
    b = goals["memory_bounded"]
    print(f"memory: peak increase at the longest length / at the shortest {b['ratio']:.2f} -> "
          f"{'bounded' if b['bounded'] else 'grows with the recording'} (tolerance {goals['tolerance']}x)")
    print("per part, marginal max/min: " + ", ".join(f"{p} {g['max_over_min']:.2f}" for p, g in goals["parts"].items()))


if __name__ == "__main__":
    sys.exit(main())
