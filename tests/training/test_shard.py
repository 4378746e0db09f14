"""training/shard.py in one process (a 1-rank gloo group): what sharding keeps and what it refuses.
The 2-rank behaviour is in test_distributed.py."""

import pytest
import torch
from torch import nn

from speechsum.training import shard
from speechsum.training.common import InputError


@pytest.fixture
def one_rank_group(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _sharded_with_adam(model):
    """The tiny model in training mode, sharded over the 1-rank group, and AdamW over what it trains."""
    model.train()
    shard.shard_model(model, torch.device("cpu"))
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)


def _backward(model, frames=None):
    """One forward and backward of the sharded model on a clip (`frames`: fresh random ones)."""
    frames = frames or [torch.randn(40, model.encoder.dim)]
    with shard.gathered(model):
        out = model.target_logits(model.build_batch(model.audio_items(frames, ["summarize"], ["the budget"])))
        torch.nn.functional.cross_entropy(out.logits, out.targets).backward()


def test_a_model_without_decoder_layers_is_a_one_line_input_error():
    class NoLayers(nn.Module):
        def get_decoder(self):
            return nn.Linear(2, 2)

    class Model:
        base_llm = NoLayers()

    with pytest.raises(InputError, match="loop.fsdp: NoLayers has no decoder layers"):
        shard.decoder_layers(Model())
    from speechsum.training.common import compile_decoder_layers

    with pytest.raises(InputError, match=r"^loop.compile: NoLayers has no decoder layers.*without compile$"):
        compile_decoder_layers(Model())


def test_a_torch_without_the_fsdp2_features_used_is_a_one_line_input_error(monkeypatch):
    from torch.distributed.fsdp import FSDPModule

    shard.check_torch_fsdp()  # this torch has them
    monkeypatch.delattr(FSDPModule, "reset_iter_state")
    with pytest.raises(InputError, match=r"loop.fsdp: torch \S+ has no FSDPModule.reset_iter_state"):
        shard.check_torch_fsdp()


def test_sharding_keeps_the_weights_the_forward_and_loads_back(tiny_model, one_rank_group):
    model = tiny_model.train()
    torch.manual_seed(0)
    frames = [torch.randn(40, model.encoder.dim)]
    items = model.audio_items(frames, ["summarize"], ["the budget meeting on friday"])
    before = model.target_logits(model.build_batch(items)).logits.detach()
    state = {k: v.clone() for k, v in model.trainable_state().items()}

    units = shard.shard_model(model, torch.device("cpu"))
    assert units == [*shard.decoder_layers(model), model.projector, model]  # the root (the model) last
    # every weight is sharded but the frozen encoder's: the embedding and the head tied to it too
    names = [n for n, p in model.named_parameters() if not shard.is_sharded(p)]
    assert names and all(n.startswith("encoder.") for n in names)
    assert shard.is_sharded(model.base_llm.get_output_embeddings().weight)
    with shard.gathered(model):  # the root unit whole: build_batch looks the prompt up in the embedding
        assert not shard.is_sharded(model.base_llm.get_input_embeddings().weight)
        after = model.target_logits(model.build_batch(items)).logits.detach()
    assert shard.is_sharded(model.base_llm.get_input_embeddings().weight)  # no backward: resharded on exit
    torch.testing.assert_close(after, before)
    got = model.trainable_state()
    assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)

    # whole tensors in, this rank's shards out: a changed LoRA weight reads back as written
    name = next(k for k in state if "lora_B" in k)
    changed = {name: torch.full_like(state[name], 0.5)}
    shard.load_full_state(model, changed)
    assert torch.equal(model.trainable_state()[name], changed[name])
    with pytest.raises(KeyError, match="no parameter named nope"):
        shard.load_full_state(model, {"nope": torch.zeros(1)})

    # inside full_params every unit is whole: a forward there needs no collective
    with shard.full_params(units):
        assert not any(shard.is_sharded(p) for p in model.parameters())
        model.target_logits(model.build_batch(model.audio_items(frames, ["summarize"], ["the budget"])))
    assert all(shard.is_sharded(p) for u in units[:-1] for p in u.parameters())


