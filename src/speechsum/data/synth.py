"""Synthetic speech-summarization data: `speechsum synth --config configs/synth/tiny.yaml --out DIR`.

Document sources: procedural English documents of seven genres and es/fr/de test documents
(documents.py, multilingual.py); transcripts a teacher LLM writes from topic seeds, live or from
a committed corpus (teacher.py, corpus.py); ACLSum papers read aloud with their human summaries
(aclsum.py). Targets are rendered from facts (styles.py) or written by the teacher reading the
transcript (`teacher`, `teacher_fraction`); every target is fact-checked (factcheck.py). Speech
is espeak-ng and piper with per-sentence timestamps (tts.py), written as the format in dataset.py.

The teacher runs in this process before the TTS pool starts (a local model is loaded once), in
batches, through a content-addressed cache under `<cache_dir>/teacher/`; its answers travel to
the workers inside the jobs. A teacher target that fails the fact check on a procedural
document is replaced by the facts-template target and kept as `rejected_target` (with
`rejected_problems`); on an LLM-written document, which has no template to fall back on, it is
kept and its findings are in `target_problems` (filter on it to train on clean targets only).

The unit of work is a document: its audio and its items are written by one worker to a temp
file and renamed (`<split>/audio/<doc>.flac`, then `<split>/.parts/<doc>.json`); a document whose
part exists is done. Manifests are built from the parts at the end and the card is written last,
so a run killed at any moment and started again finishes with every item exactly once.
Everything about a document follows from (seed, split, index), so the order in which workers
finish does not change the result.
"""

from __future__ import annotations

import dataclasses
import gc
import io
import json
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import yaml

from speechsum.config import ConfigError, first_difference, load_config, to_dict
from speechsum.data import aclsum, dataset, documents, multilingual, styles, teacher, tts
from speechsum.data.documents import Document
from speechsum.data.factcheck import check_target

FACTS_TEMPLATE = "facts-template"
SOURCES = {"procedural": "en", "procedural-multilingual": "xl", "llm": "llm", "aclsum": "acl"}  # -> doc id tag


@dataclasses.dataclass
class SplitConfig:
    documents: int = 0
    """English procedural documents in this split."""
    voices: list[str] = dataclasses.field(default_factory=list)
    """Voices for English documents, e.g. `espeak:en-gb+f3`, `piper:en_US-joe-medium`."""
    items_per_doc: int = 2
    """Items (instruction + target) per document; they share the document's audio."""
    multilingual_documents: int = 0
    """es/fr/de documents (test split only), for the zero-shot cross-lingual check."""
    multilingual_voices: list[str] = dataclasses.field(default_factory=list)
    """espeak voices for those documents; their languages decide which languages appear."""
    llm_documents: int = 0
    """English documents whose transcript a teacher LLM writes from a topic seed (no structured
    facts; all their targets are teacher-written). Needs `teacher` or `llm_corpus`."""
    aclsum_documents: int = 0
    """ACLSum papers read aloud, from ACLSum's own split (train/dev/test <- train/val/test, at most
    100/50/100); three items each (challenge, approach, outcome) with the human summaries as
    targets, whatever `items_per_doc` says."""

    def __post_init__(self):
        if min(self.documents, self.multilingual_documents, self.llm_documents, self.aclsum_documents) < 0:
            raise ConfigError("documents: must be >= 0")
        if not 1 <= self.items_per_doc <= len(styles.TRAIN_STYLES):
            raise ConfigError(f"items_per_doc: must be between 1 and {len(styles.TRAIN_STYLES)}")
        if self.documents + self.llm_documents + self.aclsum_documents and not self.voices:
            raise ConfigError("voices: a split with documents needs at least one voice")
        if self.multilingual_documents and not self.multilingual_voices:
            raise ConfigError("multilingual_voices: needed when multilingual_documents > 0")
        for i, v in enumerate(self.multilingual_voices):
            if not v.startswith("espeak:") or tts.voice_language(v) not in multilingual.LANGUAGES:
                raise ConfigError(f"multilingual_voices[{i}]: {v!r} is not an espeak es/fr/de voice")
        for i, v in enumerate(self.voices):
            if tts.voice_language(v) != "en":
                raise ConfigError(f"voices[{i}]: {v!r} is not an English voice")


