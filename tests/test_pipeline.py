"""`speechsum pipeline` chains the stages in one run folder and resumes finished ones."""

import pytest
import yaml
from tiny import save_tiny_models

from speechsum.config import ConfigError
from speechsum.models.generation import LOOP_RULE
from speechsum.pipeline import EvalStage, PipelineConfig, run


def test_pipeline_chains_and_skips_finished_stages(tmp_path, tiny_data, monkeypatch):
    enc, llm = save_tiny_models(tmp_path / "models")
    model = {"encoder": str(enc), "llm": str(llm), "stack": 4, "projector_hidden": 32, "lora_r": 4, "lora_alpha": 8,
             "system_prompt": "you are a helpful assistant"}
    loop = {"max_steps": 1, "batch_size": 2, "save_every": 1, "bf16": False, "eval_items": 1}
    stages = {
        "align": {"model": {**model, "llm_training": "frozen"}, "examples_per_doc": 1, "loop": loop},
        "sft": {"model": {"llm_training": "lora"}, "loop": loop},
        "teacher": {"model": {**model, "llm_training": "lora"}, "loop": loop},
        "kd": {"teacher": str(llm), "max_new_tokens": 4, "loop": loop},
        "dpo": {"num_samples": 2, "max_new_tokens": 4, "sample_temperature": 2.0, "judge": "facts", "loop": loop},
    }
    paths = {}
    for name, cfg in stages.items():
        p = tmp_path / f"{name}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        paths[name] = str(p)
    logs = []
    cfg = PipelineConfig(out_dir=str(tmp_path / "run"), synth="", data=str(tiny_data), **paths,
                         eval=EvalStage(systems=["sft", "dpo", "teacher"], max_new_tokens=3, embeddings=False))
    # the tiny data has no facts, so every DPO candidate ties under the fact judge: pairs may be empty;
    # judge those by length instead to exercise the whole chain
    import speechsum.training.dpo as dpo

    monkeypatch.setattr(dpo, "fact_judge", lambda item, texts, *a: ([len(t) for t in texts], ["len"] * len(texts)))
    # the tiny data has no test split: score its dev split as the test split
    import shutil

    data = tmp_path / "data-with-test"
    shutil.copytree(tiny_data, data)
    shutil.copytree(data / "dev", data / "test")
    cfg.data = str(data)
    times = run(cfg, log=logs.append)
    assert set(times) >= {"sft", "teacher", "kd", "dpo", "eval", "report"}
    cached = sorted((data / "encoder_cache").rglob("*.safetensors"))  # the clips the stages read, encoded once
    assert cached
    for stage in ("align", "sft", "teacher", "kd", "dpo"):
        assert (tmp_path / "run" / stage / "final" / "speechlm_config.json").is_file(), stage
    run_dir = tmp_path / "run"
    sft_cfg = yaml.safe_load((run_dir / "sft" / "config.yaml").read_text())
    assert sft_cfg["init"] == str(run_dir / "align") and sft_cfg["model"]["llm_training"] == "lora"
    teacher_cfg = yaml.safe_load((run_dir / "teacher" / "config.yaml").read_text())
    assert teacher_cfg["init"] == "" and teacher_cfg["data"]["input"] == "transcript"
    kd_cfg = yaml.safe_load((run_dir / "kd" / "config.yaml").read_text())
    assert kd_cfg["init"] == str(run_dir / "sft") and kd_cfg["teacher"] == str(run_dir / "teacher")
    import json

    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert list(metrics["systems"]) == ["sft", "dpo", "text:teacher"]
    assert [(d["from"], d["to"]) for d in metrics["deltas"]] == [("sft", "dpo")]
    assert (run_dir / "report" / "index.html").is_file()
    logs.clear()
    run(cfg, log=logs.append)
    assert sum("done earlier" in line for line in logs) == 6  # 5 training stages + eval
    assert sorted((data / "encoder_cache").rglob("*.safetensors")) == cached  # no clip encoded again
    assert metrics["repeat_stop"] == 3  # eval decodes as `summarize` does
    assert metrics["loop_rule"] == LOOP_RULE
    done = json.loads((run_dir / "eval" / "metrics.json").read_text())
    (run_dir / "eval" / "metrics.json").write_text(json.dumps({**done, "loop_rule": None}))  # an older stop rule
    logs.clear()
    run(cfg, log=logs.append)
    assert not any("pipeline: eval: done earlier" in line for line in logs)
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["loop_rule"] == LOOP_RULE
    logs.clear()
    cfg.eval.repeat_stop = 0  # another decoding: the finished eval no longer stands
    run(cfg, log=logs.append)
    assert not any("pipeline: eval: done earlier" in line for line in logs)
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["repeat_stop"] == 0
    assert metrics["int8_decoding"] is True  # as `summarize` decodes one row where bf16 is native
    logs.clear()
    cfg.eval.int8 = False  # bf16 weights throughout: again another decoding
    run(cfg, log=logs.append)
    assert not any("pipeline: eval: done earlier" in line for line in logs)
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["int8_decoding"] is False
    logs.clear()
    cfg.eval.max_new_tokens = 2  # a shorter cap decodes other answers: not done earlier either
    run(cfg, log=logs.append)
    assert not any("pipeline: eval: done earlier" in line for line in logs)
    assert json.loads((run_dir / "eval" / "metrics.json").read_text())["max_new_tokens"] == 2
    # a finished stage of another recipe is an error naming the key, before any work; nothing is removed
    cfg.overrides = {"kd": ["loop.max_steps=2"]}
    with pytest.raises(ConfigError, match=r"^loop\.max_steps: .*kd was trained with a different config"):
        run(cfg, log=logs.append)
    assert (run_dir / "kd" / "final" / "speechlm_config.json").is_file()
    cfg.overrides = {"kd": ["loop.max_steps=1"]}  # the key as it was: the run stands again
    logs.clear()
    run(cfg, log=logs.append)
    assert sum("done earlier" in line for line in logs) == 6
    # ... and refused up front: with SFT to re-run first, the stale KD folder stops the run before SFT trains
    shutil.rmtree(run_dir / "sft")
    cfg.overrides = {"kd": ["loop.max_steps=2"]}
    logs.clear()
    with pytest.raises(ConfigError, match=r"^loop\.max_steps: .*kd was trained"):
        run(cfg, log=logs.append)
    assert not (run_dir / "sft").exists() and not logs


