"""Alignment stage (MTBI, arXiv 2505.18644): behaviour imitation + speech-text interleaving.

    speechsum train align --config configs/align/tiny.yaml [key=value ...] [--resume]

The audio model must answer a task prompt about a stretch of speech exactly as the text LLM
answers the same prompt when it reads the transcript of that stretch. Tasks: transcribe
(target = the transcript itself), continue, summarize in one line, keywords, title, and a
question. Behaviour targets are generated once by the text LLM (default: the student's own LLM,
as in MTBI) and cached by request, so re-runs cost nothing.

Spans: a document clip is encoded once (cached); a training example takes 1-`max_sentences`
consecutive sentences and slices their frames out of the clip's encoding using the sentence
timestamps (50 frames/s). With probability `interleave_prob` the example is interleaved: each
sentence is given as audio with probability `audio_ratio`, else as its text, in order, so one
sequence mixes audio and text spans of the same content (at least one of each).

Default trainable part: the projector only (encoder and LLM frozen), as in MTBI; set
`model.llm_training=lora` to measure the LoRA variant. An optional feature-level term
(`feature_weight`) pulls each audio span's mean projected embedding towards the mean LLM input
embedding of its transcript (cosine), in the spirit of modality-invariance work (arXiv 2406.05968).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from speechsum.models.speech_lm import Audio, SpeechLMConfig, Text
from speechsum.training import common
from speechsum.training.common import LoopConfig, OptimConfig
from speechsum.training.sft import DataConfig, item_frames, load_items

FRAMES_PER_SECOND = 50  # Whisper encoder frames (20 ms each)

TASKS: dict[str, tuple[str, int]] = {  # task -> (prompt, max new tokens of the teacher's answer)
    "transcribe": ("Transcribe the audio exactly.", 0),  # target = transcript, no teacher call
    "continue": ("Continue the text with one more sentence in the same style.", 40),
    "one_line": ("Summarize what was said in one sentence.", 48),
    "keywords": ("List the five most important keywords, comma-separated.", 24),
    "title": ("Give this a short title.", 16),
    "question": ("What are the names, numbers and dates mentioned? Answer briefly.", 48),
}


@dataclass
class AlignConfig:
    model: SpeechLMConfig = field(default_factory=lambda: SpeechLMConfig(llm_training="frozen"))
    """The SpeechLM; MTBI trains the connector only (`llm_training: frozen`)."""
    init: str = ""
    """Run or checkpoint folder to start from ('' = untrained assembly)."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    teacher: str = ""
    """Text LLM writing behaviour targets: registry name, folder, or openai:URL#MODEL ('' = the student's LLM)."""
    teacher_batch_size: int = 32
    """Prompts per teacher generation batch (decoding is memory-bound: bigger batches are ~free)."""
    teacher_cache: str = ""
    """Cache folder of teacher answers (default: <data.path>/teacher_cache)."""
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """Task prompts used (keys of align.TASKS)."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """Sampling weight per task (missing: 1.0)."""
    examples_per_doc: int = 4
    """Span examples drawn per training document (each gets one task)."""
    max_sentences: int = 3
    """Sentences per span (1..N, uniform)."""
    interleave_prob: float = 0.3
    """Fraction of examples given as interleaved audio/text sentences."""
    audio_ratio: float = 0.5
    """In interleaved examples, the chance that a sentence is audio rather than text."""
    feature_weight: float = 0.0
    """Weight of the feature-level alignment term (0: off)."""
    ctc_weight: float = 0.0
    """Weight of the embedding-space CTC term on audio spans (`losses.embedding_ctc_loss`; 0: off)."""
    ctc_temperature: float = 0.1
    """Temperature of the CTC term's cosine logits."""
    ctc_blank: str = " "
    """Text of the one LLM token whose embedding is the CTC blank (a lone space reads as nothing)."""
    lm_weight: float = 1.0
    """Weight of the behaviour-imitation cross-entropy through the LLM; 0 skips the LLM pass and the
    teacher entirely (CTC-only connector pre-alignment, ~10x cheaper steps)."""

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"tasks: unknown task {unknown[0]!r} (known: {', '.join(TASKS)})")
        if not 0 <= self.interleave_prob <= 1 or not 0 < self.audio_ratio < 1:
            raise ValueError("interleave_prob must be in [0, 1] and audio_ratio in (0, 1)")
        if self.max_sentences < 1 or self.examples_per_doc < 1:
            raise ValueError("max_sentences and examples_per_doc must be >= 1")
        if min(self.feature_weight, self.ctc_weight, self.lm_weight) < 0:
            raise ValueError("feature_weight, ctc_weight and lm_weight must be >= 0")
        if self.lm_weight == 0 and self.ctc_weight == 0 and self.feature_weight == 0:
            raise ValueError("lm_weight, ctc_weight and feature_weight are all 0: nothing to train")
        if self.ctc_temperature <= 0:
            raise ValueError(f"ctc_temperature must be > 0, got {self.ctc_temperature}")


