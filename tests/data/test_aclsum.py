"""ACLSum papers read aloud: text clean-up golden values, the synth path on a small wheel of the
same layout built in the test, and the real pinned wheel when it is in the cache."""

import json
import shutil
import zipfile

import pytest

from speechsum.data import aclsum, dataset, styles
from speechsum.data.synth import SplitConfig, SynthConfig, synthesize


@pytest.mark.parametrize("raw, clean", [
    ("Answer Extraction is one of basic modules in open domain Question Answering ( QA ) .",
     "Answer Extraction is one of basic modules in open domain Question Answering (QA)."),
    ("The goal of VQA ( Antol et al . , 2015 ; Goyal et al . , 2017 ) is to answer a question .",
     "The goal of VQA is to answer a question."),
    ("It does n't work , as shown in [ 3 , 4 ] and by Smith ( 2005a ) .", "It doesn't work, as shown in and by Smith."),
    ("`` what color is the umpire 's shirt '' improves by 20 % .", '"what color is the umpire\'s shirt" improves by 20%.'),
])
def test_clean_sentence(raw, clean):
    assert aclsum.clean_sentence(raw) == clean


def test_citations_split_across_sentences_are_rejoined_then_removed():
    paper = aclsum.Paper("X", "A Title", {a: f"The {a}." for a in aclsum.ASPECTS}, {
        "abstract": ["We study things .", "Very recent methods ( Li et al . , 2019 ;",
                     "Cadene et al . , 2019a ) have achieved good results ."],
        "introduction": ["1", "Intro sentence one is here ."]})
    doc = aclsum.to_document(paper, "train-acl-000000")
    assert [s.text for s in doc.sentences] == ["A Title.", "We study things.",
                                               "Very recent methods have achieved good results.",
                                               "Intro sentence one is here."]
    assert doc.facts == [] and doc.genre == "research_talk" and {s.speaker for s in doc.sentences} == {0}
    assert aclsum.spoken_form("e.g. Smith et al. found X & Y") == "for example, Smith and colleagues found X and Y"


def _paper(pid, words=12):
    return {"id": pid, "title": f"Paper {pid}",
            "summary": {"challenge": f"Parsing {pid} is hard for existing systems.",
                        "approach": f"They propose a tagger for {pid} with 3 layers.",
                        "outcome": f"The tagger improves accuracy by 7 points on {pid} data."},
            "sentences": {"abstract": [f"We present a tagger for {pid} ."] + ["It works well on many inputs ."] * 2,
                          "introduction": ["Tagging is a classic task in language processing ."] * words,
                          "conclusion": ["We improved accuracy by 7 points ."]},
            "highlights": {}}


@pytest.fixture
def fake_wheel(tmp_path, monkeypatch):
    """A wheel with ACLSum's layout and a few short papers (ids say which split they come from)."""
    ids = {"train": ["TRAIN-1", "TRAIN-2", "TRAIN-4"], "val": ["VAL-1", "VAL-2"], "test": ["TEST-1", "TEST-2"]}
    path = tmp_path / "aclsum-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for name, pids in ids.items():
            z.writestr(f"aclsum/dataset/{name}.jsonl", "\n".join(json.dumps(_paper(p)) for p in pids))
    monkeypatch.setattr(aclsum, "wheel_path", lambda: path)
    return {pid: _paper(pid) for pids in ids.values() for pid in pids}


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")
def test_synth_items_are_the_human_summaries_in_aclsum_splits(fake_wheel, tmp_path):
    cfg = SynthConfig(train=SplitConfig(aclsum_documents=2, items_per_doc=1, voices=["espeak:en-us"]),
                      dev=SplitConfig(aclsum_documents=1, voices=["espeak:en-us"]),
                      test=SplitConfig(aclsum_documents=2, voices=["espeak:en-gb-scotland+f1"]),
                      test_held_out_fraction=1.0, workers=1, progress=False, cache_dir=str(tmp_path / "cache"))
    synthesize(cfg, tmp_path / "out")
    prefix = {"train": "TRAIN", "dev": "VAL", "test": "TEST"}
    for split in dataset.SPLITS:
        recs = dataset.read_manifest(tmp_path / "out" / split)
        assert len(recs) == 3 * cfg.__dict__[split].aclsum_documents  # three aspects, whatever items_per_doc
        for r in recs:
            paper = fake_wheel[r["source_id"]]
            assert r["source_id"].startswith(prefix[split]) and r["source"] == "aclsum"
            assert r["target"] == paper["summary"][r["style"]] and r["target_author"] == aclsum.AUTHOR
            assert r["genre"] == "research_talk" and r["facts"] == "[]"
            assert r["transcript"].startswith(f"Paper {r['source_id']}. We present a tagger")
            assert r["sentences"][-1]["end"] <= r["duration"]
            style = styles.get_style(r["style"])
            assert r["held_out_kind"] == styles.held_out_kind(style, r["paraphrase_id"])
            assert r["held_out_kind"] == ("paraphrase" if split == "test" else "")
            # "3 layers" is never said; "7 points" is only in the unread conclusion
            assert r["target_problems"] == {"challenge": [], "approach": ["number 3 is not in the document"],
                                            "outcome": ["number 7 is not in the document"]}[r["style"]]
        assert sorted(r["style"] for r in recs) == sorted(list(aclsum.ASPECTS) * (len(recs) // 3))
    card = (tmp_path / "out" / "README.md").read_text()
    assert "aclsum-human" in card and "ACLSum papers" in card


def test_aspect_styles_stay_out_of_the_summary_style_split():
    assert not set(styles.ASPECT_STYLES) & set(styles.STYLES)
    assert set(styles.TRAIN_STYLES) | set(styles.HELD_OUT_STYLES) == set(styles.STYLES)
    for s in styles.ASPECT_STYLES.values():
        assert len(s.paraphrases) >= 5 and not s.held_out and all("one sentence" in p.lower() or "single sentence"
                                                                  in p.lower() for p in s.paraphrases)


def test_the_real_pinned_wheel():
    from speechsum.models import registry

    if not registry._wheel_path(aclsum.wheel()).is_file():
        pytest.skip("aclsum wheel not downloaded: run `speechsum synth` with aclsum_documents > 0 once")
    papers = {split: aclsum.load_papers(split) for split in dataset.SPLITS}
    assert {s: len(p) for s, p in papers.items()} == {s: n for s, (_, n) in aclsum.SPLITS.items()}
    ids = [p.id for ps in papers.values() for p in ps]
    assert len(ids) == len(set(ids))  # ACLSum's splits share no paper
    for p in papers["test"]:
        doc = aclsum.to_document(p, "test-acl-000000")
        assert set(p.summaries) == set(aclsum.ASPECTS)
        words = len(doc.transcript.split())
        assert 100 < words <= aclsum.MAX_WORDS + 400
        assert " ." not in doc.transcript and " ," not in doc.transcript
