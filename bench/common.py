"""Pieces the training-step benchmarks share (train.py, kd.py, dpo.py): the step clock, the matmul
peak, the neighbour-load meter of a shared machine, the text-only workload that stands in for
audio in the TRL baselines, step and phase timers, the one-process-per-configuration runner and
the machine record written beside every result.

Imported as a plain module (`bench/` is on sys.path when a script there runs), never installed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

LLM = "smollm2-135m-instruct"
ENCODER = "whisper-base"
SAMPLE_RATE = 16_000
FRAMES_PER_SECOND = 50  # Whisper encoder frames (20 ms)
TRANSCRIPT = (
    "Hi Dana, it's Marcus from facilities. We agreed to push the office move to Thursday the fourteenth. "
    "The budget stays at twelve thousand five hundred dollars, and the movers arrive at eight in the morning. "
    "Please send the floor plan to Priya by Wednesday, and remind the team to pack their desks on Tuesday. "
    "If anything changes, call me on my mobile, not the office line, because I will be on site all week."
)
SUMMARY = (
    "Marcus from facilities says the office move is pushed to Thursday the fourteenth. The budget stays at "
    "twelve thousand five hundred dollars and movers arrive at eight. Dana should send the floor plan to Priya "
    "by Wednesday; the team packs desks on Tuesday. Call Marcus on his mobile if anything changes this week."
)
INSTRUCTIONS = [
    "Summarize this recording in one short paragraph.",
    "List the key points as bullets.",
    "Write a short title for this recording.",
    "Summarize the decisions and action items.",
]
CLEAN_MARGIN = 0.3  # a step is "clean" when other processes used <= (cores - torch threads + this) cores


# ------------------------------------------------------------------------------------ clock and peak

# Step clock. "wall" (default): time.perf_counter. "cpu" (with --threads 1 only): this process's CPU
# time, which does not advance while a busy neighbour holds the core, so a shared machine still
# gives usable numbers (with 2 OpenMP threads, CPU time would count spin-waiting instead).
_clock = time.perf_counter


def now() -> float:
    return _clock()


def cpu_clock() -> bool:
    return _clock is time.process_time


def add_machine_args(ap) -> None:
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default, one per core); 1 leaves a core to a busy neighbour")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="step and peak timing: wall time, or process CPU time (needs --threads 1; for a busy machine)")


def apply_machine_args(ap, args) -> None:
    """Set torch's threads and the step clock from --threads/--clock (in the driver and every worker)."""
    global _clock
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        if torch.get_num_threads() != 1:
            ap.error("--clock cpu needs --threads 1 (with more threads, CPU time counts OpenMP spin-waiting)")
        _clock = time.process_time


def machine_argv(args) -> list[str]:
    return ["--threads", str(args.threads), "--clock", args.clock]


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Best GFLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t = now()
        a @ b
        best = min(best, now() - t)
    return 2 * n**3 / best / 1e9


def peak_sample() -> dict:
    return {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}


def best_peak(start: dict, rows: list[dict]) -> tuple[dict, dict]:
    """(peak per dtype, all samples): the driver's samples at the start and the end plus every
    worker's; the best is the run's peak (a busy neighbour only ever lowers a sample)."""
    samples = {dt: [v] for dt, v in start.items()}
    end = peak_sample()
    for dt in samples:
        samples[dt] += [r["peak_samples"][dt] for r in rows if "peak_samples" in r] + [end[dt]]
    return {dt: max(v) for dt, v in samples.items()}, samples


# ------------------------------------------------------------------------------------ contention


def spare_cores() -> int:
    """Cores left over by torch's threads (0 with the default: one thread per core)."""
    return max(0, (os.cpu_count() or 1) - torch.get_num_threads())


