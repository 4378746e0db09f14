"""FSDP for the stage loops: the SpeechLM sharded over the ranks (PyTorch FSDP2, `fully_shard`),
all of it but the frozen Whisper encoder.

What is sharded: each decoder layer is an FSDP unit, the projector is another, and the SpeechLM
itself is the root unit, which owns the rest of the LLM: the embedding matrix (with the LM head
tied to it, or an untied head) and the final norm. A rank holds 1/N of every unit's weights (on
dim 0: 1/N of the embedding's rows) and, where they train, of their gradients and Adam moments
(LoRA adapters live in the layers; `llm_training: full` trains the embedding and head as well).
The encoder is left out (`ignored_params`): it never trains and its frames are cached, so
sharding it would only add gathers.

When a unit is whole: a layer or the projector only while it runs, gathered by FSDP's own hooks
before its forward and again before its backward (its inputs never carry a gradient of its own
weights). The root unit cannot work that way, because the stages use its weights outside any
forward of its module: `SpeechLM.build_batch` looks the prompt up in the embedding before the LLM
runs, the vocabulary read-out and align's CTC and feature terms read the matrix, and the head runs
on target positions only. So `gathered` all-gathers it at the start of each micro-batch and it
stays whole through that micro-batch's backward, at whose end FSDP's callback (queued by the
backward hook of a layer or of the projector) reduce-scatters its gradients, all of them by then,
and reshards it. For the same reason the stages call `SpeechLM.target_logits`, never the root
module's forward: FSDP's hook there would register the reduction on the batch's input embeddings,
so it would run before the gradient of the lookup that made them (a projector inside the root
would even be freed before its backward). And FSDP takes for root the unit whose forward runs
first, while in training the layers and the projector run outside the root's forward: so
`shard_model` runs one token through that forward first.

Decoding (on-policy samples, dev samples, selection) and saving a model folder need whole weights:
`full_params` gathers every unit on every rank (a collective: all ranks enter it together) and
keeps them gathered until it exits, so the code inside runs as on one rank and can be run by one
rank alone. Resumable checkpoints need none of that: `save_sharded` has every rank write its own
shards of the trained weights and of the Adam state (torch.distributed.checkpoint), and
`load_sharded` reads them back on any number of ranks, one process without a process group too.

Loading: only rank 0 reads the weights. The other ranks build the LLM, its LoRA and the projector
on the meta device (`SpeechLM.from_config/from_pretrained(skeleton=True)`: shapes, no memory; the
small frozen encoder is real), and `shard_model` has rank 0 send every rank its shards
(`send_from_rank0`), so no rank but 0 ever holds the whole LLM.

Works on the CPU (gloo), which is how the tests check that 2 sharded ranks train exactly as 1 rank.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def is_sharded(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def decoder_layers(model, option: str = "fsdp") -> nn.ModuleList:
    """The LLM's stack of decoder layers (HF causal LMs keep them at `get_decoder().layers`);
    `option`: the loop option that needs them, named in the error when there are none."""
    from speechsum.training.common import InputError

    layers = getattr(model.base_llm.get_decoder(), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise InputError(f"loop.{option}: {type(model.base_llm).__name__} has no decoder layers where speechsum "
                         f"looks for them (get_decoder().layers); train it without {option}")
    return layers


def check_torch_fsdp() -> None:
    """Raise a one-line InputError unless this torch has the FSDP2 features the stages use: the public
    `fully_shard` with `ignored_params` (the encoder stays whole) and `FSDPModule.reset_iter_state`
    (see full_params). Only torch 2.13 is tested; pyproject's floor is for the single-process path."""
    from speechsum.training.common import InputError

    try:
        import inspect

        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError:
        FSDPModule = fully_shard = None
    missing = ("torch.distributed.fsdp.fully_shard" if fully_shard is None
               else "fully_shard(ignored_params=...)" if "ignored_params" not in inspect.signature(fully_shard).parameters
               else "FSDPModule.reset_iter_state" if not hasattr(FSDPModule, "reset_iter_state") else None)
    if missing:
        raise InputError(f"loop.fsdp: torch {torch.__version__} has no {missing}; FSDP needs a newer torch "
                         "(tested with 2.13), or train without fsdp")


