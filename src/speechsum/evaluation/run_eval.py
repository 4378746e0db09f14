"""`speechsum eval`: generate summaries for test items with several systems and score them.

    speechsum eval --model runs/tiny/sft runs/tiny/dpo cascade text-teacher --data runs/data/test --out runs/eval

Systems: a SpeechLM folder (or a run folder: its final/), `untrained` (the default assembly),
`cascade` (whisper-base greedy ASR through faster-whisper -> the LLM reading the ASR transcript)
and `text-teacher` (the LLM reading the gold transcript: the upper bound). The LLM of the two
baselines is the first SpeechLM's LLM unless `--llm` names one. `text:MODEL` is any text model
(registry name, HF folder, or a speechsum text-mode run such as the KD teacher) reading the gold
transcript: how a KD teacher is measured on the test set.

Scores per item: ROUGE-1/2/Lsum, MiniLM embedding similarity, fact recall/precision/F1 and
invented facts (documents with known facts), style compliance; the headline scores get bootstrap
confidence intervals that resample documents (`doc_of`), and every score is broken down by style,
genre, held-out kind, voice, language and audio length. Writes metrics.json and
predictions.parquet; prints a markdown table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

HEADLINE = ("fact_recall", "fact_f1", "invented_per_summary", "rouge_l", "similarity", "compliance")
PRIMARY = "fact_f1"  # the primary score: facts carried (recall) and not invented (claim precision)
# paired differences between two systems on the same items (`compare`): the recipe's claims
DELTA_KEYS = (("fact F1", "fact_f1"), ("fact recall", "fact_recall"), ("invented/summary", "invented_per_summary"))
# invented claims over claims stated, pooled over the summaries: a ratio, so its paired interval
# comes from `metrics.paired_ratio_bootstrap_ci`, not from per-item differences
RATIO_DELTA = ("invented/claim", "invented_per_claim")


def load_test_items(data: str | Path, limit: int = 0) -> list[dict]:
    from speechsum.data.dataset import read_manifest

    split_dir = Path(data)
    if not (split_dir / "manifest.parquet").is_file():
        raise FileNotFoundError(f"{split_dir}: no manifest.parquet (pass a split folder such as runs/data/test)")
    items = [r for r in read_manifest(split_dir) if r["target"]]
    for r in items:
        r["audio_path"] = str(split_dir / r["audio"])
    return items[:limit] if limit else items


def system_name(spec: str) -> str:
    return system_names([spec])[0]


BASELINES = ("cascade", "text-teacher", "untrained")  # systems by name; the rest are folders or text:LLM


def check_counts(limit: int, batch_size: int, max_new_tokens: int, prefix: str = "") -> None:
    """eval's counts within their floors (a negative limit dropped items from the end; a batch of
    -1 decoded nothing and scored the empty answers)."""
    if limit < 0:
        raise ValueError(f"{prefix}limit={limit}: expected >= 0 (0: every item)")
    for value, what in ((batch_size, "batch_size"), (max_new_tokens, "max_new_tokens")):
        if value < 1:
            raise ValueError(f"{prefix}{what}={value}: expected >= 1")


def check_systems(systems: list[str], llm: str | None = None) -> None:
    """Every system spec and `llm` resolvable before any model is loaded (a typo in the last
    system is found before the first one decodes for minutes)."""
    from speechsum.training.common import resolve_init

    for spec in systems:
        if spec in BASELINES:
            continue
        if spec.startswith("text:"):
            check_text_llm(spec.removeprefix("text:"), spec)
            continue
        try:
            resolve_init(spec)
        except FileNotFoundError:
            raise FileNotFoundError(f"{spec}: not a SpeechLM folder, a run folder (final/ or a checkpoint) nor a "
                                    f"baseline ({', '.join(BASELINES)}, text:LLM)") from None
    if llm:
        check_text_llm(llm, f"--llm {llm}")


def check_text_llm(name: str, what: str) -> None:
    """A text LLM argument (folder, registry name, hub id) that can be found; ModelError otherwise."""
    from speechsum.models.registry import REGISTRY, ModelError, resolve_model

    if not name:
        raise ValueError(f"{what}: no model named")
    if Path(name).expanduser().is_dir() or name in REGISTRY:
        return
    try:
        resolve_model(name)
    except ModelError as e:
        raise ModelError(f"{what}: {e}") from None


def system_names(specs: list[str]) -> list[str]:
    """The table's name of each system spec: a folder's last part (`runs/tiny/kd` -> kd; a `final`
    folder with its run's name), with more parts where two would share a name (`runs/tiny/sft` and
    `runs/seed1/sft` -> tiny/sft, seed1/sft). The same spec twice is an error."""
    twice = next((s for i, s in enumerate(specs) if s in specs[:i]), None)
    if twice is not None:
        raise ValueError(f"{twice}: given twice")

    def parts(spec: str) -> tuple[str, ...]:
        return Path(spec.removeprefix("text:")).parts or (spec,)

    def name(spec: str, depth: int) -> str:
        return ("text:" if spec.startswith("text:") else "") + "/".join(parts(spec)[-depth:])

    depth = [2 if parts(s)[-1] == "final" else 1 for s in specs]
    while True:
        names = [name(s, d) for s, d in zip(specs, depth)]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1]
        if not clash:
            return names
        grow = [i for i in clash if depth[i] < len(parts(specs[i]))]
        if not grow:
            raise ValueError(f"{specs[clash[0]]} and {specs[clash[1]]} are the same system ({names[clash[0]]})")
        for i in grow:
            depth[i] += 1


# ------------------------------------------------------------------------------------ systems


def generate_speechlm(spec: str, items: list[dict], batch_size: int, max_new_tokens: int, log,
                      readout: bool = False, repeat_stop: int = 0, int8: bool = True,
                      device: str | torch.device = "cpu") -> tuple[list[str], str]:
    """Summaries from audio by a SpeechLM folder / run folder / 'untrained'; returns (texts, llm).
    `readout`: the connector's greedy CTC read-out of each clip instead (no LLM generation).
    `int8`: batch-1 decoding steps use int8 weights where bf16 is native (precision.py)."""
    from speechsum.audio import load_audio
    from speechsum.models.encoder import EncoderCache
    from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig
    from speechsum.training.common import resolve_init

    model = SpeechLM.from_config(SpeechLMConfig()) if spec == "untrained" else SpeechLM.from_pretrained(resolve_init(spec))
    model.eval().to(device)
    model.decode_int8 = int8 and model.decode_bf16
    model.readout_cache_mb = 256  # a document's clip is read once for all its instructions
    cache_root = Path(items[0]["audio_path"]).parents[2] / "encoder_cache" if items else None
    if cache_root is not None:
        model.encoder_cache = EncoderCache(cache_root)
    out: list[str] = []
    order = sorted(range(len(items)), key=lambda i: items[i]["duration"])  # similar lengths per batch
    texts = [""] * len(items)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        clips = [load_audio(items[i]["audio_path"]) for i in idx]
        if readout:
            outs = model.readout_text(model.encode_audio(clips))
        else:
            gens = model.generate(clips, [items[i]["instruction"] for i in idx], max_new_tokens=max_new_tokens,
                                  repeat_stop=repeat_stop)
            outs = [g.text for g in gens]
        for i, text in zip(idx, outs):
            texts[i] = text
    out = texts
    return out, model.config.llm


def load_asr(model: str = "whisper-base", cpu_threads: int = 2):
    """faster-whisper on the registry's CTranslate2 folder (int8 weights, CPU)."""
    from faster_whisper import WhisperModel

    from speechsum.models import registry

    return WhisperModel(str(registry.source_dir(model)), device="cpu", compute_type="int8", cpu_threads=cpu_threads)


