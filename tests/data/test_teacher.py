"""Teacher-written targets and LLM-written documents in `synth`: a real loopback HTTP server
speaking /v1/chat/completions, and a tiny local HF model through the same path."""

import re
import shutil
import socket
import zlib

import numpy as np
import pytest
import soundfile as sf
from servers import LoopbackServer, chat_reply

from speechsum.audio import SAMPLE_RATE
from speechsum.config import ConfigError, from_dict
from speechsum.data import dataset, styles, teacher
from speechsum.data.corpus import read_corpus, write_corpus
from speechsum.data.synth import FACTS_TEMPLATE, SplitConfig, SynthConfig, synth_command, synthesize

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")

INVENTED = "number 123456789 is not in the document"


def _answer(messages):
    """What the fake teacher says: a transcript for document prompts; for target prompts the
    first sentence of the transcript (clean), or a made-up figure for about half the requests."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if system == teacher.DOC_SYSTEM:
        names = [s.split()[0] for s in re.search(r"Speakers: (.*)\.", user).group(1).split("; ")]
        a, b = names[0], names[-1]
        return (f"**{a}:** Good morning, everyone. (laughs) We need to settle the budget today.\n"
                f"{b}: I think we can spend $4,500 on it. That leaves room for the rest.\n"
                f"[door closes]\n{a}: Okay, then it's settled. Let's meet again on Friday at 10am.")
    if "Request: " not in user:
        return "OK"  # the probe before any work
    transcript = user.split("\n\n")[1]
    first = re.sub(r"^Speaker [A-Z]: ", "", transcript.splitlines()[0]).split(". ")[0].rstrip(".") + "."
    if zlib.crc32(user.encode()) % 2:
        return f"Sure, here is the summary:\n{first} They approved $123,456,789 for it."
    return first


class _Teacher(LoopbackServer):
    """A loopback chat server answering with `_answer`; `.requests` holds the request bodies."""

    def __init__(self):
        super().__init__(lambda path, body: (200, chat_reply(_answer(body["messages"]))))
        self.spec = f"openai:{self.url}#teacher-model"
        self.identity = f"openai:{self.url}:teacher-model"

    @property
    def bodies(self):
        return [body for _, body in self.requests]


@pytest.fixture
def server():
    s = _Teacher()
    yield s
    s.close()


def config(cache, **kw) -> SynthConfig:
    base = dict(train=SplitConfig(documents=3, items_per_doc=2, voices=["espeak:en-us", "espeak:en-gb+f3"]),
                length_scale=0.2, workers=1, progress=False, cache_dir=str(cache))
    base.update(kw)
    return SynthConfig(**base)


def rows(out, split="train"):
    return dataset.read_manifest(out / split)


def check_sentence_times(out, split, recs):
    for r in {r["doc_id"]: r for r in recs}.values():
        audio, rate = sf.read(out / split / r["audio"], dtype="float32")
        assert rate == SAMPLE_RATE and len(audio) / rate == pytest.approx(r["duration"], abs=1e-3)
        prev = 0.0
        for s in r["sentences"]:
            assert prev <= s["start"] < s["end"] <= r["duration"]
            seg = audio[int(s["start"] * rate): int(s["end"] * rate)]
            assert np.sqrt(np.mean(seg ** 2)) > 0.01
            prev = s["end"]
        assert " ".join(s["text"] for s in r["sentences"]) == r["transcript"]


def test_endpoint_teacher_writes_targets_with_fallback_and_cache(server, tmp_path):
    cfg = config(tmp_path / "cache", teacher=server.spec, teacher_fraction=1.0)
    synthesize(cfg, tmp_path / "a")
    first = rows(tmp_path / "a")
    assert len(first) == 6 and len(server.requests) == 1 + 6  # a 1-token probe, then one request per item
    taught = [r for r in first if r["target_author"] == server.identity]
    fallen = [r for r in first if r["rejected_target"]]
    assert taught and fallen and len(taught) + len(fallen) == 6
    for r in taught:
        assert r["target_problems"] == [] and r["target"] in r["transcript"]
    for r in fallen:  # the facts-template target stands; the teacher's invention is kept as a negative
        assert r["target_author"] == FACTS_TEMPLATE and r["target_problems"] == []
        assert INVENTED in r["rejected_problems"] and not r["rejected_target"].startswith("Sure")
    body = server.bodies[1]
    assert body["model"] == "teacher-model" and body["temperature"] == 0.0
    assert body["messages"][0]["content"] == teacher.TARGET_SYSTEM
    assert body["messages"][-1]["content"].split("Request: ")[1] in {r["instruction"] for r in first}
    card = (tmp_path / "a" / "README.md").read_text()
    assert server.identity in card and "rejected_target" in card and "facts-template" in card
    # a new dataset folder with the same cache: only the probe reaches the server
    synthesize(cfg, tmp_path / "b")
    assert len(server.requests) == 1 + 6 + 1
    assert rows(tmp_path / "b") == first


def test_teacher_fraction_changes_only_the_taught_targets(server, tmp_path):
    synthesize(config(tmp_path / "cache"), tmp_path / "none")
    synthesize(config(tmp_path / "cache", teacher=server.spec, teacher_fraction=0.5), tmp_path / "half")
    none, half = rows(tmp_path / "none"), rows(tmp_path / "half")
    assert [r["instruction"] for r in none] == [r["instruction"] for r in half]
    changed = [b for a, b in zip(none, half) if a["target"] != b["target"]]
    assert all(r["target_author"] == server.identity for r in changed)
    assert {r["target_author"] for r in half} <= {FACTS_TEMPLATE, server.identity}


def test_llm_documents_live_and_from_the_corpus_are_identical(server, tmp_path):
    cfg = config(tmp_path / "cache", teacher=server.spec,
                 train=SplitConfig(llm_documents=2, items_per_doc=2, voices=["espeak:en-us", "espeak:en-gb+f3"]),
                 test=SplitConfig(llm_documents=2, items_per_doc=2, voices=["espeak:en-029+m6"]),
                 test_held_out_fraction=1.0)
    synthesize(cfg, tmp_path / "live")
    live = {s: rows(tmp_path / "live", s) for s in ("train", "test")}
    for split, recs in live.items():
        assert len(recs) == 4
        check_sentence_times(tmp_path / "live", split, recs)
        for r in recs:
            assert r["source"] == "llm" and r["facts"] == "[]" and r["doc_id"].startswith(f"{split}-llm-")
            assert r["source_id"] in {t for _, _, t in teacher.TOPIC_SEEDS}
            assert "(laughs)" not in r["transcript"] and "door" not in r["transcript"] and "**" not in r["transcript"]
            assert len({s["speaker"] for s in r["sentences"]}) == (1 if r["genre"] in ("news_brief", "voicemail",
                                                                                       "lecture") else 2)
            assert r["target_author"] == server.identity and r["rejected_target"] == ""
            # no template to fall back on: the invention stays, and the check says so
            assert (INVENTED in r["target_problems"]) == ("123,456,789" in r["target"])
        assert (split == "test") == all(r["held_out"] for r in recs)
    assert any(r["target_problems"] for recs in live.values() for r in recs)
    n_requests = len(server.requests)
    # the committed-corpus path: the same records, written by the corpus command, read by synth
    corpus = tmp_path / "corpus.jsonl"
    chat = teacher.open_teacher(server.spec, tmp_path / "cache")
    write_corpus(chat, corpus, {"train": 2, "test": 2}, seed=cfg.seed, length_scale=cfg.length_scale,
                 items_per_doc=2, test_held_out_fraction=1.0, progress=False)
    assert len(server.requests) == n_requests + 1  # the probe; every answer came from the cache
    assert [len(v) for v in read_corpus(corpus).values()] == [2, 0, 2]
    from_corpus = config(tmp_path / "cache", llm_corpus=str(corpus), train=cfg.train, test=cfg.test,
                         test_held_out_fraction=1.0)
    synthesize(from_corpus, tmp_path / "corpus")
    assert {s: rows(tmp_path / "corpus", s) for s in ("train", "test")} == live
    assert len(server.requests) == n_requests + 1  # synth with a corpus needs no teacher


def test_tiny_local_model_teacher_and_its_cache(tmp_path, monkeypatch):
    from tiny import save_tiny_models

    _, llm_dir = save_tiny_models(tmp_path / "models")
    cfg = config(tmp_path / "cache", teacher=str(llm_dir), teacher_fraction=1.0,
                 train=SplitConfig(documents=2, items_per_doc=1, voices=["espeak:en-us"]))
    synthesize(cfg, tmp_path / "a")
    first = rows(tmp_path / "a")
    identity = f"local:{llm_dir}:float32"
    for r in first:  # a random model babbles: either it passed the check or it was set aside
        if r["target_author"] == identity:
            assert r["target_problems"] == [] and r["target"]
        else:
            assert r["target_author"] == FACTS_TEMPLATE and r["rejected_problems"]
    assert list((tmp_path / "cache" / "teacher").rglob("*.json"))

    from speechsum.models import text_lm

    def no_generation(*a, **k):
        raise AssertionError("the teacher was asked again; the cache should have answered")

    monkeypatch.setattr(text_lm.TextLM, "chat", no_generation)
    synthesize(cfg, tmp_path / "b")
    assert rows(tmp_path / "b") == first


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("extra, key", [
    ("teacher: openai:http://127.0.0.1:9/v1\nteacher_fraction: 0.5", "teacher: 'openai:http://127.0.0.1:9/v1'"),
    ("teacher: local:/no/such/model\nteacher_fraction: 0.5", "teacher: /no/such/model"),
    ("teacher: openai:http://127.0.0.1:{port}/v1#m\nteacher_fraction: 0.5", "teacher: http://127.0.0.1:{port}/v1"),
    ("teacher_fraction: 0.5", "teacher_fraction: needs a `teacher`"),
    ("llm_corpus: /no/such/corpus.jsonl\ntrain:\n  llm_documents: 1\n  documents: 1\n  voices: [espeak:en-us]",
     "llm_corpus: /no/such/corpus.jsonl"),
])
def test_bad_teacher_fails_in_one_line_before_any_work(tmp_path, capsys, extra, key):
    port = _free_port()
    text = "train:\n  documents: 1\n  voices: [espeak:en-us]\n" if "train:" not in extra else ""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text + extra.format(port=port) + f"\ncache_dir: {tmp_path / 'cache'}\n")
    out = tmp_path / "out"
    assert synth_command(str(cfg), str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("speechsum synth: " + key.format(port=port)) and "\n" not in err
    assert not out.exists()


def test_llm_documents_need_a_teacher_or_a_corpus():
    with pytest.raises(ConfigError, match="train.llm_documents: needs a `teacher` or an `llm_corpus`"):
        from_dict(SynthConfig, {"train": {"llm_documents": 2, "voices": ["espeak:en-us"]}})


def test_parse_document_is_lenient_about_format():
    req = teacher.DocRequest("train-llm-000000", "train", 0, "meeting", "neutral", "the budget",
                             ("Ana Diaz (editor)", "Tom Reyes (analyst)"), 6)
    text = ("Transcript:\n\n**Ana Diaz:** Hi all. Dr. Reyes joins us today.\n"
            "TOM: Thanks. (coughs) The number is $2,500!\nIt is due on May 3rd.\n"
            "Title: not a speaker\nAna: Great, let's go with that.")
    doc = teacher.parse_document(req, text)
    assert [(s.speaker, s.text) for s in doc.sentences] == [
        (0, "Hi all."), (0, "Dr. Reyes joins us today."), (1, "Thanks."), (1, "The number is $2,500!"),
        (1, "It is due on May 3rd."), (0, "Great, let's go with that.")]
    assert doc.speakers == ["Ana Diaz", "Tom Reyes"] and doc.facts == []
    assert teacher.parse_document(req, "I cannot help with that.") is None
    looping = ("Ana: We open on Monday at ten.\nTom: The room is booked for us.\nAna: We open on Monday at ten.\n"
               "Tom: Good, see you there.\nAna: And the budget is")
    assert [s.text for s in teacher.parse_document(req, looping).sentences] == [
        "We open on Monday at ten.", "The room is booked for us.", "Good, see you there."]
    assert teacher.clean_answer("```\nSure, here is the summary:\n- a\n- b\n```") == "- a\n- b"
    assert teacher.target_problems("- Owner: Ana\n- Owner: Ana\n- Owner: Ana", doc) == ["the target repeats itself"]
    assert teacher.target_problems("  ", doc) == ["empty target"]
    assert teacher.target_problems("Ana and Tom settle it: $2,500 by May 3rd.", doc) == []


def test_free_instructions_only_use_seen_paraphrases_outside_test():
    import random

    rng = random.Random(0)
    for _ in range(200):
        for style, pid in styles.pick_styles(rng, 3, 0.0):
            assert styles.held_out_kind(style, pid) == ""
            text = styles.free_instruction(style, pid, "meeting", rng)
            assert "{" not in text and text
