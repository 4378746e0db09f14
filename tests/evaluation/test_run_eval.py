"""`eval` on a tiny in-code model and a 3-item dataset."""

import json

import pytest

from tiny import make_dataset, tiny_speechlm

from speechsum.evaluation.run_eval import evaluate, markdown_table


def test_eval_tiny_model_three_items(tmp_path, tiny_dir):
    data = make_dataset(tmp_path / "data", n_train=1, n_dev=3)
    model = tiny_speechlm(tiny_dir)
    model.save_pretrained(tmp_path / "ckpt")
    m = evaluate([str(tmp_path / "ckpt")], str(data / "dev"), str(tmp_path / "out"), max_new_tokens=4,
                 embeddings=False, log=lambda *a: None)
    assert m["n_items"] == 3 and list(m["systems"]) == ["ckpt"]
    overall = m["systems"]["ckpt"]["overall"]
    assert 0 <= overall["rouge_l"] <= 1 and overall["fact_recall"] is None  # these items have no facts
    assert set(m["systems"]["ckpt"]["by"]) == {"style", "genre", "language", "voice", "held_out", "length"}
    assert (tmp_path / "out" / "predictions.parquet").is_file()
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "| ckpt |" in saved["table"] and saved["table"] == markdown_table(saved)
    # absolute: `compare` of this folder from another working directory found no data
    assert saved["data"] == str((data / "dev").resolve())


