"""End-to-end summarization time: SpeechLM (`summarize`) vs the ASR cascade, and both systems' quality.

    .venv/bin/python bench/summarize.py [--model RUN/final] [--seconds 10 60 300] [--repeats 1]
    .venv/bin/python bench/summarize.py --threads 1 --clock cpu   # when other processes share the CPU

Systems, both loaded once before timing (load times are reported apart) and warmed up on the
shortest recording:

- speechsum: `SpeechLM.summarize(path, style)`, the path of `speechsum summarize`: audio file ->
  Whisper encoder (30 s windows) -> projector -> the LLM's prefill over prompt + audio tokens ->
  greedy decoding, stopping an answer that loops (`--repeat-stop`, as `summarize`). `--model DIR`
  is a trained checkpoint folder; without it the untrained default assembly (`SpeechLMConfig()`:
  whisper-base + SmolLM2-135M, random projector) runs, and its quality numbers say nothing about
  the method (the table and JSON say "untrained").
- cascade: `speechsum eval`'s cascade baseline (evaluation/run_eval.py): faster-whisper greedy ASR
  with whisper-base (CTranslate2, int8) on the same file -> the SpeechLM's own LLM (without LoRA)
  reading the transcript with the same system prompt and instruction, greedy, with the same
  `--repeat-stop`.

Both use the same number of threads (torch's and CTranslate2's `cpu_threads`). Parts are timed
inside the real calls: encoder (`encode_audio`), projector, LLM prefill (every decoder forward
over a prompt: in parts, each batch of parts and then the answer's prompt of notes) and decoding
(the rest of the generation) for speechsum; ASR and the
same LLM split for the cascade; "total" is the whole call and includes reading the file, and
"1st tok" is the total without decoding (file, encoder or ASR, prefill: what the audio costs).

Decoding time depends on how long the answer is, which an untrained connector does not control
(it may stop at once or run to `--max-new-tokens`). So besides its natural answer, speechsum is
timed a second time decoding exactly as many LLM forwards as the cascade's answer took (stop
tokens and loop stopping disabled): "speechsum @ cascade length". The speed goal is judged on that row when the
model is untrained, and on the natural row otherwise.

Recordings: procedural documents with known facts from the synthetic-data generator
(`speechsum.data.synth.run_job`: the same documents, espeak-ng voices and timestamps as `speechsum
synth`), spoken with test voices that training never sees, joined until the next document would
overshoot the length; the last one is cut at a sentence boundary and keeps only the facts its
kept sentences voice. The reference summary joins each document's `paragraph` target (rendered
from its facts). Quality on the natural answers: fact recall and invented facts
(evaluation/facts.py), ROUGE-L (metrics.py), style compliance, and the ASR's WER. One recording
says little about quality, so `--quality-sets N` recordings of each length (documents 0-, 10-,
20-...; the first is the timed one) are summarized once more by both systems, and "equal or
better" is judged on their means (fact recall and ROUGE-L not lower, invented facts not more);
their summed times give a second speed figure ("speedup over sets").

Long recordings: `summarize` cuts a recording longer than `--window-seconds` into parts and
summarizes their notes (speechsum/longform.py); such a recording is also timed in one pass
("speechsum, one pass"), and `--long-sets` recordings of the longest length (documents 0-, 10-,
20-...) compare the two modes' quality.

Prints a table and writes JSON to bench/results/summarize.json. Goal (issue 6): end-to-end >= 2x
faster than the cascade at equal or better quality.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from common import SAMPLE_RATE, CpuMeter, add_machine_args, apply_machine_args, machine_info, now, write_result

from speechsum.longform import WINDOW_S, num_parts

# unseen test voices of configs/synth/tiny.yaml (espeak-ng only: no model download)
VOICES = ("espeak:en-gb-scotland+f1", "espeak:en-gb-scotland+m5", "espeak:en-029+f5", "espeak:en-029+m6",
          "espeak:en-us-nyc+m8", "espeak:en-gb-x-gbcwmd+Annie")
STYLE = "paragraph"  # `speechsum summarize`'s default style
TAIL_SECONDS = 0.25  # silence kept after the last sentence of a cut document
SPEED_GOAL = 2.0


# ------------------------------------------------------------------------------------ recordings


def data_dir() -> Path:
    from speechsum.models import registry

    return registry.home() / "cache" / "bench"


def spoken_document(index: int, root: Path):
    """Procedural test document `index` as `speechsum synth` makes it (cached on disk):
    (Document, sentence spans in seconds, 16 kHz samples)."""
    import soundfile as sf

    from speechsum.data import synth
    from speechsum.data.documents import GENRES

    job = synth.Job(split="test", index=index, source="procedural", split_dir=str(root / "documents"), seed=0,
                    genres=GENRES, length_scale=1.0, speed_range=(0.85, 1.15), voices=VOICES, items_per_doc=1,
                    held_out_fraction=0.0, cache_dir=str(synth.default_cache()))
    synth.run_job(job)
    split_dir = Path(job.split_dir)
    part = json.loads((split_dir / ".parts" / f"{job.doc_id}.json").read_text())[0]
    samples, sr = sf.read(split_dir / part["audio"], dtype="float32")
    assert sr == SAMPLE_RATE, sr
    return synth.make_document(job), [(s["start"], s["end"]) for s in part["sentences"]], samples


def cut_document(doc, k: int):
    """The document's first k sentences with the facts they voice (as `settle_facts` decides)."""
    from speechsum.data.documents import Document, settle_facts

    text = " ".join(s.text for s in doc.sentences[:k]).lower()
    facts = [copy.deepcopy(f) for f in doc.facts if f.kind == "person" or f.mention.lower() in text]
    cut = Document(doc.doc_id, doc.genre, doc.language, doc.register, list(doc.speakers), doc.sentences[:k], facts)
    settle_facts(cut)
    return cut


