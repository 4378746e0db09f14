"""Small functions every training stage shares: configs, optimizer, schedule, data order,
checkpoints (atomic, resumable, no pickle), logging, finite-loss guard, distributed helpers.

A stage file (sft.py, align.py, kd.py, dpo.py) is one plain loop built from these; what differs
between stages is the loss step.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from speechsum.config import save_config
from speechsum.precision import bf16_native  # resolve_bf16 reads it here (tests patch common.bf16_native)
from speechsum.training import close_process_group_at_exit


@dataclass
class OptimConfig:
    lr: float = 1e-3
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW betas."""
    warmup_steps: int = 10
    """Linear warm-up steps from 0 to `lr`."""
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    """Decay after warm-up, down to `min_lr_ratio * lr` at `max_steps`."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of the peak."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 disables clipping)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""

    def __post_init__(self):
        if not 0 < self.lr < math.inf:  # also NaN
            raise ValueError(f"optim.lr must be a number > 0, got {self.lr}")
        if self.grad_accum < 1:
            raise ValueError(f"optim.grad_accum must be >= 1, got {self.grad_accum}")
        if len(self.betas) != 2:
            raise ValueError(f"optim.betas must have two values, got {self.betas}")


@dataclass
class LoopConfig:
    out_dir: str = "runs/tiny"
    """Run folder: checkpoints/, metrics.jsonl, tb/, samples/, config.yaml, memory.json (what a rank
    holds of weights, gradients and optimizer state, after the first step)."""
    max_steps: int = 100
    """Optimizer steps to train."""
    batch_size: int = 4
    """Items per micro-batch per process (global batch = batch_size x grad_accum x processes)."""
    seed: int = 0
    """Seed of the data order, dropout and sampling."""
    save_every: int = 50
    """Checkpoint every N optimizer steps (and at the end)."""
    keep_last: int = 2
    """Checkpoints kept; older ones are deleted after a newer one is complete."""
    log_every: int = 1
    """Write metrics every N steps."""
    eval_every: int = 0
    """Dev-set evaluation every N steps (0: only at the end)."""
    eval_items: int = 8
    """Dev items whose loss and generated samples are written at each evaluation."""
    bf16: bool = True
    """bf16 autocast for forward/backward (weights stay fp32) where the hardware computes bf16
    natively: a GPU, or a CPU with AVX512-BF16 or AMX (1.4-1.9x faster than fp32 on such a CPU).
    Elsewhere (an AVX2-only CPU, where a bf16 matmul measured 0.3 GFLOP/s against 83 in fp32) the
    run says so and computes in fp32 (`bf16_native()`)."""
    activation_checkpointing: bool = False
    """Keep only each LLM layer's input in the forward and recompute the layer in the backward
    (HF gradient checkpointing, non-reentrant): training memory falls with the number of layers,
    each step costs about one more forward. For long audio, bigger batches and the reference LLM;
    `bench/train.py` measures both."""
    compile: bool = False
    """Compile each LLM decoder layer's forward with torch.compile (inductor, dynamic shapes: one
    graph serves every layer and every sequence length) for the training forward and backward;
    decoding (dev samples, KD and DPO sampling) stays eager. The first step pays the compilation
    (27-32 s here for SmolLM2's layers with an empty inductor cache, ~7 s from a warm one), later
    steps run faster (`bench/train.py` on this 2-core CPU: 1.20x in bf16, 1.16x in fp32): for long
    runs and GPUs, off in the presets. bf16 losses differ from eager in the 3rd digit (the fused
    kernels keep intermediates in fp32); fp32 losses agree to 1e-5."""
    fsdp: bool = False
    """Shard the model over the ranks (PyTorch FSDP2, `training/shard.py`) instead of replicating it
    on each (DDP): the LLM's decoder layers, the projector, the embedding, final norm and head take
    1/N of the memory per rank, and so do their gradients and Adam state where they train; only the
    frozen Whisper encoder stays whole. Also on when launched with `accelerate launch --use_fsdp`
    (or an accelerate config with `distributed_type: FSDP`). No effect in a single process."""

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "save_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"loop.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("seed", "eval_every", "eval_items"):
            if getattr(self, name) < 0:
                raise ValueError(f"loop.{name} must be >= 0, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------ optimizer


def build_optimizer(params: list[torch.nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate multiplier at optimizer step `step` (0-based)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.schedule == "cosine" else 1 - progress
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * decay


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


# ------------------------------------------------------------------------------------ data order


class InputError(ValueError):
    """A stage's input cannot serve the run (no preference pairs, a dev split without known facts,
    ...): the CLI prints it as one line and exits 2, as it does for a missing file."""


class DataOrder:
    """Deterministic, resumable order over `n` items: a fresh permutation per epoch from the seed.
    `position` counts items consumed globally, so a resumed run continues the same sequence."""

    def __init__(self, n: int, seed: int, position: int = 0, weights: np.ndarray | None = None):
        if n < 1:
            raise ValueError("the dataset is empty")
        self.n, self.seed, self.position = n, seed, position
        self.weights = weights  # optional per-item sampling weights (source/style mixing)

    def _epoch(self, e: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, e])
        if self.weights is None:
            return rng.permutation(self.n)
        p = self.weights / self.weights.sum()
        return rng.choice(self.n, size=self.n, replace=True, p=p)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            e, off = divmod(self.position, self.n)
            perm = self._epoch(e)
            chunk = perm[off : off + k - len(out)].tolist()
            out += chunk
            self.position += len(chunk)
        return out

    @property
    def epoch(self) -> float:
        return self.position / self.n


# ------------------------------------------------------------------------------------ checkpoints


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of every RNG the loop uses; no pickle."""
    py = random.getstate()
    np_state = np.random.get_state()
    js = {"python": [py[0], list(py[1]), py[2]],
          "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # dropout on a GPU draws from the device's generator
        tensors["cuda"] = torch.cuda.get_rng_state()
    return js, tensors


def set_rng_state(js: dict, tensors: dict[str, torch.Tensor]) -> None:
    v, state, gauss = js["python"]
    random.setstate((v, tuple(state), gauss))
    n = js["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])


def optimizer_tensors(opt: torch.optim.Optimizer, keep: bool = True) -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON part, tensor part) of the optimizer's state, whole: the state of a sharded parameter is
    gathered (a collective: every rank calls this; `keep=False` on the ranks that do not keep it
    drops each gathered tensor at once). Checkpoints of a sharded model do not call it
    (`save_sharded_checkpoint`)."""
    from speechsum.training.shard import full_tensor

    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = []
        for k, v in st.items():
            v = full_tensor(v.detach()).clone().contiguous() if torch.is_tensor(v) else torch.tensor(v)
            if keep:
                tensors[f"{idx}.{k}"] = v
            meta["state"][str(idx)].append(k)
    return meta, tensors


def load_optimizer_tensors(opt: torch.optim.Optimizer, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """The inverse of `optimizer_tensors`; a sharded parameter's state is cut to its shard."""
    from speechsum.training.shard import like_param

    params = [p for g in opt.param_groups for p in g["params"]]
    state = {int(idx): {k: tensors[f"{idx}.{k}"] for k in keys} for idx, keys in meta["state"].items()}
    for idx, st in state.items():
        for k, v in st.items():
            if v.shape == params[idx].shape and v.dim():  # a moment of the parameter, not the step count
                st[k] = like_param(v, params[idx])
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(run_dir: Path, step: int, model, opt_state: tuple[dict, dict], trainer_state: dict,
                    keep_last: int, model_state: dict | None = None,
                    rng_by_rank: list[tuple[dict, dict]] | None = None) -> Path:
    """checkpoints/step-N/{model/, optimizer.*, rng.safetensors, state.json}, then `latest` points to it:
    the checkpoint of a model that is not sharded (one process, DDP), written by the main process.
    `opt_state` is the optimizer's `optimizer_tensors` and `model_state` the model's `trainable_state`
    (None: read from the model). `rng_by_rank`: every rank's `rng_state()` (`gather_rng_states`;
    None: this process's); rank 0's goes to rng.safetensors and state.json, rank r's to
    rng-rank<r>.safetensors, so that under DDP each rank resumes its own dropout stream.

    The folder is complete before it is renamed into place, and `latest` is replaced atomically
    after that, so a kill at any moment leaves the previous good checkpoint as `latest`."""
    from safetensors.torch import save_file

    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=ckpt_root, prefix=f".step-{step:07d}-"))
    model.save_pretrained(tmp / "model", state=model_state)
    meta, tensors = opt_state
    save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    (rng_js, rng_t), *others = rng_by_rank or [rng_state()]
    save_file(rng_t, tmp / "rng.safetensors")
    for r, state in enumerate(others, start=1):
        save_rank_rng(tmp / f"rng-rank{r}.safetensors", state)
    (tmp / "state.json").write_text(json.dumps({**trainer_state, "step": step, "rng": rng_js}))
    return _publish(ckpt_root, tmp, step, keep_last)