def _n_documents(sc: SplitConfig) -> int:
    return sc.documents + sc.multilingual_documents + sc.llm_documents + sc.aclsum_documents


@dataclasses.dataclass
class SynthConfig:
    train: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """The training split."""
    dev: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """Validation split: same voices, styles and paraphrases as train, different documents."""
    test: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    """Test split: voices disjoint from train; includes held-out styles/paraphrases and other languages."""
    seed: int = 0
    """Everything about document i of a split follows from (seed, split, i)."""
    genres: list[str] = dataclasses.field(default_factory=lambda: list(documents.GENRES))
    """English genres, used in turn."""
    length_scale: float = 1.0
    """Scales the number of agenda items per document (0.3 gives short documents, 1.5 long ones)
    and the length asked of LLM-written documents."""
    speed_range: list[float] = dataclasses.field(default_factory=lambda: [0.85, 1.15])
    """Speaking-rate factor range, sampled per document."""
    test_held_out_fraction: float = 0.5
    """Share of test items that use a held-out style or a held-out paraphrase."""
    teacher: str = ""
    """Teacher LLM for targets and LLM-written documents: a registry name or model folder
    (`qwen2.5-1.5b-instruct`, `local:/path/to/model`) or an OpenAI-compatible endpoint
    `openai:BASE_URL#MODEL` (vLLM, llama.cpp server, OpenAI; key from $OPENAI_API_KEY). Empty: none."""
    teacher_fraction: float = 0.0
    """Share of the items of English procedural documents whose target the teacher writes (same
    instruction) instead of the facts template; one failing the fact check falls back to the template."""
    teacher_batch: int = 8
    """Prompts per batch for a local teacher; concurrent requests for an endpoint."""
    llm_corpus: str = ""
    """A corpus file written by `python -m speechsum.data.corpus`: when set, `llm_documents` (and
    their targets) are read from it, in order per split, instead of written by a live teacher."""
    cache_dir: str = ""
    """TTS clip cache, with teacher answers under `teacher/`; empty means $SPEECHSUM_HOME/cache/tts."""
    workers: int = 2
    """Processes; 1 runs in the calling process."""
    progress: bool = True
    """Show a progress bar on stderr."""

    def __post_init__(self):
        unknown = [g for g in self.genres if g not in documents.GENRES]
        if unknown or not self.genres:
            raise ConfigError(f"genres: {unknown[0] if unknown else '[]'!r} is not a genre "
                              f"(known: {', '.join(documents.GENRES)})")
        if len(self.speed_range) != 2 or not 0.5 <= self.speed_range[0] <= self.speed_range[1] <= 2.0:
            raise ConfigError("speed_range: expected [low, high] with 0.5 <= low <= high <= 2.0")
        if not 0.05 <= self.length_scale <= 3.0:
            raise ConfigError("length_scale: must be between 0.05 and 3")
        if not 0.0 <= self.test_held_out_fraction <= 1.0:
            raise ConfigError("test_held_out_fraction: must be between 0 and 1")
        if self.workers < 1:
            raise ConfigError("workers: must be >= 1")
        if not 0.0 <= self.teacher_fraction <= 1.0:
            raise ConfigError("teacher_fraction: must be between 0 and 1")
        if self.teacher_batch < 1:
            raise ConfigError("teacher_batch: must be >= 1")
        if self.teacher.startswith("openai:"):
            url, _, model = self.teacher.removeprefix("openai:").partition("#")
            if not url.startswith(("http://", "https://")) or not model:
                raise ConfigError(f"teacher: {self.teacher!r}: expected openai:BASE_URL#MODEL, "
                                  "e.g. openai:http://127.0.0.1:8000/v1#qwen")
        elif self.teacher and not self.teacher.removeprefix("local:").strip():
            raise ConfigError("teacher: 'local:' needs a registry name or a model folder")
        if self.teacher_fraction > 0 and not self.teacher:
            raise ConfigError("teacher_fraction: needs a `teacher` (registry name, folder or openai:URL#MODEL)")
        for name in dataset.SPLITS:
            sc: SplitConfig = getattr(self, name)
            if name != "test" and sc.multilingual_documents:
                raise ConfigError(f"{name}.multilingual_documents: other languages belong to the test split only")
            if sc.llm_documents and not (self.teacher or self.llm_corpus):
                raise ConfigError(f"{name}.llm_documents: needs a `teacher` or an `llm_corpus`")
            limit = aclsum.SPLITS[name][1]
            if sc.aclsum_documents > limit:
                raise ConfigError(f"{name}.aclsum_documents: ACLSum has {limit} papers for {name}, "
                                  f"asked for {sc.aclsum_documents}")
        shared = sorted(set(self.train.voices) & set(self.test.voices + self.test.multilingual_voices))
        if shared:
            raise ConfigError(f"test.voices: {shared[0]} is also a train voice; test voices must be unseen")
        if not any(_n_documents(getattr(self, s)) for s in dataset.SPLITS):
            raise ConfigError("train.documents: the config makes no documents at all")

    def needs_teacher(self) -> bool:
        """A live teacher is loaded only when something will ask it for text."""
        splits = [getattr(self, s) for s in dataset.SPLITS]
        return (self.teacher_fraction > 0 and any(sc.documents for sc in splits)) or (
            not self.llm_corpus and any(sc.llm_documents for sc in splits))


