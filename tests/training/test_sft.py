"""SFT stage on tiny in-code models: runs, changes only trainable weights, checkpoints, resumes exactly."""

import json
import shutil

import pytest
import torch
from tiny import save_tiny_models

from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig
from speechsum.training import common, sft


def tiny_cfg(tmp_path, data, **loop):
    enc, llm = save_tiny_models(tmp_path / "models")
    model = SpeechLMConfig(encoder=str(enc), llm=str(llm), stack=4, projector_hidden=32, lora_r=4, lora_alpha=8,
                           system_prompt="you are a helpful assistant")
    return sft.SFTConfig(
        model=model, data=sft.DataConfig(path=str(data)),
        optim=common.OptimConfig(lr=1e-2, warmup_steps=1),
        loop=common.LoopConfig(out_dir=str(tmp_path / "run"), max_steps=loop.pop("max_steps", 3), batch_size=2,
                               save_every=loop.pop("save_every", 2), keep_last=2, bf16=False, eval_items=2, **loop),
    )


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if "loss" in json.loads(line)]


def assert_same_training(a: tuple, b: tuple) -> None:
    """Two runs, each (final model folder, losses): the same losses and final weights to 1e-5."""
    torch.testing.assert_close(torch.tensor(b[1]), torch.tensor(a[1]), atol=1e-5, rtol=1e-5)
    first, second = (dict(SpeechLM.from_pretrained(r[0]).named_parameters()) for r in (a, b))
    for name, w in first.items():
        torch.testing.assert_close(second[name], w, atol=1e-5, rtol=1e-5)


def test_sft_runs_changes_trainable_only_and_saves(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, tiny_data)
    start = SpeechLM.from_config(cfg.model)
    start.save_pretrained(tmp_path / "start")  # train from exactly these weights (the projector is random)
    cfg.init = str(tmp_path / "start")
    final = sft.train(cfg, log=lambda *a: None)
    run = tmp_path / "run"
    assert all(torch.isfinite(torch.tensor(v)) for v in losses(run)) and len(losses(run)) == 3
    assert (run / "config.yaml").is_file() and (run / "run.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000002", "step-0000003"]
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-0000003"
    assert (run / "samples" / "step-0000003.jsonl").is_file()
    trained = SpeechLM.from_pretrained(final)
    before, after = dict(start.named_parameters()), dict(trained.named_parameters())
    changed = {n for n in after if n in before and not torch.equal(before[n], after[n])}
    assert any(n.startswith("projector.") for n in changed) and any("lora_B" in n for n in changed)
    assert not any(n.startswith("encoder.") for n in changed)
    assert not any("base_layer" in n or ("lora_" not in n and n.startswith("llm.")) for n in changed), changed


def test_activation_checkpointing_recomputes_the_same_losses_and_weights(tmp_path, tiny_data):
    runs = {}
    for ckpt in (False, True):
        cfg = tiny_cfg(tmp_path / str(ckpt), tiny_data, max_steps=3, activation_checkpointing=ckpt)
        runs[ckpt] = (sft.train(cfg, log=lambda *a: None), losses(tmp_path / str(ckpt) / "run"))
    assert_same_training(runs[False], runs[True])


def test_activation_checkpointing_is_on_in_training_only(tmp_path):
    cfg = tiny_cfg(tmp_path, tmp_path)
    model = SpeechLM.from_config(cfg.model)
    common.enable_activation_checkpointing(model)
    assert getattr(model.base_llm, "is_activation_checkpointing", None) or model.base_llm.is_gradient_checkpointing
    calls = []  # the layer's forward is checkpointed; its MLP starts again in each recompute
    model.base_llm.model.layers[0].mlp.register_forward_pre_hook(lambda mod, args: calls.append(args[0].shape[1]))
    batch = model.build_batch(model.audio_items([torch.randn(8, 16)], ["summarize"], [[5, 6, 7]]))
    model.train()
    model.target_logits(batch).logits.sum().backward()
    assert len(calls) == 2  # the forward and its recomputation in the backward
    calls.clear()
    model.eval()
    model.decode_bf16 = False  # decode on the checkpointed model itself, not a bf16 copy
    model.generate_items(model.audio_items([torch.randn(8, 16)], ["summarize"]), max_new_tokens=3)
    assert len(calls) == 3 and calls[0] > 1 and calls[1:] == [1, 1]  # the KV cache is kept in eval mode