def gather_rng_states(acc) -> list[tuple[dict, dict]] | None:
    """Every rank's `rng_state()`, in rank order, on the main process (None on the others); a
    collective when there are several processes."""
    if acc.num_processes == 1:
        return [rng_state()]
    import torch.distributed as dist

    out = [None] * acc.num_processes if acc.is_main_process else None
    dist.gather_object(rng_state(), out, dst=0)
    return out


def save_rank_rng(path: Path, state: tuple[dict, dict] | None = None) -> None:
    """One rank's RNG states (`rng_state()`; None: this process's) as a rng-rank<r>.safetensors:
    the tensors, with the JSON part in the file's metadata (`restore_rank_rng` reads it back)."""
    from safetensors.torch import save_file

    js, tensors = state or rng_state()
    save_file(tensors, path, metadata={"rng": json.dumps(js)})


def restore_rank_rng(path: Path) -> bool:
    """Restore the RNG states one rank saved in `path` (a rng-rank<r>.safetensors); False when the
    checkpoint has none for that rank."""
    from safetensors import safe_open

    if not path.is_file():
        return False
    with safe_open(path, framework="pt") as f:
        set_rng_state(json.loads(f.metadata()["rng"]), {k: f.get_tensor(k) for k in f.keys()})
    return True


def _publish(ckpt_root: Path, tmp: Path, step: int, keep_last: int) -> Path:
    """Rename a complete checkpoint folder into place as step-N, point `latest` to it, then prune."""
    final = ckpt_root / f"step-{step:07d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write(ckpt_root / "latest", final.name + "\n")
    done = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in ckpt_root.glob(".step-*"):  # temp folders of killed saves
        shutil.rmtree(stale, ignore_errors=True)
    return final