def transcribe(asr, audio) -> str:
    """Greedy transcript of one audio file (or 16 kHz array), language detected, windows independent.
    One temperature, 0: faster-whisper's default falls back to sampling at 0.2 ... 1.0 when a window
    looks repetitive or unlikely, unseeded, so the cascade's transcripts (3 of the demo's 24
    documents) and, through batch padding, its summaries changed from run to run."""
    segs, _ = asr.transcribe(audio, beam_size=1, language=None, condition_on_previous_text=False, temperature=0.0)
    return " ".join(s.text.strip() for s in segs)  # segs is lazy: decoding happens here


def asr_transcripts(items: list[dict], model: str = "whisper-base") -> list[str]:
    """Greedy whisper transcripts through faster-whisper on the registry's CTranslate2 folder."""
    asr = load_asr(model)
    by_path: dict[str, str] = {}  # a document's items share one clip: transcribe it once
    for r in items:
        if r["audio_path"] not in by_path:
            by_path[r["audio_path"]] = transcribe(asr, r["audio_path"])
    return [by_path[r["audio_path"]] for r in items]


def transcript_conversations(transcripts: list[str], instructions: list[str], system_prompt: str) -> list[list[dict]]:
    """The text-LLM prompt of a transcript: the same system prompt and instruction as the SpeechLM's."""
    return [[{"role": "system", "content": system_prompt}, {"role": "user", "content": f"{t}\n\n{instr}"}]
            for t, instr in zip(transcripts, instructions)]


