"""The whole recipe in one run folder: synth -> align -> sft -> kd -> dpo.

    speechsum pipeline --config configs/pipeline/tiny.yaml [key=value ...]

Each stage reads its own YAML (the stage presets) and the pipeline rewires paths so the stages
chain inside `out_dir`: the data goes to `<out_dir>/data`, each training stage writes
`<out_dir>/<stage>` and starts from the previous stage's folder (`init`). A stage whose
`final/` exists is skipped; a stage with checkpoints is resumed; so re-running the command
continues where it stopped. `align: shipped` starts SFT from the connector committed in the
repository instead of running the alignment.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from speechsum.config import load_config

TRAIN_STAGES = ("align", "sft", "kd", "dpo")
STAGE_CLASSES = {
    "align": ("speechsum.training.align", "AlignConfig"),
    "sft": ("speechsum.training.sft", "SFTConfig"),
    "kd": ("speechsum.training.kd", "KDConfig"),
    "dpo": ("speechsum.training.dpo", "DPOConfig"),
}


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
    kd: str = "configs/kd/tiny.yaml"
    dpo: str = "configs/dpo/tiny.yaml"
    overrides: dict[str, list[str]] = field(default_factory=dict)
    """Extra dotted overrides per stage, e.g. {sft: [loop.max_steps=50]}."""


def run(cfg: PipelineConfig, log=print) -> dict[str, float]:
    """Run or resume every stage; returns wall seconds per stage run now (0 for skipped)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    data = Path(cfg.data) if cfg.data else out / "data"
    t = time.time()
    if cfg.synth and not cfg.data:
        from speechsum.data.synth import SynthConfig, synthesize

        if not (data / "train" / "manifest.parquet").is_file() or not (data / "test" / "manifest.parquet").is_file():
            synthesize(load_config(SynthConfig, cfg.synth, cfg.overrides.get("synth", [])), data)
    times["synth"] = time.time() - t
    prev = ""
    for stage in TRAIN_STAGES:
        path = getattr(cfg, stage)
        if stage == "align" and path == "shipped":
            prev = cfg.shipped_align
            log(f"pipeline: align: using the shipped connector {prev}")
            times[stage] = 0.0
            continue
        if not path:
            continue
        module_name, cls_name = STAGE_CLASSES[stage]
        module = importlib.import_module(module_name)
        stage_dir = out / stage
        wired = [f"loop.out_dir={stage_dir}", f"data.path={data}"] + ([f"init={prev}"] if prev else [])
        stage_cfg = load_config(getattr(module, cls_name), path, wired + cfg.overrides.get(stage, []))
        t = time.time()
        if (stage_dir / "final" / "speechlm_config.json").is_file():
            log(f"pipeline: {stage}: done earlier ({stage_dir / 'final'})")
        else:
            log(f"pipeline: {stage}: running ({path})")
            module.train(stage_cfg, resume=(stage_dir / "checkpoints" / "latest").is_file(), log=log)
        times[stage] = time.time() - t
        prev = str(stage_dir)
    log("pipeline: seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in times.items()))
    return times