def save_sharded_checkpoint(run_dir: Path, step: int, model, opt: torch.optim.Optimizer, trainer_state: dict,
                            keep_last: int) -> Path:
    """The checkpoint of a model sharded over the ranks (FSDP), written by every rank (a collective)
    without gathering anything: checkpoints/step-N/{model-shards/, optimizer-shards/ (each rank's
    shards in files of at most 1 GB of tensors, shard.save_sharded), optimizer.json (param groups),
    rng-rank<r>.safetensors (each rank's RNG states), state.json (step, data position, world size)}.

    Atomic as `save_checkpoint`: the ranks write into one temp folder (named by rank 0), meet at a
    barrier once all their files are complete, and only then does rank 0 rename it into place and
    replace `latest`. The run folder must be one every rank sees (one machine, or a shared file
    system), as `--resume` already needs."""
    import torch.distributed as dist

    from speechsum.training.shard import save_sharded

    rank, world = dist.get_rank(), dist.get_world_size()
    ckpt_root = run_dir / "checkpoints"
    name = [None]
    if rank == 0:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        name[0] = tempfile.mkdtemp(dir=ckpt_root, prefix=f".step-{step:07d}-")
    dist.broadcast_object_list(name, src=0)
    tmp = Path(name[0])
    param_groups = save_sharded(model, opt, tmp)
    save_rank_rng(tmp / f"rng-rank{rank}.safetensors")
    if rank == 0:
        (tmp / "optimizer.json").write_text(json.dumps({"param_groups": param_groups}))
        (tmp / "state.json").write_text(json.dumps({**trainer_state, "step": step, "world_size": world}))
    dist.barrier()  # every rank's files are complete before the folder goes into place
    return _publish(ckpt_root, tmp, step, keep_last) if rank == 0 else ckpt_root / f"step-{step:07d}"


def is_sharded_checkpoint(ckpt: Path) -> bool:
    """Whether a checkpoint was written by `save_sharded_checkpoint` (no whole model/ folder)."""
    from speechsum.training.shard import MODEL_SHARDS

    return (ckpt / MODEL_SHARDS).is_dir()


def latest_pointer(run_dir: Path) -> Path | None:
    """The checkpoint folder `checkpoints/latest` names, complete or not (None: no pointer)."""
    p = Path(run_dir) / "checkpoints" / "latest"
    return p.parent / p.read_text().strip() if p.is_file() else None


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpt = latest_pointer(run_dir)
    return ckpt if ckpt is not None and (ckpt / "state.json").is_file() else None


def load_trainer_state(ckpt: Path, model, opt: torch.optim.Optimizer, rank: int = 0) -> dict:
    """Optimizer state, RNG states and the trainer's counters of a checkpoint; of a sharded one the
    trained weights too (the model laid out as it will train: sharded or not, over any number of
    ranks; every rank calls it). A whole checkpoint's weights are loaded before sharding
    (`resume_or_begin`), and every rank restores its one RNG state.

    RNG: rank r restores the state rank r saved. Resumed on fewer ranks, the others' states go
    unused; on more, a rank the checkpoint has no state of keeps the seed `start_run` gave it
    (seed + rank), except that a whole checkpoint's rank 0 state (the only one of checkpoints written
    before each rank's was kept) serves every rank that has none. Only the same world size replays
    each rank's random numbers."""
    from safetensors.torch import load_file

    from speechsum.models.speech_lm import model_file_errors

    state = json.loads((ckpt / "state.json").read_text())
    if not is_sharded_checkpoint(ckpt):
        with model_file_errors(ckpt):  # a damaged file: one line naming the checkpoint, not a traceback
            load_optimizer_tensors(opt, json.loads((ckpt / "optimizer.json").read_text()),
                                   load_file(ckpt / "optimizer.safetensors"))
            if rank == 0 or not restore_rank_rng(ckpt / f"rng-rank{rank}.safetensors"):
                set_rng_state(state["rng"], load_file(ckpt / "rng.safetensors"))
        return state
    from speechsum.training.shard import load_sharded

    load_sharded(model, opt, ckpt, json.loads((ckpt / "optimizer.json").read_text())["param_groups"])
    restore_rank_rng(ckpt / f"rng-rank{rank}.safetensors")
    return state


def final_model_dir(run_dir: Path) -> Path:
    """Where a finished stage's model lives (what `init=RUN_DIR` of the next stage loads)."""
    return Path(run_dir) / "final"


# ------------------------------------------------------------------------------------ run metadata


def run_metadata() -> dict:
    """git commit and package versions saved beside every checkpoint."""
    import importlib.metadata as md

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    versions = {}
    for pkg in ("speechsum", "torch", "transformers", "peft", "accelerate", "safetensors", "numpy"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"git_commit": commit, "versions": versions, "python": sys.version.split()[0],
            "argv": sys.argv, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_run_files(run_dir: Path, cfg) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "run.json").write_text(json.dumps(run_metadata(), indent=1))


# ------------------------------------------------------------------------------------ logging