def recording(seconds: float, root: Path, first: int = 0) -> dict:
    """About `seconds` of speech (never more) from documents first, first + 1, ...: an item in the
    eval's shape (transcript, facts JSON, instruction, target, style) plus its samples."""
    from speechsum.data import styles

    pieces, docs, total, cut = [], [], 0.0, False
    while not cut:
        doc, spans, samples = spoken_document(first + len(docs), root)
        room = seconds - total
        if len(samples) / SAMPLE_RATE > room:
            k = sum(end <= room - TAIL_SECONDS for _, end in spans)
            if k == 0:
                break
            stop = spans[k - 1][1] + TAIL_SECONDS
            if k < len(spans):
                stop = min(stop, spans[k][0])
            doc, samples, cut = cut_document(doc, k), samples[: int(stop * SAMPLE_RATE)], True
        pieces.append(samples)
        docs.append(doc)
        total += len(samples) / SAMPLE_RATE
    if not docs:
        raise ValueError(f"{seconds} s is shorter than the first sentence")
    style = styles.STYLES[STYLE]
    targets = [styles.render_target(style, d, random.Random(f"bench:{d.doc_id}"))[0] for d in docs]
    facts = [{**f, "id": f"{d.doc_id}/{f['id']}"} for d in docs for f in d.to_json()]
    audio = np.concatenate(pieces)
    return {"id": f"{seconds:g}s" + (f"@{first}" if first else ""), "samples": audio, "duration": len(audio) / SAMPLE_RATE,
            "documents": [d.doc_id for d in docs], "cut_last": cut,
            "transcript": " ".join(d.transcript for d in docs), "facts": json.dumps(facts),
            "instruction": styles.instruction_for(STYLE), "target": "\n".join(targets), "style": STYLE}


def write_flac(item: dict, root: Path) -> str:
    import soundfile as sf

    path = root / "recordings" / f"{item['id']}.flac"
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, item["samples"], SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return str(path)


# ------------------------------------------------------------------------------------ timing