def generate_text(llm: str, transcripts: list[str], items: list[dict], batch_size: int, max_new_tokens: int,
                  system_prompt: str, repeat_stop: int = 0, int8: bool = True,
                  device: str | torch.device = "cpu") -> list[str]:
    """The LLM reading a transcript with the same system prompt and instruction as the SpeechLM
    (`int8`: as the SpeechLM's batch-1 decoding steps, precision.py)."""
    from speechsum.models.text_lm import TextLM

    from speechsum.precision import bf16_native

    # bf16 weights where native: decoding is memory-bound (the SpeechLMs decode with a bf16 copy too)
    lm = TextLM.from_pretrained(llm, dtype=torch.bfloat16 if bf16_native() else torch.float32)
    lm.llm.to(device)
    lm.decode_int8 = int8
    convs = transcript_conversations(transcripts, [r["instruction"] for r in items], system_prompt)
    return lm.chat(convs, max_new_tokens=max_new_tokens, batch_size=batch_size, repeat_stop=repeat_stop)


# ------------------------------------------------------------------------------------ scoring


def score_items(items: list[dict], preds: list[str], embeddings: bool = True) -> list[dict]:
    from speechsum.evaluation.compliance import style_compliance
    from speechsum.evaluation.facts import score_item
    from speechsum.evaluation.metrics import embedding_similarity, repeated_ngrams, rouge

    sims = embedding_similarity(preds, [r["target"] for r in items]) if embeddings else [None] * len(items)
    rows = []
    for r, p, sim in zip(items, preds, sims):
        f = score_item(r, p)
        rg = rouge(p, r["target"])
        comp = style_compliance(r["style"], p, r["instruction"])
        rows.append({
            "rouge_1": rg["rouge1"], "rouge_2": rg["rouge2"], "rouge_l": rg["rougeLsum"],
            "similarity": sim,
            "fact_recall": f["recall"] if f else None, "fact_precision": f["precision"] if f else None,
            "fact_f1": f["f1"] if f else None,
            "invented_per_summary": f["n_hallucinated"] if f else None,
            "claims_per_summary": f["n_claims"] if f else None,
            "words": len(p.split()),
            "repeated_4grams": repeated_ngrams(p, 4),
            "invented": f["hallucinated"] if f else [],
            "compliance": comp["score"],
        })
    return rows


def fact_checked(row: dict) -> bool:
    """Whether a `score_items` row counts invented and stated claims (the item has known facts)."""
    return row.get("invented_per_summary") is not None and row.get("claims_per_summary") is not None


def invented_counts(rows: list[dict]) -> tuple[list[float], list[float]]:
    """(invented claims, claims stated) of each fact-checked summary."""
    kept = [r for r in rows if fact_checked(r)]
    return [r["invented_per_summary"] for r in kept], [r["claims_per_summary"] for r in kept]


def pooled_invented_rate(rows: list[dict]) -> float | None:
    """Invented claims over all claims stated, pooled over summaries (None: no claims at all). A
    stage that answers longer can invent more per summary while a smaller share of what it states
    is invented; this is that share, with a summary of no claims adding nothing (eval's per-summary
    fact precision counts an empty answer as 1.0)."""
    invented, claims = invented_counts(rows)
    return sum(invented) / sum(claims) if sum(claims) > 0 else None