class MetricsLog:
    """metrics.jsonl (always) + TensorBoard (when installed), main process only."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is a core dependency; tolerate its absence in odd envs
                self.tb = None

    def log(self, step: int, **metrics) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


class NonFiniteLoss(RuntimeError):
    pass


def check_finite(loss: torch.Tensor, step: int, batch_ids: list[str]) -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLoss(f"step {step}: loss is {loss.item()} on batch items {', '.join(batch_ids)}; "
                            "the last good checkpoint is kept (lower the learning rate or inspect those items)")


def truncate_metrics(run_dir: Path, step: int) -> None:
    """On resume, drop metric lines written after the checkpoint so the log is one clean curve."""
    p = run_dir / "metrics.jsonl"
    if p.is_file():
        keep = [line for line in p.read_text().splitlines() if line and json.loads(line).get("step", 0) <= step]
        _atomic_write(p, "".join(line + "\n" for line in keep))


# ------------------------------------------------------------------------------------ model set-up

# fields that define the weights' shapes or meaning: a later stage cannot change them
STRUCTURAL = ("encoder", "llm", "stack", "projector_hidden", "projector_layers", "lora_r", "lora_alpha", "lora_targets")


def resolve_init(init: str) -> Path:
    """A run folder (its final/ or latest checkpoint) or a SpeechLM folder -> the SpeechLM folder."""
    from speechsum.models.speech_lm import CONFIG_NAME

    p = Path(init)
    for cand in (p, p / "final"):
        if (cand / CONFIG_NAME).is_file():
            return cand
    ckpt = latest_checkpoint(p)
    if ckpt is not None and is_sharded_checkpoint(ckpt):
        raise InputError(f"init={init}: no final/, and its latest checkpoint ({ckpt.name}) is sharded (written "
                         "under FSDP), not a SpeechLM folder; finish that run with --resume to get its whole final/")
    if ckpt is not None:
        return ckpt / "model"
    raise FileNotFoundError(f"init={init}: not a SpeechLM folder, nor a run folder with final/ or a checkpoint")


def stage_model_keys(cfg_model) -> dict:
    """The model fields a stage sets over its init checkpoint's config: those given explicitly in
    its YAML or overrides (for configs built in code: those not at their default)."""
    import dataclasses

    from speechsum.config import explicit_keys

    given = explicit_keys(cfg_model)
    defaults = dataclasses.asdict(type(cfg_model)())
    return {k: v for k, v in dataclasses.asdict(cfg_model).items()
            if (k in given if given is not None else v != defaults[k])}


def build_model(cfg_model, init: str, log=None, skeleton: bool = False):
    """(model, effective config). With `init`, the saved model config is inherited and any field
    the stage config sets explicitly (or, for configs built in code, to a non-default value)
    overrides it (printed); shape-defining fields cannot change. `skeleton`: all but the encoder on
    the meta device, no LLM weights read (an FSDP rank other than 0; training/shard.py)."""
    from speechsum.config import from_dict
    from speechsum.models.speech_lm import CONFIG_NAME, SpeechLM, SpeechLMConfig

    if not init:
        return SpeechLM.from_config(cfg_model, skeleton=skeleton), cfg_model
    path = resolve_init(init)
    saved = json.loads((path / CONFIG_NAME).read_text())["config"]
    overrides = {k: v for k, v in stage_model_keys(cfg_model).items() if v != saved.get(k)}
    bad = [k for k in overrides if k in STRUCTURAL]
    if bad:
        raise ValueError(f"model.{bad[0]}={overrides[bad[0]]!r} differs from the init checkpoint's "
                         f"{saved.get(bad[0])!r}; a later stage cannot change it (remove it from the config)")
    if log:
        log(f"init: {path}" + (f"; overrides: {overrides}" if overrides else "; model config inherited"))
    model = SpeechLM.from_pretrained(path, trainable=True, skeleton=skeleton, **overrides)
    return model, from_dict(SpeechLMConfig, {**saved, **overrides})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------ distributed


def by_length(step_items: list, length) -> list:
    """The step's items shortest first (stable), so that the micro-batches `rank_slice` lays out
    hold similar lengths and pad less. Only for a loss normalized over the whole step (SFT's token
    sum / the step's token count): the update is then the same, up to float rounding, however the
    items are grouped. Measured on the demo's SFT data (README: Training)."""
    return sorted(step_items, key=length)


def rank_slice(step_items: list, micro: int, batch_size: int, rank: int, world: int) -> list:
    """This rank's items of micro-batch `micro`: the global step batch is laid out as
    [micro 0: rank 0 | rank 1 | ...][micro 1: ...], so 1 rank x batch 2B == 2 ranks x batch B."""
    start = (micro * world + rank) * batch_size
    return step_items[start : start + batch_size]


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def maybe_no_sync(acc, ddp_model, last: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    return _Null() if last or acc.num_processes == 1 else acc.no_sync(ddp_model)


def all_reduce_sum(acc, value: float) -> float:
    if acc.num_processes == 1:
        return value
    t = torch.tensor([float(value)], device=acc.device)
    return float(acc.reduce(t, reduction="sum").item())


def average_grads(acc, params: list[torch.nn.Parameter]) -> None:
    """Mean of the gradients over ranks, for a step whose backward did not go through the DDP
    wrapper (which otherwise does this during backward)."""
    if acc.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            torch.distributed.all_reduce(p.grad)
            p.grad /= acc.num_processes


def clip_and_step(acc, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, clip: float) -> float:
    """Clip the global gradient norm and step. Under FSDP (parameters sharded) the sharded gradients
    are already reduced; one that FSDP left whole would be averaged over the ranks here, as DDP does."""
    from speechsum.training import shard

    if any(shard.is_sharded(p) for p in params):
        average_grads(acc, [p for p in params if not shard.is_sharded(p)])
        norm = shard.clip_grad_norm(params, clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return norm
    norm = acc.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(norm)


# ------------------------------------------------------------------------------------ progress, eval


class progress:
    """A tqdm bar with loss, tokens/s and ETA on the main process; silent elsewhere."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr)

    def update(self, **kw) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.3g}" for k, v in kw.items()}, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@torch.no_grad()
def evaluate_dev(model, data_cfg, run_dir: Path, step: int, n_items: int, load_items, segments_fn, metrics,
                 max_new_tokens: int = 96) -> dict:
    """Dev loss on the first `n_items` dev items + their generated samples (samples/step-N.jsonl)."""
    from speechsum.training.losses import token_cross_entropy

    try:
        items = load_items(data_cfg, data_cfg.dev_split)[:n_items]
    except FileNotFoundError:
        return {}
    if not items:
        return {}
    was_training = model.training
    model.eval()
    out = model.target_logits(model.build_batch(segments_fn(model, items)))
    dev_loss = float(token_cross_entropy(out.logits, out.targets))
    prompts = [segs[:-1] for segs in segments_fn(model, items)]  # drop the target segment
    gens = model.generate_items(prompts, max_new_tokens=max_new_tokens)
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    with open(run_dir / "samples" / f"step-{step:07d}.jsonl", "w") as f:
        for r, g in zip(items, gens):
            f.write(json.dumps({"id": r["id"], "instruction": r["instruction"], "target": r["target"],
                                "generated": g.text}) + "\n")
    metrics.log(step, dev_loss=dev_loss)
    if was_training:
        model.train()
    return {"dev_loss": dev_loss}


# ------------------------------------------------------------------------------------ stage scaffolding
# The four stage loops share these steps word for word; only the data and the loss step differ.


@dataclass
class Run:
    cfg: object  # the stage config (has .model, .init, .data, .optim, .loop)
    acc: object  # accelerate.Accelerator
    model: object  # SpeechLM (unwrapped)
    params: list
    opt: torch.optim.Optimizer
    run_dir: Path
    log: object
    ddp_model: object = None
    metrics: object = None
    bar: object = None
    step: int = 0
    units: list = field(default_factory=list)  # FSDP units, the root (the model) last; empty: not sharded
    skeleton: bool = False  # built on the meta device until shard_model sends rank 0's weights
    skeleton_ranks: int = 0  # how many ranks started as such a skeleton (FSDP: all but rank 0)
    state_logged: bool = False

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def full_params(self):
        """Whole weights on every rank inside (under FSDP a collective: every rank enters; see
        shard.full_params); nothing to do otherwise."""
        from speechsum.training.shard import full_params

        if self.units:
            self.model.forget_copies()
        return full_params(self.units)

    def micro_batch(self, last: bool):
        """The context of one micro-batch's forward and backward. DDP: no gradient all-reduce but on
        the `last` one. FSDP (a collective: every rank enters): the root unit's weights (embedding,
        final norm, head) gathered, which the stages use outside any module's forward (shard.gathered)."""
        from speechsum.training.shard import gathered

        if not self.units:
            return maybe_no_sync(self.acc, self.ddp_model, last)
        # at every gather, not once a step: a copy may alias the gathered storage (the read-out's
        # embedding in the weights' own dtype), which FSDP frees at each reshard
        self.model.forget_copies()
        return gathered(self.model)

    def saved_state(self) -> dict | None:
        """The model's `trainable_state` for the main process to save as a whole model folder (final/,
        best-step-N/): under FSDP gathered by every rank (a collective) and kept by the main one;
        None otherwise (save_pretrained reads it). Checkpoints of a sharded model gather nothing."""
        return self.model.trainable_state(keep=self.main) if self.units else None

    @property
    def per_step(self) -> int:
        """Items per optimizer step over all ranks and micro-batches."""
        return self.cfg.loop.batch_size * self.cfg.optim.grad_accum * self.acc.num_processes


def resolve_bf16(loop: LoopConfig, log=None) -> bool:
    """loop.bf16 as it will run: off (with one line saying why) where bf16 is not native."""
    if loop.bf16 and not bf16_native():
        if log:
            log(f"loop.bf16: this {'GPU' if torch.cuda.is_available() else 'CPU'} ("
                f"{torch.backends.cpu.get_cpu_capability()}) has no native bf16 matmul; computing in fp32")
        loop.bf16 = False
    return loop.bf16


def enable_activation_checkpointing(model) -> None:
    """Recompute the LLM's decoder layers in the backward (in training mode only: sampling runs in
    eval mode and keeps its KV cache)."""
    llm, kwargs = model.base_llm, {"use_reentrant": False}
    if hasattr(llm, "activation_checkpointing_enable"):
        llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # the name before transformers 5.x renamed it
        llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def compile_decoder_layers(model) -> int:
    """torch.compile each decoder layer's forward (`loop.compile`): the layers share one code object,
    so inductor compiles it once for all of them; hooks around the layers (FSDP's gathers, activation
    checkpointing) stay eager. Decoding runs these layers eagerly (models/generation.py)."""
    from speechsum.training.shard import decoder_layers

    layers = decoder_layers(model, "compile")
    for layer in layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)
    return len(layers)


def check_run_folder(run_dir: Path, resume: bool) -> None:
    """Before any work: a run folder that already holds a run (a checkpoint or a final model) is
    continued only with `resume`, never trained over; `resume` needs a complete latest checkpoint.
    (A folder with no checkpoint yet, say a run killed before its first save, starts afresh.)"""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"loop.out_dir={run_dir}: exists and is not a folder")
    ckpt = latest_pointer(run_dir)
    if resume:
        if ckpt is None:
            raise InputError(f"--resume: {run_dir} has no checkpoint to resume from (no checkpoints/latest); "
                             "run without --resume to start the run")
        if latest_checkpoint(run_dir) is None:
            raise InputError(f"--resume: {ckpt}, the latest checkpoint of {run_dir}, is incomplete (no state.json); "
                             "write the name of an earlier step-N folder into checkpoints/latest, or remove the run")
    elif ckpt is not None or (run_dir / "final").exists():
        held = f"checkpoint {ckpt.name}" if ckpt is not None else "a final model"
        raise InputError(f"loop.out_dir={run_dir} already holds a run ({held}): pass --resume to continue it, or "
                         "choose another loop.out_dir (or remove that folder) to train afresh")


