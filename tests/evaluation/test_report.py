"""`speechsum report`: a fake run folder (real `run_eval` output on a tiny in-code model, a few
metrics.jsonl lines per stage) rendered to HTML, checked as text and in headless Chromium."""

import json
import re
import shutil
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tiny import make_dataset, tiny_speechlm

from speechsum.cli import main
from speechsum.evaluation.report import build_report, marked_html, pick_examples, score_bars, summary_html

STAGE_METRICS = {
    "align": [{"loss": 4.1, "feature": 0.3, "lr": 1e-3}, {"loss": 3.2, "feature": 0.2, "lr": 1e-3}],
    "sft": [{"loss": 2.5, "lr": 1e-4, "grad_norm": 1.2}, {"dev_loss": 2.4}, {"loss": 2.1, "lr": 1e-4, "grad_norm": 0.9}],
    "dpo": [{"loss": 0.69, "reward_accuracy": 0.5}, {"loss": 0.6, "reward_accuracy": 0.75}],
}
# a money fact the summaries can get wrong: "900 dollars" is invented, "friday" is in the transcript
FACTS = [{"id": "f0", "kind": "money", "value": "300 dollars"}]
INVENTED = "the meeting on friday costs 900 dollars"


def write_stages(run, stages=STAGE_METRICS):
    for stage, rows in stages.items():
        (run / stage).mkdir(parents=True, exist_ok=True)
        lines = [json.dumps({"step": i + 1, **r}) for i, r in enumerate(rows)]
        (run / stage / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 9, "lo')  # cut by a kill


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_dir):
    """runs/x with eval/ from the real evaluate() on two tiny checkpoints, and three stages."""
    from speechsum.evaluation.run_eval import evaluate

    root = tmp_path_factory.mktemp("report")
    data = make_dataset(root / "data", n_train=1, n_dev=3)
    for name in ("sft", "dpo"):
        tiny_speechlm(tiny_dir).save_pretrained(root / "ckpt" / name)
    run = root / "run"
    evaluate([str(root / "ckpt" / "sft"), str(root / "ckpt" / "dpo")], str(data / "dev"), str(run / "eval"),
             max_new_tokens=4, embeddings=False, log=lambda *a: None)
    # give the first item known facts and dpo an invented amount, so a card has something to mark
    preds = pq.read_table(run / "eval" / "predictions.parquet").to_pylist()
    preds[0]["facts"], preds[0]["pred:dpo"] = json.dumps(FACTS), INVENTED
    pq.write_table(pa.Table.from_pylist(preds), run / "eval" / "predictions.parquet")
    write_stages(run)
    return run


