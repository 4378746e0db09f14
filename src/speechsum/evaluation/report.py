"""`speechsum report RUN_DIR`: one self-contained HTML page of a run, and its plots as PNG files.

    speechsum report runs/tiny [--eval runs/tiny/eval] [--out runs/tiny/report] [--examples 12]

Reads, from the run folder:
- the eval output (metrics.json and predictions.parquet, as `speechsum eval --out DIR` writes
  them) from `--eval DIR`, else `RUN_DIR/eval/`, else `RUN_DIR` itself (an eval folder passed
  directly); so `speechsum eval ... --out runs/tiny/eval` then `speechsum report runs/tiny`;
- the training curves: every `RUN_DIR/<stage>/metrics.jsonl` (training.common.MetricsLog),
  align, sft, kd, dpo in recipe order, then any other folder that has one.
Either part may be missing, not both (that, a missing folder, or an unreadable metrics.json is a
one-line `speechsum: error: <path>: <problem>`, exit 2).

Writes `--out` (default `RUN_DIR/report/`): `index.html`, `scores.png` (one bar chart per
headline score, one bar per system with its bootstrap 95 % interval from metrics.json; the
transcription gate's WER has no interval) and
`curves-<stage>.png` (every numeric metric of the stage against the step; dev loss over the train
loss). The page needs no server and loads nothing from the network: CSS inline, plots as base64
PNG, each example's clip as a base64 data URI in an `<audio>` element. Clips make the page large,
so `--examples` caps the cards (default 12, spread over the styles) and a clip over
`MAX_AUDIO_BYTES` is named instead of embedded.

Each card shows the instruction, the transcript, the target and every system's summary with the
invented claims marked: those `facts.score_summary` finds unsupported by the transcript and the
facts, the same rule and arguments `run_eval.score_items` counts, so only items with known facts
are checked (the card says so otherwise).
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

EVAL_FOLDER = "eval"
MAX_EXAMPLES = 12
MAX_AUDIO_BYTES = 8 * 2**20  # ~8 min of 16 kHz FLAC; larger clips are linked by path, not embedded
AUDIO_MIME = {".flac": "audio/flac", ".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}
CURVE_SKIP = ("step", "epoch")  # logged, but not a curve
LOWER_IS_BETTER = ("invented_per_summary", "wer")


class ReportError(ValueError):
    """Bad input a user can fix; the message starts with the path."""


# ------------------------------------------------------------------------------------ inputs


def find_eval(run_dir: Path, eval_dir: str | Path | None) -> Path | None:
    """The folder holding metrics.json (see the module docstring), or None when there is none."""
    if eval_dir is not None:
        eval_dir = Path(eval_dir)
        if not (eval_dir / "metrics.json").is_file():
            raise ReportError(f"{eval_dir}: no metrics.json (pass the folder `speechsum eval --out` wrote)")
        return eval_dir
    for cand in (run_dir / EVAL_FOLDER, run_dir):
        if (cand / "metrics.json").is_file():
            return cand
    return None


def read_metrics_log(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl; a line cut by a killed write is skipped."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def find_stages(run_dir: Path) -> dict[str, list[dict]]:
    """Stage folder name -> its metrics rows, recipe stages first."""
    from speechsum.pipeline import TRAIN_STAGES

    logs = sorted(run_dir.glob("*/metrics.jsonl"), key=lambda p: (
        TRAIN_STAGES.index(p.parent.name) if p.parent.name in TRAIN_STAGES else len(TRAIN_STAGES), p.parent.name))
    stages = {p.parent.name: read_metrics_log(p) for p in logs}
    return {name: rows for name, rows in stages.items() if rows}


def read_eval(eval_dir: Path) -> tuple[dict, list[dict]]:
    """(metrics.json, predictions.parquet rows); no predictions file gives no rows."""
    path = eval_dir / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("systems"), dict):
        raise ReportError(f"{path}: not an eval metrics.json (no 'systems')")
    preds = eval_dir / "predictions.parquet"
    if not preds.is_file():
        return metrics, []
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return metrics, pq.read_table(preds).to_pylist()
    except pa.ArrowException as e:
        raise ReportError(f"{preds}: not a readable Parquet file ({e})") from None


# ------------------------------------------------------------------------------------ plots


def _figure(n_panels: int, cols: int, panel_size: tuple[float, float]):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    rows = -(-n_panels // cols)
    cols = min(cols, n_panels)
    fig = Figure(figsize=(panel_size[0] * cols, panel_size[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes


def curve_keys(rows: list[dict]) -> list[str]:
    """Numeric metrics of a stage in first-logged order; dev_loss shares the loss panel."""
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and k not in CURVE_SKIP and isinstance(v, (int, float)) and not isinstance(v, bool):
                keys.append(k)
    if "dev_loss" in keys and "loss" in keys:
        keys.remove("dev_loss")
    return keys


def _points(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]


def plot_curves(stage: str, rows: list[dict], path: Path) -> Path | None:
    keys = curve_keys(rows)
    if not keys:
        return None
    fig, axes = _figure(len(keys), 4, (3.2, 2.4))
    for ax, key in zip(axes, keys):
        pts = _points(rows, key)
        ax.plot(*zip(*pts), "-" if len(pts) > 30 else ".-", ms=4, label="train")
        dev = _points(rows, "dev_loss") if key == "loss" else []
        if dev:
            ax.plot(*zip(*dev), "o--", ms=3, label="dev")
            ax.legend(fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{stage}: training curves", fontsize=10)
    fig.savefig(path, dpi=100)
    return path


def score_bars(metrics: dict) -> list[tuple[str, str, list[tuple[str, list[float]]]]]:
    """(metric key, label, [(system, [mean, lo, hi])]) for each headline score some system has;
    a score without an interval (the transcription gate's WER) gets lo = hi = mean."""
    from speechsum.evaluation.run_eval import HEADLINE, TABLE_COLUMNS

    labels = {key: label for label, key in TABLE_COLUMNS} | {"wer": "WER"}
    out = []
    for key in ("wer",) + HEADLINE:
        bars = [(name, m["ci"].get(key) or [m["overall"][key]] * 3) for name, m in metrics["systems"].items()
                if m["overall"].get(key) is not None]
        if bars:
            out.append((key, labels.get(key, key), bars))
    return out


def plot_scores(metrics: dict, path: Path) -> Path | None:
    panels = score_bars(metrics)
    if not panels:
        return None
    fig, axes = _figure(len(panels), 3, (3.6, 2.8))
    for ax, (key, label, bars) in zip(axes, panels):
        names = [n for n, _ in bars]
        mean = [ci[0] for _, ci in bars]
        err = [[ci[0] - ci[1] for _, ci in bars], [ci[2] - ci[0] for _, ci in bars]]
        ax.bar(range(len(bars)), mean, yerr=err, capsize=4, color=[f"C{i}" for i in range(len(bars))])
        ax.set_xticks(range(len(bars)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(label + (" (lower is better)" if key in LOWER_IS_BETTER else ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("headline scores per system, 95 % bootstrap intervals", fontsize=10)
    fig.savefig(path, dpi=100)
    return path


def png_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


# ------------------------------------------------------------------------------------ HTML pieces


def table_html(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def primary_key(metrics: dict) -> str:
    """The score the breakdowns show: fact F1 where the items have facts, else ROUGE-L."""
    has_facts = any(m["overall"].get("fact_f1") is not None for m in metrics["systems"].values())
    return "fact_f1" if has_facts else "rouge_l"


def breakdown_html(metrics: dict) -> str:
    """One table per breakdown (style, genre, ...): the primary score per group and system."""
    key = primary_key(metrics)
    systems = list(metrics["systems"])
    first = metrics["systems"][systems[0]]["by"] if systems else {}
    parts = []
    for bucket, groups in first.items():
        rows = []
        for group, agg in groups.items():
            cells = [metrics["systems"][s]["by"].get(bucket, {}).get(group, {}).get(key) for s in systems]
            rows.append([group, agg["n"]] + ["-" if v is None else f"{v:.3f}" for v in cells])
        parts.append(f"<div><h3>by {html.escape(bucket)}</h3>"
                     + table_html([bucket, "n"] + systems, rows, "small") + "</div>")
    return f"<p>{html.escape(key)} per group.</p>" + '<div class="breakdowns">' + "".join(parts) + "</div>"


def stages_html(stages: dict[str, list[dict]]) -> str:
    rows = []
    for name, log in stages.items():
        losses = [r["loss"] for r in log if isinstance(r.get("loss"), (int, float))]
        dev = [r["dev_loss"] for r in log if isinstance(r.get("dev_loss"), (int, float))]
        rows.append([name, max(r["step"] for r in log), f"{losses[0]:.4g}" if losses else "-",
                     f"{losses[-1]:.4g}" if losses else "-", f"{dev[-1]:.4g}" if dev else "-"])
    return table_html(["stage", "last step", "first loss", "last loss", "last dev loss"], rows, "small")


def audio_html(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        return f'<p class="note">audio not found: {html.escape(path)}</p>'
    size = p.stat().st_size
    if size > MAX_AUDIO_BYTES:
        return f'<p class="note">clip not embedded ({size / 2**20:.0f} MB): {html.escape(path)}</p>'
    mime = AUDIO_MIME.get(p.suffix.lower(), "application/octet-stream")
    data = base64.b64encode(p.read_bytes()).decode("ascii")
    return f'<audio controls preload="metadata" src="data:{mime};base64,{data}"></audio>'


def marked_html(text: str, spans: list[list[int]]) -> str:
    """text with each [start, end) span in a <mark>, everything escaped."""
    out, pos = [], 0
    for start, end in sorted(spans):
        if start < pos:
            continue
        out += [html.escape(text[pos:start]), f'<mark class="invented">{html.escape(text[start:end])}</mark>']
        pos = end
    return "".join(out) + html.escape(text[pos:])


def summary_html(system: str, item: dict, summary: str) -> str:
    from speechsum.evaluation.facts import score_item

    score = score_item(item, summary)
    if score is None:
        badge, body = "facts unknown: not checked", html.escape(summary)
    else:
        badge = (f"facts {score['n_stated']}/{score['n_facts']}, "
                 f"{score['n_hallucinated']} invented claim{'s' * (score['n_hallucinated'] != 1)}")
        body = marked_html(summary, score["hallucinated_spans"])
    return (f'<div class="system"><h4>{html.escape(system)} <span class="badge">{badge}</span></h4>'
            f'<p class="text">{body or "<em>(empty)</em>"}</p></div>')


def pick_examples(items: list[dict], n: int) -> list[dict]:
    """Up to n items, taken in turn from each style (first-seen order), so the cards cover the styles."""
    by_style: dict[str, list[dict]] = {}
    for r in items:
        by_style.setdefault(r.get("style") or "", []).append(r)
    queues = list(by_style.values())
    picked: list[dict] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def card_html(item: dict, systems: list[str]) -> str:
    meta = " · ".join(f"{k} {item[k]}" for k in ("style", "language", "genre", "voice") if item.get(k))
    meta += f" · {item['duration']:.1f} s" + (f" · held out: {item['held_out_kind']}" if item.get("held_out_kind") else "")
    parts = [f'<section class="card"><h3>{html.escape(item["id"])}</h3><p class="meta">{html.escape(meta)}</p>',
             audio_html(item["audio_path"]),
             f'<p><b>instruction</b></p><p class="text">{html.escape(item["instruction"])}</p>',
             f'<details><summary>transcript ({len(item["transcript"].split())} words)</summary>'
             f'<p class="text">{html.escape(item["transcript"])}</p></details>']
    if item.get("asr_transcript"):
        parts.append(f'<details><summary>ASR transcript (cascade input)</summary>'
                     f'<p class="text">{html.escape(item["asr_transcript"])}</p></details>')
    parts.append(f'<p><b>target</b></p><p class="text">{html.escape(item["target"])}</p>')
    parts += [summary_html(s, item, item[f"pred:{s}"]) for s in systems if f"pred:{s}" in item]
    return "".join(parts) + "</section>"


CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0 1em; } th, td { border: 1px solid #ccc; padding: 4px 8px; }
th { background: #f3f3f3; } td:not(:first-child) { text-align: right; font-variant-numeric: tabular-nums; }
table.small { font-size: 12px; } .breakdowns { display: flex; flex-wrap: wrap; gap: 0 2em; } img.plot { max-width: 100%; display: block; margin: .5em 0 1.5em; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1em; }
.card { border: 1px solid #ccc; border-radius: 6px; padding: .5em 1em; background: #fafafa; }
.card h3 { margin: .3em 0; font-size: 1em; } .meta, .note { color: #666; font-size: 12px; }
.text { white-space: pre-wrap; margin: .2em 0 .6em; } audio { width: 100%; }
.system { border-top: 1px dashed #ccc; } .system h4 { margin: .4em 0 .1em; }
.badge { font-weight: normal; font-size: 11px; color: #555; background: #eee; border-radius: 3px; padding: 1px 5px; }
mark.invented { background: #ffb3b3; border-bottom: 2px solid #c00; }
"""


# ------------------------------------------------------------------------------------ the command


def build_report(run_dir: str | Path, eval_dir: str | Path | None = None, out: str | Path | None = None,
                 max_examples: int = MAX_EXAMPLES) -> Path:
    """Write the report of a run folder; returns the path of index.html."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ReportError(f"{run_dir}: no such folder")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a folder (pass a run folder such as runs/tiny)")
    found = find_eval(run_dir, eval_dir)
    stages = find_stages(run_dir)
    if found is None and not stages:
        raise ReportError(f"{run_dir}: nothing to report: no {EVAL_FOLDER}/metrics.json (or --eval DIR) "
                          f"and no <stage>/metrics.jsonl")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError(f"{run_dir}: report needs matplotlib: pip install 'speechsum[report]'") from None
    out_dir = Path(out) if out is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    title = html.escape(run_dir.resolve().name)
    body = [f"<h1>speechsum report: {title}</h1>",
            f'<p class="meta">run folder {html.escape(str(run_dir))}; '
            + (f"eval {html.escape(str(found))}" if found else "no eval output") + "</p>"]
    metrics, items = read_eval(found) if found is not None else ({}, [])
    if metrics:
        body += eval_sections(metrics, out_dir)
    if stages:
        body += stage_sections(stages, out_dir)
    if items:
        body += example_sections(items, list(metrics["systems"]), max_examples)
    path = out_dir / "index.html"
    path.write_text(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>speechsum report: {title}'
                    f'</title><style>{CSS}</style></head><body>\n' + "\n".join(body) + "\n</body></html>\n")
    return path


def eval_sections(metrics: dict, out_dir: Path) -> list[str]:
    from speechsum.evaluation.run_eval import table_cells

    data = html.escape(str(metrics.get("data", "?")))
    parts = [f"<h2>Comparison</h2><p>{metrics.get('n_items', '?')} items of {data}; headline scores with "
             "bootstrap 95 % intervals.</p>", table_html(*table_cells(metrics), "scores")]
    scores = plot_scores(metrics, out_dir / "scores.png")
    if scores is not None:
        parts.append(png_tag(scores, "headline scores per system"))
    return parts + ["<h2>Breakdowns</h2>", breakdown_html(metrics)]


def stage_sections(stages: dict[str, list[dict]], out_dir: Path) -> list[str]:
    parts = ["<h2>Training curves</h2>", stages_html(stages)]
    for name, rows in stages.items():
        png = plot_curves(name, rows, out_dir / f"curves-{name}.png")
        if png is not None:
            parts.append(png_tag(png, f"{name} training curves"))
    return parts


def example_sections(items: list[dict], systems: list[str], max_examples: int) -> list[str]:
    cards = pick_examples(items, max_examples)
    return [f"<h2>Examples</h2><p>{len(cards)} of {len(items)} items. "
            '<mark class="invented">Marked</mark> words are invented claims: names, numbers, dates or times '
            "that neither the transcript nor the document's facts support.</p>",
            '<div class="cards">' + "".join(card_html(r, systems) for r in cards) + "</div>"]