# settings that change how, not what, is made: they may differ when resuming
_RUN_ONLY = ("cache_dir", "workers", "progress", "teacher_batch")


def preflight(cfg: SynthConfig):
    """Check every voice, the ACLSum wheel, the LLM corpus and the teacher before any work;
    raises ConfigError naming the key. Returns the opened teacher (None when none is needed)."""
    for module, extra in (("pyarrow", "data"), ("soundfile", ""), ("tqdm", "")):
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"{module}: not installed (pip install 'speechsum[{extra or 'data'}]')") from None
    for split in dataset.SPLITS:
        sc: SplitConfig = getattr(cfg, split)
        for key in ("voices", "multilingual_voices"):
            for i, v in enumerate(getattr(sc, key)):
                try:
                    tts.check_voice(v)
                except tts.VoiceError as e:
                    raise ConfigError(f"{split}.{key}[{i}]: {e}") from None
    if any(getattr(cfg, s).aclsum_documents for s in dataset.SPLITS):
        from speechsum.models.registry import ModelError

        try:
            aclsum.wheel_path()
        except ModelError as e:
            raise ConfigError(f"aclsum_documents: {e}") from None
    if cfg.llm_corpus:
        _corpus(cfg)
    if not cfg.needs_teacher():
        return None
    try:
        return teacher.open_teacher(cfg.teacher, cfg.cache_dir or default_cache())
    except ValueError as e:
        raise ConfigError(f"teacher: {e}") from None


def _corpus(cfg: SynthConfig) -> dict[str, list[dict[str, Any]]]:
    """The LLM corpus, checked against the config (enough records in each split)."""
    from speechsum.data.corpus import CorpusError, read_corpus

    try:
        per_split = read_corpus(cfg.llm_corpus)
    except CorpusError as e:
        raise ConfigError(f"llm_corpus: {e}") from None
    for split in dataset.SPLITS:
        want = getattr(cfg, split).llm_documents
        if want > len(per_split[split]):
            raise ConfigError(f"{split}.llm_documents: {cfg.llm_corpus} has {len(per_split[split])} "
                              f"{split} documents, asked for {want}")
    return per_split


# ---------------------------------------------------------------------------------------------
# one document -> audio + items


class TargetWriter(Protocol):
    def __call__(self, doc: Document, style: styles.Style, paraphrase_id: int,
                 rng: random.Random) -> tuple[str, str, str]:
        """Return (instruction, target, author). Must be picklable (a module-level function)."""


def facts_template_writer(doc: Document, style: styles.Style, paraphrase_id: int,
                          rng: random.Random) -> tuple[str, str, str]:
    """Render the target from the document's facts; the limit in the instruction fits the target."""
    target, n = styles.render_target(style, doc, rng)
    if "{n}" in style.paraphrases[paraphrase_id] and n is None:
        raise AssertionError(f"{style.name}: paraphrase {paraphrase_id} needs a limit the target has not got")
    return styles.instruction_text(style, paraphrase_id, doc.genre, n), target, FACTS_TEMPLATE


