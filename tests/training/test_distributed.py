"""2 CPU ranks (gloo, through `accelerate launch`) give the same result as 1 rank with the same
global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from tiny import save_tiny_models

from speechsum.models.speech_lm import SpeechLM


def _config(tmp_path, data, out, batch_size):
    enc, llm = save_tiny_models(tmp_path / "models")
    cfg = {
        "model": {"encoder": str(enc), "llm": str(llm), "stack": 4, "projector_hidden": 32, "lora_r": 4,
                  "lora_alpha": 8, "system_prompt": "you are a helpful assistant"},
        "data": {"path": str(data)},
        "optim": {"lr": 0.01, "warmup_steps": 1, "grad_accum": 2},
        "loop": {"out_dir": str(out), "max_steps": 2, "batch_size": batch_size, "save_every": 2, "bf16": False,
                 "eval_items": 1},
    }
    path = out.parent / f"{out.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_equal_one_rank(tmp_path, tiny_data):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    one = _config(tmp_path, tiny_data, tmp_path / "one", batch_size=2)
    two = _config(tmp_path, tiny_data, tmp_path / "two", batch_size=1)
    _run([sys.executable, "-m", "speechsum.cli", "train", "sft", "--config", str(one)], env)
    _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "speechsum.cli", "train", "sft",
          "--config", str(two)], env)
    loss = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()  # noqa: E731
                      if "loss" in json.loads(x)]
    torch.testing.assert_close(torch.tensor(loss(tmp_path / "two")), torch.tensor(loss(tmp_path / "one")),
                               atol=1e-5, rtol=1e-5)
    a = SpeechLM.from_pretrained(tmp_path / "one" / "final")
    b = SpeechLM.from_pretrained(tmp_path / "two" / "final")
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4, msg=n)