# ------------------------------------------------------------------------------------ examples


@dataclass
class Example:
    item: dict  # the dataset row of the document (audio path, sentences)
    first: int  # sentence span [first, last)
    last: int
    task: str
    audio_mask: list[bool]  # per sentence of the span: given as audio (True) or text
    target: str = ""

    @property
    def text(self) -> str:
        return " ".join(s["text"] for s in self.item["sentences"][self.first : self.last])


def make_examples(items: list[dict], cfg: AlignConfig, seed: int) -> list[Example]:
    """Deterministic span/task/interleaving draws over unique documents."""
    rng = random.Random(seed)
    docs = {r["doc_id"]: r for r in items}.values()
    weights = [cfg.task_weights.get(t, 1.0) for t in cfg.tasks]
    out = []
    for doc in docs:
        n = len(doc["sentences"])
        for _ in range(cfg.examples_per_doc):
            k = rng.randint(1, min(cfg.max_sentences, n))
            first = rng.randrange(0, n - k + 1)
            task = rng.choices(cfg.tasks, weights)[0]
            mask = [True] * k
            if k >= 2 and rng.random() < cfg.interleave_prob:
                mask = [rng.random() < cfg.audio_ratio for _ in range(k)]
                if all(mask) or not any(mask):  # an interleaved example has both kinds
                    mask[rng.randrange(k)] = not mask[0]
            out.append(Example(doc, first, first + k, task, mask))
    return out


def fill_targets(examples: list[Example], teacher, log=None, batch_size: int = 32) -> None:
    """Behaviour targets: the teacher's answer to the task prompt on the span's transcript, as it
    wrote it (MTBI imitates the behaviour). Each batch's answers are cached as soon as they are
    written, with a progress bar when `log` is set (the reference preset's ~36k answers of
    Qwen2.5-0.5B take hours on CPU; a killed run resumes from the cache)."""
    from speechsum.data.teacher import ask

    by_task: dict[str, list[Example]] = {}
    for ex in examples:
        if ex.task == "transcribe":
            ex.target = ex.text
        else:
            by_task.setdefault(ex.task, []).append(ex)
    for task, exs in by_task.items():
        prompt, max_new = TASKS[task]
        t = time.time()
        convs = [[{"role": "user", "content": f"{ex.text}\n\n{prompt}"}] for ex in exs]
        answers = ask(teacher, convs, max_new, batch=batch_size, desc=f"align targets ({task})",
                      progress=log is not None, clean=False)
        for ex, answer in zip(exs, answers):
            ex.target = answer.strip() or ex.text  # an empty answer would teach silence
        if log:
            log(f"align: {len(exs)} '{task}' targets in {time.time() - t:.0f} s")


def span_frames(frames: torch.Tensor, sentence: dict) -> torch.Tensor:
    """Frames of one sentence, cut from the whole clip's encoding by its timestamps."""
    a = max(0, int(math.floor(sentence["start"] * FRAMES_PER_SECOND)))
    b = min(len(frames), max(a + 1, int(math.ceil(sentence["end"] * FRAMES_PER_SECOND))))
    return frames[a:b]