@dataclasses.dataclass(frozen=True)
class Job:
    split: str
    index: int
    source: str  # a key of SOURCES
    split_dir: str
    seed: int
    genres: tuple[str, ...]
    length_scale: float
    speed_range: tuple[float, float]
    voices: tuple[str, ...]
    items_per_doc: int
    held_out_fraction: float  # 0 outside test
    cache_dir: str
    teacher_fraction: float = 0.0  # English procedural documents only
    prepared: str = ""  # llm, aclsum: JSON of the document record with its finished items
    teacher_targets: tuple[tuple[int, str, str], ...] = ()  # procedural: (item k, target, author)

    @property
    def doc_id(self) -> str:
        return f"{self.split}-{SOURCES[self.source]}-{self.index:06d}"


def make_document(job: Job) -> Document:
    if job.prepared:
        return documents.record_document(json.loads(job.prepared))
    rng = random.Random(f"{job.seed}:{job.doc_id}:doc")
    if job.source == "procedural-multilingual":
        langs = sorted({tts.voice_language(v) for v in job.voices})
        return multilingual.make_document(job.doc_id, langs[job.index % len(langs)], rng, job.length_scale)
    return documents.make_document(job.doc_id, job.genres[job.index % len(job.genres)], rng, job.length_scale)


def taught(job: Job, k: int) -> bool:
    """Does the teacher write item k's target? A random stream of its own: changing
    `teacher_fraction` changes nothing else about the dataset."""
    return random.Random(f"{job.seed}:{job.doc_id}:{k}:teacher").random() < job.teacher_fraction


def build_items(job: Job, doc: Document, target_writer: TargetWriter, rng: random.Random) -> list[dict[str, Any]]:
    items = []
    facts_json = json.dumps(doc.to_json(), ensure_ascii=False)
    values = [f.value for f in doc.facts]
    from_teacher = {k: (target, author) for k, target, author in job.teacher_targets}
    for k, (style, pid) in enumerate(styles.pick_styles(rng, job.items_per_doc, job.held_out_fraction)):
        instruction, target, author = target_writer(doc, style, pid, random.Random(f"{job.seed}:{job.doc_id}:{k}"))
        problems = check_target(target, doc.transcript, values)
        if problems and author == FACTS_TEMPLATE:
            raise AssertionError(f"{doc.doc_id}/{style.name}: rendered target fails the fact check: {problems}")
        rejected, rejected_problems = "", []
        if k in from_teacher:
            t_target, t_author = from_teacher[k]
            t_problems = teacher.target_problems(t_target, doc)
            if t_problems:  # keep the writer's target; the teacher's stays as a negative example
                rejected, rejected_problems = t_target, t_problems
            else:
                target, author, problems = t_target, t_author, []
        items.append(dataset.item_record(doc.doc_id, k, style, pid, instruction, target, author, problems,
                                         facts_json, rejected, rejected_problems))
    return items