def check_same_layout(model) -> None:
    """Raise unless every rank built the same parameters and buffers (names, shapes, dtypes): rank 0's
    weights are sent to the others tensor by tensor, and ranks that disagree would wait on each other
    forever instead."""
    import hashlib

    import torch.distributed as dist

    layout = [(n, tuple(t.shape), str(t.dtype)) for n, t in (*model.named_parameters(), *model.named_buffers())]
    digest = hashlib.sha256(repr(layout).encode()).hexdigest()
    digests = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"fsdp: the ranks built differently shaped models (layout digests {digests}); "
                           "every rank must build the model from the same config and init")


def send_from_rank0(model, full: dict[str, torch.Tensor] | None, device: torch.device) -> None:
    """Every parameter and buffer of `model` (sharded or not) set to rank 0's: `full` is rank 0's whole
    tensors by name, taken before sharding (None on the other ranks, whose model may be a meta-device
    skeleton: its meta tensors are allocated here first). A sharded parameter travels as its shards
    (rank 0 scatters; the others allocate one whole tensor at a time to receive into), a whole one by
    broadcast. Entries of `full` are dropped as they are sent, so rank 0's whole copy shrinks."""
    import itertools

    import torch.distributed as dist
    from torch.distributed.tensor import distribute_tensor

    for mod in model.modules():
        own = itertools.chain(mod._parameters.values(), mod._buffers.values())
        if any(t is not None and t.is_meta for t in own):
            mod.to_empty(device=device, recurse=False)
    with torch.no_grad():
        for name, t in (*model.named_parameters(), *model.named_buffers()):
            src = full.pop(name).to(device) if full is not None else torch.empty(t.shape, dtype=t.dtype, device=device)
            if is_sharded(t):
                local(t).copy_(distribute_tensor(src.to(t.dtype), t.device_mesh, t.placements, src_data_rank=0).to_local())
            else:
                dist.broadcast(src, 0)
                t.copy_(src)


def shard_model(model, device: torch.device) -> list[nn.Module]:
    """Shard `model` (a SpeechLM: rank 0's with its weights loaded, the others' the same or a meta-device
    skeleton of it; every rank ends with rank 0's weights) over all ranks of
    the default process group: each decoder layer, the projector, then the SpeechLM as the root
    unit (the encoder left out); returns the units, the root last. Each unit goes to `device` one at
    a time (only this rank's shard stays there); the encoder is moved by the caller. The optimizer
    must be built after this: the parameters are replaced by sharded ones."""
    import warnings

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from speechsum.models.speech_lm import Text

    check_torch_fsdp()
    check_same_layout(model)
    # rank 0's whole tensors, held until sent (the other ranks may have built a meta-device skeleton);
    # named_parameters and named_buffers list a tied weight once, under one name on every rank
    full = dict((*model.named_parameters(), *model.named_buffers())) if dist.get_rank() == 0 else None
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = []
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
        units.append(layer)
    units.append(fully_shard(model.projector, mesh=mesh, reshard_after_forward=True))
    # the projector returns its clips as views of one tensor; FSDP warns that an in-place write to
    # such a view would drop its backward hook, and nothing writes to them (build_batch scatters them
    # into a new tensor)
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPProjector\) returned a view")
    units.append(fully_shard(model, mesh=mesh, ignored_params=set(model.encoder.parameters())))
    send_from_rank0(model, full, device)
    # FSDP makes the unit whose forward runs first the root, which shares its end-of-backward
    # callback with the units inside it; in training the layers and the projector run outside the
    # SpeechLM's forward, so one token goes through that forward first (no gradient, no randomness)
    model.unshard()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(model.build_batch([[Text([model.end_of_turn_id])]]))
    model.train(was_training)
    model.reset_iter_state()  # resharded, and the forward forgotten (see full_params)
    # FSDP refills gathered weights in place and keeps their version counters: copies made from
    # them (decoding LLM, read-out caches) are dropped when the loop says so (`forget_copies`)
    model.copies_follow_writes = False
    return units