class CpuMeter:
    """CPU time used by *other* processes while a step runs (the machine may be shared): busy
    jiffies of the whole machine (/proc/stat) minus this process's own CPU time, per wall second.
    0 = the step had the machine to itself; 1 = another process kept one core busy."""

    def __init__(self, max_wait: float | None = None):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.samples: list[float] = []
        self.quiet = spare_cores() + 0.15  # other load that leaves our threads their cores
        # waiting is pointless when the step clock is CPU time
        self.max_wait = (0.0 if cpu_clock() else 90.0) if max_wait is None else max_wait
        self.waited = 0.0

    def _busy(self) -> float:
        try:
            f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        except OSError:
            return float("nan")
        v = [int(x) for x in f]
        return (sum(v[:8]) - v[3] - v[4]) / self.tick  # all but idle and iowait

    def wait_quiet(self, window: float = 0.5) -> None:
        """Sleep until other processes leave our threads their cores for one window (at most
        `max_wait` s): with 2 cores and 2 OpenMP threads, one busy neighbour makes a step 5-20x slower
        (a descheduled thread stalls every parallel region)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < self.max_wait:
            b, own = self._busy(), time.process_time()
            time.sleep(window)
            if (self._busy() - b - (time.process_time() - own)) / window < self.quiet:
                break
        self.waited += time.perf_counter() - t0

    def start(self) -> None:
        self.wait_quiet()
        self._t, self._own, self._b = time.perf_counter(), time.process_time(), self._busy()

    def stop(self) -> None:
        wall = time.perf_counter() - self._t
        other = (self._busy() - self._b) - (time.process_time() - self._own)
        self.samples.append(round(max(0.0, other) / wall, 2))


def clean_load(args) -> float:
    """Other processes' load (cores) under which a timed step counts as undisturbed."""
    return float("inf") if args.clock == "cpu" else spare_cores() + CLEAN_MARGIN


def clean_median(seconds: list[float], other_load: list[float], limit: float) -> tuple[float, int]:
    """(median over the steps no other process disturbed, how many those were); the median of all
    steps when none was clean."""
    clean = [t for t, o in zip(seconds, other_load) if o <= limit] or seconds
    return sorted(clean)[len(clean) // 2], sum(o <= limit for o in other_load)


def step_time_note(args) -> str:
    if args.clock == "cpu":
        return "median of the timed steps (CPU time: other processes' load is not counted)"
    return (f"median of the timed steps during which other processes used <= {clean_load(args)} cores "
            "(all timed steps when none qualifies); each step first waits (<= 90 s) for that")


# ------------------------------------------------------------------------------------ timers


class Phases:
    """Seconds per named phase of the current step (sampling, teacher, ...), on the step clock.
    `phase(name)` times a block, `wrap(fn, name)` a function, `hook(module, name)` a module's
    forward; `take()` returns the step's totals and starts the next step."""

    def __init__(self):
        self.current: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.current[name] = self.current.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str):
        t = now()
        try:
            yield
        finally:
            self.add(name, now() - t)

    def wrap(self, fn, name: str):
        def timed(*a, **kw):
            with self.phase(name):
                return fn(*a, **kw)

        return timed

    def hook(self, module: torch.nn.Module, name: str) -> None:
        starts = []
        module.register_forward_pre_hook(lambda m, a: starts.append(now()))
        module.register_forward_hook(lambda m, a, out: self.add(name, now() - starts.pop()))

    def take(self) -> dict[str, float]:
        out, self.current = self.current, {}
        return out


def trl_step_timer(warmup: int, phases: Phases | None = None, profile_step: int | None = None,
                   profiler_cls=None):
    """A TrainerCallback timing each optimizer step (on_step_begin -> on_step_end) after `warmup`
    untimed ones, with the neighbour load and, with `phases`, the step's phase split; with
    `profile_step` (a 1-based global step, not timed) that step runs under `profiler_cls()`.
    TRL's collation happens before on_step_begin, so it is *not* in the step time."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.begin, self.end, self.step_s, self.end_to_end_s, self.meter = None, None, [], [], CpuMeter()
            self.phase_s: list[dict] = []
            self.profile = None

        def on_step_begin(self, a, state, control, **kw):
            self.meter.start()
            if profile_step is not None and state.global_step == profile_step - 1:
                self.profiler = profiler_cls()
                self.profiler.start()
            if phases is not None:
                phases.take()
            self.begin = now()

        def on_step_end(self, a, state, control, **kw):
            t = now()
            split = phases.take() if phases is not None else {}
            if profile_step is not None and state.global_step == profile_step:
                self.profile = self.profiler.stop()
            elif state.global_step > warmup:  # global_step is already incremented here
                self.step_s.append(t - self.begin)
                if self.end is not None:  # from the previous step's end: includes TRL's collation
                    self.end_to_end_s.append(t - self.end)
                self.phase_s.append(split)
                self.meter.stop()
            self.end = t

    return StepTimer()


# ------------------------------------------------------------------------------------ our side


def synthetic_clips(batch: int, seconds: float) -> list:
    """Noisy tone clips: the encoder's output shape, not its content, matters here."""
    import numpy as np

    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    return [(0.3 * np.sin(2 * np.pi * (220 + 60 * i) * t) + 0.05 * rng.standard_normal(len(t))).astype("float32")
            for i in range(batch)]