def run_job(job: Job, target_writer: TargetWriter = facts_template_writer) -> dict[str, Any]:
    """Make one document's audio and items; returns a summary. Idempotent: done parts are skipped."""
    import soundfile as sf

    split_dir = Path(job.split_dir)
    part = split_dir / ".parts" / f"{job.doc_id}.json"
    audio_rel = f"audio/{job.doc_id}.flac"
    if part.is_file() and (split_dir / audio_rel).is_file():
        return {"doc_id": job.doc_id, "skipped": True}
    doc = make_document(job)
    rng = random.Random(f"{job.seed}:{job.doc_id}:speech")
    n_speakers = max(s.speaker for s in doc.sentences) + 1
    pool = list(job.voices)
    if job.source == "procedural-multilingual":
        pool = [v for v in pool if tts.voice_language(v) == doc.language]
    picked = rng.sample(pool, min(n_speakers, len(pool)))
    voices = [picked[i % len(picked)] for i in range(n_speakers)]
    speed = round(rng.uniform(*job.speed_range), 3)
    cache = tts.TTSCache(job.cache_dir or None)
    samples, spans = tts.speak([(s.speaker, voices[s.speaker], s.spoken) for s in doc.sentences], cache, speed, rng)
    buf = io.BytesIO()
    sf.write(buf, samples, tts.SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    dataset.atomic_write(split_dir / audio_rel, buf.getvalue())
    duration = len(samples) / tts.SAMPLE_RATE
    base = {
        "doc_id": doc.doc_id, "split": job.split, "audio": audio_rel, "duration": duration,
        "language": doc.language, "voice": voices[0], "voices": voices, "speed": speed, "genre": doc.genre,
        "register": doc.register, "transcript": doc.transcript,
        "sentences": [{"text": s.text, "start": round(a, 4), "end": round(b, 4), "speaker": s.speaker}
                      for s, (a, b) in zip(doc.sentences, spans)],
        "source": job.source, "source_id": "",
    }
    if job.prepared:
        record = json.loads(job.prepared)
        base["source_id"] = record["source_id"]
        # a corpus may hold more items per document than this config asks for; ACLSum has its three
        made = record["items"] if job.source == "aclsum" else record["items"][: job.items_per_doc]
    else:
        made = build_items(job, doc, target_writer, random.Random(f"{job.seed}:{job.doc_id}:items"))
    items = [{**base, **item} for item in made]
    dataset.atomic_write(part, json.dumps(items, ensure_ascii=False).encode())
    return {"doc_id": doc.doc_id, "skipped": False, "items": len(items), "duration": duration}


# ---------------------------------------------------------------------------------------------
# the whole dataset


def plan(cfg: SynthConfig, out_dir: Path) -> list[Job]:
    """Every document of the config as a job. ACLSum and corpus documents come ready; live LLM
    documents and teacher targets are added by `prepare`, for the jobs still to do."""
    corpus = _corpus(cfg) if cfg.llm_corpus else None
    jobs = []
    for split in dataset.SPLITS:
        sc: SplitConfig = getattr(cfg, split)
        common = dict(split=split, split_dir=str(out_dir / split), seed=cfg.seed, genres=tuple(cfg.genres),
                      length_scale=cfg.length_scale, speed_range=tuple(cfg.speed_range),
                      items_per_doc=sc.items_per_doc, cache_dir=cfg.cache_dir or str(default_cache()),
                      held_out_fraction=cfg.test_held_out_fraction if split == "test" else 0.0)
        jobs += [Job(index=i, source="procedural", voices=tuple(sc.voices), teacher_fraction=cfg.teacher_fraction,
                     **common) for i in range(sc.documents)]
        jobs += [Job(index=i, source="procedural-multilingual", voices=tuple(sc.multilingual_voices), **common)
                 for i in range(sc.multilingual_documents)]
        jobs += [Job(index=i, source="llm", voices=tuple(sc.voices), **common,
                     prepared=json.dumps(corpus[split][i], ensure_ascii=False) if corpus else "")
                 for i in range(sc.llm_documents)]
        if sc.aclsum_documents:
            for i, paper in enumerate(aclsum.pick_papers(split, sc.aclsum_documents, cfg.seed)):
                job = Job(index=i, source="aclsum", voices=tuple(sc.voices), **common)
                doc = aclsum.to_document(paper, job.doc_id)
                record = {**documents.document_record(doc), "source_id": paper.id,
                          "items": aclsum.items(paper, doc, cfg.seed, job.held_out_fraction)}
                jobs.append(dataclasses.replace(job, prepared=json.dumps(record, ensure_ascii=False)))
    return jobs


def prepare(todo: list[Job], cfg: SynthConfig, chat, target_writer: TargetWriter) -> list[Job]:
    """The teacher's part, in this process and in batches: transcripts of live LLM documents,
    then targets of the procedural items it was picked for. Returns the jobs ready for TTS."""
    ready = {j.doc_id: j for j in todo}
    live = [j for j in todo if j.source == "llm" and not j.prepared]
    if live:
        requests = [teacher.doc_request(cfg.seed, j.split, j.index, cfg.length_scale) for j in live]
        records = teacher.write_llm_documents(
            chat, requests, items_per_doc={s: getattr(cfg, s).items_per_doc for s in dataset.SPLITS},
            held_out_fraction={s: cfg.test_held_out_fraction if s == "test" else 0.0 for s in dataset.SPLITS},
            seed=cfg.seed, batch=cfg.teacher_batch, progress=cfg.progress)
        for j, record in zip(live, records):
            ready[j.doc_id] = dataclasses.replace(j, prepared=json.dumps(record, ensure_ascii=False))
    asks = []  # (doc_id, k, conversation): the same instruction the facts template answers
    for j in todo:
        ks = [k for k in range(j.items_per_doc) if taught(j, k)] if j.teacher_fraction > 0 else []
        if ks:
            doc = make_document(j)
            items = build_items(j, doc, target_writer, random.Random(f"{j.seed}:{j.doc_id}:items"))
            asks += [(j.doc_id, k, teacher.target_messages(doc, items[k]["instruction"])) for k in ks]
    if asks:
        start = time.perf_counter()
        answers = teacher.ask(chat, [conv for _, _, conv in asks], teacher.TARGET_MAX_TOKENS, cfg.teacher_batch,
                              "teacher: targets", cfg.progress)
        per_doc: dict[str, list[tuple[int, str, str]]] = {}
        for (doc_id, k, _), answer in zip(asks, answers):
            per_doc.setdefault(doc_id, []).append((k, answer, chat.identity))
        for doc_id, targets in per_doc.items():
            ready[doc_id] = dataclasses.replace(ready[doc_id], teacher_targets=tuple(targets))
        elapsed = time.perf_counter() - start
        print(f"teacher: {len(asks)} targets in {elapsed:.1f} s ({elapsed / len(asks):.2f} s per target, "
              "cached answers included)", file=sys.stderr)
    return [ready[j.doc_id] for j in todo]


def default_cache() -> Path:
    from speechsum.models import registry

    return registry.home() / "cache" / "tts"


def _with_defaults(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the fields added since it was written, at their defaults (which make
    what older versions made), so an older dataset folder still resumes."""
    def default(f):
        return f.default if f.default is not dataclasses.MISSING else f.default_factory()

    out = dict(saved)
    for f in dataclasses.fields(SynthConfig):
        if f.name in dataset.SPLITS and isinstance(out.get(f.name), dict):
            out[f.name] = {g.name: default(g) for g in dataclasses.fields(SplitConfig)} | out[f.name]
        elif f.name not in out:
            out[f.name] = to_dict(default(f)) if dataclasses.is_dataclass(default(f)) else default(f)
    return out


def check_out_dir(cfg: SynthConfig, out_dir: str | Path) -> None:
    """ConfigError when `out_dir` holds a dataset made with another config (`pipeline` calls it
    before using a finished dataset, so a changed synth preset is not silently ignored)."""
    out_dir = Path(out_dir)
    wanted = {k: v for k, v in to_dict(cfg).items() if k not in _RUN_ONLY}
    path = out_dir / "synth_config.yaml"
    if path.is_file():
        saved = _with_defaults(yaml.safe_load(path.read_text()) or {})
        have = {k: v for k, v in saved.items() if k not in _RUN_ONLY}
        if have != wanted:
            key = first_difference(have, wanted) or next(iter(sorted(set(have) ^ set(wanted))), "?")
            raise ConfigError(f"{key}: {out_dir} was made with a different config; remove it or write to another folder")


def _claim_out_dir(cfg: SynthConfig, out_dir: Path) -> None:
    """Record the config; refuse to resume a folder made with a different one."""
    check_out_dir(cfg, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset.atomic_write(out_dir / "synth_config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
    # temp files left by a killed run (atomic_write names them ".<final name>.<random>")
    stale = list(out_dir.glob(".*.*")) + [p for split in dataset.SPLITS for p in (out_dir / split).rglob(".*.*")]
    for tmp in stale:
        if tmp.is_file():
            tmp.unlink()


def synthesize(cfg: SynthConfig, out_dir: str | Path, *, target_writer: TargetWriter = facts_template_writer,
               on_doc: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Write the dataset folder; returns counts. `on_doc(n_done)` runs in this process after
    each finished document (tests use it to simulate a kill)."""
    from tqdm import tqdm

    out_dir = Path(out_dir)
    chat = preflight(cfg)
    _claim_out_dir(cfg, out_dir)
    jobs = plan(cfg, out_dir)
    todo = [j for j in jobs if not (Path(j.split_dir) / ".parts" / f"{j.doc_id}.json").is_file()
            or not (Path(j.split_dir) / "audio" / f"{j.doc_id}.flac").is_file()]
    start = time.perf_counter()
    if chat is not None:
        todo = prepare(todo, cfg, chat, target_writer)
        del chat  # a local teacher's memory goes back before the TTS workers start
        gc.collect()
    made_items = made_seconds = 0.0
    bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="doc", disable=not cfg.progress,
               desc="synth", dynamic_ncols=True, file=sys.stderr)
    executor = None
    try:
        if cfg.workers == 1 or len(todo) <= 1:
            results = (run_job(j, target_writer) for j in todo)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # spawn, not fork: the caller may hold threads (torch, onnxruntime) that fork would copy broken.
            # concurrent.futures rather than multiprocessing.Pool: Pool.terminate() can deadlock on a
            # queue lock held by a worker it just killed; here we cancel queued jobs and let running
            # ones finish (each is atomic, so either outcome is safe).
            from speechsum.data.tts import one_thread_per_worker

            executor = ProcessPoolExecutor(min(cfg.workers, len(todo)), mp_context=mp.get_context("spawn"),
                                           initializer=one_thread_per_worker)
            results = (f.result() for f in as_completed([executor.submit(run_job, j, target_writer) for j in todo]))
        for n, r in enumerate(results, 1):
            made_items += r.get("items", 0)
            made_seconds += r.get("duration", 0.0)
            bar.update(1)
            bar.set_postfix(items=int(made_items), hours=f"{made_seconds / 3600:.2f}")
            if on_doc is not None:
                on_doc(n)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    elapsed = time.perf_counter() - start
    summary = _finish(cfg, out_dir, jobs)
    summary.update(elapsed_s=elapsed, new_items=int(made_items), new_audio_hours=made_seconds / 3600,
                   items_per_s=made_items / elapsed if elapsed > 0 else 0.0)
    print(f"synth: {int(made_items)} new items ({made_seconds / 3600:.2f} h audio) in {elapsed:.1f} s, "
          f"{summary['items_per_s']:.2f} items/s; dataset: {summary['items']} items, "
          f"{summary['hours']:.2f} h -> {out_dir}", file=sys.stderr)
    for split, n in summary["splits"].items():
        if not n:  # legitimate (a test-only set), but said: `train` and `eval` refuse an empty split
            print(f"synth: the {split} split is empty (the config gives it no documents): "
                  f"{EMPTY_SPLIT_USE[split]}", file=sys.stderr)
    return summary


EMPTY_SPLIT_USE = {"train": "no stage can train on this set", "dev": "training runs will have no dev evaluation",
                   "test": "`speechsum eval` has nothing to score here"}


def _finish(cfg: SynthConfig, out_dir: Path, jobs: list[Job]) -> dict[str, Any]:
    """Gather every part into the split manifests (written last, atomically), then the card."""
    from speechsum.data.card import write_card

    per_split: dict[str, list[dict[str, Any]]] = {s: [] for s in dataset.SPLITS}
    for j in jobs:
        part = Path(j.split_dir) / ".parts" / f"{j.doc_id}.json"
        per_split[j.split] += json.loads(part.read_text())
    for split, records in per_split.items():
        split_dir = out_dir / split
        split_dir.mkdir(parents=True, exist_ok=True)
        (split_dir / "audio").mkdir(exist_ok=True)
        dataset.write_manifest(split_dir, records)
    write_card(out_dir, to_dict(cfg), per_split)
    docs = {r["doc_id"]: r["duration"] for rs in per_split.values() for r in rs}
    return {"items": sum(map(len, per_split.values())), "documents": len(docs),
            "hours": sum(docs.values()) / 3600,
            "splits": {s: len(r) for s, r in per_split.items()}}


def synth_command(config: str | None, out: str, overrides: list[str] = ()) -> int:
    """CLI body: one-line errors, exit code 2 for a bad config, voice, teacher or source."""
    from speechsum.models.text_lm import RemoteError

    try:
        cfg = load_config(SynthConfig, config, overrides)
        synthesize(cfg, out)
    except ConfigError as e:
        print(f"speechsum synth: {e}", file=sys.stderr)
        return 2
    except (RemoteError, teacher.TeacherError) as e:  # the teacher failed mid-run; its answers so far are cached
        print(f"speechsum synth: teacher: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # `python -m speechsum.data.synth --config ... --out ... key=value ...`
    import argparse

    ap = argparse.ArgumentParser(prog="speechsum synth", description="write a synthetic speech-summarization set")
    ap.add_argument("--config", help="YAML preset, e.g. configs/synth/tiny.yaml")
    ap.add_argument("--out", required=True, help="dataset folder (re-run the same command to resume)")
    ap.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.documents=10")
    args = ap.parse_args()
    sys.exit(synth_command(args.config, args.out, args.overrides))