def start_run(cfg, log=print, freeze_projector: bool = False, resume: bool | None = None) -> Run:
    """Accelerator, seeds, the model (from `init` or assembled), encoder cache, optimizer.
    `freeze_projector`: a stage that never reads audio (text-mode SFT) leaves the projector out of
    the optimizer, so weight decay does not move it either. `resume` (what the stage will pass to
    `resume_or_begin`): the run folder is checked first (`check_run_folder`)."""
    from accelerate import Accelerator

    from speechsum.models.encoder import EncoderCache

    if resume is not None:
        check_run_folder(Path(cfg.loop.out_dir), resume)
    refuse_deepspeed()
    bf16 = resolve_bf16(cfg.loop, log)
    # speechsum shards by itself (`loop.fsdp`, resume_or_begin): accelerate's own FSDP is kept out of
    # the Accelerator, which would refuse a CPU under FSDP1 and cannot wrap a SpeechLM either way
    fsdp_env = os.environ.pop("ACCELERATE_USE_FSDP", None)
    try:
        acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if bf16 else "no")
    finally:
        if fsdp_env is not None:
            os.environ["ACCELERATE_USE_FSDP"] = fsdp_env
    if acc.num_processes > 1:
        close_process_group_at_exit()
    # the starting weights' random parts (a fresh LoRA, an untrained projector) are drawn under one
    # seed on every rank (DDP broadcasts rank 0's anyway); dropout and the like then draw per rank.
    # Under FSDP only rank 0 reads the LLM's weights: the others build a meta-device skeleton and
    # receive their shards from rank 0 (shard.shard_model), so no rank but 0 holds the whole LLM
    seed_everything(cfg.loop.seed)
    skeleton = fsdp_requested(cfg.loop) and acc.num_processes > 1 and not acc.is_main_process
    model, model_cfg = build_model(cfg.model, cfg.init, log if acc.is_main_process else None, skeleton=skeleton)
    if acc.num_processes > 1:
        seed_everything(cfg.loop.seed + acc.process_index)
    cfg.model = model_cfg
    model.encoder_cache = EncoderCache(cfg.data.encoder_cache or Path(cfg.data.path) / "encoder_cache")
    model.decode_bf16 = bf16  # samples (KD, DPO, dev) from a bf16 copy only where the run is bf16
    model.decode_int8 = False  # and never with int8 weights: the policy is sampled as trained
    model.readout_cache_mb = 512  # a frozen connector's vocabulary read-out, once per clip (KD, DPO)
    if cfg.loop.activation_checkpointing:
        enable_activation_checkpointing(model)
    if cfg.loop.compile:
        n = compile_decoder_layers(model)
        if acc.is_main_process:
            log(f"loop.compile: {n} decoder layers compiled (torch.compile, dynamic shapes); the first step "
                "includes the compilation, decoding stays eager")
    if freeze_projector:
        model.projector.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("nothing to train: the LLM and the projector are both frozen "
                         "(set model.llm_training or model.train_projector)")
    return Run(cfg, acc, model, params, build_optimizer(params, cfg.optim), Path(cfg.loop.out_dir), log,
               skeleton=skeleton)