def test_gradients_of_weights_used_outside_the_forward_reach_their_shards(tiny_dir, one_rank_group):
    # the full LLM trained: the embedding gets gradient from build_batch's lookup and from the head
    # tied to it, the projector from the audio; FSDP reduces them at the end of the backward
    import copy

    from tiny import tiny_speechlm

    model = tiny_speechlm(tiny_dir, llm_training="full").train()
    reference = copy.deepcopy(model)
    torch.manual_seed(0)
    frames = [torch.randn(40, model.encoder.dim)]

    def loss(m):
        out = m.target_logits(m.build_batch(m.audio_items(frames, ["summarize"], ["the budget meeting on friday"])))
        return torch.nn.functional.cross_entropy(out.logits, out.targets)

    loss(reference).backward()
    shard.shard_model(model, torch.device("cpu"))
    with shard.gathered(model):
        loss(model).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    expected = {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}
    assert grads.keys() == expected.keys()
    for n, g in grads.items():
        assert shard.is_sharded(g), n
        torch.testing.assert_close(shard.full_tensor(g), expected[n], msg=n)

    # align's CTC/feature terms alone (lm_weight 0): no layer runs, the projector's backward has
    # FSDP reduce the embedding's gradient too
    def feature(m):
        emb = m.base_llm.get_input_embeddings()
        audio = m.project(frames, readout=False)[0]
        return (audio.mean(0) - emb(torch.tensor([20, 21])).mean(0)).pow(2).sum()

    model.zero_grad(set_to_none=True)
    reference.zero_grad(set_to_none=True)
    feature(reference).backward()
    with shard.gathered(model):
        feature(model).backward()
    for n, p in reference.named_parameters():
        got = dict(model.named_parameters())[n].grad
        assert (got is None) == (p.grad is None), n
        if p.grad is not None:
            torch.testing.assert_close(shard.full_tensor(got), p.grad, msg=n)

    # a gradient that reached no layer and no projector is never reduced by FSDP: refused in one line
    with pytest.raises(InputError, match="loop.fsdp: the gradient of .*embed_tokens.weight reached no layer"):
        with shard.gathered(model):
            emb = model.base_llm.get_input_embeddings()
            emb(torch.tensor([1, 2])).sum().backward()


def test_grad_norm_over_sharded_and_whole_gradients_is_torchs(tiny_model, one_rank_group):
    model = tiny_model.train()
    shard.shard_model(model, torch.device("cpu"))
    whole = nn.Parameter(torch.ones(3))  # a parameter FSDP would have left whole
    params = [p for p in model.parameters() if p.requires_grad] + [whole]
    assert all(shard.is_sharded(p) for p in params[:-1])
    for i, p in enumerate(params):
        g = torch.full(p.shape, 0.01 * (i + 1))
        p.grad = shard.like_param(g, p)
    grads = [shard.full_tensor(p.grad).clone() for p in params]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    norm = shard.clip_grad_norm(params, 0.1)
    assert norm == pytest.approx(float(expected), rel=1e-6)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(shard.full_tensor(p.grad)) for p in params]))
    assert float(clipped) == pytest.approx(0.1, rel=1e-4)


def test_a_sharded_checkpoint_is_atomic_loads_back_and_is_no_init(tiny_model, tmp_path, one_rank_group, monkeypatch):
    # save_sharded_checkpoint (what every FSDP rank calls) in a 1-rank group: the 2-rank layout and
    # resuming across world sizes are in test_distributed.py
    from speechsum.training import common

    model = tiny_model
    opt = _sharded_with_adam(model)
    torch.manual_seed(0)
    frames = [torch.randn(40, model.encoder.dim)]

    def step():
        _backward(model, frames)
        opt.step()
        opt.zero_grad(set_to_none=True)

    run = tmp_path / "run"
    step()
    common.save_sharded_checkpoint(run, 1, model, opt, {"data_position": 2}, keep_last=1)
    draws = torch.rand(3)  # what the RNG gives next, from the state the checkpoint holds
    weights = {k: v.clone() for k, v in model.trainable_state().items()}
    moments = {k: v.clone() for k, v in common.optimizer_tensors(opt)[1].items()}

    # killed in the middle of the next save, after the weights' shards were written
    real = shard.save_sharded

    def dying(model, opt, folder):
        real(model, opt, folder)
        raise KeyboardInterrupt

    step()
    monkeypatch.setattr(shard, "save_sharded", dying)
    with pytest.raises(KeyboardInterrupt):
        common.save_sharded_checkpoint(run, 2, model, opt, {"data_position": 4}, keep_last=1)
    ckpt = common.latest_checkpoint(run)
    assert ckpt.name == "step-0000001" and list((run / "checkpoints").glob(".step-0000002-*"))
    # a run folder whose latest checkpoint is sharded is no init (no whole model to load): one line
    with pytest.raises(InputError, match=r"^init=.*run: no final/, and its latest checkpoint \(step-0000001\) is shar"):
        common.resolve_init(str(run))

    # step 1 back, into a fresh optimizer: weights, Adam state, counters and the RNG exactly
    fresh = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    state = common.load_trainer_state(ckpt, model, fresh)
    assert (state["step"], state["data_position"], state["world_size"]) == (1, 2, 1)
    got = model.trainable_state()
    assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)
    got = common.optimizer_tensors(fresh)[1]
    assert got.keys() == moments.keys() and all(torch.equal(got[k], moments[k]) for k in moments)
    assert torch.equal(torch.rand(3), draws)

    # the next complete save replaces `latest`, prunes to keep_last and clears the killed save's folder
    monkeypatch.setattr(shard, "save_sharded", real)
    common.save_sharded_checkpoint(run, 2, model, fresh, {"data_position": 4}, keep_last=1)
    assert common.latest_checkpoint(run).name == "step-0000002"
    assert [p.name for p in (run / "checkpoints").iterdir() if p.is_dir()] == ["step-0000002"]


