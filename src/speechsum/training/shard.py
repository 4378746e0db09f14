"""FSDP for the stage loops: the LLM's decoder layers sharded over the ranks (PyTorch FSDP2,
`fully_shard`), everything outside them replicated.

What is sharded: each decoder layer is its own FSDP unit, so a rank holds 1/N of every layer's
weights (and, under LoRA, of the adapters and their optimizer state; under `llm_training: full`,
of the weights' gradients and Adam moments too). A layer's full weights exist only while it runs
(all-gathered before its forward and again before its backward; its gradient is reduce-scattered).

What is replicated: the projector, the embedding matrix, the final norm and the LM head. They are
used outside the layers' forwards (`SpeechLM.build_batch` looks the prompt up in the embedding,
the vocabulary read-out scores audio against it, the head runs only at target positions), so each
rank keeps them whole and their gradients are averaged after the backward (`average_grads`), as DDP
would. For the LLMs this project uses the layers are most of the weights: 86 % of Qwen2.5-7B's,
72 % of Qwen2.5-0.5B's (its 136M-parameter embedding is large next to its layers).

Decoding (on-policy samples, dev samples, selection) and saving need whole weights: `full_params`
gathers every layer on every rank (a collective: all ranks enter it together) and keeps them
gathered until it exits, so the code inside runs as on one rank and can be run by one rank alone.

Works on the CPU (gloo), which is how the tests check that 2 sharded ranks train exactly as 1 rank.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def decoder_layers(model) -> nn.ModuleList:
    """The LLM's stack of decoder layers (HF causal LMs keep them at `get_decoder().layers`)."""
    from speechsum.training.common import InputError

    layers = getattr(model.base_llm.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise InputError(f"loop.fsdp: {type(model.base_llm).__name__} has no decoder layers where speechsum "
                         "shards them (get_decoder().layers); train it without fsdp")
    return layers


def check_same_weights(model, device: torch.device) -> None:
    """Raise unless every rank holds the same trainable weights. `fully_shard` keeps each rank's own
    slice of what that rank has, so ranks that built different starting weights (a fresh LoRA or
    projector drawn with per-rank seeds) would train a patchwork; `start_run` builds them under one
    seed. (DDP instead broadcasts rank 0's weights; here that would put the whole model on each GPU
    and need the CPU tensors on a GPU-only backend.)"""
    import torch.distributed as dist

    with torch.no_grad():
        local = torch.zeros(2, dtype=torch.float64, device=device)
        for p in model.parameters():
            if p.requires_grad:
                x = p.detach().to(device, torch.float64)
                local += torch.stack([x.sum(), x.pow(2).sum()])
        lo, hi = local.clone(), local.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    if not torch.equal(lo, hi):
        raise RuntimeError("fsdp: the ranks built different starting weights (trainable weights' sums "
                           f"{lo.tolist()} to {hi.tolist()}); every rank must build the model under the same seed")


def shard_layers(model, device: torch.device) -> list[nn.Module]:
    """Shard each decoder layer of `model` (a SpeechLM, weights already loaded, the same on every
    rank) over all ranks of the default process group; returns the FSDP units. Each layer goes to
    `device` one at a time (only this rank's shard stays there); the rest of the model is moved by
    the caller. The optimizer must be built after this: the layers' parameters are replaced by
    sharded ones."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    check_same_weights(model, device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = []
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
        units.append(layer)
    return units


@contextlib.contextmanager
def full_params(units: list[nn.Module]):
    """Every unit's full weights on every rank until exit (all ranks must enter together). Inside,
    forwards run without any collective, so one rank alone may decode or score. Writes to the
    weights inside are not kept (the shards are what the optimizer steps)."""
    if not units:
        yield
        return
    for u in units:
        u.unshard()
        u.set_reshard_after_forward(False)
    try:
        yield
    finally:
        for u in units:
            u.set_reshard_after_forward(True)
            u.reshard()


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor: a sharded one's local shard, a plain one itself."""
    return t.to_local() if is_sharded(t) else t


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered whole (a collective), a plain one as it is."""
    return t.full_tensor() if is_sharded(t) else t


def like_param(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """`full` laid out as `param` is: this rank's shard of it for a sharded parameter (the layout
    FSDP gave the parameter), itself for a replicated one."""
    if not is_sharded(param):
        return full
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(full.to(param.device, param.dtype), param.device_mesh, param.placements)


def load_full_state(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full tensors into `module`'s parameters by name, sharded ones shard by shard (every rank
    calls it with the same `state`); a name `module` lacks is an error."""
    params = dict(module.named_parameters())
    missing = sorted(set(state) - set(params))
    if missing:
        raise KeyError(f"no parameter named {missing[0]} ({len(missing)} unknown names)")
    with torch.no_grad():
        for name, value in state.items():
            p = params[name]
            local(p).copy_(local(like_param(value, p)))


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """The global gradient norm over sharded and replicated parameters (a replicated gradient is the
    same on every rank, a sharded one is summed over its shards); gradients are scaled down to
    `max_norm` when it is exceeded. Returns the norm before clipping."""
    import torch.distributed as dist

    sharded, whole = [], []
    for p in params:
        if p.grad is not None:
            (sharded if is_sharded(p.grad) else whole).append(p.grad)
    dev = (sharded or whole)[0].device if (sharded or whole) else torch.device("cpu")
    squares = torch.zeros((), device=dev, dtype=torch.float64)
    for g in sharded:
        squares += local(g).double().pow(2).sum()
    dist.all_reduce(squares)  # the shards' squares summed over ranks; whole gradients counted once
    for g in whole:
        squares += g.double().pow(2).sum()
    norm = float(squares.sqrt())
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in sharded + whole:
            g.mul_(scale)
    return norm