def launched_with(kind: str) -> bool:
    """Whether `accelerate launch` asked for `kind` (FSDP, DEEPSPEED): its ACCELERATE_USE_<kind> flag."""
    return os.environ.get(f"ACCELERATE_USE_{kind}", "false").lower() == "true"


def refuse_deepspeed() -> None:
    """accelerate launched with DeepSpeed (`--use_deepspeed`, or `distributed_type: DEEPSPEED` in its
    config) is refused before any work: the stages accumulate, clip, step and checkpoint by
    themselves, which DeepSpeed's engine takes over (and without a GPU accelerate does not apply
    it). FSDP shards the weights, gradients and Adam state instead."""
    if launched_with("DEEPSPEED"):
        raise InputError("accelerate launch with DeepSpeed: the training stages do not run under DeepSpeed; "
                         "launch with --use_fsdp (or --config_file configs/accelerate/fsdp.yaml) to shard "
                         "the model, or with --multi_gpu for DDP")


def fsdp_requested(loop: LoopConfig) -> bool:
    """loop.fsdp, or accelerate launched with FSDP (`--use_fsdp`, or `distributed_type: FSDP` in its
    config: accelerate ignores that on the CPU, speechsum does not)."""
    return loop.fsdp or launched_with("FSDP")


class _AutocastForward:
    """The model's `target_logits` under the accelerator's autocast: what `accelerate.prepare` adds to
    a forward, for a sharded model that is not wrapped by it. Not the module's forward, which under
    FSDP is the root unit's (training/shard.py)."""

    def __init__(self, acc, model):
        self.acc, self.model = acc, model

    def __call__(self, *args, **kwargs):
        with self.acc.autocast():
            return self.model.target_logits(*args, **kwargs)