def test_a_manifest_without_a_needed_column_is_one_line(tmp_path):
    # was: KeyError: 'target' from deep in eval
    import pyarrow as pa
    import pyarrow.parquet as pq

    from speechsum.evaluation.run_eval import load_test_items

    pq.write_table(pa.table({"id": ["a"], "doc_id": ["a"], "audio": ["a.flac"], "transcript": ["t"],
                             "instruction": ["i"]}), tmp_path / "manifest.parquet")
    with pytest.raises(ValueError, match=r"manifest.parquet: no column target \(a speechsum manifest has"):
        load_test_items(tmp_path)
    (tmp_path / "manifest.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"manifest.parquet: not a readable Parquet manifest"):
        load_test_items(tmp_path)


def test_transcription_gate_adds_wer(tmp_path, tiny_dir):
    data = make_dataset(tmp_path / "data", n_train=1, n_dev=2)
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    m = evaluate([str(tmp_path / "ckpt")], str(data / "dev"), None, max_new_tokens=3, embeddings=False,
                 task="transcribe", log=lambda *a: None)
    assert m["systems"]["ckpt"]["overall"]["wer"] >= 0.5  # a random model cannot transcribe
    assert m["table"].splitlines()[0].startswith("| system | WER |")


def test_readout_task_scores_the_connector_without_generation(tmp_path, tiny_dir):
    data = make_dataset(tmp_path / "data", n_train=1, n_dev=2)
    tiny_speechlm(tiny_dir, readout_blank="<pad>").save_pretrained(tmp_path / "ckpt")
    m = evaluate([str(tmp_path / "ckpt")], str(data / "dev"), None, embeddings=False, task="readout",
                 log=lambda *a: None)
    assert m["systems"]["ckpt"]["overall"]["wer"] >= 0.5  # a random projector reads out nothing useful



def test_readout_of_the_untrained_assembly_says_it_is_a_floor(tmp_path, monkeypatch):
    # its connector is random: the read-out scores chance, which the table alone did not say
    from speechsum.evaluation import run_eval

    data = make_dataset(tmp_path / "data", n_train=1, n_dev=2)
    monkeypatch.setattr(run_eval, "generate_speechlm", lambda spec, items, *a, **k: (["" for _ in items], None))
    lines = []
    evaluate(["untrained"], str(data / "dev"), None, embeddings=False, task="readout", log=lines.append)
    assert any("untrained: its connector is random" in ln for ln in lines)
    lines.clear()
    evaluate(["untrained"], str(data / "dev"), None, embeddings=False, log=lines.append)  # summaries: no such line
    assert not any("connector is random" in ln for ln in lines)

def test_paired_deltas_golden():
    from speechsum.evaluation.run_eval import markdown_deltas, paired_deltas

    def row(f1, inv):
        return {"fact_f1": f1, "fact_recall": f1, "invented_per_summary": inv}

    rows = {"a": [row(0.1, 2), row(0.5, 1), row(None, 0)], "b": [row(0.3, 1), row(0.7, 1), row(0.9, 0)]}
    (d,) = paired_deltas(rows, [("a", "b")])
    # item 3 has no fact score for a: left out of the fact deltas; both differences are +0.2
    assert d["fact_f1"] == pytest.approx([0.2, 0.2, 0.2])
    assert d["invented_per_summary"][0] == pytest.approx(-1 / 3)  # (-1 + 0 + 0) / 3
    assert "| a -> b | +0.200 [+0.20, +0.20] |" in markdown_deltas([d])
    # resampling documents: items 1 and 2 of one document move together; item 3 is left out
    rows = {"a": [row(0.0, 0), row(0.0, 0), row(None, 0)], "b": [row(0.4, 0), row(0.0, 0), row(0.9, 0)]}
    (d,) = paired_deltas(rows, [("a", "b")], groups=["d1", "d1", "d2"])
    assert d["fact_f1"] == pytest.approx([0.2, 0.2, 0.2])  # one document drawn: always its mean
    (d,) = paired_deltas(rows, [("a", "b")])
    assert d["fact_f1"][1:] == pytest.approx([0.0, 0.4])  # items apart: each drawn alone at times


def test_pooled_sides_average_each_item_over_seeds_golden():
    from speechsum.evaluation.run_eval import paired_deltas

    def row(f1):
        return {"fact_f1": f1, "fact_recall": f1, "invented_per_summary": 0.0}

    rows = {"s0/a": [row(0.0), row(0.2)], "s1/a": [row(0.2), row(None)],
            "s0/b": [row(0.3), row(0.2)], "s1/b": [row(0.5), row(0.6)]}
    (d,) = paired_deltas(rows, [(("s0/a", "s1/a"), ("s0/b", "s1/b"))])
    assert d["from"] == "mean(s0/a, s1/a)" and d["to"] == "mean(s0/b, s1/b)"
    # item 1: mean b 0.4 - mean a 0.1 = +0.3; item 2: a has no score in s1: left out
    assert d["fact_f1"] == pytest.approx([0.3, 0.3, 0.3])
    # run by run, over the items every run has a score on (item 1): s0 0.3 - 0.0, s1 0.5 - 0.2
    assert d["runs"]["fact_f1"]["differences"] == pytest.approx([0.3, 0.3])
    assert d["runs"]["fact_f1"]["mean"] == pytest.approx(0.3)
    (d,) = paired_deltas(rows, [("s0/a", ("s0/b", "s1/b"))])  # one side pooled, the other one run
    assert d["from"] == "s0/a" and d["fact_f1"][0] == pytest.approx((0.4 + 0.2) / 2) and "runs" not in d


def test_system_names_grow_until_unique():
    from speechsum.evaluation.run_eval import system_names

    assert system_names(["runs/tiny/sft", "runs/tiny/kd", "cascade", "text:checkpoints/tiny-teacher"]) == [
        "sft", "kd", "cascade", "text:tiny-teacher"]
    assert system_names(["runs/tiny/sft", "runs/seed1/sft", "runs/seed1/kd"]) == ["tiny/sft", "seed1/sft", "kd"]
    assert system_names(["a/x/final", "b/x/final"]) == ["a/x/final", "b/x/final"]
    with pytest.raises(ValueError, match="runs/tiny/sft: given twice"):
        system_names(["runs/tiny/sft", "runs/tiny/sft"])
    with pytest.raises(ValueError, match="same system"):
        system_names(["runs/tiny/sft", "runs/tiny/sft/"])


def test_two_runs_of_one_stage_are_two_systems(tmp_path, tiny_dir):
    """runs/<seed>/sft folders share their last name: both are scored, under longer names, and a
    pooled comparison names its sides."""
    data = make_dataset(tmp_path / "data", n_train=1, n_dev=2)
    for seed in ("s0", "s1"):
        tiny_speechlm(tiny_dir).save_pretrained(tmp_path / seed / "sft")
    specs = [str(tmp_path / "s0" / "sft"), str(tmp_path / "s1" / "sft")]
    m = evaluate(specs, str(data / "dev"), None, max_new_tokens=3, embeddings=False, log=lambda *a: None,
                 compare=[(specs[0], specs[1]), (specs[:1], specs)])
    assert list(m["systems"]) == ["s0/sft", "s1/sft"]
    assert [(d["from"], d["to"]) for d in m["deltas"]] == [("s0/sft", "s1/sft"), ("s0/sft", "mean(s0/sft, s1/sft)")]


def test_compare_names_must_be_evaluated(tmp_path, tiny_dir):
    data = make_dataset(tmp_path / "data", n_train=1, n_dev=1)
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="compare: other"):
        evaluate([str(tmp_path / "ckpt")], str(data / "dev"), compare=[(str(tmp_path / "ckpt"), "other")],
                 embeddings=False, log=lambda *a: None)