class PartClock:
    """Seconds per named part of one call, on the bench clock: `wrap` times a method (set as an
    instance attribute, so the model's own calls go through it), `time_decoder` splits an LLM's
    generation into prefills (decoder forwards over more than one position: a batch of prompts)
    and decode steps (one new position per row)."""

    def __init__(self):
        self.parts: dict[str, float] = {}
        self.forwards: list[tuple[int, float]] = []  # (positions per row, seconds) of each decoder forward

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds

    def wrap(self, obj, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        def timed(*a, **kw):
            t = now()
            try:
                return fn(*a, **kw)
            finally:
                self.add(name, now() - t)

        setattr(obj, attr, timed)

    def time_decoder(self, decoder: torch.nn.Module) -> None:
        starts = []

        def before(m, args, kwargs):
            x = kwargs.get("inputs_embeds", kwargs.get("input_ids", args[0] if args else None))
            starts.append((x.shape[1], now()))

        def after(m, args, kwargs, out):
            positions, t = starts.pop()
            self.forwards.append((positions, now() - t))

        decoder.register_forward_pre_hook(before, with_kwargs=True)
        decoder.register_forward_hook(after, with_kwargs=True)

    def take(self) -> dict:
        """This call's parts; the LLM part is split into prefill_s (every forward over a prompt: in
        parts, each batch of parts and the answer's prompt of notes) and decode_s (the rest: the
        decode steps and the sampling between forwards), with the count of each."""
        out = {k: round(v, 4) for k, v in self.parts.items()}
        if self.forwards:
            prefill = sum(s for n, s in self.forwards if n > 1)
            out["prefill_s"] = round(prefill, 4)
            out["decode_s"] = round(out.pop("llm_s") - prefill, 4)
            out["prefills"] = sum(n > 1 for n, _ in self.forwards)
            out["decode_steps"] = sum(n == 1 for n, _ in self.forwards)
        self.parts, self.forwards = {}, []
        return out


@contextmanager
def exact_length(model):
    """Generate exactly max_new_tokens: no token is a stop token (SpeechLM and TextLM both read
    `stop_ids`)."""
    saved, model.stop_ids = model.stop_ids, [-1]
    try:
        yield
    finally:
        model.stop_ids = saved


class SpeechSystem:
    """`SpeechLM.summarize` with its parts timed."""

    def __init__(self, model):
        self.model, self.clock = model, PartClock()
        self.clock.wrap(model, "encode_audio", "encoder_s")
        self.clock.wrap(model, "audio_items", "projector_s")
        self.clock.wrap(model, "generate_items", "llm_s")
        # decoding runs on `decoding_llm()`: the model itself, or where bf16 is native a persistent bf16
        # copy with the LoRA merged (refreshed in place each call, so hooks on it stay)
        self.clock.time_decoder(model.decoding_llm().get_decoder())

    def run(self, path: str, instruction: str, max_new_tokens: int, repeat_stop: int,
            window_seconds: float = 0.0) -> dict:
        """One `summarize` call; `window_seconds` as `speechsum summarize --window-seconds`."""
        t = now()
        text = self.model.summarize(path, instruction=instruction, max_new_tokens=max_new_tokens,
                                    repeat_stop=repeat_stop, window_seconds=window_seconds)
        return {"total_s": round(now() - t, 4), **self.clock.take(), "text": text}


class CascadeSystem:
    """faster-whisper ASR -> the text LLM on the transcript, as `speechsum eval`'s cascade."""

    def __init__(self, asr, lm, system_prompt: str):
        self.asr, self.lm, self.system_prompt, self.clock = asr, lm, system_prompt, PartClock()
        self.clock.wrap(lm, "chat", "llm_s")
        self.clock.time_decoder(lm.llm.get_decoder())

    def run(self, path: str, instruction: str, max_new_tokens: int, repeat_stop: int) -> dict:
        from speechsum.evaluation.run_eval import transcript_conversations, transcribe

        t = now()
        transcript = transcribe(self.asr, path)
        asr_s = now() - t
        conv = transcript_conversations([transcript], [instruction], self.system_prompt)
        text = self.lm.chat(conv, max_new_tokens=max_new_tokens, batch_size=1, repeat_stop=repeat_stop)[0]
        return {"total_s": round(now() - t, 4), "asr_s": round(asr_s, 4), **self.clock.take(), "text": text,
                "transcript": transcript}


def best_of(run, repeats: int, meter: CpuMeter) -> dict:
    """The fastest of `repeats` calls, with the other processes' load during each."""
    runs = []
    for _ in range(repeats):
        meter.start()
        runs.append(run())
        meter.stop()
    best = min(runs, key=lambda r: r["total_s"])
    return {**best, "totals_s": [r["total_s"] for r in runs], "other_load": meter.samples[-repeats:]}


def load_speech_model(model_dir: str | None):
    """(SpeechLM in eval mode, label): `speechsum summarize`'s loader (the untrained assembly without a folder)."""
    from speechsum.cli import _quiet_hf, load_speechlm

    _quiet_hf()
    torch.manual_seed(0)  # the untrained assembly's random projector: the same one every run
    model = load_speechlm(model_dir)
    model.eval()
    return model, model_dir or "untrained default assembly (SpeechLMConfig(): whisper-base + smollm2-135m-instruct, " \
                               "random projector)"


# ------------------------------------------------------------------------------------ driver


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="trained SpeechLM checkpoint folder (default: untrained assembly)")
    ap.add_argument("--seconds", type=float, nargs="+", default=[10, 60, 300], help="recording lengths")
    ap.add_argument("--repeats", type=int, default=1, help="timed calls per system and length (best is kept)")
    ap.add_argument("--max-new-tokens", type=int, default=256, help="as `speechsum summarize`")
    ap.add_argument("--repeat-stop", type=int, default=3,
                    help="as `speechsum summarize` (both systems stop a looping answer at its first copy; 0: off)")
    ap.add_argument("--window-seconds", type=float, default=WINDOW_S,
                    help="as `speechsum summarize`: longer recordings go in parts (also timed in one pass)")
    ap.add_argument("--quality-sets", type=int, default=4,
                    help="recordings per length (documents 0-, 10-, 20-...; the first is the timed one) on which "
                         "both systems' quality is averaged for the goal")
    ap.add_argument("--long-sets", type=int, default=3,
                    help="recordings of the longest length (from documents 0, 10, 20, ...) on which speechsum in "
                         "parts and in one pass are compared for quality")
    ap.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="both systems' batch-1 decoding steps multiply by int8 weights (speechsum's default "
                         "where bf16 is native; precision.py); --no-int8: bf16 weights")
    ap.add_argument("--note", default="", help="free text recorded in the JSON (e.g. what else ran on the machine)")
    add_machine_args(ap)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "summarize.json"))
    args = ap.parse_args(argv)
    apply_machine_args(ap, args)

    from speechsum.evaluation.run_eval import load_asr, score_items
    from speechsum.evaluation.wer import wer
    from speechsum.models.text_lm import TextLM
    from speechsum.precision import bf16_native

    t_start = time.perf_counter()
    root = data_dir()
    items = [recording(s, root) for s in sorted(args.seconds)]
    paths = [write_flac(it, root) for it in items]
    print("recordings: " + ", ".join(f"{it['id']} = {it['duration']:.1f} s ({len(it['documents'])} documents, "
                                     f"{len(json.loads(it['facts']))} facts)" for it in items), flush=True)

    t = time.perf_counter()
    model, label = load_speech_model(args.model)
    speech_load = time.perf_counter() - t
    t = time.perf_counter()
    # the cascade's LLM in bf16 where native, as `speechsum eval` runs it (and as speechsum decodes)
    cascade = CascadeSystem(load_asr(cpu_threads=torch.get_num_threads()),
                            TextLM.from_pretrained(model.config.llm, dtype=torch.bfloat16 if bf16_native() else torch.float32),
                            model.config.system_prompt)
    cascade_load = time.perf_counter() - t
    model.decode_int8 = cascade.lm.decode_int8 = args.int8 and bf16_native()
    speech = SpeechSystem(model)
    trained = args.model is not None
    for system in (speech, cascade):  # warm-up
        system.run(paths[0], items[0]["instruction"], 4, 0)

    meter = CpuMeter()
    rows = []
    both_modes: dict[str, list[str]] = {}  # recording -> speechsum's answer in parts and in one pass
    for item, path in zip(items, paths):
        print(f"  {item['id']}: speechsum ...", flush=True)
        ours = best_of(lambda: speech.run(path, item["instruction"], args.max_new_tokens, args.repeat_stop,
                                          args.window_seconds), args.repeats, meter)
        ours["parts"] = parts_of(item["duration"], args.window_seconds)
        one_pass = None
        if ours["parts"] > 1:
            print(f"  {item['id']}: speechsum in one pass ...", flush=True)
            one_pass = best_of(lambda: speech.run(path, item["instruction"], args.max_new_tokens, args.repeat_stop),
                               args.repeats, meter)
            both_modes[item["id"]] = [ours["text"], one_pass["text"]]
        print(f"  {item['id']}: cascade ...", flush=True)
        casc = best_of(lambda: cascade.run(path, item["instruction"], args.max_new_tokens, args.repeat_stop),
                       args.repeats, meter)
        forwards = casc["decode_steps"] + 1  # LLM forwards of the cascade's answer, prefill included
        print(f"  {item['id']}: speechsum at the cascade's length ({forwards} forwards) ...", flush=True)
        with exact_length(model):
            matched = best_of(lambda: speech.run(path, item["instruction"], forwards, 0), args.repeats, meter)
        systems = [("speechsum", ours), ("cascade", casc)] + ([("speechsum, one pass", one_pass)] if one_pass else [])
        scores = dict(zip([n for n, _ in systems], score_items([item] * len(systems), [r["text"] for _, r in systems],
                                                               embeddings=False)))
        common = {"length": item["id"], "audio_seconds": round(item["duration"], 2), "documents": item["documents"],
                  "n_facts": len(json.loads(item["facts"]))}
        asr_wer = wer([item["transcript"]], [casc["transcript"]])
        for system, r in systems + [("speechsum @ cascade length", matched)]:
            sc = scores.get(system)
            row = {**common, "system": system, **r, "rtf": round(r["total_s"] / item["duration"], 4),
                   "first_token_s": round(r["total_s"] - r["decode_s"], 4)}
            row["tokens"] = len(model.tokenizer(r["text"], add_special_tokens=False)["input_ids"])
            if sc is not None:
                row["quality"] = {k: sc[k] for k in ("fact_recall", "fact_precision", "invented_per_summary",
                                                     "rouge_l", "compliance")} | {"invented": sc["invented"]}
            if system == "cascade":
                row["asr_wer"] = round(asr_wer, 4)
            rows.append(row)

    quality_rows = []
    in_parts: dict[str, str] = {}  # recording -> speechsum's answer with --window-seconds (the long sets reuse it)
    for seconds, item, path in zip(sorted(args.seconds), items, paths):
        timed = {r["system"]: r for r in rows if r["length"] == item["id"] and "quality" in r}
        for k in range(max(args.quality_sets, 1)):
            extra = item if k == 0 else recording(seconds, root, first=10 * k)
            extra_path = path if k == 0 else write_flac(extra, root)
            if k == 0:
                runs = {n: timed[n] for n in ("speechsum", "cascade")}
            else:
                print(f"  {extra['id']}: both systems (quality) ...", flush=True)
                runs = {"speechsum": speech.run(extra_path, extra["instruction"], args.max_new_tokens, args.repeat_stop,
                                                args.window_seconds),
                        "cascade": cascade.run(extra_path, extra["instruction"], args.max_new_tokens, args.repeat_stop)}
                in_parts[extra["id"]] = runs["speechsum"]["text"]
            scored = score_items([extra, extra], [runs["speechsum"]["text"], runs["cascade"]["text"]], embeddings=False)
            for (system, r), sc in zip(runs.items(), scored):
                quality_rows.append({"length": item["id"], "set": k, "recording": extra["id"],
                                     "documents": extra["documents"], "audio_seconds": round(extra["duration"], 2),
                                     "system": system, "total_s": r["total_s"], "text": r["text"],
                                     **{q: sc[q] for q in ("fact_recall", "fact_precision", "invented_per_summary",
                                                           "rouge_l", "compliance")}})
    longest = max(args.seconds)
    long_rows = []
    if parts_of(longest, args.window_seconds) > 1 and args.long_sets > 0:
        for k in range(args.long_sets):
            item = items[-1] if k == 0 else recording(longest, root, first=10 * k)
            path = paths[-1] if k == 0 else write_flac(item, root)
            print(f"  {item['id']}: speechsum in parts and in one pass (quality) ...", flush=True)
            texts = both_modes.get(item["id"]) or [
                in_parts.get(item["id"]) if w and item["id"] in in_parts
                else speech.run(path, item["instruction"], args.max_new_tokens, args.repeat_stop, w)["text"]
                for w in (args.window_seconds, 0.0)]
            for mode, text, sc in zip(("parts", "one pass"), texts, score_items([item, item], texts, embeddings=False)):
                long_rows.append({"recording": item["id"], "documents": item["documents"], "mode": mode,
                                  "n_facts": len(json.loads(item["facts"])), "text": text,
                                  **{k2: sc[k2] for k2 in ("fact_recall", "fact_precision", "invented_per_summary",
                                                           "rouge_l")}})
    goals = judge(rows, trained, quality_rows)
    report(rows, goals, label, trained)
    long_summary = report_long(long_rows)
    result = {
        "model": label, "trained": trained,
        "quality_note": "" if trained else "untrained connector (random projector): speechsum's quality numbers "
                                           "are not meaningful; re-run with --model RUN/final",
        "style": STYLE, "instruction": items[0]["instruction"], "max_new_tokens": args.max_new_tokens,
        "repeat_stop": args.repeat_stop, "int8_decoding": model.decode_int8,
        "repeats": args.repeats, "clock": "process CPU time (1 thread)" if args.clock == "cpu" else "wall time",
        "load_seconds": {"speechsum": round(speech_load, 2), "cascade": round(cascade_load, 2)},
        "cascade": "faster-whisper whisper-base int8, beam 1, language detected -> " + model.config.llm
                   + " (no LoRA, " + ("bf16" if bf16_native() else "fp32")
                   + (", int8 weights in batch-1 steps" if model.decode_int8 else "") + ")",
        "recordings": {it["id"]: {"seconds": round(it["duration"], 2), "documents": it["documents"],
                                  "last_document_cut": it["cut_last"], "path": p} for it, p in zip(items, paths)},
        "cpu_shared": max(meter.samples, default=0) > 0.3, "other_load_cores": meter.samples, "note": args.note,
        "goals": goals, "machine": machine_info(), "bench_seconds": round(time.perf_counter() - t_start, 1),
        "rows": rows, "quality_sets": quality_rows, "window_seconds": args.window_seconds,
        "long_recordings": {"rows": long_rows, "means": long_summary},
    }
    write_result(args.out, result)
    return 0