def summarize_scores(rows: list[dict], items: list[dict]) -> dict:
    from speechsum.evaluation.metrics import bootstrap_ci

    def agg(sel: list[int]) -> dict:
        out = {"n": len(sel)}
        for key in ("rouge_1", "rouge_2", "rouge_l", "similarity", "fact_recall", "fact_precision", "fact_f1",
                    "invented_per_summary", "claims_per_summary", "words", "repeated_4grams", "compliance"):
            out[key] = _mean([rows[i].get(key) for i in sel])  # .get: scores saved before a key existed
        out["invented_per_claim"] = pooled_invented_rate([rows[i] for i in sel])
        return out

    everything = list(range(len(rows)))
    result = {"overall": agg(everything), "ci": {}, "by": {}}
    for key in HEADLINE:
        sel = [i for i in everything if rows[i][key] is not None]
        if sel:  # documents are resampled: the instructions of one recording move together
            m, lo, hi = bootstrap_ci([rows[i][key] for i in sel], groups=[doc_of(items[i]) for i in sel])
            result["ci"][key] = [m, lo, hi]
    buckets = {
        "style": lambda r: r["style"], "genre": lambda r: r["genre"], "language": lambda r: r["language"],
        "voice": lambda r: r["voice"], "held_out": lambda r: r["held_out_kind"] or "seen",
        "length": lambda r: "<30s" if r["duration"] < 30 else "30-90s" if r["duration"] < 90 else ">=90s",
    }
    for name, fn in buckets.items():
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(items):
            groups.setdefault(str(fn(r)), []).append(i)
        result["by"][name] = {k: agg(v) for k, v in sorted(groups.items())}
    return result


# (column label, metric key) of the comparison table; WER is put first for the transcription gate.
# Answer length and checkable claims per summary stand beside the inventions: a stage that answers
# longer states more claims and can invent more while its share of invented claims falls (docs/experiments.md:
# DPO and invented facts)
TABLE_COLUMNS = [("fact recall", "fact_recall"), ("fact F1", "fact_f1"), ("invented/summary", "invented_per_summary"),
                 ("claims/summary", "claims_per_summary"), ("invented/claim", "invented_per_claim"), ("ROUGE-L", "rouge_l"), ("similarity", "similarity"),
                 ("style", "compliance"), ("words", "words"), ("repeated 4-grams", "repeated_4grams")]
COUNT_COLUMNS = ("claims_per_summary", "words")  # means of counts: one decimal, not three


def table_cells(metrics: dict) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the comparison table (markdown here, HTML in report.py)."""
    cols = list(TABLE_COLUMNS)
    if any("wer" in m["overall"] for m in metrics["systems"].values()):
        cols = [("WER", "wer")] + cols
    rows = []
    for name, m in metrics["systems"].items():
        cells = []
        for _, key in cols:
            ci = m["ci"].get(key)
            v = m["overall"].get(key)
            fmt = ".1f" if key in COUNT_COLUMNS else ".3f"
            cells.append("-" if v is None else f"{v:{fmt}}" + (f" [{ci[1]:.2f}, {ci[2]:.2f}]" if ci else ""))
        rows.append([name] + cells + [f"{m['seconds_per_item']:.2f}"])
    return ["system"] + [c for c, _ in cols] + ["s/item"], rows


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown table (the first column left as a label)."""
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---|" * (len(header) - 1)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def markdown_table(metrics: dict) -> str:
    return markdown(*table_cells(metrics))


def doc_of(item: dict) -> str:
    """The bootstrap's resampling unit: the item's document (its id when it has none)."""
    return item.get("doc_id") or item["id"]


def _side(side: str | Sequence[str]) -> tuple[str, ...]:
    return (side,) if isinstance(side, str) else tuple(side)


def pooled_rows(rows: dict[str, list[dict]], names: Sequence[str]) -> list[dict]:
    """Per item, the mean of each DELTA_KEYS score over `names` (runs of one recipe with different
    seeds; None where any run has no score)."""
    out = []
    for per_run in zip(*(rows[n] for n in names)):
        rec = {}
        for _, key in DELTA_KEYS:
            vals = [r[key] for r in per_run]
            rec[key] = None if any(v is None for v in vals) else float(np.mean(vals))
        out.append(rec)
    return out