def test_check_stage_dir_compares_only_the_model_keys_a_stage_sets_over_its_init(tmp_path):
    from speechsum.config import from_dict, save_config
    from speechsum.pipeline import check_stage_dir
    from speechsum.training.kd import KDConfig

    # as a stage saves it: the model section is the init checkpoint's config, with the stage's keys on top
    saved = from_dict(KDConfig, {"init": "runs/x/sft", "teacher": "t", "model": {"stack": 8, "train_projector": False}})
    save_config(saved, tmp_path / "config.yaml")
    check_stage_dir(tmp_path, from_dict(KDConfig, {"init": "runs/x/sft", "teacher": "t",
                                                   "model": {"train_projector": False}}))
    check_stage_dir(tmp_path, from_dict(KDConfig, {"init": "runs/x/sft", "teacher": "t"}))  # inherits it all
    with pytest.raises(ConfigError, match=r"^model\.train_projector: "):
        check_stage_dir(tmp_path, from_dict(KDConfig, {"init": "runs/x/sft", "teacher": "t",
                                                       "model": {"train_projector": True}}))
    with pytest.raises(ConfigError, match=r"^teacher: "):
        check_stage_dir(tmp_path, from_dict(KDConfig, {"init": "runs/x/sft", "teacher": "u"}))
    check_stage_dir(tmp_path / "none", saved)  # no folder yet: nothing to compare