def align_segments(model, examples: list[Example], frames_by_doc: dict[str, torch.Tensor], llm_inputs: bool = True):
    """Segments [prompt-before, (audio|text spans in order), prompt-after, target] per example,
    and for the CTC/feature terms the (audio embeds, text ids) pairs of the audio spans.
    `llm_inputs=False` (CTC/feature-only runs): only the pairs; the readout and the prompts, which
    only the LLM pass reads, are skipped (the readout alone cost ~4x the CTC term)."""
    items, pairs = [], []
    for ex in examples:
        sents = ex.item["sentences"][ex.first : ex.last]
        frames = frames_by_doc[ex.item["doc_id"]]
        # consecutive audio sentences form one audio span (one projection, no seams)
        spans: list[tuple[bool, list[dict]]] = []
        for s, is_audio in zip(sents, ex.audio_mask):
            if spans and spans[-1][0] == is_audio:
                spans[-1][1].append(s)
            else:
                spans.append((is_audio, [s]))
        audio_spans = [torch.cat([span_frames(frames, s) for s in group]) for is_a, group in spans if is_a]
        embeds = iter(model.project(audio_spans, readout=False))  # CTC/feature terms score the raw projection
        if not llm_inputs:
            for is_audio, group in spans:
                if is_audio:
                    text = " ".join(s["text"] for s in group)
                    pairs.append((next(embeds), model.tokenizer(" " + text, add_special_tokens=False)["input_ids"]))
            continue
        pre, post = model.prompt_ids(TASKS[ex.task][0])
        segs = [Text(pre)]
        for is_audio, group in spans:
            text = " ".join(s["text"] for s in group)
            if is_audio:
                emb = next(embeds)
                segs.append(Audio(model.readout(emb)))
                pairs.append((emb, model.tokenizer(" " + text, add_special_tokens=False)["input_ids"]))
            else:
                segs.append(Text(model.tokenizer(" " + text, add_special_tokens=False)["input_ids"]))
        segs += [Text(post), Text(model.target_ids(ex.target), target=True)]
        items.append(segs)
    return items, pairs


def feature_term(model, pairs) -> torch.Tensor:
    from speechsum.training.losses import feature_alignment_loss

    emb = model.base_llm.get_input_embeddings()
    text = [emb(torch.tensor(ids, device=emb.weight.device)) for _, ids in pairs]
    return feature_alignment_loss([a for a, _ in pairs], text)


def blank_id(tokenizer, text: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"ctc_blank: {text!r} is {len(ids)} tokens for this tokenizer, not 1; pick a single-token text")
    return ids[0]


def ctc_term(model, pairs, cfg: AlignConfig) -> tuple[torch.Tensor, int]:
    from speechsum.training.losses import embedding_ctc_loss

    emb = model.base_llm.get_input_embeddings().weight.detach()
    # the [audio tokens x vocabulary] matmul is most of a CTC-only step: bf16 where the run is bf16
    # (cosines of unit vectors: ~0.002 rounding, far below the 1/temperature scale)
    with torch.autocast("cuda" if torch.cuda.is_available() else "cpu", dtype=torch.bfloat16, enabled=cfg.loop.bf16):
        return embedding_ctc_loss([a for a, _ in pairs], [ids for _, ids in pairs], emb,
                                  blank_id(model.tokenizer, cfg.ctc_blank), cfg.ctc_temperature)


# ------------------------------------------------------------------------------------ the loop