@contextlib.contextmanager
def gathered(model):
    """The root unit's weights (embedding, final norm, head) whole on every rank for one micro-batch's
    forward and backward (all ranks enter together: an all-gather). FSDP's end-of-backward callback
    reduce-scatters their gradients and reshards them; it is queued by the backward hook of a layer or
    of the projector, so a backward that reached neither while the root's weights got a gradient
    (align with lm_weight 0, a frozen projector and the LLM's embedding trained through the feature
    term) would lose it: that is refused."""
    from speechsum.training.common import InputError

    model.unshard()
    yield
    if is_sharded(model.base_llm.get_input_embeddings().weight):
        return
    stuck = [n for n, p in model.named_parameters() if p.grad is not None and not is_sharded(p)]
    if stuck:
        raise InputError(f"loop.fsdp: the gradient of {stuck[0]} reached no layer or projector FSDP could reduce "
                         "it with (align with lm_weight 0 and a frozen projector?); train it without fsdp")
    model.reshard()


@contextlib.contextmanager
def full_params(units: list[nn.Module]):
    """Every unit's full weights on every rank until exit (all ranks must enter together; `units` as
    `shard_model` returns them, the root last). Inside, forwards run without any collective, so one
    rank alone may decode or score. Writes to the weights inside are not kept (the shards are what
    the optimizer steps)."""
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
        # every unit resharded, and the forwards run inside forgotten: FSDP's backward prefetches each
        # unit's predecessor in the order of the forwards since the last backward, and these differ
        # between ranks (one rank scores alone; samples stop at different lengths), which would set
        # the ranks' next collectives apart
        units[-1].reset_iter_state()


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


# ------------------------------------------------------------------------------------ sharded checkpoints
# torch.distributed.checkpoint (DCP) with its safetensors storage: each rank writes one file per
# folder, `shard-0000{rank+1}-model-00001-of-00001.safetensors`, holding its local shards, with their
# offsets in the full tensors in the file's header (no pickled metadata file, unlike DCP's default
# storage), so the reader rebuilds every tensor's layout from the headers and cuts each into the
# loading ranks' shards: a checkpoint written by N ranks loads on M, or in one process whole.

MODEL_SHARDS, OPTIMIZER_SHARDS = "model-shards", "optimizer-shards"