def test_compiled_layers_train_the_same_losses_and_weights(tmp_path, tiny_data):
    # loop.compile (fp32 here: the compiled graph then computes what eager does, to float tolerance),
    # with the dev samples at the end decoded eagerly from the compiled model
    from torch._dynamo.utils import counters

    runs = {}
    for compiled in (False, True):
        graphs = counters["stats"]["unique_graphs"]
        cfg = tiny_cfg(tmp_path / str(compiled), tiny_data, max_steps=3, compile=compiled)
        runs[compiled] = (sft.train(cfg, log=lambda *a: None), losses(tmp_path / str(compiled) / "run"))
        assert (counters["stats"]["unique_graphs"] > graphs) == compiled  # the layers did run compiled
        assert (tmp_path / str(compiled) / "run" / "samples" / "step-0000003.jsonl").is_file()
    assert_same_training(runs[False], runs[True])


def test_compiled_layers_decode_eagerly(tmp_path):
    from torch._dynamo.utils import counters

    model = SpeechLM.from_config(tiny_cfg(tmp_path, tmp_path).model)
    common.compile_decoder_layers(model)
    model.train()
    model.target_logits(model.build_batch(model.audio_items([torch.randn(8, 16)], ["summarize"], [[5, 6, 7]]))
                        ).logits.sum().backward()
    graphs, frames = counters["stats"]["unique_graphs"], counters["frames"]["total"]
    assert graphs > 0
    model.eval()
    model.decode_bf16 = False  # decode on the compiled model itself, not a bf16 copy
    out = model.generate_items(model.audio_items([torch.randn(8, 16)], ["summarize"]), max_new_tokens=4)
    assert len(out) == 1
    assert (counters["stats"]["unique_graphs"], counters["frames"]["total"]) == (graphs, frames)  # nothing traced


def test_resume_continues_the_same_loss_curve(tmp_path, tiny_data):
    full = tiny_cfg(tmp_path / "a", tiny_data, max_steps=4, save_every=2)
    sft.train(full, log=lambda *a: None)
    reference = losses(tmp_path / "a" / "run")

    part = tiny_cfg(tmp_path / "b", tiny_data, max_steps=4, save_every=2)
    part.loop.max_steps = 2  # "killed" after step 2 (its checkpoint is complete)
    sft.train(part, log=lambda *a: None)
    part.loop.max_steps = 4
    sft.train(part, resume=True, log=lambda *a: None)
    resumed = losses(tmp_path / "b" / "run")
    assert len(resumed) == 4
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(reference), atol=1e-5, rtol=1e-5)


def test_a_run_folder_is_never_trained_over(tmp_path, tiny_data):
    # a second `train` into a finished run's folder without --resume replaced its checkpoints and
    # final/ and mixed both runs in metrics.jsonl; --resume with nothing to resume started afresh
    cfg = tiny_cfg(tmp_path, tiny_data, max_steps=2, save_every=1)
    run = tmp_path / "run"
    with pytest.raises(common.InputError, match="--resume: .* has no checkpoint to resume from"):
        sft.train(cfg, resume=True, log=lambda *a: None)
    sft.train(cfg, log=lambda *a: None)
    saved = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(common.InputError, match=r"already holds a run \(checkpoint step-0000002\): pass --resume"):
        sft.train(cfg, log=lambda *a: None)
    (run / "checkpoints" / "step-0000002" / "state.json").unlink()  # the latest checkpoint damaged
    saved.pop(run / "checkpoints" / "step-0000002" / "state.json")
    with pytest.raises(common.InputError, match="step-0000002, the latest checkpoint of .* is incomplete"):
        sft.train(cfg, resume=True, log=lambda *a: None)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == saved  # nothing written or deleted
    (tmp_path / "file").write_text("x")
    cfg.loop.out_dir = str(tmp_path / "file")
    with pytest.raises(common.InputError, match="exists and is not a folder"):
        sft.train(cfg, log=lambda *a: None)