def resume_or_begin(run: Run, order: DataOrder, resume: bool) -> None:
    """Restore the latest checkpoint (weights, optimizer, RNG, data position) or write the run
    files of a fresh run; then wrap the model for distributed training (DDP, or under FSDP the
    model sharded and the optimizer rebuilt on the shards) and open the logs. A stage reads
    `run.opt` after this call."""
    ckpt = latest_checkpoint(run.run_dir) if resume else None
    # whole weights (a sharded checkpoint is read after sharding, below); a skeleton receives rank 0's
    if ckpt is not None and not is_sharded_checkpoint(ckpt) and not run.skeleton:
        run.model.load_trainable(ckpt / "model")
    if fsdp_requested(run.cfg.loop) and run.acc.num_processes > 1:
        from speechsum.training.shard import shard_model

        run.skeleton_ranks = int(all_reduce_sum(run.acc, float(run.skeleton)))
        run.units = shard_model(run.model, run.acc.device)
        run.skeleton = False
        run.model.to(run.acc.device)  # the encoder (the shards are there already)
        run.params = [p for p in run.model.parameters() if p.requires_grad]
        run.opt = build_optimizer(run.params, run.cfg.optim)
        if run.main:
            run.log(f"fsdp: {len(run.units) - 2} decoder layers sharded over {run.acc.num_processes} ranks, "
                    "and the projector and the rest of the LLM (embedding, final norm, head) as two more units; "
                    f"{run.skeleton_ranks} rank(s) received their shards from rank 0 without reading the weights")
    if ckpt is not None:
        state = load_trainer_state(ckpt, run.model, run.opt, run.acc.process_index)
        run.step, order.position = state["step"], state["data_position"]
        if run.main:
            run.log(f"resumed from {ckpt} at step {run.step}" + resume_layout(state.get("world_size"),
                                                                           is_sharded_checkpoint(ckpt), run))
            truncate_metrics(run.run_dir, run.step)
    elif run.main:
        write_run_files(run.run_dir, run.cfg)
    run.model.train()
    if run.units:
        run.ddp_model = _AutocastForward(run.acc, run.model)
    else:
        run.ddp_model, run.opt = run.acc.prepare(run.model, run.opt)
    run.metrics = MetricsLog(run.run_dir, enabled=run.main)
    run.bar = progress(run.cfg.loop.max_steps, run.step, enabled=run.main)


def resume_layout(saved_world: int | None, sharded: bool, run: Run) -> str:
    """What the resume line adds when the checkpoint's layout is not the run's (empty when it is)."""
    ranks = run.acc.num_processes
    if sharded and (saved_world != ranks or not run.units):
        return (f" (sharded by {saved_world} ranks, read by {ranks}: the weights and optimizer state resharded; "
                "each rank's RNG state restored where the checkpoint has it)")
    if not sharded and run.units:
        return (f" (written whole by {saved_world or 'an unrecorded number of'} process(es), sharded over "
                f"{ranks} ranks: the weights and optimizer state cut to each rank's shards; each rank's RNG state "
                "restored where the checkpoint has it)")
    if not sharded and saved_world not in (None, ranks):
        return (f" (written by {saved_world} process(es), read by {ranks}: each rank's RNG state restored where "
                "the checkpoint has it)")
    return ""


def state_bytes(run: Run) -> int:
    """Bytes this rank holds of the model's weights, their gradients and the optimizer's state (the
    local shard of a sharded tensor): what FSDP divides over ranks, and what the resident set hides
    behind the allocator's cached memory."""
    from speechsum.training.shard import local

    params = list(run.model.parameters())
    grads = [p for p in params if p.requires_grad]  # a gradient each during the step (freed after it)
    tensors = [*params, *grads, *(v for st in run.opt.state.values() for v in st.values() if torch.is_tensor(v))]
    return sum(local(t).nbytes for t in tensors)


def rank_peak_rss_mb(acc) -> list[int]:
    """Each rank's peak resident set so far in MB (getrusage), in rank order (a collective with more
    than one process): what loading, sharding and the steps so far cost each rank's host memory."""
    import resource
    import sys

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
    peak = torch.tensor([kb / 1024], dtype=torch.float64, device=acc.device)
    peaks = acc.gather(peak) if acc.num_processes > 1 else peak
    return [round(float(x)) for x in peaks.cpu()]


