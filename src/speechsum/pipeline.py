"""The whole recipe in one run folder: synth -> align -> sft -> teacher -> kd -> dpo -> eval -> report.

    speechsum pipeline --config configs/pipeline/tiny.yaml [key=value ...]

Each stage reads its own YAML (the stage presets) and the pipeline rewires paths so the stages
chain inside `out_dir`: the data goes to `<out_dir>/data`, each training stage writes
`<out_dir>/<stage>` and starts from the previous stage's folder (`init`). A stage whose
`final/` exists is skipped; a stage with checkpoints is resumed; so re-running the command
continues where it stopped. `align: shipped` starts SFT from the connector committed in the
repository instead of running the alignment.

`teacher` (optional) is a text-mode SFT run (`data.input: transcript`) of the student's own LLM on
the same training data, started from the plain LLM; when set, KD's teacher is that run.
`teacher: shipped` uses the teacher committed in the repository (made by that same run) instead
of training it. Then
`eval` scores the stages and the baselines on `<data>/test` into `<out_dir>/eval` (skipped when
its metrics.json already has every system) and `report` writes `<out_dir>/report/index.html`.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from speechsum.config import load_config

TRAIN_STAGES = ("align", "sft", "teacher", "kd", "dpo")
SHIPPED = {"align": "shipped_align", "teacher": "shipped_teacher"}  # stage -> config field of its committed folder
STAGE_CLASSES = {
    "align": ("speechsum.training.align", "AlignConfig"),
    "sft": ("speechsum.training.sft", "SFTConfig"),
    "teacher": ("speechsum.training.sft", "SFTConfig"),
    "kd": ("speechsum.training.kd", "KDConfig"),
    "dpo": ("speechsum.training.dpo", "DPOConfig"),
}


@dataclass
class EvalStage:
    systems: list[str] = field(default_factory=list)
    """Systems scored on <data>/test: stage names (align, sft, kd, dpo: their run folders; teacher:
    the text-mode teacher reading the gold transcript), `untrained`, `cascade`, `text-teacher`, or
    anything `speechsum eval --model` takes. Empty: no eval stage."""
    limit: int = 0
    """Score only the first N test items (0: all)."""
    batch_size: int = 16
    """Items decoded together. On 2 cores a step of 16 rows costs what one of 8 does (SmolLM2, ~450-token
    prompts: 73 against 76 ms; 32 rows: 232 ms), so 16 cut the demo's eval from ~410 to ~320 s."""
    max_new_tokens: int = 128
    repeat_stop: int = 3
    """A looping answer stops at its first copy, as in `summarize` (0: off; models/generation.py)."""
    int8: bool = True
    """A single row's decoding steps multiply by int8 weights where bf16 is native, as in
    `summarize` (precision.py); false: bf16 weights throughout."""
    embeddings: bool = True
    """Score MiniLM similarity (needs the minilm-l6 weights)."""

    def __post_init__(self):
        from speechsum.models.generation import check_repeat_stop

        from speechsum.evaluation.run_eval import check_counts

        check_repeat_stop(self.repeat_stop)
        check_counts(self.limit, self.batch_size, self.max_new_tokens, prefix="eval.")


@dataclass
class PipelineConfig:
    out_dir: str = "runs/tiny"
    """Run folder holding data/ and one folder per stage."""
    synth: str = "configs/synth/tiny.yaml"
    """Synthetic data config ('' = use `data` as it is)."""
    data: str = ""
    """An existing dataset folder instead of synthesizing one."""
    align: str = "configs/align/tiny.yaml"
    """Alignment config, 'shipped' for the committed aligned connector, or '' to skip."""
    shipped_align: str = "checkpoints/tiny-align"
    """The committed aligned connector used when align: shipped."""
    sft: str = "configs/sft/tiny.yaml"
    teacher: str = ""
    """Text-mode SFT config of the KD teacher (configs/sft/tiny-teacher.yaml), 'shipped' for the
    committed one, or '' to use kd's `teacher`."""
    shipped_teacher: str = "checkpoints/tiny-teacher"
    """The committed text-mode teacher used when teacher: shipped."""
    kd: str = "configs/kd/tiny.yaml"
    dpo: str = "configs/dpo/tiny.yaml"
    eval: EvalStage = field(default_factory=EvalStage)
    report: bool = True
    """Write <out_dir>/report/index.html from the eval and the training logs."""
    overrides: dict[str, list[str]] = field(default_factory=dict)
    """Extra dotted overrides per stage, e.g. {sft: [loop.max_steps=50]}."""


