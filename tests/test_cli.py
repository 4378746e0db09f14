"""The `speechsum` CLI: one-line errors, exit codes, other files still processed."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
from tiny import speech, tiny_speechlm

from speechsum.cli import main


def test_bad_inputs_one_line_each_exit_2(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    sf.write(tmp_path / "silent.wav", np.zeros(1600, "float32"), 16000)
    code = main(["summarize", str(tmp_path / "missing.wav"), str(tmp_path), str(tmp_path / "notes.txt"),
                 str(tmp_path / "silent.wav")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 4 and all(line.startswith("speechsum: error: ") for line in err), err
    assert "missing.wav: no such file" in err[0] and "is a directory" in err[1]
    assert "not a readable audio file" in err[2] and "all silence" in err[3]


def test_good_files_still_processed_when_one_is_bad(tmp_path, tiny_dir, capsys):
    model = tiny_speechlm(tiny_dir)
    model.save_pretrained(tmp_path / "ckpt")
    sf.write(tmp_path / "a.wav", speech(1.5), 16000)
    sf.write(tmp_path / "b.flac", speech(2.5, start=3.0), 16000)
    code = main(["summarize", str(tmp_path / "a.wav"), str(tmp_path / "nope.wav"), str(tmp_path / "b.flac"),
                 "--model", str(tmp_path / "ckpt"), "--json", "--max-new-tokens", "4", "--style", "bullets"])
    out = capsys.readouterr()
    assert code == 2
    rows = [json.loads(line) for line in out.out.strip().splitlines()]
    assert [r["file"] for r in rows] == [str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]
    assert all(r["style"] == "bullets" and r["audio_seconds"] > 1 for r in rows)
    assert out.err.strip().splitlines() == [f"speechsum: error: {tmp_path / 'nope.wav'}: no such file"]


def test_summarize_takes_a_run_folder(tmp_path, tiny_dir, capsys):
    """--model runs/x/dpo (a stage's run folder) means its final/ model, as every stage's init does."""
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "run" / "final")
    sf.write(tmp_path / "a.wav", speech(1.5), 16000)
    code = main(["summarize", str(tmp_path / "a.wav"), "--model", str(tmp_path / "run"), "--json",
                 "--max-new-tokens", "3"])
    assert code == 0 and json.loads(capsys.readouterr().out)["file"] == str(tmp_path / "a.wav")


def test_summarize_int8_flag_sets_single_row_decoding(tmp_path, tiny_dir, capsys, monkeypatch):
    """--int8 (the default) / --no-int8 decide whether the bf16 decoding copy's single-row steps
    multiply by int8 weights; both decode the file."""
    import pytest

    import speechsum.cli as cli
    from speechsum.precision import Int8DecodeLinear, int8_decoding_available

    if not int8_decoding_available():
        pytest.skip("no torch._weight_int8pack_mm in this torch")

    model = tiny_speechlm(tiny_dir)
    model.decode_bf16 = True  # as where bf16 is native
    monkeypatch.setattr(cli, "load_speechlm", lambda _: model)
    sf.write(tmp_path / "a.wav", speech(1.5), 16000)
    for flags, want in (([], True), (["--no-int8"], False)):
        code = main(["summarize", str(tmp_path / "a.wav"), "--model", "x", "--json", "--max-new-tokens", "3", *flags])
        assert code == 0 and json.loads(capsys.readouterr().out)["file"] == str(tmp_path / "a.wav")
        assert model.decode_int8 is want
        layers = [m for m in model.decoding_llm().modules() if isinstance(m, Int8DecodeLinear)]
        assert layers and all(m.int8_on is want for m in layers)


def test_unknown_style_and_bad_model_are_one_line(tmp_path, capsys):
    sf.write(tmp_path / "a.wav", speech(1.0), 16000)
    assert main(["summarize", str(tmp_path / "a.wav"), "--style", "sonnet"]) == 2
    assert "--style sonnet: unknown style" in capsys.readouterr().err
    assert main(["summarize", str(tmp_path / "a.wav"), "--model", str(tmp_path)]) == 2
    assert "not a SpeechLM checkpoint" in capsys.readouterr().err
    assert main(["summarize", str(tmp_path / "a.wav"), "--repeat-stop", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "speechsum: error: --repeat-stop=1: expected 0 (off) or a number of copies >= 2")
    assert main(["summarize", str(tmp_path / "a.wav"), "--device", "gpu0"]) == 2
    assert capsys.readouterr().err.strip() == "speechsum: error: --device gpu0: not a device (auto, cpu, cuda or cuda:N)"
    assert main(["summarize", str(tmp_path / "a.wav"), "--device", "meta"]) == 2
    assert "--device meta: only cpu and cuda are supported" in capsys.readouterr().err
    assert main(["eval", "--model", "cascade", "--data", str(tmp_path), "--device", "cuda:x"]) == 2
    assert "--device cuda:x: not a device" in capsys.readouterr().err


def test_device_auto_is_the_cpu_without_a_gpu_and_cuda_is_refused_without_one(monkeypatch):
    import torch

    from speechsum.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device cuda:0: this machine has no CUDA GPU"):
        resolve_device("cuda:0")


def test_no_traceback_from_the_console_script(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "speechsum.cli", "summarize", str(tmp_path / "x.wav")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"speechsum: error: {tmp_path / 'x.wav'}: no such file"


def test_models_list_shows_every_name(capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    for name in ["smollm2-135m-instruct", "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct", "whisper-base",
                 "whisper-tiny.en", "minilm-l6"]:
        assert name in out


def test_the_cli_closes_a_process_group_a_command_opened(tmp_path, capsys):
    # under `accelerate launch` a stage opens a gloo group; main() must destroy it before exit,
    # or gloo's threads can abort the finished rank at interpreter teardown
    import torch.distributed as dist

    # a file rendezvous: no TCP port that another test or process could hold
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert main(["models", "list"]) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_models_fetch_unknown_name(capsys):
    assert main(["models", "fetch", "gpt-7"]) == 1
    assert "gpt-7: unknown model name" in capsys.readouterr().err


def test_overrides_after_options_reach_the_stage(monkeypatch):
    import speechsum.training.sft as sft

    seen = {}
    monkeypatch.setattr(sft, "train", lambda cfg, resume=False: seen.update(cfg=cfg, resume=resume))
    assert main(["train", "sft", "--config", "configs/sft/tiny.yaml", "loop.max_steps=3", "--resume",
                 "optim.lr=0.01"]) == 0
    assert seen["cfg"].loop.max_steps == 3 and seen["cfg"].optim.lr == 0.01 and seen["resume"]


def test_eval_compare_must_name_two_models(tmp_path, capsys):
    code = main(["eval", "--model", "runs/x/sft", "text:runs/x/teacher", "--data", str(tmp_path),
                 "--compare", "runs/x/sft:runs/x/kd"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--compare runs/x/sft:runs/x/kd" in err[0]


def test_eval_compare_accepts_lists_of_models(tmp_path, capsys):
    """A1,A2:B1,B2 parses as pooled sides; an entry that is not a --model is still the one-line error."""
    models = ["runs/s0/sft", "runs/s1/sft", "runs/s0/kd", "runs/s1/kd"]
    code = main(["eval", "--model", *models, "--data", str(tmp_path / "missing"),
                 "--compare", "runs/s0/sft,runs/s1/sft:runs/s0/kd,runs/s1/kd"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--compare" not in err[0]  # parsed; the data folder is what fails
    code = main(["eval", "--model", *models, "--data", str(tmp_path), "--compare", "runs/s0/sft,runs/s2/sft:runs/s0/kd"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--compare runs/s0/sft,runs/s2/sft:runs/s0/kd" in err[0]


@pytest.mark.parametrize("stage", ["align", "sft", "kd", "dpo"])
def test_deepspeed_launch_is_refused_in_one_line_before_any_work(stage, tmp_path, capsys, monkeypatch):
    # `accelerate launch --use_deepspeed` sets this; DeepSpeed's engine would take over the stage's
    # own accumulation, clipping, stepping and checkpoints
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    out = tmp_path / "run"
    assert main(["train", stage, "--config", f"configs/{stage}/tiny.yaml", f"loop.out_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DeepSpeed" in err[0] and "--use_fsdp" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("exc", [
    ValueError("model.stack=4 differs from the init checkpoint's 8"),  # raised deep in a stage
    FileExistsError(17, "File exists", "runs/out"),
])
def test_an_input_error_raised_anywhere_in_a_command_is_one_line(exc, monkeypatch, capsys):
    # `train` turned only two error kinds into one line; the rest (a broken clip mid-run, a model
    # that does not exist, a teacher with another vocabulary, ...) were tracebacks
    import speechsum.training.sft as sft

    from speechsum.models.registry import ModelError

    for e in (exc, ModelError("bogus: no such folder, and not a registry name")):
        monkeypatch.setattr(sft, "train", lambda cfg, resume=False, e=e: (_ for _ in ()).throw(e))
        assert main(["train", "sft", "--config", "configs/sft/tiny.yaml"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("speechsum: error: "), err
    assert err[0] == "speechsum: error: bogus: no such folder, and not a registry name"
    monkeypatch.setenv("SPEECHSUM_DEBUG", "1")  # the traceback on request
    with pytest.raises(ModelError):
        main(["train", "sft", "--config", "configs/sft/tiny.yaml"])


def test_an_os_error_names_its_file_without_errno():
    from speechsum.cli import one_line

    assert one_line(FileExistsError(17, "File exists", "runs/x")) == "runs/x: file exists"
    assert one_line(ValueError("first\nsecond")) == "first (SPEECHSUM_DEBUG=1 shows the rest)"


def test_a_closed_pipe_ends_quietly(monkeypatch, capsys):
    # `speechsum summarize a.wav b.wav --json | head -n1` raised BrokenPipeError with a traceback
    import speechsum.training.sft as sft

    monkeypatch.setattr(sft, "train", lambda cfg, resume=False: (_ for _ in ()).throw(BrokenPipeError()))
    assert main(["train", "sft", "--config", "configs/sft/tiny.yaml"]) == 141
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args,problem", [
    (["eval", "--limit", "-1"], "-1: expected >= 0"),
    (["eval", "--batch-size", "0"], "0: expected >= 1"),
    (["summarize", "a.wav", "--max-new-tokens", "0"], "0: expected >= 1"),
])
def test_counts_below_their_floor_are_usage_errors(args, problem, capsys):
    # eval --limit -70 scored the first 2 of 72 items; --max-new-tokens 0 printed an empty summary
    with pytest.raises(SystemExit) as e:
        main(args + (["--model", "x", "--data", "y"] if args[0] == "eval" else []))
    assert e.value.code == 2 and problem in capsys.readouterr().err


def test_summarize_refuses_a_window_shorter_than_a_part_can_be(tmp_path, capsys):
    # 1e-9 s made a billion parts (a hang); 0.3 s, shorter than --min-speech, said "no speech found"
    sf.write(tmp_path / "a.wav", speech(3.0), 16000)
    for w in ("1e-9", "0.3", "nan"):
        assert main(["summarize", str(tmp_path / "a.wav"), "--window-seconds", w]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"--window-seconds {float(w):g}" in err[0], err


def test_eval_finds_an_unknown_system_before_any_decoding(tmp_path, tiny_dir, capsys, monkeypatch):
    # `eval --model runs/x/dpo cascad` decoded every item with the first model, then said
    # "init=cascad: not a SpeechLM folder"
    import speechsum.evaluation.run_eval as run_eval

    from tiny import make_dataset

    data = make_dataset(tmp_path / "data", n_train=1, n_dev=1)
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "ckpt")
    monkeypatch.setattr(run_eval, "generate_speechlm", lambda *a, **k: pytest.fail("decoded before the check"))
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "cascad", "--data", str(data / "dev")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("speechsum: error: cascad: not a SpeechLM folder") and "cascade" in err[0]
    assert main(["eval", "--model", "text:nonexistent-llm", "--data", str(data / "dev")]) == 2
    assert "text:nonexistent-llm: nonexistent-llm: no such folder" in capsys.readouterr().err
    (tmp_path / "out").write_text("x")
    assert main(["eval", "--model", str(tmp_path / "ckpt"), "--data", str(data / "dev"), "--out", str(tmp_path / "out")]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "out").read_text() == "x"


def test_summarize_names_what_a_model_folder_lacks(tmp_path, tiny_dir, capsys):
    import shutil

    sf.write(tmp_path / "a.wav", speech(3.0), 16000)
    tiny_speechlm(tiny_dir).save_pretrained(tmp_path / "m")

    def run(folder):
        assert main(["summarize", str(tmp_path / "a.wav"), "--model", str(folder), "--max-new-tokens", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    shutil.copytree(tmp_path / "m", tmp_path / "text")
    (tmp_path / "text" / "projector.safetensors").unlink()  # was: "no speechlm_config.json", which is there
    assert "no projector.safetensors (a text-only model: use it as text:" in run(tmp_path / "text")
    shutil.copytree(tmp_path / "m", tmp_path / "noadapter")
    shutil.rmtree(tmp_path / "noadapter" / "adapter")  # was: the untrained LLM, silently
    assert "saved with llm_training=lora but has no adapter/adapter_config.json" in run(tmp_path / "noadapter")
    shutil.copytree(tmp_path / "m", tmp_path / "cut")
    proj = tmp_path / "cut" / "projector.safetensors"
    proj.write_bytes(proj.read_bytes()[:1000])  # was: safetensors' traceback
    assert f"{proj}: cannot be loaded into this model" in run(tmp_path / "cut")
    cfg = tmp_path / "m" / "speechlm_config.json"
    cfg.write_text("[1, 2]")  # was: AttributeError
    assert f"{cfg}: expected a JSON object" in run(tmp_path / "m")