def side_label(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else "mean(" + ", ".join(names) + ")"


def paired_deltas(rows: dict[str, list[dict]], pairs: list[tuple], groups: list | None = None) -> list[dict]:
    """For each (a, b): b - a per DELTA_KEYS score with a paired bootstrap 95 % interval over the
    items both systems were scored on (item difficulty cancels; see metrics.paired_bootstrap_ci).
    A side may be several systems (the same stage trained with several seeds): its per-item score
    is their mean, so the interval is over items for the recipe averaged over those runs.
    `groups`: each row's document; the bootstrap then resamples documents. When both sides list the
    same number (> 1) of systems, `runs` adds run i of A against run i of B (`across_runs`): the
    bootstrap holds the systems fixed, this interval lets the runs vary."""
    from speechsum.evaluation.metrics import paired_bootstrap_ci, paired_ratio_bootstrap_ci

    out = []
    for pair in pairs:
        a, b = (side_label(_side(x)) for x in pair)
        rows = {**rows, **{side_label(_side(x)): pooled_rows(rows, _side(x)) for x in pair if len(_side(x)) > 1}}
        rec: dict = {"from": a, "to": b}
        for _, key in DELTA_KEYS:
            keep = [i for i, (ra, rb) in enumerate(zip(rows[a], rows[b])) if ra[key] is not None and rb[key] is not None]
            if keep:
                rec[key] = list(paired_bootstrap_ci([rows[b][i][key] for i in keep], [rows[a][i][key] for i in keep],
                                                    groups=[groups[i] for i in keep] if groups else None))
        # the share of stated claims that are invented, pooled over summaries (RATIO_DELTA)
        keep = [i for i, (ra, rb) in enumerate(zip(rows[a], rows[b])) if fact_checked(ra) and fact_checked(rb)]
        (inv_a, cl_a), (inv_b, cl_b) = (invented_counts([rows[s][i] for i in keep]) for s in (a, b))
        if sum(cl_a) > 0 and sum(cl_b) > 0:
            rec[RATIO_DELTA[1]] = list(paired_ratio_bootstrap_ci(inv_b, cl_b, inv_a, cl_a,
                                                                 groups=[groups[i] for i in keep] if groups else None))
        sa, sb = _side(pair[0]), _side(pair[1])
        if len(sa) == len(sb) > 1:  # run i of A against run i of B, over the items every run has a score on
            rec["runs"] = {}
            for _, key in DELTA_KEYS:
                keep = [i for i in range(len(rows[sa[0]])) if all(rows[n][i][key] is not None for n in sa + sb)]
                if keep:
                    mean = {n: float(np.mean([rows[n][i][key] for i in keep])) for n in sa + sb}
                    rec["runs"][key] = across_runs([mean[y] - mean[x] for x, y in zip(sa, sb)])
        out.append(rec)
    return out


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def deltas_cells(deltas: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and formatted rows of the paired-difference table (markdown here, HTML in report.py)."""
    rows = []
    for d in deltas:
        cells = [f"{d[k][0]:+.3f} [{d[k][1]:+.2f}, {d[k][2]:+.2f}]" if k in d else "-"
                 for _, k in DELTA_KEYS + (RATIO_DELTA,)]
        rows.append([f"{d['from']} -> {d['to']}"] + cells)
    return ["change"] + [f"{label} (paired 95 % CI)" for label, _ in DELTA_KEYS + (RATIO_DELTA,)], rows


def markdown_deltas(deltas: list[dict]) -> str:
    table = markdown(*deltas_cells(deltas))
    by_run = [d for d in deltas if "runs" in d]
    if not by_run:
        return table

    def cell(r: dict | None) -> str:
        if r is None:
            return "-"
        each = ", ".join(f"{x:+.3f}" for x in r["differences"])
        return f"{r['mean']:+.3f} [{r['ci'][0]:+.2f}, {r['ci'][1]:+.2f}] ({each})"

    rows = [[f"{d['from']} -> {d['to']}"] + [cell(d["runs"].get(k)) for _, k in DELTA_KEYS] for d in by_run]
    return (table + "\n\nRun by run (A's i-th system against B's i-th; a t-interval over runs):\n\n"
            + markdown(["change"] + [label for label, _ in DELTA_KEYS], rows))


def split_pair(spec: str, known: Sequence[str]) -> tuple[list[str], list[str]] | None:
    """`A:B` of `--compare` as two lists of names, each side one name or a comma-separated list
    (one stage's runs with several seeds); the cut is the colon that leaves every name in `known`
    (names may hold colons themselves: text:DIR). None when no colon does."""
    cuts = [(spec[:i].split(","), spec[i + 1:].split(",")) for i, ch in enumerate(spec) if ch == ":"]
    return next(((a, b) for a, b in cuts if set(a + b) <= set(known)), None)


# ------------------------------------------------------------------- comparing saved evaluations

SAVED_SETTINGS = ("data", "n_items", "max_new_tokens", "repeat_stop", "loop_rule", "int8_decoding")


def decoding_settings(max_new_tokens: int, repeat_stop: int, int8: bool) -> dict:
    """How an evaluation decoded, as metrics.json records it: what another run must match for its
    predictions to stand (the pipeline's "done earlier", `compare`'s SAVED_SETTINGS)."""
    return {"max_new_tokens": max_new_tokens, "repeat_stop": repeat_stop, "loop_rule": loop_rule(repeat_stop),
            "int8_decoding": int8}


def loop_rule(repeat_stop: int) -> str | None:
    """What stopped looping answers in an evaluation (None: nothing); a folder decoded under an
    older rule (no `loop_rule` key) pairs up with neither this one nor a new pipeline's eval."""
    from speechsum.models.generation import LOOP_RULE

    return LOOP_RULE if repeat_stop else None


def load_saved(eval_dirs: Sequence[str | Path]) -> tuple[list[dict], dict[str, list[str]], dict[str, str]]:
    """The test items and every system's predictions of several `eval --out` folders, which must have
    decoded the same items with the same settings (SAVED_SETTINGS). Returns (items, predictions by
    FOLDER/NAME, NAME -> FOLDER/NAME for the names only one folder has)."""
    import pandas as pd

    dirs = [Path(d) for d in eval_dirs]
    metas, frames = [], []
    for d in dirs:
        if not (d / "metrics.json").is_file() or not (d / "predictions.parquet").is_file():
            raise FileNotFoundError(f"{d}: not an eval folder (no metrics.json and predictions.parquet, "
                                    f"which `speechsum eval --out DIR` writes)")
        try:
            metas.append(json.loads((d / "metrics.json").read_text()))
            frames.append(pd.read_parquet(d / "predictions.parquet"))
        except Exception as e:  # a truncated or foreign file: name the folder, not a parser's traceback
            first_line = (str(e).splitlines() or [""])[0]
            raise ValueError(f"{d}: unreadable eval folder ({type(e).__name__}: {first_line})") from e
    names = [d.name for d in dirs]
    twice = next((d for i, d in enumerate(dirs) if d.name in names[:i]), None)
    if twice is not None:
        raise ValueError(f"{twice}: another eval folder is also named {twice.name!r} (rename or copy one)")
    for d, m, df in zip(dirs[1:], metas[1:], frames[1:]):
        for k in SAVED_SETTINGS:
            if m.get(k) != metas[0].get(k):
                raise ValueError(f"{d}: {k} is {m.get(k)!r} but {dirs[0]} has {metas[0].get(k)!r} "
                                 f"(only evaluations of the same items with the same settings pair up)")
        if list(df["id"]) != list(frames[0]["id"]):
            raise ValueError(f"{d}: its items are not those of {dirs[0]} in the same order")
    data = Path(metas[0]["data"])
    if not data.exists():
        raise FileNotFoundError(f"{dirs[0]}: its metrics.json names the test data {data}, which is not there"
                                + (" (a relative path: run compare from the folder eval ran in)"
                                   if not data.is_absolute() else ""))
    by_id = {r["id"]: r for r in load_test_items(data)}
    missing = next((i for i in frames[0]["id"] if i not in by_id), None)
    if missing is not None:
        raise ValueError(f"{dirs[0]}: item {missing} is not in {metas[0]['data']} (a transcription run, or "
                         f"the data changed since)")
    items = [by_id[i] for i in frames[0]["id"]]
    preds, owners = {}, {}
    for d, df in zip(dirs, frames):
        for col in df.columns:
            if col.startswith("pred:"):
                name = col.removeprefix("pred:")
                preds[f"{d.name}/{name}"] = df[col].tolist()
                owners.setdefault(name, []).append(f"{d.name}/{name}")
    # a bare NAME stands for FOLDER/NAME where one folder has it and no FOLDER/NAME spells it already
    return items, preds, {n: full[0] for n, full in owners.items() if len(full) == 1 and n not in preds}


def across_runs(differences: Sequence[float], level: float = 0.95) -> dict:
    """Mean of per-run differences (run i of one recipe against run i of another, e.g. the same seed
    before and after a stage) with a Student-t interval over runs: the test of a seed study, in which
    the runs, not only the items, vary."""
    from scipy import stats

    x = np.asarray(differences, dtype=float)
    if len(x) < 2:
        raise ValueError(f"across_runs: {len(x)} difference(s); at least 2 runs are needed")
    mean, se = float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1)) * se
    return {"differences": [float(v) for v in x], "mean": mean, "ci": [mean - half, mean + half]}


def compare_saved(eval_dirs: Sequence[str | Path], compare: Sequence[str], out: str | Path | None = None,
                  log=print) -> dict:
    """Paired differences B - A (`paired_deltas`) between systems of several saved evaluations,
    without decoding again: e.g. one stage's runs with several seeds evaluated on different days.
    `compare`: `A:B` specs as `eval --compare`'s, with systems named FOLDER/NAME (FOLDER: the eval
    folder's last part) or NAME alone where one folder has it. Writes `out` (JSON) if given."""
    items, preds, alias = load_saved(eval_dirs)
    known = list(preds) + list(alias)
    pairs = []
    for spec in compare:
        pair = split_pair(spec, known)
        if pair is None:
            raise ValueError(f"--compare {spec}: expected A:B with A and B among the saved systems "
                             f"({', '.join(known)})")
        pairs.append(tuple(tuple(alias.get(n, n) for n in side) for side in pair))
    used = list(dict.fromkeys(n for pair in pairs for side in pair for n in side))
    rows = {n: score_items(items, preds[n], embeddings=False) for n in used}
    deltas = paired_deltas(rows, pairs, [doc_of(r) for r in items])
    means = {n: summarize_scores(rows[n], items)["overall"] for n in used}
    cols = DELTA_KEYS + (RATIO_DELTA,)
    rows = [[n] + ["-" if means[n][k] is None else f"{means[n][k]:.3f}" for _, k in cols] for n in used]
    table = markdown(["system"] + [label for label, _ in cols], rows) + "\n\n" + markdown_deltas(deltas)
    result = {"eval_dirs": [str(d) for d in eval_dirs], "n_items": len(items), "systems": means, "deltas": deltas,
              "table": table}
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1))
    log(table)
    return result