def test_eval_stops_looping_answers_like_summarize_and_records_it(tmp_path, tiny_dir):
    import pandas as pd

    data = make_dataset(tmp_path / "data", n_train=1, n_dev=3)
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    preds = {}
    for k in (0, 3):
        m = evaluate([str(tmp_path / "ckpt")], str(data / "dev"), str(tmp_path / f"out{k}"), max_new_tokens=24,
                     embeddings=False, repeat_stop=k, log=lambda *a: None)
        assert m["repeat_stop"] == k and json.loads((tmp_path / f"out{k}" / "metrics.json").read_text())["repeat_stop"] == k
        preds[k] = pd.read_parquet(tmp_path / f"out{k}" / "predictions.parquet")["pred:ckpt"].tolist()
    assert all(b.split() == a.split()[: len(b.split())] for a, b in zip(preds[0], preds[3]))  # a prefix
    assert sum(len(b) < len(a) for a, b in zip(preds[0], preds[3])) >= 1  # the tiny model loops
    with pytest.raises(ValueError, match="repeat_stop=1"):
        evaluate([str(tmp_path / "ckpt")], str(data / "dev"), repeat_stop=1, log=lambda *a: None)


def test_cli_eval_rejects_a_model_given_twice_in_one_line(tmp_path, tiny_dir, capsys):
    from speechsum.cli import main

    data = make_dataset(tmp_path / "data", n_train=1, n_dev=1)
    ckpt = str(tmp_path / "ckpt")
    assert main(["eval", "--model", ckpt, ckpt, "--data", str(data / "dev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"{ckpt}: given twice"), err


def test_rows_and_table_carry_answer_length_and_claims():
    from speechsum.evaluation.run_eval import score_items, summarize_scores, table_cells

    facts = json.dumps([{"id": "f1", "kind": "person", "value": "Priya Patel", "mention": "Priya Patel", "attrs": {}},
                        {"id": "f2", "kind": "money", "value": "$2,500", "mention": "$2,500", "attrs": {}}])
    item = {"id": "d-0", "doc_id": "d", "instruction": "Summarize in one line.", "facts": facts, "style": "one_line",
            "transcript": "Priya Patel said the budget of $2,500 is approved.", "target": "Priya Patel got $2,500.",
            "genre": "meeting", "language": "en", "voice": "v", "held_out_kind": "", "duration": 10.0}
    preds = ["Priya Patel got $2,500 on Friday.", "A budget was approved."]
    rows = score_items([item, item], preds, embeddings=False)
    # 3 checkable claims (a name, an amount, a day: the day invented) in 6 words; none in 4 words
    assert [r["words"] for r in rows] == [6, 4]
    assert [r["claims_per_summary"] for r in rows] == [3, 0] and rows[0]["invented_per_summary"] == 1
    overall = summarize_scores(rows, [item, item])["overall"]
    assert overall["words"] == 5.0 and overall["claims_per_summary"] == 1.5
    header, cells = table_cells({"systems": {"m": {**summarize_scores(rows, [item, item]), "seconds_per_item": 0.5}}})
    assert header[-4:] == ["style", "words", "repeated 4-grams", "s/item"] and "claims/summary" in header
    assert [r["repeated_4grams"] for r in rows] == [0.0, 0.0]  # no phrase said twice
    assert cells[0][header.index("words")] == "5.0" and cells[0][header.index("claims/summary")].startswith("1.5")
    # invented over claims pooled: 1 invented of 3 claims; the summary with no claims adds nothing
    assert overall["invented_per_claim"] == pytest.approx(1 / 3)
    assert cells[0][header.index("invented/claim")] == "0.333"


def test_paired_deltas_pool_the_invented_share_of_claims_golden():
    """invented/claim: invented claims over claims stated, pooled over the items, b - a, with the
    items or documents resampled together on both sides."""
    from speechsum.evaluation.run_eval import markdown_deltas, paired_deltas

    def row(inv, claims):
        return {"fact_f1": 0.5, "fact_recall": 0.5, "invented_per_summary": inv, "claims_per_summary": claims}

    # a: 2 of 2 claims invented, then an empty answer; b: 1 of 4, then 1 of 1 -> 2/5 - 2/2 = -0.6
    rows = {"a": [row(2, 2), row(0, 0)], "b": [row(1, 4), row(1, 1)]}
    (d,) = paired_deltas(rows, [("a", "b")])
    # resamples: item 1 twice -> 2/8 - 4/4 = -0.75; both items -> -0.6; item 2 twice: a has no claims, left out
    assert d["invented_per_claim"] == pytest.approx([-0.6, -0.75, -0.6])
    # invented/summary: -1 and +1 per item (mean 0), while the pooled share falls
    assert "| a -> b | +0.000 [+0.00, +0.00] | +0.000 [+0.00, +0.00] | +0.000 [-1.00, +1.00] | -0.600 [-0.75, -0.60] |" \
        in markdown_deltas([d])
    (d,) = paired_deltas(rows, [("a", "b")], groups=["d1", "d1"])  # one document: always all of it
    assert d["invented_per_claim"] == pytest.approx([-0.6, -0.6, -0.6])
    # no claims at all on one side: no ratio to compare
    (d,) = paired_deltas({"a": [row(0, 0)], "b": [row(1, 2)]}, [("a", "b")])
    assert "invented_per_claim" not in d


def test_cascade_asr_is_greedy_without_the_sampling_fallback():
    # faster-whisper's default temperatures (0, 0.2, ..., 1) sample unseeded on windows it judges
    # repetitive, which made the cascade differ run to run; one temperature of 0 turns that off
    from speechsum.evaluation.run_eval import transcribe

    class Segment:
        text = " hello there "

    class Recorder:
        def transcribe(self, audio, **kw):
            self.kw = kw
            return iter([Segment(), Segment()]), None

    asr = Recorder()
    assert transcribe(asr, "clip.wav") == "hello there hello there"
    assert asr.kw["temperature"] == 0.0 and asr.kw["beam_size"] == 1


# ------------------------------------------------------------------ `speechsum compare` (saved evaluations)

FACT = [{"id": "person:0", "kind": "person", "value": "Anna", "mention": "Anna", "attrs": {}}]


def _fact_dataset(root, n=4):
    """`n` one-item documents whose one fact is the name Anna."""
    from speechsum.data.dataset import read_manifest, write_manifest

    data = make_dataset(root, n_train=1, n_dev=n) / "dev"
    rows = read_manifest(data)
    for r in rows:
        r["transcript"] = r["target"] = "Anna called about friday"
        r["facts"] = json.dumps(FACT)
    write_manifest(data, rows)
    return data, [r["id"] for r in rows]


def _saved_eval(out, data, ids, preds: dict[str, list[str]], **settings):
    """An eval folder as `evaluate(..., out=...)` writes it, with these predictions."""
    from speechsum.evaluation.run_eval import _write, load_test_items

    items = {r["id"]: r for r in load_test_items(data)}
    metrics = {"data": str(data), "n_items": len(ids), "max_new_tokens": 96, "repeat_stop": 3, "int8_decoding": True,
               "systems": {}, **settings}
    _write(out, [items[i] for i in ids], preds, metrics, None)
    return out


def test_compare_saved_pairs_systems_of_several_folders_golden(tmp_path):
    from speechsum.evaluation.run_eval import compare_saved

    data, ids = _fact_dataset(tmp_path / "data")
    says, silent = ["Anna called."] * 4, ["Someone called."] * 4
    a = _saved_eval(tmp_path / "day1", data, ids, {"sft": silent, "kd": says})
    b = _saved_eval(tmp_path / "day2", data, ids, {"sft": silent, "kd": silent})
    m = compare_saved([a, b], ["day1/sft:day1/kd", "day1/sft,day2/sft:day1/kd,day2/kd"], out=tmp_path / "c.json",
                      log=lambda *x: None)
    one, pooled = m["deltas"]
    assert (one["from"], one["to"]) == ("day1/sft", "day1/kd")
    assert one["fact_recall"][0] == pytest.approx(1.0) and one["fact_f1"][0] == pytest.approx(1.0)
    assert pooled["fact_recall"][0] == pytest.approx(0.5)  # each item: mean(1, 0) - mean(0, 0)
    assert pooled["runs"]["fact_recall"]["differences"] == pytest.approx([1.0, 0.0])
    assert m["systems"]["day1/kd"]["fact_recall"] == pytest.approx(1.0)
    assert json.loads((tmp_path / "c.json").read_text())["deltas"][0]["to"] == "day1/kd"


def test_compare_saved_matches_evaluate_in_one_call(tmp_path, tiny_dir):
    """Two systems evaluated apart and compared from their folders give eval's own paired deltas."""
    from speechsum.evaluation.run_eval import compare_saved

    import torch

    data, _ = _fact_dataset(tmp_path / "data", n=3)
    for k in (0, 1):
        torch.manual_seed(k)
        tiny_speechlm(tiny_dir).save_pretrained(tmp_path / f"s{k}" / "sft")
    specs = [str(tmp_path / "s0" / "sft"), str(tmp_path / "s1" / "sft")]
    kw = dict(max_new_tokens=4, embeddings=False, log=lambda *a: None)
    together = evaluate(specs, str(data), compare=[(specs[0], specs[1])], **kw)
    evaluate(specs[:1], str(data), str(tmp_path / "e0"), **kw)
    evaluate(specs[1:], str(data), str(tmp_path / "e1"), **kw)
    apart = compare_saved([tmp_path / "e0", tmp_path / "e1"], ["e0/sft:e1/sft"], log=lambda *a: None)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("from", "to")}  # noqa: E731
    assert "fact_f1" in together["deltas"][0]
    assert strip(apart["deltas"][0]) == strip(together["deltas"][0])


def test_compare_saved_refuses_what_does_not_pair(tmp_path):
    from speechsum.evaluation.run_eval import compare_saved

    data, ids = _fact_dataset(tmp_path / "data")
    a = _saved_eval(tmp_path / "a", data, ids, {"kd": ["x"] * 4})
    quiet = dict(log=lambda *x: None)
    with pytest.raises(ValueError, match=r"max_new_tokens is 64 but .*a has 96"):
        compare_saved([a, _saved_eval(tmp_path / "b", data, ids, {"kd": ["x"] * 4}, max_new_tokens=64)],
                      ["a/kd:b/kd"], **quiet)
    with pytest.raises(ValueError, match="not those of"):
        compare_saved([a, _saved_eval(tmp_path / "c", data, ids[::-1], {"kd": ["x"] * 4})], ["a/kd:c/kd"], **quiet)
    with pytest.raises(ValueError, match=r"loop_rule is 'copies\+units' but .*a has None"):  # an older loop stop
        compare_saved([a, _saved_eval(tmp_path / "rule", data, ids, {"kd": ["x"] * 4}, loop_rule="copies+units")],
                      ["a/kd:rule/kd"], **quiet)
    d = _saved_eval(tmp_path / "d", data, ids, {"kd": ["x"] * 4})
    with pytest.raises(ValueError, match="expected A:B"):  # kd is in both folders: it needs its folder's name
        compare_saved([a, d], ["kd:d/kd"], **quiet)
    with pytest.raises(FileNotFoundError, match="not an eval folder"):
        compare_saved([a, tmp_path / "nowhere"], ["a/kd:a/kd"], **quiet)
    e = _saved_eval(tmp_path / "e", data, ids, {"kd": ["x"] * 4})
    (e / "metrics.json").write_text('{"data": ')  # cut off mid-write
    with pytest.raises(ValueError, match=r"e: unreadable eval folder \(JSONDecodeError"):
        compare_saved([a, e], ["a/kd:e/kd"], **quiet)
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="also named 'a'"):
        compare_saved([a, _saved_eval(tmp_path / "x" / "a", data, ids, {"kd": ["x"] * 4})], ["a/kd:a/kd"], **quiet)


def test_across_runs_golden():
    from speechsum.evaluation.run_eval import across_runs

    r = across_runs([0.01, 0.03])  # mean 0.02, sd 0.01414, se 0.01, t(0.975, 1) = 12.706
    assert r["mean"] == pytest.approx(0.02) and r["ci"] == pytest.approx([0.02 - 0.127062, 0.02 + 0.127062], abs=1e-5)
    with pytest.raises(ValueError, match="at least 2 runs"):
        across_runs([0.1])


def test_cli_compare_bad_folder_is_one_line_error(tmp_path, capsys):
    from speechsum.cli import main

    assert main(["compare", str(tmp_path / "nowhere"), "--compare", "a:b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not an eval folder" in err[0], err
