"""Every YAML in configs/ parses into its stage's dataclass and starts with the command that runs it."""

import importlib
from pathlib import Path

import pytest

from speechsum.config import ConfigError, load_config

CONFIGS = Path(__file__).parents[1] / "configs"
CLASSES = {
    "align": ("speechsum.training.align", "AlignConfig"),
    "sft": ("speechsum.training.sft", "SFTConfig"),
    "synth": ("speechsum.data.synth", "SynthConfig"),
    "kd": ("speechsum.training.kd", "KDConfig"),
    "dpo": ("speechsum.training.dpo", "DPOConfig"),
    "pipeline": ("speechsum.pipeline", "PipelineConfig"),
}


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_parses(path):
    kind = path.relative_to(CONFIGS).parts[0]
    if kind == "accelerate":  # launcher configs, read by accelerate itself
        from accelerate.commands.config.config_args import load_config_from_file

        load_config_from_file(str(path))
        first = path.read_text().splitlines()[0]
        assert first.startswith(f"# accelerate launch --config_file configs/accelerate/{path.name} -m speechsum.cli ")
        return
    assert kind in CLASSES, f"no dataclass known for configs/{kind}/"
    module, name = CLASSES[kind]
    cls = getattr(importlib.import_module(module), name)
    load_config(cls, path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# speechsum "), f"{path}: first line must be the command that runs it"


def test_unknown_key_is_an_error(tmp_path):
    from speechsum.training.sft import SFTConfig

    p = tmp_path / "x.yaml"
    p.write_text("loop:\n  max_stepz: 3\n")
    with pytest.raises(ConfigError, match="loop.max_stepz: unknown key"):
        load_config(SFTConfig, p)
    with pytest.raises(ConfigError, match="optim.lr: expected a number"):
        load_config(SFTConfig, None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="optim.lr must be a number > 0"):
        load_config(SFTConfig, None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="optim.lr must be a number > 0, got nan"):  # NaN passed `lr <= 0`
        load_config(SFTConfig, None, ["optim.lr=nan"])
    with pytest.raises(ConfigError, match="loop.seed must be >= 0, got -1"):  # was numpy's error at the first step
        load_config(SFTConfig, None, ["loop.seed=-1"])
    with pytest.raises(ConfigError, match=r"data.max_items=-3: expected >= 0"):  # silently dropped the last 3 items
        load_config(SFTConfig, None, ["data.max_items=-3"])
    with pytest.raises(ConfigError, match="loop.activation_checkpointing: expected true/false, got 'maybe'"):
        load_config(SFTConfig, None, ["loop.activation_checkpointing=maybe"])
    from speechsum.training.dpo import DPOConfig

    with pytest.raises(ConfigError, match="greedy: 'bogus' is not one of 'off', 'candidate', 'anchor'"):
        load_config(DPOConfig, None, ["greedy=bogus"])
    assert load_config(DPOConfig, None, ["greedy=anchor"]).greedy == "anchor"
    # YAML reads a bare `off` as false; the option spelled that way is meant, in a file or an override
    assert load_config(DPOConfig, None, ["greedy=anchor", "greedy=off"]).greedy == "off"
    p.write_text("greedy: off\n")
    assert load_config(DPOConfig, p).greedy == "off"
    with pytest.raises(ConfigError, match="greedy: True is not one of"):
        load_config(DPOConfig, None, ["greedy=on"])  # no option is spelled "on"
    with pytest.raises(ConfigError, match="llm_min_margin must be >= 0, got -1.0"):
        load_config(DPOConfig, None, ["judge=llm", "llm_min_margin=-1"])
    with pytest.raises(ConfigError, match="llm_verdict=logprobs needs a local judge"):
        load_config(DPOConfig, None, ["judge=openai:http://127.0.0.1:8000/v1#m", "llm_verdict=logprobs"])
    cfg = load_config(SFTConfig, None, ["loop.max_steps=7", "model.stack=4"])
    assert cfg.loop.max_steps == 7 and cfg.model.stack == 4
    # YAML 1.1 reads 1e-4 (no dot) as a string; a float field takes it as the number users mean
    assert load_config(SFTConfig, None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    p.write_text("optim:\n  lr: 2e-5\n")
    assert load_config(SFTConfig, p).optim.lr == 2e-5