# ------------------------------------------------------------------------------------ the command


def as_transcription(items: list[dict]) -> list[dict]:
    """One item per document asking for a verbatim transcript (the alignment gate): target = transcript."""
    from speechsum.training.align import TASKS

    docs = {r["doc_id"]: r for r in items}
    return [{**r, "id": f"{r['doc_id']}-asr", "instruction": TASKS["transcribe"][0], "style": "transcribe",
             "target": r["transcript"], "held_out_kind": ""} for r in docs.values()]


def evaluate(systems: list[str], data: str, out: str | None = None, llm: str | None = None, limit: int = 0,
             batch_size: int = 16, max_new_tokens: int = 128, embeddings: bool = True, task: str = "summarize",
             compare: list[tuple] | None = None, repeat_stop: int = 3, int8: bool = True,
             device: str | torch.device = "cpu", log=print) -> dict:
    """Run and score every system; `compare` pairs (a, b) of system specs (or of lists of specs:
    one stage's runs with several seeds, averaged per item) get paired differences b - a of the
    fact scores (`paired_deltas`: is b better than a on the same items?); task 'transcribe' asks each document for a verbatim transcript
    and adds WER (the alignment gate); task 'readout' scores the connector's greedy CTC read-out
    of each document (no LLM; `cascade` gives the whisper transcript) the same way. Every system
    decodes greedily with the same `repeat_stop` as `summarize` (a looping answer stops at its
    first copy, an answer repeating a sentence or line before that sentence; 0: off; recorded with
    its `loop_rule`) and the same `int8` (a single row's decoding steps multiply by int8 weights
    where bf16 is native, as `summarize` does; precision.py), both recorded in metrics.json.
    `device`: where the SpeechLMs and text LLMs run (the cascade's faster-whisper runs on the CPU)."""
    from speechsum.evaluation.wer import wer
    from speechsum.models.generation import check_repeat_stop
    from speechsum.models.speech_lm import SpeechLMConfig

    if task not in ("summarize", "transcribe", "readout"):
        raise ValueError(f"task={task!r}: expected summarize, transcribe or readout")
    check_repeat_stop(repeat_stop)
    name_of = dict(zip(systems, system_names(systems)))
    check_systems(systems, llm)
    check_counts(limit, batch_size, max_new_tokens)
    if out and Path(out).exists() and not Path(out).is_dir():
        raise FileExistsError(f"--out {out}: exists and is not a folder")
    items = load_test_items(data)
    if task != "summarize":
        items = as_transcription(items)
    items = items[:limit] if limit else items
    if not items:
        raise ValueError(f"{data}: no items with targets")
    unknown = [sp for pair in compare or [] for side in pair for sp in _side(side) if sp not in name_of]
    if unknown:
        raise ValueError(f"compare: {unknown[0]} is not one of the evaluated systems ({', '.join(systems)})")
    compare = [tuple(tuple(name_of[sp] for sp in _side(side)) for side in pair) for pair in compare or []]
    out_dir = Path(out) if out else None
    preds_all: dict[str, list[str]] = {}
    rows_all: dict[str, list[dict]] = {}
    metrics: dict = {"data": str(Path(data).resolve()), "n_items": len(items), **decoding_settings(max_new_tokens, repeat_stop, int8),
                     "systems": {}}
    first_llm = None
    asr: list[str] | None = None
    for spec in systems:
        t = time.time()
        if task == "readout" and (spec == "text-teacher" or spec.startswith("text:")):
            raise ValueError(f"{spec}: task readout scores a SpeechLM's connector or the cascade's ASR, not a text model")
        if spec == "cascade":
            asr = asr if asr is not None else asr_transcripts(items)
            preds = asr if task == "readout" else generate_text(llm or first_llm or SpeechLMConfig().llm, asr, items, batch_size, max_new_tokens,
                                  SpeechLMConfig().system_prompt, repeat_stop, int8, device)
        elif spec == "text-teacher" or spec.startswith("text:"):
            text_llm = spec.removeprefix("text:") if spec.startswith("text:") else llm or first_llm or SpeechLMConfig().llm
            preds = generate_text(text_llm, [r["transcript"] for r in items], items, batch_size, max_new_tokens,
                                  SpeechLMConfig().system_prompt, repeat_stop, int8, device)
        else:
            if task == "readout" and spec == "untrained":
                log("eval: untrained: its connector is random, so its read-out is a floor (chance), not a reading")
            preds, used_llm = generate_speechlm(spec, items, batch_size, max_new_tokens, log, readout=task == "readout",
                                                repeat_stop=repeat_stop, int8=int8, device=device)
            first_llm = first_llm or used_llm
        dt = time.time() - t
        name = name_of[spec]
        rows = rows_all[name] = score_items(items, preds, embeddings)
        metrics["systems"][name] = {**summarize_scores(rows, items), "seconds_per_item": dt / len(items)}
        if task != "summarize":
            metrics["systems"][name]["overall"]["wer"] = wer([r["transcript"] for r in items], preds)
        preds_all[name] = preds
        log(f"eval: {name}: {len(items)} items in {dt:.0f} s")
        if out_dir is not None:
            _write(out_dir, items, preds_all, metrics, asr)
    table = markdown_table(metrics)
    if compare:
        metrics["deltas"] = paired_deltas(rows_all, compare, [doc_of(r) for r in items])
        table += "\n\n" + markdown_deltas(metrics["deltas"])
    metrics["table"] = table
    if out_dir is not None:
        _write(out_dir, items, preds_all, metrics, asr)
    log(table)
    return metrics


def _write(out_dir: Path, items, preds_all, metrics, asr) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    cols = {k: [r[k] for r in items] for k in ("id", "doc_id", "audio_path", "duration", "language", "voice",
                                                "genre", "style", "held_out_kind", "instruction", "transcript",
                                                "target", "facts")}
    if asr is not None:
        cols["asr_transcript"] = asr
    for name, preds in preds_all.items():
        cols[f"pred:{name}"] = preds
    pq.write_table(pa.table(cols), out_dir / "predictions.parquet")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