def build_encoder_dir(tmp: Path) -> str:
    """whisper-base when its weights are ready; else a random 2-layer Whisper with whisper-base's
    width (512), since only the frame shape [T, 512] matters for the timed step."""
    from speechsum.models.registry import is_ready

    if is_ready(ENCODER):
        return ENCODER
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    cfg = WhisperConfig(vocab_size=100, num_mel_bins=80, d_model=512, encoder_layers=2, decoder_layers=1,
                        encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                        decoder_ffn_dim=2048, max_source_positions=1500, max_target_positions=64,
                        pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2)
    out = tmp / "whisper-512"
    WhisperForConditionalGeneration(cfg).save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    return str(out)


def speech_model(batch: int, audio_seconds: float, dtype: str, llm_training: str = "lora"):
    """Our side of a benchmark, set up as the stage loops do: (accelerator, model, its prepared
    wrapper, optimizer, trainable params, encoder frames of `batch` synthetic clips, encoder).
    Frames are encoded once before timing: the encoder is frozen and cached in real training, so
    a step starts from frames. AdamW at a constant lr, bf16 autocast or fp32 as in `loop.bf16`."""
    import tempfile

    from accelerate import Accelerator

    from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig
    from speechsum.training import common
    from speechsum.training.common import OptimConfig

    acc = Accelerator(cpu=True, mixed_precision="bf16" if dtype == "bf16" else "no")
    common.seed_everything(0)
    with tempfile.TemporaryDirectory() as tmp:
        encoder = build_encoder_dir(Path(tmp))
        model = SpeechLM.from_config(SpeechLMConfig(encoder=encoder, llm=LLM, llm_training=llm_training))
    model.decode_bf16 = dtype == "bf16"  # as start_run: bf16 runs sample from a bf16 copy of the LLM
    frames = model.encode_audio(synthetic_clips(batch, audio_seconds))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = common.build_optimizer(params, OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant"))
    model.train()
    ddp_model, opt = acc.prepare(model, opt)
    return acc, model, ddp_model, opt, params, frames, encoder


def proc_status_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS: resident now, VmHWM: peak resident) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def release_free_heap() -> bool:
    """Hand the allocator's free heap pages back to the kernel (glibc `malloc_trim(0)`), so that the
    resident set before a measured block does not depend on what earlier work left cached: without
    it the same process started a 5-min call at 1534 MB in one run and 1971 MB in the next, and the
    peak increase moved by the difference. False where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False


def reset_peak_rss() -> None:
    """Reset VmHWM to the current resident set (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


@contextmanager
def peak_rss_increase(row: dict):
    """Record in `row` the resident set before the block and its peak during it (MB)."""
    gc.collect()
    release_free_heap()
    rss = proc_status_mb("VmRSS")
    reset_peak_rss()
    yield
    peak = proc_status_mb("VmHWM")
    row.update(rss_before_mb=round(rss, 1), peak_rss_mb=round(peak, 1), peak_increase_mb=round(peak - rss, 1))


def time_steps(step, warmup: int, steps: int, phases: Phases | None = None) -> dict:
    """Run `step()` warmup + steps times; per timed step: seconds, neighbour load, phase split (and
    the warm-up steps' seconds, where a compiled model compiles)."""
    out = {"seconds": [], "losses": [], "phase_seconds": [], "warmup_seconds": []}
    meter = CpuMeter()
    for i in range(warmup + steps):
        meter.start()
        if phases is not None:
            phases.take()
        t = now()
        out["losses"].append(step())
        if i < warmup:
            out["warmup_seconds"].append(round(now() - t, 3))
        if i >= warmup:
            out["seconds"].append(now() - t)
            meter.stop()
            if phases is not None:
                out["phase_seconds"].append(phases.take())
    return {**out, "other_load": meter.samples, "waited_for_quiet_s": round(meter.waited, 1)}


# ------------------------------------------------------------------------------------ text stand-in


def standin_ids(tok, n: int) -> list[int]:
    """n transcript tokens: what the text-only baselines read where our model reads n audio tokens."""
    ids = tok(" " + TRANSCRIPT, add_special_tokens=False)["input_ids"]
    return (ids * (n // len(ids) + 1))[:n]


def summary_ids(tok, end_of_turn: int, n: int, text: str = SUMMARY) -> list[int]:
    """A completion of exactly n tokens, the last one the end-of-turn token (as `SpeechLM.target_ids`)."""
    ids = tok(text, add_special_tokens=False)["input_ids"]
    return ids[: n - 1] + [end_of_turn]


def text_prompts(llm_dir, audio_seconds: float, batch: int):
    """For the TRL baselines, without building a SpeechLM: (tokenizer, end-of-turn id, audio tokens
    our model would read, per item (instruction, prompt ids with the transcript stand-in where
    the audio goes)). Prompts are rendered by SpeechLM's own code, which only reads `tokenizer`
    and `config.system_prompt`."""
    from functools import partial
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig

    tok = AutoTokenizer.from_pretrained(llm_dir)
    speech = SimpleNamespace(tokenizer=tok, config=SpeechLMConfig(llm=LLM))
    audio_tokens = -(-int(audio_seconds * FRAMES_PER_SECOND) // speech.config.stack)
    prompt_ids = partial(SpeechLM.prompt_ids, speech)
    standin = standin_ids(tok, audio_tokens)
    items = []
    for i in range(batch):
        instr = INSTRUCTIONS[i % len(INSTRUCTIONS)]
        pre, post = prompt_ids(instr)
        items.append((instr, pre + standin + post))
    return tok, SpeechLM.end_of_turn_id.fget(speech), audio_tokens, items


def trl_baseline(audio_seconds: float, batch: int):
    """The TRL side's inputs: HF logging quiet, seed 0, the LLM folder, `text_prompts`, and the
    LLM itself in fp32 (as ours: bf16 rows autocast). Returns a namespace of those."""
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from speechsum.models.registry import resolve_model

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    llm_dir = resolve_model(LLM)
    tok, end_of_turn, audio_tokens, prompts = text_prompts(llm_dir, audio_seconds, batch)
    model = AutoModelForCausalLM.from_pretrained(llm_dir, dtype=torch.float32)
    return SimpleNamespace(llm_dir=llm_dir, tok=tok, end_of_turn=end_of_turn, audio_tokens=audio_tokens,
                           prompts=prompts, model=model)


def trl_train(trainer, timer) -> dict:
    """Run `trainer.train()`; the row fields every TRL baseline reports (timer: `trl_step_timer`)."""
    import trl

    t = time.perf_counter()
    result = trainer.train()
    return {"seconds": timer.step_s, "end_to_end_seconds": timer.end_to_end_s, "phase_seconds": timer.phase_s,
            "other_load": timer.meter.samples, "waited_for_quiet_s": round(timer.meter.waited, 1),
            "losses": [result.training_loss], "train_seconds": round(time.perf_counter() - t, 1),
            "accelerate_mixed_precision": trainer.accelerator.mixed_precision,
            "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "trl": trl.__version__}


def trl_training_args(out_dir: str, batch: int, n_steps: int, dtype: str, grad_ckpt: bool = False,
                      lr: float = 1e-4) -> dict:
    """TrainingArguments every TRL baseline shares: CPU, our optimizer settings (AdamW, constant
    lr, clip 1.0), the same batch every step (sequential sampler over a repeated batch), no
    logging/saving/evaluation in the timed loop. TRL's own default is gradient checkpointing on;
    ours is off, so the baselines set it off unless a row measures it."""
    return dict(output_dir=out_dir, per_device_train_batch_size=batch, max_steps=n_steps, use_cpu=True,
                bf16=dtype == "bf16", fp16=False, gradient_checkpointing=grad_ckpt, learning_rate=lr,
                lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0,
                train_sampling_strategy="sequential", logging_steps=10_000, save_strategy="no", report_to="none",
                disable_tqdm=True, dataloader_num_workers=0, seed=0)


def lora_config():
    """peft LoraConfig of our default SpeechLM LoRA (rank, alpha, targets) for the TRL baselines."""
    from peft import LoraConfig

    from speechsum.models.speech_lm import SpeechLMConfig

    c = SpeechLMConfig()
    return LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=list(c.lora_targets))


# ------------------------------------------------------------------------------------ processes


def run_worker(script: str, name: str, argv: list[str], row: dict) -> dict:
    """One configuration in a fresh process (accelerate's state is per process): `script --worker
    name argv...`; its result is the last stdout line (JSON), merged into `row`."""
    cmd = [sys.executable, script, "--worker", name] + argv
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    row = {**row, "process_seconds": round(time.perf_counter() - t, 1)}
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        print(f"  {name}: FAILED: {err}", file=sys.stderr)
        return {**row, "error": err}
    return {**row, **json.loads(proc.stdout.strip().splitlines()[-1])}


def parse_args(ap, argv, out_name: str, worker):
    """Add the arguments every benchmark has (--note, --threads/--clock, --out, the internal
    --worker), parse, set threads and clock. In a worker process, run `worker(name, args)`, print
    its row as the last stdout line and return None (the caller exits)."""
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    add_machine_args(ap)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / out_name))
    args = ap.parse_args(argv)
    apply_machine_args(ap, args)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return None
    return args


def run_configs(script: str, configs: list[tuple[str, dict]], argv: list[str], only=None) -> list[dict]:
    """Each (worker name, row) in its own process (`run_worker`), in order, skipping impls not in
    `only`; TRL rows become errors when trl is not installed."""
    trl_ok = trl_installed()
    rows = []
    for name, row in configs:
        if only and row["impl"] not in only:
            continue
        if row["impl"] == "trl" and not trl_ok:
            rows.append({**row, "error": "trl is not installed (pip install -e '.[bench]')"})
            continue
        print(f"  running {name} ...", flush=True)
        rows.append(run_worker(script, name, argv, row))
    return rows


def per_step(rows: list[dict], args, items_per_step: int) -> None:
    """Step time (clean median), its clean-step count and samples/s, per row that ran (in place)."""
    limit = clean_load(args)
    for r in rows:
        if "error" not in r:
            s, r["clean_steps"] = clean_median(r["seconds"], r["other_load"], limit)
            r["seconds_per_step"] = round(s, 4)
            r["samples_per_s"] = round(items_per_step / s, 3)


def speedups(rows: list[dict], is_ref, key: str = "samples_per_s") -> None:
    """`speedup_vs_trl` = key / the key of the first row `is_ref(row, candidate)` picks (in place)."""
    for r in rows:
        ref = next((x for x in rows if "error" not in x and is_ref(r, x)), None)
        if "error" not in r and ref is not None:
            r["speedup_vs_trl"] = round(r[key] / ref[key], 2)


def result_header(args, peak: dict, samples: dict, t_start: float) -> dict:
    """The JSON fields every training benchmark writes: timing rules, matmul peak (`best_peak`), machine."""
    return {"timed_steps": args.steps, "warmup_steps": args.warmup, "note": args.note,
            "clock": "process CPU time (1 thread)" if args.clock == "cpu" else "wall time",
            "step_time": step_time_note(args),
            "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()},
            "matmul_peak_shape": "2048x2048 @ 2048x2048",
            "matmul_peak_samples": {k: [round(x, 1) for x in v] for k, v in samples.items()},
            "matmul_peak_method": "best of 5 repetitions, in the main process (start and end) and in every "
                                  "worker; the run's peak is the best sample",
            "machine": machine_info(), "bench_seconds": round(time.perf_counter() - t_start, 1)}


def trl_installed() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


def machine_info() -> dict:
    import importlib.metadata as md

    cpu = "unknown"
    flags = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = sorted(f for f in line.split(":", 1)[1].split() if f.startswith(("avx512", "amx")))
    except OSError:
        pass
    versions = {}
    for pkg in ("torch", "transformers", "peft", "accelerate", "trl", "datasets"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cpu_flags": flags, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "machine": platform.machine(), "python": sys.version.split()[0], "versions": versions}


def write_result(path: str, result: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} ({result.get('bench_seconds', 0):.0f} s)")