def parts_of(seconds: float, window_seconds: float) -> int:
    """How many parts `summarize` cuts a recording into (speechsum/longform.py)."""
    return num_parts(round(seconds * SAMPLE_RATE), window_seconds)


def report_long(rows: list[dict]) -> dict:
    """Mean quality of speechsum in parts and in one pass over the long recordings (printed)."""
    means = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        sel = [r for r in rows if r["mode"] == mode]
        means[mode] = {k: round(float(np.mean([r[k] for r in sel if r[k] is not None] or [0.0])), 4)
                       for k in ("fact_recall", "fact_precision", "invented_per_summary", "rouge_l")} | {"n": len(sel)}
    if means:
        print("\nlong recordings, speechsum in parts vs in one pass (means over "
              f"{len({r['recording'] for r in rows})} recordings):")
        for mode, m in means.items():
            print(f"  {mode:9} recall {m['fact_recall']:.3f}  precision {m['fact_precision']:.3f}  "
                  f"invented {m['invented_per_summary']:.2f}  ROUGE-L {m['rouge_l']:.3f}")
    return means


def mean_quality(quality_rows: list[dict], length: str, system: str) -> dict:
    """A system's mean scores over the quality sets of one length (a missing recall counts 0)."""
    rs = [r for r in quality_rows if r["length"] == length and r["system"] == system]
    return {"sets": len(rs), "total_s": round(sum(r["total_s"] for r in rs), 4),
            **{k: round(float(np.mean([r[k] or 0 for r in rs])), 4)
               for k in ("fact_recall", "invented_per_summary", "rouge_l")}}