def test_pipeline_refuses_a_finished_dataset_of_another_synth_preset(tmp_path, capsys):
    from speechsum.cli import main

    synth = tmp_path / "synth.yaml"
    synth.write_text(yaml.safe_dump({"train": {"documents": 2, "voices": ["espeak:en-us"]}}))
    data = tmp_path / "run" / "data"
    for split in ("train", "test"):
        (data / split).mkdir(parents=True)
        (data / split / "manifest.parquet").write_bytes(b"")  # finished, as far as the pipeline looks
    (data / "synth_config.yaml").write_text(yaml.safe_dump({"train": {"documents": 1, "voices": ["espeak:en-us"]}}))
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(yaml.safe_dump({"out_dir": str(tmp_path / "run"), "synth": str(synth), "align": "", "sft": "",
                                    "kd": "", "dpo": "", "report": False}))
    assert main(["pipeline", "--config", str(pipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.documents" in err[0] and "different config" in err[0], err
    assert (data / "synth_config.yaml").is_file()  # nothing removed


def test_stage_comparisons_follow_the_recipe():
    from speechsum.pipeline import stage_comparisons

    assert stage_comparisons(["align", "sft", "kd", "dpo", "cascade", "text-teacher", "teacher"]) == [
        ("align", "sft"), ("sft", "kd"), ("kd", "dpo"), ("dpo", "cascade"), ("dpo", "text-teacher")]
    assert stage_comparisons(["dpo", "sft", "cascade"]) == [("sft", "dpo"), ("dpo", "cascade")]
    assert stage_comparisons(["cascade", "text-teacher"]) == []


def test_eval_of_a_stage_not_run_is_a_one_line_error_before_any_work(tmp_path, capsys):
    from speechsum.cli import main

    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'run'}\nsynth: ''\ndata: {tmp_path}\nteacher: ''\n"
                   "eval:\n  systems: [sft, teacher]\n")
    assert main(["pipeline", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["speechsum: error: eval.systems: teacher: the pipeline runs no such stage"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra,problem", [
    ("eval:\n  systems: [sft, cascde]\n", "eval.systems: cascde: not a stage"),  # was found after SFT trained
    ("overrides:\n  sftt: [loop.max_steps=1000]\n", "overrides.sftt: no such stage"),  # was ignored
    ("overrides:\n  teacher: [loop.max_steps=5]\n", "overrides.teacher: teacher is 'shipped'"),
    ("eval:\n  limit: -1\n", "eval.limit=-1: expected >= 0"),  # was: the last test item dropped
])
def test_pipeline_config_mistakes_are_one_line_before_any_work(tmp_path, capsys, extra, problem):
    from speechsum.cli import main

    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'run'}\nsynth: ''\ndata: {tmp_path}\nteacher: shipped\n" + extra)
    assert main(["pipeline", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and problem in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_broken_clip_stops_the_pipeline_before_any_training(tmp_path, tiny_data, capsys):
    """Stages encode clips lazily, but every clip is read once up front: a truncated one is a
    one-line error naming it, and no stage folder is written."""
    import shutil
    from pathlib import Path

    from speechsum.cli import main
    from speechsum.data.dataset import read_manifest

    data = tmp_path / "broken"
    shutil.copytree(tiny_data, data)
    clip = data / "train" / read_manifest(data / "train")[-1]["audio"]
    clip.write_bytes(clip.read_bytes()[:64])  # cut inside the header
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"out_dir: {tmp_path / 'run'}\nsynth: ''\ndata: {data}\nalign: ''\nteacher: ''\nkd: ''\n"
                   f"dpo: ''\nsft: {Path(__file__).parents[1] / 'configs/sft/tiny.yaml'}\neval:\n  systems: [sft]\n")
    assert main(["pipeline", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"speechsum: error: {clip}:"), err
    assert not (tmp_path / "run" / "sft").exists()


def test_shipped_teacher_is_kds_teacher_and_is_not_trained(tmp_path, tiny_data, tiny_dir):
    """teacher: shipped wires the committed text-mode teacher into KD (no teacher stage runs);
    'shipped' for a stage that has no committed folder is an error before any work."""
    import pytest
    from tiny import tiny_speechlm

    student = tmp_path / "student"
    tiny_speechlm(tiny_dir).save_pretrained(student)
    kd = tmp_path / "kd.yaml"
    kd.write_text(yaml.safe_dump({"init": str(student), "teacher": "unused", "max_new_tokens": 4,
                                  "loop": {"max_steps": 1, "batch_size": 2, "save_every": 1, "bf16": False}}))
    cfg = PipelineConfig(out_dir=str(tmp_path / "run"), synth="", data=str(tiny_data), align="", sft="",
                         teacher="shipped", shipped_teacher=str(student), kd=str(kd), dpo="",
                         eval=EvalStage(systems=[]), report=False)
    logs = []
    run(cfg, log=logs.append)
    kd_cfg = yaml.safe_load((tmp_path / "run" / "kd" / "config.yaml").read_text())
    assert kd_cfg["teacher"] == str(student) and kd_cfg["init"] == str(student)
    assert not (tmp_path / "run" / "teacher").exists()
    assert f"pipeline: teacher: using the shipped {student}" in logs
    cfg.sft, cfg.out_dir = "shipped", str(tmp_path / "run2")
    with pytest.raises(ValueError, match="sft: 'shipped' is only for align and teacher"):
        run(cfg, log=logs.append)