def test_report_has_table_curves_audio_and_marks(run_dir):
    path = build_report(run_dir)
    assert path == run_dir / "report" / "index.html"
    page = path.read_text()
    assert '<table class="scores">' in page and "<th>fact recall</th>" in page
    assert "<td>sft</td>" in page and "<td>dpo</td>" in page
    assert page.count("<audio ") == 3 and 'src="data:audio/flac;base64,' in page
    assert page.count('<section class="card">') == 3
    assert '<mark class="invented">900 dollars</mark>' in page and "1 invented claim" in page
    for png in ("scores.png", "curves-align.png", "curves-sft.png", "curves-dpo.png"):
        assert (run_dir / "report" / png).read_bytes()[:4] == b"\x89PNG"
    assert page.count('<img class="plot"') == 4 and 'alt="sft training curves"' in page
    # self-contained: nothing is fetched from anywhere
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?!data:)[a-z]+:""", page, re.I)
    assert "<link" not in page and "@import" not in page


def test_stage_order_and_dev_loss_curve(run_dir, tmp_path):
    page = build_report(run_dir, out=tmp_path).read_text()
    assert page.index("<td>align</td>") < page.index("<td>sft</td>", page.index("Training curves"))
    assert "<td>2.5</td><td>2.1</td><td>2.4</td>" in page  # sft: first, last loss, last dev loss


def test_examples_are_capped_and_spread_over_styles(run_dir, tmp_path):
    page = build_report(run_dir, out=tmp_path, max_examples=2).read_text()
    assert page.count("<audio ") == 2 and "2 of 3 items" in page
    items = [{"id": str(i), "style": s} for i, s in enumerate("aaab")]
    assert [r["id"] for r in pick_examples(items, 2)] == ["0", "3"]


def test_eval_only_and_stages_only(run_dir, tmp_path):
    page = build_report(run_dir / "eval", out=tmp_path / "a").read_text()  # an eval folder passed directly
    assert '<table class="scores">' in page and "Training curves" not in page
    write_stages(tmp_path / "train", {"kd": [{"loss": 1.0, "seconds_teacher": 0.2}, {"loss": 0.8}],
                                      "custom": [{"epoch": 0}]})  # a stage with nothing to plot
    page = build_report(tmp_path / "train").read_text()
    assert "kd training curves" in page and "Comparison" not in page and "<td>custom</td>" in page
    assert sorted(p.name for p in (tmp_path / "train" / "report").iterdir()) == ["curves-kd.png", "index.html"]


def test_score_bars_use_intervals_and_plot_wer_without_one():
    metrics = {"systems": {"a": {"overall": {"wer": 0.8, "rouge_l": 0.1, "fact_f1": None},
                                 "ci": {"rouge_l": [0.1, 0.0, 0.2]}}}}
    assert score_bars(metrics) == [("wer", "WER", [("a", [0.8, 0.8, 0.8])]),
                                   ("rouge_l", "ROUGE-L", [("a", [0.1, 0.0, 0.2])])]


def test_invented_claims_marked_with_the_eval_rule():
    item = {"facts": json.dumps(FACTS), "transcript": "budget of 300 dollars on friday", "instruction": "summarize"}
    out = summary_html("dpo", item, "Budget 300 dollars, moved to 900 dollars <b>")
    assert '<mark class="invented">900 dollars</mark>' in out and "&lt;b&gt;" in out and "facts 1/1" in out
    assert "not checked" in summary_html("sft", {**item, "facts": "[]"}, "costs 900 dollars")
    assert marked_html("a <1> b", [[2, 5]]) == 'a <mark class="invented">&lt;1&gt;</mark> b'


def broken_eval(run):
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text("{oops")
    return run


@pytest.mark.parametrize("make, problem", [
    (lambda p: p / "missing", "no such folder"),
    (lambda p: p, "nothing to report"),
    (broken_eval, "not valid JSON"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, make, problem):
    assert main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"speechsum: error: {tmp_path}") and problem in err


def test_cli_eval_option(run_dir, tmp_path, capsys):
    assert main(["report", str(tmp_path), "--eval", str(run_dir / "eval"), "--out", str(tmp_path / "r")]) == 0
    assert capsys.readouterr().out.strip() == f"report: {tmp_path / 'r' / 'index.html'}"
    assert main(["report", str(run_dir), "--eval", str(tmp_path)]) == 2
    assert "no metrics.json" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ a real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# test-only probe: Chromium writes each clip's decoded duration into the DOM once it has read it
PROBE = ("<script>for (const a of document.querySelectorAll('audio')) a.addEventListener('loadedmetadata', "
         "() => { a.dataset.duration = a.duration.toFixed(2); });</script>")


def chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium")
    assert exe, "chromium is not installed: run `make system` (Debian package chromium)"
    return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_renders_in_headless_chromium(run_dir, tmp_path):
    page = build_report(run_dir, out=tmp_path / "report")
    probed = tmp_path / "report" / "probed.html"
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    shot = tmp_path / "report.png"
    res = chromium(tmp_path, "--virtual-time-budget=5000", "--window-size=1280,2400", f"--screenshot={shot}",
                   "--dump-dom", probed.as_uri())
    dom = res.stdout
    assert res.returncode == 0, res.stderr[-2000:]
    assert '<table class="scores">' in dom and "<td>dpo</td>" in dom
    durations = re.findall(r'<audio [^>]*data-duration="([\d.]+)"', dom)
    assert len(durations) == 3 and all(float(d) > 0.5 for d in durations)  # the embedded FLAC decodes
    assert shot.read_bytes()[:4] == b"\x89PNG"