def end_step(run: Run, order: DataOrder) -> None:
    """Checkpoint every `save_every` steps and at the last one: a sharded model by every rank, each
    writing its own shards; otherwise by the main process, the others waiting."""
    loop = run.cfg.loop
    if not run.state_logged:  # once a run, after its first step: what a rank holds (FSDP divides it)
        peaks = rank_peak_rss_mb(run.acc)  # every rank takes part
        if run.main:
            _atomic_write(run.run_dir / "memory.json", json.dumps({
                "step": run.step, "state_mb": round(state_bytes(run) / 2**20, 3), "ranks": run.acc.num_processes,
                "fsdp_units": len(run.units), "skeleton_ranks": run.skeleton_ranks,
                "peak_rss_mb_by_rank": peaks}) + "\n")
        run.state_logged = True
    if run.step % loop.save_every == 0 or run.step == loop.max_steps:
        trainer_state = {"data_position": order.position, "world_size": run.acc.num_processes}
        if run.units:  # nothing gathered: rank 0 alone would need the whole weights and Adam state
            save_sharded_checkpoint(run.run_dir, run.step, run.model, run.opt, trainer_state, loop.keep_last)
        else:
            rngs = gather_rng_states(run.acc)  # every rank takes part
            if run.main:
                save_checkpoint(run.run_dir, run.step, run.model, optimizer_tensors(run.opt), trainer_state,
                                loop.keep_last, rng_by_rank=rngs)
        run.acc.wait_for_everyone()


class BestOnDev:
    """Model selection on a dev score: the starting model (step 0) and every checkpoint (or, with
    `every_checkpoint=False`, only the last step) are scored by `score(model)` (higher is better)
    and the best one is kept in `<run_dir>/best-step-N/`;
    `<run_dir>/select.json` records every score and the best step, written after the best folder is
    complete, so a kill never leaves it naming a partial folder and `--resume` goes on from it. The
    earlier step wins a tie: a stage that helps nothing on dev hands on its starting model.
    `margin` > 0: a later step is kept unless it scores more than `margin` below the best earlier
    score (a dev set of a few dozen items cannot tell apart smaller differences), so the final model
    is the latest step within `margin` of the best.
    Main process only; `load_best` loads the kept weights on every rank."""

    def __init__(self, run: Run, score, every_checkpoint: bool = True, margin: float = 0.0):
        self.run, self.score, self.every_checkpoint, self.margin = run, score, every_checkpoint, margin
        self.path = run.run_dir / "select.json"
        if run.step == 0 and run.main:  # a fresh run (nothing restored): no scores of an earlier one
            self.path.unlink(missing_ok=True)
            for old in run.run_dir.glob("best-step-*"):
                shutil.rmtree(old, ignore_errors=True)
        run.acc.wait_for_everyone()
        rec = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.scores: dict[int, float] = {int(k): v for k, v in rec.get("scores", {}).items()}
        self.best: int | None = rec.get("best")

    def due(self, step: int) -> bool:
        loop = self.run.cfg.loop
        return step not in self.scores and (step == 0 or step == loop.max_steps
                                            or (self.every_checkpoint and step % loop.save_every == 0))

    def __call__(self, step: int) -> None:
        """Score the current model at `step` (when due: 0, every save or not, the last step) and keep it if best."""
        run = self.run
        if not self.due(step):
            run.acc.wait_for_everyone()
            return
        model = run.model
        state = run.saved_state()
        value = None
        with run.full_params():  # every rank gathers; the main process alone scores (no collective inside)
            if run.main:
                was_training = model.training
                model.eval()
                value = float(self.score(model))
                model.train(was_training)
        if run.main:
            self.scores[step] = value
            run.metrics.log(step, dev_select=value)
            old = self.best
            earlier = [v for k, v in self.scores.items() if k != step]
            if old is None or value > max(earlier) - self.margin:
                model.save_pretrained(run.run_dir / f"best-step-{step:07d}", state=state)
                self.best = step
            _atomic_write(self.path, json.dumps({"scores": {str(k): v for k, v in sorted(self.scores.items())},
                                                 "best": self.best}, indent=1) + "\n")
            if old is not None and self.best != old:
                shutil.rmtree(run.run_dir / f"best-step-{old:07d}", ignore_errors=True)
        run.acc.wait_for_everyone()

    def load_best(self) -> int:
        """Load the best step's weights into the model on every rank; returns that step."""
        self.run.acc.wait_for_everyone()
        rec = json.loads(self.path.read_text())
        best = int(rec["best"])
        if best != self.run.step:
            self.run.model.load_trainable(self.run.run_dir / f"best-step-{best:07d}")
        return best


def should_log(run: Run) -> bool:
    return run.step % run.cfg.loop.log_every == 0 or run.step == run.cfg.loop.max_steps


def note_peaks(run: Run, key: str) -> None:
    """Add each rank's peak resident set so far (MB, rank order) to memory.json under `key`; every
    rank takes part."""
    peaks = rank_peak_rss_mb(run.acc)
    if run.main:
        path = run.run_dir / "memory.json"
        memory = json.loads(path.read_text()) if path.is_file() else {}
        _atomic_write(path, json.dumps({**memory, key: peaks}) + "\n")


def finish_run(run: Run, stage: str) -> Path:
    """Close the logs and save the final model to `<out_dir>/final` (what the next stage inits from).
    memory.json gains each rank's peak before the final save (all steps and checkpoints) and after
    it (the whole run: under FSDP the trained weights are gathered to rank 0 for it)."""
    run.bar.close()
    run.metrics.close()
    final = final_model_dir(run.run_dir)
    note_peaks(run, "peak_rss_mb_by_rank_before_final")
    state = run.saved_state()
    if run.main:
        run.model.save_pretrained(final, state=state)
        run.log(f"{stage}: done; final model in {final}")
    run.acc.wait_for_everyone()
    note_peaks(run, "peak_rss_mb_by_rank_end")
    return final