def _dcp_state(model, opt: torch.optim.Optimizer) -> tuple[dict, dict, dict]:
    """(weights, moments, optimizer state dict) of `model` and `opt`, keyed by parameter name
    (`get_state_dict`: the same names sharded or not, so any world size reads them). weights: what
    `save_pretrained` writes (a tied head once, under the embedding's name); moments: the optimizer's
    tensors as `<parameter name>.<exp_avg|exp_avg_sq|step>`. Sharded tensors stay sharded (DTensors:
    no gather). An optimizer without state gets it (a step with zero gradients at lr 0), so that a
    load has tensors of the right shapes to read into."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    # torch makes an empty optimizer's state only where no parameter holds a gradient (it steps on
    # zero gradients); one left from a step would make a load read no optimizer state at all
    held = {p: p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None} if not opt.state else {}
    for p in held:
        p.grad = None
    try:
        msd, osd = get_state_dict(model, opt)
    finally:
        for p, grad in held.items():
            p.grad = grad
    saved = model.saved_parameter_names()
    weights = {k: v for k, v in msd.items() if k in saved}
    moments = {}
    for name, st in osd["state"].items():
        for k, v in st.items():
            if not torch.is_tensor(v):
                raise TypeError(f"optimizer state {name}.{k} is a {type(v).__name__}, not a tensor: "
                                "a sharded checkpoint writes tensors only")
            moments[f"{name}.{k}"] = v
    return weights, moments, osd


# tensors per checkpoint file, counted at their whole size: DCP's safetensors writer builds each file
# in memory before writing it (safetensors.torch.save: the tensors' bytes, then the file's), so a
# rank's save holds about twice its part of one file on top of its state. With one file per rank
# the last checkpoint was the largest moment of Qwen2.5-0.5B's full-LLM FSDP run (11.7 GB a rank);
# with files of 1 GB the save adds nothing to the steps' peak (10.4 GB; bench/fsdp.py)
FILE_BYTES = 1 << 30


def file_plan(state: dict, file_bytes: int = FILE_BYTES) -> dict[str, int]:
    """Parameter name -> file number (from 1): consecutive tensors grouped until a file would hold
    more than `file_bytes` of whole tensors (a tensor larger than that alone in its file). Every rank
    computes the same plan: sizes are the whole (global) tensors', in the state's order."""
    plan, index, size = {}, 1, 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()  # a DTensor's numel is the whole tensor's
        if size and size + nbytes > file_bytes:
            index, size = index + 1, 0
        plan[name] = index
        size += nbytes
    return plan


def save_sharded(model, opt: torch.optim.Optimizer, folder, file_bytes: int = FILE_BYTES) -> list[dict]:
    """Write this rank's shards of the model's trained weights to `folder/model-shards/` and of the
    optimizer's state to `folder/optimizer-shards/`, in files of at most `file_bytes` of whole
    tensors each (`file_plan`; each rank writes its own part of every file: `shard-0000<rank+1>-
    model-0000<i>-of-0000<n>.safetensors`). A collective: every rank calls it; a tensor every rank
    holds whole, such as Adam's step count, is written by one of them. Returns the optimizer's param
    groups (hyper-parameters, parameters by name) for the caller to store as JSON."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    weights, moments, osd = _dcp_state(model, opt)
    for sub, state in ((MODEL_SHARDS, weights), (OPTIMIZER_SHARDS, moments)):
        dcp.save(state, storage_writer=HuggingFaceStorageWriter(
            str(folder / sub), save_distributed=True, fqn_to_index_mapping=file_plan(state, file_bytes)))
    return osd["param_groups"]


def _last_line(e: BaseException) -> str:
    """The innermost error of a DCP failure: the last line of the ranks' tracebacks it quotes."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:200]


def load_sharded(model, opt: torch.optim.Optimizer, folder, param_groups: list[dict]) -> None:
    """The inverse of `save_sharded` into `model` and `opt` as they are laid out now (sharded over
    any number of ranks, or whole in one process: DCP cuts what each rank reads out of the saved
    shards). Every rank calls it; without a process group it reads alone."""
    import warnings

    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    from speechsum.models.registry import ModelError

    weights, moments, osd = _dcp_state(model, opt)
    with warnings.catch_warnings():
        if not dist.is_initialized():  # one process reading alone is the intent here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        for sub, state in ((MODEL_SHARDS, weights), (OPTIMIZER_SHARDS, moments)):
            try:
                dcp.load(state, storage_reader=HuggingFaceStorageReader(str(folder / sub)))
            except CheckpointException as e:  # a BaseException carrying every failed rank's traceback
                raise ModelError(f"{folder / sub}: cannot be loaded into this model ({_last_line(e)})") from e
    for key, v in moments.items():
        name, k = key.rsplit(".", 1)
        osd["state"][name][k] = v
    osd["param_groups"] = param_groups
    # strict=False: the weights hold the trained part of the model only (not the frozen encoder or LLM)
    set_state_dict(model, opt, model_state_dict=weights, optim_state_dict=osd, options=StateDictOptions(strict=False))
    model.forget_copies(frozen_too=True)  # the weights were written in place, behind any copy of them