def train(cfg: AlignConfig, resume: bool = False, log=print) -> Path:
    """Run the alignment stage; returns `<out_dir>/final`."""
    from speechsum.models.text_lm import CachedChat, TextLM, chat_backend
    from speechsum.training.losses import token_cross_entropy

    # --- model, optimizer
    run = common.start_run(cfg, log, resume=resume)
    model, acc = run.model, run.acc

    # --- data: spans, tasks and behaviour targets (teacher answers cached by request)
    train_items = load_items(cfg.data, cfg.data.train_split)
    if cfg.data.max_items:
        train_items = train_items[: cfg.data.max_items]
    examples = make_examples(train_items, cfg, cfg.loop.seed)
    cache_dir = cfg.teacher_cache or Path(cfg.data.path) / "teacher_cache"
    if cfg.teacher:
        teacher = chat_backend(cfg.teacher, cache_dir)
    else:  # MTBI: the student's own LLM reading the transcript (LoRA off: the frozen base)
        teacher = CachedChat(TextLM(model.base_llm, model.tokenizer, identity=f"local:{cfg.model.llm}"), cache_dir)
    if cfg.lm_weight > 0:  # CTC/feature-only pre-alignment needs no behaviour targets
        # rank 0 writes the targets into the shared cache first; the other ranks then read them
        with acc.main_process_first(), torch.no_grad(), _adapters_off(model):
            fill_targets(examples, teacher, log if run.main else None, cfg.teacher_batch_size)
    if cfg.ctc_weight > 0:
        blank_id(model.tokenizer, cfg.ctc_blank)  # fail before any work
    order = common.DataOrder(len(examples), cfg.loop.seed)
    common.resume_or_begin(run, order, resume)
    opt = run.opt  # under FSDP rebuilt on the sharded parameters

    def segments_for(exs):
        docs = {ex.item["doc_id"]: ex.item for ex in exs}
        with torch.no_grad():
            frames = item_frames(model, list(docs.values()))
        return align_segments(model, exs, dict(zip(docs, frames)), llm_inputs=cfg.lm_weight > 0)

    # --- train
    while run.step < cfg.loop.max_steps:
        t0 = time.time()
        lr = cfg.optim.lr * common.lr_at(run.step, cfg.optim, cfg.loop.max_steps)
        common.set_lr(opt, lr)
        step_examples = [examples[i] for i in order.take(run.per_step)]
        n_tokens = sum(len(model.target_ids(ex.target)) for ex in step_examples)  # global normaliser
        loss_sum, feat_sum, ctc_sum, ctc_spans, tokens = 0.0, 0.0, 0.0, 0, 0
        for micro in range(cfg.optim.grad_accum):
            mb = common.rank_slice(step_examples, micro, cfg.loop.batch_size, acc.process_index, acc.num_processes)
            with run.micro_batch(last=micro == cfg.optim.grad_accum - 1):
                items, pairs = segments_for(mb)
                loss = torch.zeros((), device=acc.device)
                if cfg.lm_weight > 0:
                    out = run.ddp_model(model.build_batch(items))
                    # sum over this rank's tokens / global tokens, x ranks because DDP averages gradients
                    lm = token_cross_entropy(out.logits, out.targets, reduction="sum") / n_tokens * acc.num_processes
                    loss = loss + cfg.lm_weight * lm
                    loss_sum += lm.item() / acc.num_processes
                    tokens += len(out.targets)
                if cfg.feature_weight > 0 and pairs:
                    feat = feature_term(model, pairs)
                    loss = loss + cfg.feature_weight * feat / cfg.optim.grad_accum
                    feat_sum += feat.item() / cfg.optim.grad_accum
                if cfg.ctc_weight > 0 and pairs:
                    ctc, used = ctc_term(model, pairs, cfg)
                    loss = loss + cfg.ctc_weight * ctc / cfg.optim.grad_accum
                    ctc_sum += ctc.item() / cfg.optim.grad_accum
                    ctc_spans += used
                common.check_finite(loss, run.step,
                                    [f"{ex.item['doc_id']}:{ex.first}-{ex.last}:{ex.task}" for ex in mb])
                acc.backward(loss)
        if cfg.lm_weight == 0 and not run.units:  # no pass through the DDP-wrapped model: sync the connector here
            common.average_grads(acc, run.params)
        grad_norm = common.clip_and_step(acc, run.params, opt, cfg.optim.grad_clip)
        run.step += 1
        loss_sum = common.all_reduce_sum(acc, loss_sum)
        tokens = int(common.all_reduce_sum(acc, tokens))
        # the feature and CTC terms are means over each micro-batch's spans, averaged over micro-batches
        # and (by DDP) over ranks: logged as that same average, not as rank 0's share
        feat_sum = common.all_reduce_sum(acc, feat_sum) / acc.num_processes
        ctc_sum = common.all_reduce_sum(acc, ctc_sum) / acc.num_processes
        ctc_spans = int(common.all_reduce_sum(acc, ctc_spans))
        dt = time.time() - t0
        if common.should_log(run):
            run.metrics.log(run.step, loss=loss_sum, feature=feat_sum, ctc=ctc_sum, ctc_spans=ctc_spans, lr=lr,
                            grad_norm=grad_norm, target_tokens_per_s=tokens / dt, epoch=order.epoch, seconds=dt)
        run.bar.update(loss=loss_sum if cfg.lm_weight > 0 else ctc_sum, tok_s=tokens / dt)
        common.end_step(run, order)
    return common.finish_run(run, "align")


class _adapters_off:
    """The teacher is the *base* LLM: disable LoRA adapters while it writes targets."""

    def __init__(self, model):
        self.llm = model.llm

    def __enter__(self):
        if hasattr(self.llm, "disable_adapter_layers"):
            self.llm.disable_adapter_layers()

    def __exit__(self, *a):
        if hasattr(self.llm, "enable_adapter_layers"):
            self.llm.enable_adapter_layers()
        return False
