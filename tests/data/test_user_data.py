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
    assert counts == {"items": 2, "with_summary": 1}
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
