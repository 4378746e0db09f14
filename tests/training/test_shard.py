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


def test_a_model_without_decoder_layers_is_a_one_line_input_error():
    class NoLayers(nn.Module):
        def get_decoder(self):
            return nn.Linear(2, 2)

    class Model:
        base_llm = NoLayers()

    with pytest.raises(InputError, match="loop.fsdp: NoLayers has no decoder layers"):
        shard.decoder_layers(Model())


def test_sharded_layers_keep_the_weights_the_forward_and_load_back(tiny_model, one_rank_group):
    model = tiny_model.train()
    torch.manual_seed(0)
    frames = [torch.randn(40, model.encoder.dim)]
    items = model.audio_items(frames, ["summarize"], ["the budget meeting on friday"])
    before = model.target_logits(model.build_batch(items)).logits.detach()
    state = {k: v.clone() for k, v in model.trainable_state().items()}

    units = shard.shard_layers(model, torch.device("cpu"))
    assert len(units) == len(shard.decoder_layers(model))
    assert all(shard.is_sharded(p) for u in units for p in u.parameters())
    assert not any(shard.is_sharded(p) for p in model.projector.parameters())  # replicated
    after = model.target_logits(model.build_batch(items)).logits.detach()
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

    # inside full_params the layers are whole tensors: a forward there needs no collective
    with shard.full_params(units):
        assert not any(shard.is_sharded(p) for u in units for p in u.parameters())
        model.target_logits(model.build_batch(items))
    assert all(shard.is_sharded(p) for u in units for p in u.parameters())


def test_grad_norm_over_sharded_and_whole_gradients_is_torchs(tiny_model, one_rank_group):
    model = tiny_model.train()
    shard.shard_layers(model, torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    assert any(shard.is_sharded(p) for p in params) and not all(shard.is_sharded(p) for p in params)
    for i, p in enumerate(params):
        g = torch.full(p.shape, 0.01 * (i + 1))
        p.grad = shard.like_param(g, p)
    whole = [shard.full_tensor(p.grad).clone() for p in params]
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in whole]))
    norm = shard.clip_grad_norm(params, 0.1)
    assert norm == pytest.approx(float(expected), rel=1e-6)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(shard.full_tensor(p.grad)) for p in params]))
    assert float(clipped) == pytest.approx(0.1, rel=1e-4)