def judge(rows: list[dict], trained: bool, quality_rows: list[dict]) -> dict:
    """Per length: speedup of speechsum over the cascade (natural and at the cascade's length, on the
    timed recording; and summed over the quality sets) and whether its quality, averaged over the
    quality sets, is equal or better (fact recall, ROUGE-L not lower; no more invented facts)."""
    out = {"speedup_goal": SPEED_GOAL, "by_length": {}}
    for length in dict.fromkeys(r["length"] for r in rows):
        ours, casc, matched = (next(r for r in rows if r["length"] == length and r["system"] == s)
                               for s in ("speechsum", "cascade", "speechsum @ cascade length"))
        q, qc = (mean_quality(quality_rows, length, s) for s in ("speechsum", "cascade"))
        quality_ok = (q["fact_recall"] >= qc["fact_recall"] and q["rouge_l"] >= qc["rouge_l"]
                      and q["invented_per_summary"] <= qc["invented_per_summary"])
        speed = casc["total_s"] / ours["total_s"]
        speed_matched = casc["total_s"] / matched["total_s"]
        first = casc["first_token_s"] / ours["first_token_s"]
        judged = speed if trained else speed_matched
        out["by_length"][length] = {"speedup": round(speed, 2), "speedup_at_cascade_length": round(speed_matched, 2),
                                    "speedup_to_first_token": round(first, 2),
                                    "speedup_over_sets": round(qc["total_s"] / q["total_s"], 2),
                                    "speed_met": judged >= SPEED_GOAL, "quality_equal_or_better": quality_ok,
                                    "mean_quality": {"speechsum": q, "cascade": qc}}
    per = out["by_length"].values()
    out["speed_met"] = all(v["speed_met"] for v in per)
    out["quality_met"] = all(v["quality_equal_or_better"] for v in per) if trained else None
    out["met"] = out["speed_met"] and bool(out["quality_met"])
    if not trained:
        out["note"] = "speed judged at the cascade's answer length; quality not judged (untrained connector)"
    return out


