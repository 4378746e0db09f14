"""User recordings (+ transcripts, optional summaries) go into the same dataset format."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from speechsum.data import dataset
from speechsum.data.user import UserDataError, convert_user_data, load_user_manifest


def _wav(path, seconds=1.5, rate=22050):
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 220 * t), rate)


def test_folder_with_transcripts_and_summaries(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name, summary in (("call one", "They agreed to meet on Friday."), ("call2", None)):
        _wav(src / f"{name}.wav")
        (src / f"{name}.txt").write_text("hello, we agreed to meet on friday")
        if summary:
            (src / f"{name}.summary.txt").write_text(summary)
    counts = convert_user_data(src, tmp_path / "out")
    assert counts == {"items": 2, "with_summary": 1, "with_facts": 0}
    table = pq.read_table(tmp_path / "out" / "test" / "manifest.parquet")
    assert table.schema.equals(dataset.arrow_schema())
    rows = {r["doc_id"]: r for r in table.to_pylist()}
    r = rows["call_one"]
    assert r["style"] == "summary" and r["target"] == "They agreed to meet on Friday." and r["target_author"] == "user"
    assert r["instruction"] and "{" not in r["instruction"] and json.loads(r["facts"]) == []
    audio, rate = sf.read(tmp_path / "out" / "test" / r["audio"])
    assert rate == 16000 and len(audio) / rate == pytest.approx(1.5, abs=0.01)
    assert r["sentences"] == [{"text": r["transcript"], "start": 0.0, "end": r["duration"], "speaker": 0}]
    assert rows["call2"]["target"] == "" and rows["call2"]["style"] == ""


def test_csv_and_jsonl_manifests(tmp_path):
    _wav(tmp_path / "a.flac")
    (tmp_path / "m.csv").write_text("audio,transcript,summary\na.flac,some words,a summary\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.flac", "transcript": "x", "id": "z"}) + "\n")
    assert load_user_manifest(tmp_path / "m.csv")[0].summary == "a summary"
    assert load_user_manifest(tmp_path / "m.jsonl")[0].id == "z"
    (tmp_path / "bad.csv").write_text("audio,words\na.flac,hi\n")
    with pytest.raises(UserDataError, match="no 'transcript'"):
        load_user_manifest(tmp_path / "bad.csv")


FACTS = [{"kind": "person", "value": "Diane"}, {"kind": "place", "value": "New Jersey"},
         {"kind": "money", "value": "$2,500"}]


def test_facts_of_a_folder_recording_are_scored_by_eval_s_fact_scorer(tmp_path):
    # facts make a user's recording score like a synthetic one: recall of the facts, invented claims
    from speechsum.evaluation.facts import score_item

    src = tmp_path / "src"
    src.mkdir()
    _wav(src / "call.wav")
    (src / "call.txt").write_text("Diane in New Jersey paid 2,500 dollars.")
    (src / "call.summary.txt").write_text("Diane paid $2,500.")
    (src / "call.facts.json").write_text(json.dumps(FACTS))
    assert convert_user_data(src, tmp_path / "out") == {"items": 1, "with_summary": 1, "with_facts": 1}
    (r,) = dataset.read_manifest(tmp_path / "out" / "test")
    assert json.loads(r["facts"]) == [{"id": f"f{i}", **f} for i, f in enumerate(FACTS)]
    full = score_item(r, "Diane, in New Jersey, paid 2,500 dollars.")
    assert full["recall"] == 1.0 and full["n_hallucinated"] == 0
    partial = score_item(r, "Then Sheila paid $9,000 on Friday.")  # (a name opening a sentence is not a claim)
    assert partial["recall"] == 0.0 and partial["n_hallucinated"] == 3  # Sheila, $9,000, Friday


def test_facts_in_a_manifest_and_bad_ones_name_the_row(tmp_path):
    _wav(tmp_path / "a.flac")
    cell = json.dumps(FACTS).replace('"', '""')
    (tmp_path / "m.csv").write_text(f'audio,transcript,facts\na.flac,words,"{cell}"\n')
    assert [f["value"] for f in load_user_manifest(tmp_path / "m.csv")[0].facts] == ["Diane", "New Jersey", "$2,500"]
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.flac", "transcript": "x", "facts": FACTS}) + "\n")
    assert len(load_user_manifest(tmp_path / "m.jsonl")[0].facts) == 3
    for facts, problem in ((["Diane"], "fact 1 is not a"), ([{"kind": "hobby", "value": "golf"}], "kind 'hobby'"),
                           ({"kind": "person"}, "must be a JSON list"), ("[{", "not JSON")):
        (tmp_path / "bad.jsonl").write_text(json.dumps({"audio": "a.flac", "transcript": "x", "facts": facts}) + "\n")
        with pytest.raises(UserDataError, match=rf"bad.jsonl: row 1: .*{problem}") as e:
            load_user_manifest(tmp_path / "bad.jsonl")
        assert "\n" not in str(e.value)


def test_import_command_writes_a_split_and_never_overwrites_one(tmp_path, capsys):
    from conftest import ffmpeg_write

    from speechsum.cli import main

    src = tmp_path / "src"
    src.mkdir()
    _wav(src / "memo.wav")
    ffmpeg_write(src / "phone.m4a", "ipod", "aac", 0.3 * np.sin(np.arange(44100) / 44100 * 2 * np.pi * 220), 44100)
    for stem in ("memo", "phone"):
        (src / f"{stem}.txt").write_text("Diane in New Jersey")
        (src / f"{stem}.summary.txt").write_text("Diane is in New Jersey.")
    (src / "phone.facts.json").write_text(json.dumps(FACTS[:2]))
    assert main(["import", str(src), "--out", str(tmp_path / "data")]) == 0
    assert "import: 2 recordings (2 with a summary, 1 with facts)" in capsys.readouterr().err
    manifest = tmp_path / "data" / "test" / "manifest.parquet"
    before = manifest.read_bytes()
    assert main(["import", str(src), "--out", str(tmp_path / "data")]) == 2
    assert "already holds a test split (nothing written" in capsys.readouterr().err
    assert manifest.read_bytes() == before
    (src / "phone.facts.json").write_text("[{}]")
    assert main(["import", str(src), "--out", str(tmp_path / "other")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("speechsum: error: ") and "phone.facts.json: fact 1 is not a" in err and "\n" not in err


def test_eval_scores_the_facts_of_imported_recordings(tmp_path, tiny_dir):
    from tiny import tiny_speechlm

    from speechsum.evaluation.run_eval import evaluate

    src = tmp_path / "src"
    src.mkdir()
    for stem in ("a", "b"):
        _wav(src / f"{stem}.wav")
        (src / f"{stem}.txt").write_text("Diane in New Jersey paid 2,500 dollars.")
        (src / f"{stem}.summary.txt").write_text("Diane paid $2,500.")
    (src / "a.facts.json").write_text(json.dumps(FACTS))
    convert_user_data(src, tmp_path / "data")
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    m = evaluate([str(tmp_path / "ckpt")], str(tmp_path / "data" / "test"), None, max_new_tokens=4,
                 embeddings=False, log=lambda *a: None)
    overall = m["systems"]["ckpt"]["overall"]
    assert m["n_items"] == 2 and overall["fact_recall"] is not None  # a's facts are scored (b has none)