def test_resuming_from_a_damaged_checkpoint_names_the_file(tmp_path, tiny_data):
    # a truncated weight or optimizer file was safetensors' traceback
    from speechsum.models.registry import ModelError

    cfg = tiny_cfg(tmp_path, tiny_data, max_steps=1, save_every=1)
    sft.train(cfg, log=lambda *a: None)
    ckpt = tmp_path / "run" / "checkpoints" / "step-0000001"
    cfg.loop.max_steps = 2
    adapter = ckpt / "model" / "adapter" / "adapter_model.safetensors"
    for damaged, named in ((adapter, adapter), (ckpt / "optimizer.safetensors", ckpt)):
        good = damaged.read_bytes()
        damaged.write_bytes(good[:100])
        with pytest.raises(ModelError, match=f"{named}: cannot be loaded"):
            sft.train(cfg, resume=True, log=lambda *a: None)
        damaged.write_bytes(good)


def test_a_missing_dev_split_is_said_and_an_empty_train_split_is_named(tmp_path, tiny_data):
    # data.dev_split=devv trained without any dev evaluation, silently; an empty train split (synth
    # with train.documents=0) was "ValueError: the dataset is empty", naming no folder
    cfg = tiny_cfg(tmp_path, tiny_data, max_steps=1)
    cfg.data.dev_split = "devv"
    said = []
    sft.train(cfg, log=said.append)
    assert any("no dev evaluation" in s and "devv" in s for s in said), said
    import pyarrow.parquet as pq

    empty = tmp_path / "empty"
    shutil.copytree(tiny_data, empty)
    table = pq.read_table(empty / "train" / "manifest.parquet")
    pq.write_table(table.slice(0, 0), empty / "train" / "manifest.parquet")
    cfg = tiny_cfg(tmp_path / "b", empty, max_steps=1)
    with pytest.raises(common.InputError, match=r"empty/train: no item with a target to train on"):
        sft.train(cfg, log=lambda *a: None)