def report(rows: list[dict], goals: dict, label: str, trained: bool) -> None:
    print(f"\nspeechsum model: {label}" + ("" if trained else "  [UNTRAINED: its quality columns are not meaningful]"))
    print(f"\n{'length':6} {'system':27} {'audio s':>7} {'enc/ASR':>7} {'prefill':>7} {'decode':>7} {'steps':>5} "
          f"{'1st tok':>7} {'total s':>7} {'RTF':>6} {'vs casc':>7} {'recall':>6} {'invent':>6} {'ROUGE-L':>7}")
    for r in rows:
        casc = next(x for x in rows if x["length"] == r["length"] and x["system"] == "cascade")
        q = r.get("quality")
        cells = (f"{q['fact_recall'] or 0:>6.2f} {q['invented_per_summary'] or 0:>6} {q['rouge_l']:>7.3f}"
                 if q else f"{'':>6} {'':>6} {'':>7}")
        front = r.get("encoder_s", r.get("asr_s", 0.0))
        name = r["system"] + (" (untrained)" if r["system"] == "speechsum" and not trained else "")
        print(f"{r['length']:6} {name:27} {r['audio_seconds']:>7.1f} {front:>7.2f} {r.get('prefill_s', 0):>7.2f} "
              f"{r.get('decode_s', 0):>7.2f} {r.get('decode_steps', 0):>5} {r['first_token_s']:>7.2f} "
              f"{r['total_s']:>7.2f} {r['rtf']:>6.3f} "
              f"{casc['total_s'] / r['total_s']:>6.2f}x {cells}")
    for length, g in goals["by_length"].items():
        q, qc = g["mean_quality"]["speechsum"], g["mean_quality"]["cascade"]
        print(f"{length}: {g['speedup']:.2f}x natural, {g['speedup_at_cascade_length']:.2f}x at the cascade's length, "
              f"{g['speedup_to_first_token']:.2f}x to the first token, {g['speedup_over_sets']:.2f}x over "
              f"{q['sets']} recordings; their mean recall / invented / ROUGE-L: speechsum {q['fact_recall']:.3f} / "
              f"{q['invented_per_summary']:.2f} / {q['rouge_l']:.3f}, cascade {qc['fact_recall']:.3f} / "
              f"{qc['invented_per_summary']:.2f} / {qc['rouge_l']:.3f}; "
              f"equal or better: {g['quality_equal_or_better']}" + ("" if trained else " (untrained)"))
    print(f"goal >= {SPEED_GOAL:.0f}x faster: {'met' if goals['speed_met'] else 'NOT met'}; equal or better quality: "
          + ({True: "met", False: "NOT met"}[goals["quality_met"]] if trained else "not judged (untrained)"))


if __name__ == "__main__":
    sys.exit(main())