def run(cfg: PipelineConfig, log=print) -> dict[str, float]:
    """Run or resume every stage; returns wall seconds per stage run now (0 for skipped)."""
    configured = {st for st in TRAIN_STAGES if getattr(cfg, st)}
    missing = [n for n in cfg.eval.systems if n in TRAIN_STAGES and n not in configured]
    if missing:  # found before hours of training, not after
        raise ValueError(f"eval.systems: {', '.join(missing)}: the pipeline runs no such stage")
    from speechsum.evaluation.run_eval import BASELINES

    unknown = [n for n in cfg.eval.systems if n not in TRAIN_STAGES and n not in BASELINES
               and not n.startswith("text:") and not Path(n).exists()]
    if unknown:
        raise ValueError(f"eval.systems: {unknown[0]}: not a stage ({', '.join(TRAIN_STAGES)}), a baseline "
                         f"({', '.join(BASELINES)}), text:LLM or an existing model folder")
    for stage, extra in cfg.overrides.items():
        if stage not in ("synth", *TRAIN_STAGES):
            raise ValueError(f"overrides.{stage}: no such stage (overrides apply to synth, {', '.join(TRAIN_STAGES)})")
        if extra and not getattr(cfg, stage):
            raise ValueError(f"overrides.{stage}: the pipeline runs no {stage} stage")
        if extra and getattr(cfg, stage) == "shipped":
            raise ValueError(f"overrides.{stage}: {stage} is 'shipped' (the committed folder), not trained here")
    for stage in TRAIN_STAGES:
        if getattr(cfg, stage) == "shipped" and stage not in SHIPPED:
            raise ValueError(f"{stage}: 'shipped' is only for {' and '.join(SHIPPED)}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    data = Path(cfg.data) if cfg.data else out / "data"
    plan = plan_stages(cfg, out, data)
    for st in plan:  # a stale stage folder is refused before the stages ahead of it run, not after
        if not st.shipped:
            check_stage_dir(Path(st.folder), st.cfg)
    t = time.time()
    if cfg.synth and not cfg.data:
        from speechsum.data.synth import SynthConfig, check_out_dir, synthesize

        synth_cfg = load_config(SynthConfig, cfg.synth, cfg.overrides.get("synth", []))
        if not (data / "train" / "manifest.parquet").is_file() or not (data / "test" / "manifest.parquet").is_file():
            synthesize(synth_cfg, data)
        else:  # a finished dataset of another synth preset is an error, not silently reused
            check_out_dir(synth_cfg, data)
    times["synth"] = time.time() - t
    # No encoding pass up front: each stage (and the eval) runs the frozen encoder on a clip the
    # first time it reads it and keeps the frames in <data>/encoder_cache for every later read. The
    # demo's stages read 279 of its 448 clips (251 for SFT's 288 items, KD's 240 and DPO's 96; 4 for
    # the dev samples; the 24 English test documents), so encoding everything first spent ~40 % of
    # its 214-273 s on clips no stage reads. Every clip is still read once first, so a missing or broken one stops the run
    # before any training, not in the middle of a stage.
    check_clips(data, log)
    for st in plan:
        if st.shipped:
            log(f"pipeline: {st.name}: using the shipped {st.folder}")
            times[st.name] = 0.0
            continue
        t = time.time()
        if (Path(st.folder) / "final" / "speechlm_config.json").is_file():
            log(f"pipeline: {st.name}: done earlier ({Path(st.folder) / 'final'})")
        else:
            log(f"pipeline: {st.name}: running ({getattr(cfg, st.name)})")
            st.module.train(st.cfg, resume=(Path(st.folder) / "checkpoints" / "latest").is_file(), log=log)
        times[st.name] = time.time() - t
    if cfg.eval.systems:
        t = time.time()
        run_eval_stage(cfg, data, out, {st.name: st.folder for st in plan}, log)
        times["eval"] = time.time() - t
    if cfg.report and (out / "eval" / "metrics.json").is_file():
        from speechsum.evaluation.report import build_report

        t = time.time()
        page = build_report(out)
        times["report"] = time.time() - t
        log(f"pipeline: report: {page}")
    log("pipeline: seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    return times


@dataclass
class PlannedStage:
    name: str
    folder: str
    """The stage's run folder (`<out_dir>/<stage>`), or the committed folder when shipped."""
    shipped: bool
    cfg: object = None
    """The resolved stage config, wired into the chain (None when shipped)."""
    module: object = None
    """The stage's module (its `train`)."""


def plan_stages(cfg: PipelineConfig, out: Path, data: Path) -> list[PlannedStage]:
    """Every configured training stage with its resolved config, wired so the stages chain inside
    `out`: each writes `<out>/<stage>` and starts from the previous stage's folder; the teacher
    starts from the plain LLM in text mode and becomes KD's teacher. Reads only the presets."""
    plan: list[PlannedStage] = []
    prev, folders = "", {}
    for stage in TRAIN_STAGES:
        path = getattr(cfg, stage)
        if not path:
            continue
        if path == "shipped":
            plan.append(PlannedStage(stage, getattr(cfg, SHIPPED[stage]), shipped=True))
        else:
            module_name, cls_name = STAGE_CLASSES[stage]
            module = importlib.import_module(module_name)
            wired = [f"loop.out_dir={out / stage}", f"data.path={data}"]
            if stage == "teacher":  # the student's LLM in text mode, from the plain LLM (not the chain)
                wired.append("data.input=transcript")
            elif prev:
                wired.append(f"init={prev}")
            if stage == "kd" and "teacher" in folders:
                wired.append(f"teacher={folders['teacher']}")
            stage_cfg = load_config(getattr(module, cls_name), path, wired + cfg.overrides.get(stage, []))
            plan.append(PlannedStage(stage, str(out / stage), shipped=False, cfg=stage_cfg, module=module))
        folders[stage] = plan[-1].folder
        if stage != "teacher":
            prev = plan[-1].folder
    return plan


def check_clips(data: Path, log) -> None:
    """Read every clip of the dataset's splits once (`load_audio`: missing, unreadable, truncated,
    empty, silent or non-finite audio is an `AudioError` naming the file). ~10 s for the demo's
    448 clips, against minutes of training lost to a broken clip found by a stage."""
    from speechsum.audio import load_audio
    from speechsum.data.dataset import read_manifest

    t = time.time()
    paths = sorted({str(split / r["audio"]) for split in sorted(data.iterdir())
                    if (split / "manifest.parquet").is_file() for r in read_manifest(split)})
    for path in paths:
        load_audio(path)
    log(f"pipeline: {len(paths)} clips read in {time.time() - t:.0f} s")


def check_stage_dir(stage_dir: Path, stage_cfg) -> None:
    """A stage folder trained (or begun) with another config is an error naming the first key
    that differs: resuming it, or taking its final model as done, would mix two recipes."""
    saved_path = stage_dir / "config.yaml"
    if not saved_path.is_file():
        return
    import yaml

    from speechsum.config import ConfigError, first_difference, to_dict
    from speechsum.training.common import stage_model_keys

    wanted = to_dict(stage_cfg)
    if stage_cfg.init:  # the saved model section is the init's, with the keys the stage sets on top (build_model)
        wanted["model"] = to_dict(stage_model_keys(stage_cfg.model))
    key = first_difference(yaml.safe_load(saved_path.read_text()) or {}, wanted)
    if key:
        raise ConfigError(f"{key}: {stage_dir} was trained with a different config; remove it (and the stages "
                          f"after it) or set another out_dir")


def eval_system_specs(systems: list[str], folders: dict[str, str]) -> list[str]:
    """Pipeline system names -> `speechsum eval` specs (stage names become their run folders)."""
    specs = []
    for name in systems:
        if name == "teacher":
            if "teacher" not in folders:
                raise ValueError("eval.systems names 'teacher' but the pipeline has no teacher stage")
            specs.append(f"text:{folders['teacher']}")
        elif name in folders:
            specs.append(folders[name])
        elif name in TRAIN_STAGES:
            raise ValueError(f"eval.systems names {name!r} but the pipeline did not run that stage")
        else:
            specs.append(name)
    return specs


def stage_comparisons(systems: list[str]) -> list[tuple[str, str]]:
    """The recipe's claims as pairs to compare on the same items: each model stage against the one
    before it (align -> sft -> kd -> dpo, those evaluated), then the last one against the cascade
    and the text LLM reading the gold transcript."""
    chain = [st for st in ("align", "sft", "kd", "dpo") if st in systems]
    pairs = list(zip(chain, chain[1:]))
    if chain:
        pairs += [(chain[-1], base) for base in ("cascade", "text-teacher") if base in systems]
    return pairs


def run_eval_stage(cfg: PipelineConfig, data: Path, out: Path, folders: dict[str, str], log) -> None:
    import json

    from speechsum.device import resolve_device
    from speechsum.evaluation.run_eval import decoding_settings, evaluate, system_names

    specs = eval_system_specs(cfg.eval.systems, folders)
    compare = [(specs[cfg.eval.systems.index(a)], specs[cfg.eval.systems.index(b)])
               for a, b in stage_comparisons(cfg.eval.systems)]
    metrics_file = out / "eval" / "metrics.json"
    if metrics_file.is_file():
        done = json.loads(metrics_file.read_text())
        if (set(system_names(specs)) <= set(done.get("systems", {})) and done.get("table")
                and len(done.get("deltas", [])) == len(compare)
                and all(done.get(k) == v for k, v in decoding_settings(
                    cfg.eval.max_new_tokens, cfg.eval.repeat_stop, cfg.eval.int8).items())):
            log(f"pipeline: eval: done earlier ({metrics_file})")
            log(done["table"])
            return
    log(f"pipeline: eval: {len(specs)} systems on {data / 'test'}")
    evaluate(specs, str(data / "test"), out=str(out / "eval"), limit=cfg.eval.limit,
             batch_size=cfg.eval.batch_size, max_new_tokens=cfg.eval.max_new_tokens,
             embeddings=cfg.eval.embeddings, compare=compare, repeat_stop=cfg.eval.repeat_stop, int8=cfg.eval.int8,
             device=resolve_device("auto"), log=log)  # the GPU the stages trained on, when there is one