def test_killed_save_leaves_latest_good(tmp_path, tiny_data, monkeypatch):
    cfg = tiny_cfg(tmp_path, tiny_data, max_steps=2, save_every=1)
    calls = {"n": 0}
    real = common.save_checkpoint

    def dying_save(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 2:  # die in the middle of writing the second checkpoint
            a[2].save_pretrained(a[0] / "checkpoints" / ".step-0000002-partial" / "model")
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(common, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        sft.train(cfg, log=lambda *a: None)
    run = tmp_path / "run"
    assert common.latest_checkpoint(run).name == "step-0000001"
    monkeypatch.setattr(common, "save_checkpoint", real)
    sft.train(cfg, resume=True, log=lambda *a: None)
    assert common.latest_checkpoint(run).name == "step-0000002"
    assert not list((run / "checkpoints").glob(".step-*"))


def test_nan_loss_stops_with_step_and_items(tmp_path, tiny_data, monkeypatch):
    cfg = tiny_cfg(tmp_path, tiny_data)
    real = sft.SpeechLM.target_logits if hasattr(sft, "SpeechLM") else SpeechLM.target_logits

    def nan_logits(self, batch):
        out = real(self, batch)
        out.logits = out.logits * float("nan")
        return out

    monkeypatch.setattr(SpeechLM, "target_logits", nan_logits)
    with pytest.raises(common.NonFiniteLoss, match=r"step 0: loss is nan on batch items \w+"):
        sft.train(cfg, log=lambda *a: None)


def test_init_inherits_config_and_refuses_shape_changes(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, tiny_data, max_steps=1)
    first = sft.train(cfg, log=lambda *a: None)
    model, eff = common.build_model(SpeechLMConfig(max_audio_tokens=500), str(tmp_path / "run"))
    assert eff.stack == 4 and eff.max_audio_tokens == 500 and model.config.max_audio_tokens == 500
    with pytest.raises(ValueError, match="model.stack=2 differs"):
        common.build_model(SpeechLMConfig(stack=2), str(first))


def test_text_mode_trains_a_teacher_that_loads_as_a_plain_causal_lm(tmp_path, tiny_data):
    """data.input=transcript: LoRA learns from the gold transcript, the encoder never runs, the
    projector is untouched; the run loads as an HF causal LM with the adapter merged, giving the
    same logits on the text-mode prompt as the SpeechLM itself (what KD's teacher and eval use)."""
    from speechsum.data.dataset import read_manifest
    from speechsum.models.text_lm import load_causal_lm
    from speechsum.training.teachers import LocalTeacher

    cfg = tiny_cfg(tmp_path, tiny_data, eval_every=0)
    cfg.data.input = "transcript"
    calls = []
    start_encode = SpeechLM.encode_audio
    SpeechLM.encode_audio = lambda self, clips: calls.append(len(clips)) or start_encode(self, clips)
    try:
        final = sft.train(cfg, log=lambda *a: None)
    finally:
        SpeechLM.encode_audio = start_encode
    assert calls == [] and all(torch.isfinite(torch.tensor(v)) for v in losses(tmp_path / "run"))
    trained = SpeechLM.from_pretrained(final)
    # between the step-2 checkpoint and the final step-3 model: LoRA moved, the projector did not
    mid = SpeechLM.from_pretrained(tmp_path / "run" / "checkpoints" / "step-0000002" / "model")
    before, after = dict(mid.named_parameters()), dict(trained.named_parameters())
    changed = {n for n in after if n in before and not torch.equal(before[n], after[n])}
    assert any("lora_B" in n for n in changed) and not any(n.startswith("projector.") for n in changed)

    item = [r for r in read_manifest(tiny_data / "train") if r["target"]][0]
    batch = trained.build_batch(trained.text_items([item["transcript"]], [item["instruction"]], [item["target"]]))
    expected = torch.log_softmax(trained.target_logits(batch).logits, -1)
    llm, tok = load_causal_lm(str(tmp_path / "run"), dtype=torch.float32)  # the run folder resolves to final/
    assert not any("lora" in n for n, _ in llm.named_parameters())
    teacher = LocalTeacher(llm, tok, cfg.model.system_prompt)
    got = teacher.score([item["transcript"]], [item["instruction"]], [trained.target_ids(item["target"])]).logp
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # a shipped text model keeps only the config and the adapter (no projector): still loads as text,
    # and refuses to load as a SpeechLM with an error that says how to use it
    import shutil

    shipped = tmp_path / "shipped"
    shutil.copytree(final, shipped)
    (shipped / "projector.safetensors").unlink()
    llm2, _ = load_causal_lm(str(shipped), dtype=torch.float32)
    got2 = LocalTeacher(llm2, tok, cfg.model.system_prompt).score(
        [item["transcript"]], [item["instruction"]], [trained.target_ids(item["target"])]).logp
    torch.testing.assert_close(got2, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match="no projector.safetensors .* text:"):
        SpeechLM.from_pretrained(shipped)


def test_unknown_input_kind_is_an_error():
    with pytest.raises(ValueError, match="data.input='video'"):
        sft.DataConfig(input="video")


def test_frozen_projector_stays_as_aligned(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, tiny_data, max_steps=2)
    start = SpeechLM.from_config(cfg.model)
    start.save_pretrained(tmp_path / "start")
    cfg.init, cfg.model = str(tmp_path / "start"), SpeechLMConfig(train_projector=False)
    trained = SpeechLM.from_pretrained(sft.train(cfg, log=lambda *a: None))
    before, after = dict(start.named_parameters()), dict(trained.named_parameters())
    changed = {n for n in after if n in before and not torch.equal(before[n], after[n])}
    assert changed and all("lora_" in n for n in changed), [n for n in changed if "lora_" not in n]


def test_nothing_trainable_is_an_error(tmp_path, tiny_data):
    cfg = tiny_cfg(tmp_path, tiny_data)
    cfg.model.train_projector, cfg.model.llm_training = False, "frozen"
    with pytest.raises(ValueError, match="nothing to train"):
        sft.train(cfg, log=lambda *a: None)


def test_length_sorted_micro_batches_give_the_same_update(tmp_path, tiny_data):
    """B x grad_accum 2 (the step's items sorted by length, then cut) == 2B x 1: the loss is the
    step's token sum over its token count however the items are grouped."""
    runs = {}
    for batch, accum in ((4, 1), (2, 2)):
        cfg = tiny_cfg(tmp_path / f"{batch}x{accum}", tiny_data, max_steps=2)
        cfg.loop.batch_size, cfg.optim.grad_accum = batch, accum
        runs[accum] = (sft.train(cfg, log=lambda *a: None), losses(tmp_path / f"{batch}x{accum}" / "run"))
    torch.testing.assert_close(torch.tensor(runs[2][1]), torch.tensor(runs[1][1]), atol=1e-5, rtol=1e-5)
    one, two = (dict(SpeechLM.from_pretrained(runs[a][0]).named_parameters()) for a in (1, 2))
    for name, w in one.items():
        torch.testing.assert_close(two[name], w, atol=1e-4, rtol=1e-4)  # Adam: see test_distributed