def test_file_plan_groups_tensors_up_to_the_file_size_in_order():
    state = {"a": torch.zeros(10), "b": torch.zeros(10), "c": torch.zeros(30), "d": torch.zeros(5)}  # 40, 40, 120, 20 B
    assert shard.file_plan(state, file_bytes=80) == {"a": 1, "b": 1, "c": 2, "d": 3}  # c alone: larger than a file
    assert shard.file_plan(state, file_bytes=1000) == {"a": 1, "b": 1, "c": 1, "d": 1}


def test_a_sharded_save_in_several_files_loads_back(tiny_model, tmp_path, one_rank_group):
    from speechsum.training import common

    # files of at most 4 KB of tensors: DCP builds each file in memory before writing it, so the
    # file size bounds what a save adds to a rank's memory; the reader takes every file of the folder
    model = tiny_model
    opt = _sharded_with_adam(model)
    _backward(model)
    opt.step()
    opt.zero_grad(set_to_none=True)
    groups = shard.save_sharded(model, opt, tmp_path, file_bytes=4096)
    files = {sub: sorted(p.name for p in (tmp_path / sub).glob("*.safetensors"))
             for sub in (shard.MODEL_SHARDS, shard.OPTIMIZER_SHARDS)}
    assert all(len(f) > 3 for f in files.values()), files
    weights = {k: v.clone() for k, v in model.trainable_state().items()}
    moments = {k: v.clone() for k, v in common.optimizer_tensors(opt)[1].items()}

    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.zero_()
    fresh = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    shard.load_sharded(model, fresh, tmp_path, groups)
    got = model.trainable_state()
    assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)
    got = common.optimizer_tensors(fresh)[1]
    assert got.keys() == moments.keys() and all(torch.equal(got[k], moments[k]) for k in moments)


def test_a_sharded_load_fills_an_empty_optimizer_even_where_gradients_are_held(tiny_model, tmp_path, one_rank_group):
    # torch initializes an empty optimizer's state only when no parameter holds a gradient: without
    # setting them aside, this load read no Adam state at all (and said nothing)
    from speechsum.training import common

    model = tiny_model
    opt = _sharded_with_adam(model)
    _backward(model)
    opt.step()
    groups = shard.save_sharded(model, opt, tmp_path)
    moments = common.optimizer_tensors(opt)[1]
    fresh = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    grads = {p: p.grad.clone() for p in model.parameters() if p.grad is not None}
    assert grads  # the gradients of the step are still there
    shard.load_sharded(model, fresh, tmp_path, groups)
    got = common.optimizer_tensors(fresh)[1]
    assert got.keys() == moments.keys() and all(torch.equal(got[k], moments[k]) for k in moments)
    assert all(p.grad is not None and torch.equal(p.grad, g) for p, g in grads.items())  # and kept


@pytest.mark.parametrize("sub", [shard.MODEL_SHARDS, shard.OPTIMIZER_SHARDS])
def test_a_damaged_shard_file_is_one_error_naming_its_folder(tiny_model, tmp_path, one_rank_group, sub):
    # DCP raised its CheckpointException (a BaseException quoting every rank's traceback), which no
    # input-error handler catches: resuming from a cut-off shard file was a page of tracebacks
    from speechsum.models.registry import ModelError

    model = tiny_model
    opt = _sharded_with_adam(model)
    _backward(model)
    opt.step()
    groups = shard.save_sharded(model, opt, tmp_path)
    f = sorted((tmp_path / sub).glob("*.safetensors"))[0]
    f.write_bytes(f.read_bytes()[:200])
    fresh = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with pytest.raises(ModelError, match=rf"{tmp_path / sub}: cannot be loaded into this model \(.*header") as e:
        shard.load_sharded(model, fresh, tmp_path, groups)
    assert "\n" not in str(e.value)
