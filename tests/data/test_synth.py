"""The synth pipeline end to end on a tiny in-code config (real espeak-ng; no piper: slow)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml

from speechsum.audio import SAMPLE_RATE
from speechsum.config import ConfigError, from_dict, load_config
from speechsum.data import dataset, styles
from speechsum.data.factcheck import check_target
from speechsum.data.synth import SplitConfig, SynthConfig, synth_command, synthesize

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

CONFIGS = Path(__file__).parents[2] / "configs" / "synth"


def tiny_config(cache: Path, **kw) -> SynthConfig:
    base = dict(
        train=SplitConfig(documents=7, items_per_doc=2, voices=["espeak:en-us", "espeak:en-gb+f3", "espeak:en-us+m3"]),
        dev=SplitConfig(documents=2, voices=["espeak:en-us"]),
        test=SplitConfig(documents=3, items_per_doc=3, voices=["espeak:en-029+m6", "espeak:en-gb-scotland+f1"],
                         multilingual_documents=3,
                         multilingual_voices=["espeak:es+m5", "espeak:fr-fr+m6", "espeak:de+f1"]),
        length_scale=0.2, test_held_out_fraction=0.6, workers=1, progress=False, cache_dir=str(cache))
    base.update(kw)
    return SynthConfig(**base)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    out = root / "data"
    summary = synthesize(tiny_config(root / "cache"), out)
    return out, summary, {s: dataset.read_manifest(out / s) for s in dataset.SPLITS}


def test_manifest_schema_is_plain_parquet(made):
    out, summary, m = made
    for split in dataset.SPLITS:
        table = pq.read_table(out / split / "manifest.parquet")
        assert table.schema.equals(dataset.arrow_schema())
        assert len(m[split]) == summary["splits"][split] > 0
    assert len(m["train"]) == 14 and len(m["test"]) == 18
    r = m["train"][0]
    assert r["target_author"] == "facts-template" and r["source"] == "procedural" and r["source_id"] == ""
    assert r["rejected_target"] == "" and r["rejected_problems"] == []
    assert isinstance(json.loads(r["facts"]), list)
    card = (out / "README.md").read_text()
    for word in ("train", "hours", "espeak:en-029+m6", "| `sentences` |", "espeak-ng 1."):
        assert word in card


def test_ids_unique_and_splits_disjoint_in_documents_and_voices(made):
    _, _, m = made
    ids = [r["id"] for s in m.values() for r in s]
    assert len(ids) == len(set(ids))
    docs = {s: {r["doc_id"] for r in m[s]} for s in m}
    assert not docs["train"] & docs["test"] and not docs["train"] & docs["dev"] and not docs["dev"] & docs["test"]
    voices = {s: {v for r in m[s] for v in r["voices"]} for s in m}
    assert voices["train"] and voices["test"] and not voices["train"] & voices["test"]


def test_audio_is_16k_mono_and_sentence_times_match_it(made):
    out, _, m = made
    for split, recs in m.items():
        for r in {r["doc_id"]: r for r in recs}.values():
            audio, rate = sf.read(out / split / r["audio"], dtype="float32")
            assert rate == SAMPLE_RATE and audio.ndim == 1
            assert len(audio) / rate == pytest.approx(r["duration"], abs=1e-3)
            prev = 0.0
            for s in r["sentences"]:
                assert prev <= s["start"] < s["end"] <= r["duration"]
                seg = audio[int(s["start"] * rate): int(s["end"] * rate)]
                assert np.sqrt(np.mean(seg ** 2)) > 0.01  # speech inside each span
                prev = s["end"]
            assert " ".join(s["text"] for s in r["sentences"]) == r["transcript"]


def test_facts_in_transcripts_and_targets_only_state_document_facts(made):
    _, _, m = made
    for recs in m.values():
        for r in recs:
            facts = json.loads(r["facts"])
            assert facts
            for f in facts:
                assert f["mention"].lower() in r["transcript"].lower()
            assert r["target_problems"] == []
            assert check_target(r["target"], r["transcript"], [f["value"] for f in facts]) == []


def test_held_out_styles_and_paraphrases_only_in_test(made):
    _, _, m = made
    for split in ("train", "dev"):
        for r in m[split]:
            assert not r["held_out"] and r["style"] not in styles.HELD_OUT_STYLES
            assert styles.held_out_kind(styles.STYLES[r["style"]], r["paraphrase_id"]) == ""
    kinds = {r["held_out_kind"] for r in m["test"]}
    assert kinds & {"style", "paraphrase"}
    for r in m["test"]:
        assert r["held_out"] == (r["held_out_kind"] != "")
        assert r["held_out_kind"] == styles.held_out_kind(styles.STYLES[r["style"]], r["paraphrase_id"])
    assert {r["language"] for r in m["test"]} == {"en", "es", "fr", "de"}
    assert {r["language"] for r in m["train"] + m["dev"]} == {"en"}


def test_resume_after_kill_matches_an_uninterrupted_run(made, tmp_path):
    out_full, _, full = made
    cache = out_full.parent / "cache"  # warm: this test is about bookkeeping, not TTS speed

    class Killed(Exception):
        pass

    def kill_after_4(n):
        if n == 4:
            raise Killed

    out = tmp_path / "data"
    with pytest.raises(Killed):
        synthesize(tiny_config(cache, workers=2), out, on_doc=kill_after_4)
    assert not (out / "train" / "manifest.parquet").exists()  # the manifest is written last
    parts_before = len(list(out.rglob(".parts/*.json")))
    assert 4 <= parts_before < 15
    # a torn write from the killed run: must be cleaned up and never read
    (out / "train" / "audio" / ".train-en-000000.flac.junk").write_bytes(b"half")
    synthesize(tiny_config(cache), out)
    assert not list(out.rglob("audio/.*"))
    for split in dataset.SPLITS:
        assert dataset.read_manifest(out / split) == full[split]
        for r in full[split]:
            assert (out / split / r["audio"]).read_bytes() == (out_full / split / r["audio"]).read_bytes()


def test_rerun_with_a_different_config_is_refused(made):
    out, _, _ = made
    with pytest.raises(ConfigError, match="seed"):
        synthesize(tiny_config(out.parent / "cache", seed=5), out)


def test_a_finished_folder_of_another_config_is_refused_naming_the_split_key(made):
    from speechsum.data.synth import check_out_dir

    out, _, _ = made
    check_out_dir(tiny_config(out.parent / "cache"), out)  # the same config: fine
    cfg = tiny_config(out.parent / "cache")
    cfg.train.documents = 9
    with pytest.raises(ConfigError, match=r"^train\.documents: .* different config"):
        check_out_dir(cfg, out)  # what `pipeline` calls before using a finished dataset


def test_a_folder_made_before_the_teacher_fields_still_resumes(made):
    out, _, full = made
    path = out / "synth_config.yaml"
    saved = yaml.safe_load(path.read_text())
    for key in ("teacher", "teacher_fraction", "teacher_batch", "llm_corpus"):
        del saved[key]
    for split in dataset.SPLITS:
        del saved[split]["llm_documents"], saved[split]["aclsum_documents"]
    path.write_text(yaml.safe_dump(saved))
    synthesize(tiny_config(out.parent / "cache"), out)
    assert dataset.read_manifest(out / "train") == full["train"]


@pytest.mark.parametrize("data, key", [
    ({"train": {"documents": 2, "voices": ["espeak:en-us"], "speling": 1}}, "train.speling"),
    ({"train": {"documents": 2, "voices": ["espeak:en-us"]}, "genres": ["opera"]}, "genres"),
    ({"train": {"documents": 2, "voices": ["espeak:en-us"]}, "test": {"documents": 1, "voices": ["espeak:en-us"]}},
     "test.voices"),
    ({"train": {"documents": 2, "voices": ["espeak:en-us"]}, "speed_range": [1.5, 1.0]}, "speed_range"),
    ({"train": {"documents": 2, "voices": ["espeak:es"]}}, "voices[0]"),
    ({"train": {"documents": "many", "voices": ["espeak:en-us"]}}, "train.documents"),
])
def test_bad_config_names_the_key(data, key):
    with pytest.raises(ConfigError) as e:
        from_dict(SynthConfig, data)
    assert key in str(e.value)


def test_unavailable_voice_fails_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  documents: 3\n  voices: [espeak:en-us, espeak:en-us+zz]\n")
    out = tmp_path / "out"
    assert synth_command(str(cfg), str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("speechsum synth: train.voices[1]: espeak:en-us+zz") and "\n" not in err
    assert not out.exists()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_synth_yaml_parses_and_is_headed_by_its_command(path):
    from speechsum.data.synth import _n_documents

    cfg = load_config(SynthConfig, path)
    assert sum(_n_documents(split) for split in (cfg.train, cfg.dev, cfg.test)) > 0  # confirm.yaml: test only
    assert path.read_text().splitlines()[0].startswith(f"# speechsum synth --config configs/synth/{path.name}")


def fake_teacher(doc, style, paraphrase_id, rng):
    """Stands in for a teacher LLM that hallucinates a figure."""
    return "Summarize it.", f"{doc.genre} with a budget of $123,456,789.", "fake-teacher"


def test_other_target_writers_plug_in_and_are_fact_checked(tmp_path):
    cfg = tiny_config(tmp_path / "cache", dev=SplitConfig(), test=SplitConfig(),
                      train=SplitConfig(documents=2, items_per_doc=1, voices=["espeak:en-us"]))
    synthesize(cfg, tmp_path / "out", target_writer=fake_teacher)
    rows = dataset.read_manifest(tmp_path / "out" / "train")
    assert [r["target_author"] for r in rows] == ["fake-teacher"] * 2
    assert all(r["target_problems"] == ["number 123456789 is not in the document"] for r in rows)


def test_an_empty_split_is_said(tmp_path, capsys):
    # a test-only set is legitimate, but `train` on it fails later: synth says so when it writes it
    cfg = tiny_config(tmp_path / "cache", train=SplitConfig(), dev=SplitConfig(),
                      test=SplitConfig(documents=1, voices=["espeak:en-us"]))
    summary = synthesize(cfg, tmp_path / "data")
    assert summary["splits"] == {"train": 0, "dev": 0, "test": summary["splits"]["test"]} and summary["splits"]["test"]
    err = capsys.readouterr().err
    assert "the train split is empty (the config gives it no documents): no stage can train on this set" in err
    assert "the dev split is empty" in err and "the test split is empty" not in err
