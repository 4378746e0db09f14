"""2 CPU ranks (gloo, through `accelerate launch`) give the same result as 1 rank with the same
global batch, for align, SFT, KD and DPO."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tiny import dev_with_facts, save_tiny_models

from speechsum.models.speech_lm import SpeechLM


def _config(tmp_path, data, out, batch_size, loop_steps: int = 2, llm_training: str = "lora", fsdp: bool = False,
            compile: bool = False, **stage):
    enc, llm = save_tiny_models(tmp_path / "models")
    cfg = {
        "model": {"encoder": str(enc), "llm": str(llm), "stack": 4, "projector_hidden": 32, "lora_r": 4,
                  "lora_alpha": 8, "system_prompt": "you are a helpful assistant", "llm_training": llm_training},
        "data": {"path": str(data)},
        "optim": {"lr": 0.01, "warmup_steps": 1, "grad_accum": 2},
        "loop": {"out_dir": str(out), "max_steps": loop_steps, "batch_size": batch_size, "save_every": 2, "bf16": False,
                 "fsdp": fsdp, "compile": compile, "eval_items": 1},
        **stage,
    }
    path = out.parent / f"{out.name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(cmd, env):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
# accelerate's FSDP flag (FSDP1 by default, which accelerate alone refuses on a CPU) and the shipped
# accelerate config: speechsum reads either as loop.fsdp and shards the decoder layers itself
FSDP = ["--use_fsdp"]
FSDP_CONFIG = ["--config_file", str(Path(__file__).parents[2] / "configs" / "accelerate" / "fsdp.yaml")]


def _launch(stage: str, config, *args: str, launch: list[str] = ("--multi_gpu",), ranks: int = 2) -> str:
    """`speechsum train STAGE` on `ranks` CPU ranks under `accelerate launch` (`launch`: its mode
    flags); returns what it printed."""
    return _run([sys.executable, "-m", "accelerate.commands.launch", *launch, "--num_processes", str(ranks),
                 "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "speechsum.cli", "train", stage,
          "--config", str(config), *args], ENV).stdout


def _one_and_two_ranks(tmp_path, data, stage: str, **stage_cfg) -> tuple[list[dict], list[dict]]:
    """Run `stage` on 1 rank x batch 2 and on 2 ranks x batch 1 (same global batch); returns both
    metric logs, after checking the final trainable weights are the same."""
    one = _config(tmp_path, data, tmp_path / "one", batch_size=2, **stage_cfg)
    two = _config(tmp_path, data, tmp_path / "two", batch_size=1, **stage_cfg)
    _run([sys.executable, "-m", "speechsum.cli", "train", stage, "--config", str(one)], ENV)
    _launch(stage, two)
    _assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final")
    return _metrics(tmp_path / "one"), _metrics(tmp_path / "two")


def _metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if "loss" in json.loads(x)]


def _assert_same_weights(one, two) -> None:
    a = SpeechLM.from_pretrained(one)
    b = SpeechLM.from_pretrained(two)
    # Adam divides each gradient by its own running RMS, so an element whose gradient is ~1e-9
    # (float noise of the all-reduce order) can move by a visible fraction of lr: weights are
    # compared to 1 % of one step (lr 0.01); the losses below are compared to 1e-5
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=n)


def _assert_same(one: list[dict], two: list[dict], *keys: str, n: int = 2) -> None:
    assert len(one) == len(two) == n
    for k in keys:
        torch.testing.assert_close(torch.tensor([r[k] for r in two]), torch.tensor([r[k] for r in one]),
                                   atol=1e-5, rtol=1e-5, msg=k)


def _vary_target_lengths(data) -> None:
    """Train targets of 3, 5, 7, ... tokens: a loss averaged per rank instead of over all ranks'
    tokens would make 2 ranks differ from 1."""
    from speechsum.data.dataset import read_manifest, write_manifest

    rows = read_manifest(data / "train")
    for i, r in enumerate(rows):
        r["target"] = " ".join(["the budget meeting"] + ["on friday"] * i)
    write_manifest(data / "train", rows)


@pytest.mark.slow
def test_two_ranks_equal_one_rank(tmp_path, tiny_data):
    # with the decoder layers compiled (`loop.compile`) on every rank: DDP's gradient hooks stay
    # outside the compiled layers (the other stages' 2-rank tests run eagerly)
    one, two = _one_and_two_ranks(tmp_path, tiny_data, "sft", compile=True)
    _assert_same(one, two, "loss")


def _tensor_bytes(path: Path) -> int:
    """The tensor data of a safetensors file: its size less the 8-byte length and the JSON header
    (which in a shard also lists each tensor's offset in the whole one)."""
    import struct

    with open(path, "rb") as f:
        header = struct.unpack("<Q", f.read(8))[0]
    return path.stat().st_size - 8 - header


@pytest.mark.slow
@pytest.mark.parametrize("llm_training,launch", [("lora", FSDP), ("full", FSDP_CONFIG)], ids=["lora", "full"])
def test_fsdp_two_ranks_equal_one_rank_and_resume(tmp_path, tiny_data, llm_training, launch):
    # the model sharded over 2 ranks (trained weights and Adam moments in halves; under `full` the
    # embedding/head train too, gathered for each micro-batch, their gradients reduce-scattered), the
    # run stopped after step 2 and resumed to step 4: the same losses and weights as 1 rank
    # uninterrupted. The step-2 checkpoint is sharded: each rank wrote its own halves of the weights
    # and Adam state (nothing gathered); resumed on 2 ranks, and on 1 process (DCP reading both ranks'
    # shards whole), it gives the uninterrupted run. Dev samples at the end are decoded from the
    # gathered model, and final/ is a whole model folder.
    import shutil

    _vary_target_lengths(tiny_data)
    one = _config(tmp_path, tiny_data, tmp_path / "one", batch_size=2, loop_steps=4, llm_training=llm_training)
    two = _config(tmp_path, tiny_data, tmp_path / "two", batch_size=1, loop_steps=4, llm_training=llm_training)
    _run([sys.executable, "-m", "speechsum.cli", "train", "sft", "--config", str(one)], ENV)
    _launch("sft", two, "loop.max_steps=2", launch=launch)

    ckpt, whole = tmp_path / "two" / "checkpoints" / "step-0000002", tmp_path / "one" / "checkpoints" / "step-0000002"
    files = sorted(str(f.relative_to(ckpt)) for f in ckpt.rglob("*") if f.is_file())
    shards = [f"shard-0000{r}-model-00001-of-00001.safetensors" for r in (1, 2)]
    assert files == sorted([*(f"{d}/{f}" for d in ("model-shards", "optimizer-shards") for f in shards),
                            "optimizer.json", "rng-rank0.safetensors", "rng-rank1.safetensors", "state.json"])
    assert json.loads((ckpt / "state.json").read_text())["world_size"] == 2
    # what each rank wrote, against the whole state 1 rank writes (weights + Adam moments and steps)
    whole_bytes = sum(map(_tensor_bytes, [*(whole / "model").rglob("*.safetensors"), whole / "optimizer.safetensors"]))
    rank_files = [[ckpt / d / shards[r] for d in ("model-shards", "optimizer-shards")] for r in (0, 1)]
    rank_bytes = [sum(map(_tensor_bytes, fs)) for fs in rank_files]
    rank_files = [sum(f.stat().st_size for f in fs) for fs in rank_files]
    msg = f"tensor bytes per rank {rank_bytes} (files {rank_files}) against {whole_bytes} written whole by 1 rank"
    assert sum(rank_bytes) == whole_bytes, msg  # every tensor written once, by one rank
    assert all(abs(b - whole_bytes / 2) <= 0.02 * whole_bytes for b in rank_bytes), msg
    shutil.copytree(tmp_path / "two", tmp_path / "on-one")
    shutil.copytree(tmp_path / "two", tmp_path / "on-ddp")

    _launch("sft", two, "--resume", launch=launch)
    assert (tmp_path / "two" / "samples" / "step-0000004.jsonl").is_file()
    _assert_same_weights(tmp_path / "one" / "final", tmp_path / "two" / "final")
    _assert_same(_metrics(tmp_path / "one"), _metrics(tmp_path / "two"), "loss", "grad_norm", n=4)
    memory = lambda d: json.loads((d / "memory.json").read_text())  # noqa: E731
    assert memory(tmp_path / "two")["state_mb"] < memory(tmp_path / "one")["state_mb"]  # a rank holds half of each layer
    assert memory(tmp_path / "two")["skeleton_ranks"] == 1  # rank 1 never read the LLM's weights
    for key in ("peak_rss_mb_by_rank", "peak_rss_mb_by_rank_before_final", "peak_rss_mb_by_rank_end"):
        assert len(memory(tmp_path / "two")[key]) == 2 and min(memory(tmp_path / "two")[key]) > 0, key
    peaks = [memory(tmp_path / "two")[k] for k in ("peak_rss_mb_by_rank", "peak_rss_mb_by_rank_before_final",
                                                   "peak_rss_mb_by_rank_end")]
    assert all(a <= b for x, y in zip(peaks, peaks[1:]) for a, b in zip(x, y))  # peaks so far never fall
    assert (tmp_path / "two" / "checkpoints" / "step-0000004" / "model-shards").is_dir()

    # the 2-rank checkpoint resumed in one process (the same global batch): DCP reads both ranks' shards
    out = _run([sys.executable, "-m", "speechsum.cli", "train", "sft", "--config", str(two), "--resume",
                f"loop.out_dir={tmp_path / 'on-one'}", "loop.batch_size=2"], ENV).stdout
    assert "sharded by 2 ranks, read by 1" in out
    _assert_same_weights(tmp_path / "one" / "final", tmp_path / "on-one" / "final")
    _assert_same(_metrics(tmp_path / "one"), _metrics(tmp_path / "on-one"), "loss", "grad_norm", n=4)
    assert (tmp_path / "on-one" / "checkpoints" / "step-0000004" / "model").is_dir()  # one process: whole again

    # a whole checkpoint (1 process) resumed on more ranks than wrote it: sharded over 2 FSDP ranks
    _run([sys.executable, "-m", "speechsum.cli", "train", "sft", "--config", str(one), "loop.max_steps=2",
          f"loop.out_dir={tmp_path / 'whole'}"], ENV)
    out = _launch("sft", two, "--resume", f"loop.out_dir={tmp_path / 'whole'}", launch=launch)
    assert "written whole by 1 process(es), sharded over 2 ranks" in out
    _assert_same_weights(tmp_path / "one" / "final", tmp_path / "whole" / "final")
    _assert_same(_metrics(tmp_path / "one"), _metrics(tmp_path / "whole"), "loss", "grad_norm", n=4)

    if llm_training == "lora":  # once: 4 processes on these 2 cores
        # the 2-rank sharded checkpoint on more ranks than wrote it: 4 FSDP ranks, 1 item each and no
        # accumulation (the same global batch of 4); DCP cuts each rank's quarter out of the halves
        shutil.copytree(tmp_path / "on-ddp", tmp_path / "on-four")
        out = _launch("sft", two, "--resume", f"loop.out_dir={tmp_path / 'on-four'}", "optim.grad_accum=1",
                      launch=launch, ranks=4)
        assert "sharded by 2 ranks, read by 4" in out
        _assert_same_weights(tmp_path / "one" / "final", tmp_path / "on-four" / "final")
        _assert_same(_metrics(tmp_path / "one"), _metrics(tmp_path / "on-four"), "loss", "grad_norm", n=4)

    # and resumed under DDP on 2 ranks (no FSDP: each rank reads every shard into its whole model)
    out = _launch("sft", two, "--resume", f"loop.out_dir={tmp_path / 'on-ddp'}")
    assert "sharded by 2 ranks, read by 2" in out
    _assert_same_weights(tmp_path / "one" / "final", tmp_path / "on-ddp" / "final")
    _assert_same(_metrics(tmp_path / "one"), _metrics(tmp_path / "on-ddp"), "loss", "grad_norm", n=4)
    assert (tmp_path / "on-ddp" / "checkpoints" / "step-0000004" / "model").is_dir()  # DDP saves whole


@pytest.mark.slow
def test_ddp_resume_gives_each_rank_its_own_dropout_stream_back(tmp_path, tiny_data):
    # with LoRA dropout, each rank draws its own masks (seed + rank); a whole checkpoint keeps every
    # rank's RNG state, so 2 DDP ranks stopped at step 2 and resumed continue the uninterrupted curve.
    # (When every rank restored rank 0's state, rank 1 drew rank 0's masks after the resume.)
    ref = _config(tmp_path, tiny_data, tmp_path / "ref", batch_size=1, loop_steps=4)
    cfg = yaml.safe_load(ref.read_text())
    cfg["model"]["lora_dropout"] = 0.5
    ref.write_text(yaml.safe_dump(cfg))
    _launch("sft", ref)
    _launch("sft", ref, "loop.max_steps=2", f"loop.out_dir={tmp_path / 'res'}")
    ckpt = tmp_path / "res" / "checkpoints" / "step-0000002"
    assert (ckpt / "model").is_dir() and (ckpt / "rng-rank1.safetensors").is_file()
    out = _launch("sft", ref, "--resume", f"loop.out_dir={tmp_path / 'res'}")
    assert "resumed from" in out and "read by" not in out  # same layout: no resharding line
    _assert_same(_metrics(tmp_path / "ref"), _metrics(tmp_path / "res"), "loss", "grad_norm", n=4)
    _assert_same_weights(tmp_path / "ref" / "final", tmp_path / "res" / "final")


def _two_rank_script(script: str, tmp_path) -> list[dict]:
    """Run `script` as ranks 0 and 1 of a gloo group (argv: rank, init method, tests folder, tiny
    models folder) and return the JSON each printed last, in rank order."""
    save_tiny_models(tmp_path / "models")
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(r), init, str(Path(__file__).parents[1]),
                               str(tmp_path / "models")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ENV) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:] + outs[1][1][-3000:]
    return [json.loads(out.splitlines()[-1]) for out, _ in outs]


SHARD_RANK = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from speechsum.training import close_process_group  # a barrier first: gloo can abort a rank torn down alone
from tiny import tiny_speechlm
from speechsum.training import shard
dist.init_process_group("gloo", init_method=sys.argv[2], rank=int(sys.argv[1]), world_size=2)
torch.manual_seed(0)
model = tiny_speechlm(Path(sys.argv[4]), llm_training="full")
shard.shard_model(model, torch.device("cpu"))
llm = model.base_llm
print(json.dumps({"tied": llm.get_output_embeddings().weight is llm.get_input_embeddings().weight, "rows": {
    n: [p.shape[0], shard.local(p).shape[0], shard.is_sharded(p)] for n, p in model.named_parameters()}}))
close_process_group()
"""


SKELETON_RANK = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from speechsum.training import close_process_group  # a barrier first: gloo can abort a rank torn down alone
from tiny import save_tiny_models
from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig
from speechsum.training import shard
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=sys.argv[2], rank=rank, world_size=2)
enc, llm = save_tiny_models(Path(sys.argv[4]))
cfg = SpeechLMConfig(encoder=str(enc), llm=str(llm), stack=4, projector_hidden=32, lora_r=4, lora_alpha=8,
                     system_prompt="you are a helpful assistant")
def build(skeleton, seed):
    torch.manual_seed(seed)  # the fresh LoRA and projector: a seed of their own on each rank
    return SpeechLM.from_config(cfg, skeleton=skeleton)
model = build(rank == 1, seed=rank)
meta = [n for n, p in model.named_parameters() if p.is_meta]
shard.shard_model(model, torch.device("cpu"))
reference = build(False, seed=0)  # what rank 0 built
ids = torch.tensor([[5, 6, 7, 8]])
with shard.full_params([model]), torch.no_grad():
    same = {n: torch.equal(shard.full_tensor(p), q) for (n, p), q in zip(model.named_parameters(), reference.parameters())}
    rotary = [torch.equal(b, dict(reference.named_buffers())[n]) for n, b in model.named_buffers()]
    logits_equal = torch.equal(model.base_llm(ids).logits, reference.base_llm(ids).logits)
print(json.dumps({"meta": meta, "names": list(same), "different": [n for n, ok in same.items() if not ok],
                  "buffers_equal": all(rotary), "logits_equal": logits_equal}))
close_process_group()
"""


LAYOUT_RANK = """
import json, sys
from pathlib import Path
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[3])
from speechsum.training import close_process_group  # a barrier first: gloo can abort a rank torn down alone
from tiny import tiny_speechlm
from speechsum.training import shard
rank = int(sys.argv[1])
dist.init_process_group("gloo", init_method=sys.argv[2], rank=rank, world_size=2)
model = tiny_speechlm(Path(sys.argv[4]), lora_r=4 if rank == 0 else 8)  # a rank with another config
try:
    shard.shard_model(model, torch.device("cpu"))
    print(json.dumps({"error": None}))
except RuntimeError as e:
    print(json.dumps({"error": str(e)}))
close_process_group()
"""


@pytest.mark.slow
def test_fsdp_ranks_that_built_different_models_are_refused_before_any_send(tmp_path):
    # without the layout check, rank 0 would scatter a (4, d) LoRA matrix into rank 1's (8, d) and the
    # ranks would fail or hang mid-send; both raise the same one-line error instead, and both exit
    ranks = _two_rank_script(LAYOUT_RANK, tmp_path)
    for r in ranks:
        assert r["error"] and "differently shaped models" in r["error"] and "\n" not in r["error"], r
    assert ranks[0]["error"] == ranks[1]["error"]


@pytest.mark.slow
def test_fsdp_rank1_builds_a_meta_skeleton_and_receives_rank0s_weights(tmp_path):
    # rank 1 reads no LLM weights (its LLM, LoRA and projector are on the meta device, the encoder is
    # real) and draws its fresh LoRA and projector under another seed; after sharding, both ranks hold
    # rank 0's weights and buffers exactly (gathered and compared with what rank 0 built)
    ranks = _two_rank_script(SKELETON_RANK, tmp_path)
    assert ranks[0]["meta"] == []
    assert ranks[1]["meta"] == [n for n in ranks[1]["names"] if not n.startswith("encoder.")]
    assert {n.split(".")[0] for n in ranks[1]["meta"]} == {"llm", "projector"}
    for r in ranks:
        assert r["different"] == [] and r["buffers_equal"] and r["logits_equal"], r


@pytest.mark.slow
def test_fsdp_shards_the_embedding_head_and_projector_rows_and_their_state(tmp_path, tiny_data):
    # 2 ranks: the embedding (the head tied to it), the final norm and the projector are sharded like
    # the layers, each rank holding half of their rows; only the frozen encoder stays whole
    ranks = _two_rank_script(SHARD_RANK, tmp_path)
    assert all(r["tied"] for r in ranks)
    rows = [r["rows"] for r in ranks]
    emb = next(n for n in rows[0] if n.endswith("embed_tokens.weight"))
    norm = next(n for n in rows[0] if n.endswith("model.norm.weight"))
    for name in [emb, norm, *(n for n in rows[0] if n.startswith("projector."))]:
        total = rows[0][name][0]
        assert [r[name][1] for r in rows] == [(total + 1) // 2, total // 2], name  # rank 0 the larger half
        assert all(r[name][2] for r in rows), name
    assert all(not sharded for n, (_, _, sharded) in rows[0].items() if n.startswith("encoder."))
    assert all(sharded for n, (_, _, sharded) in rows[0].items() if not n.startswith("encoder."))

    # the training state of each rank (weights, gradients, Adam moments) is half the 1-rank one, but
    # for the encoder's weights, whole on both
    one = _config(tmp_path, tiny_data, tmp_path / "one", batch_size=2, loop_steps=1, llm_training="full")
    two = _config(tmp_path, tiny_data, tmp_path / "two", batch_size=1, loop_steps=1, llm_training="full", fsdp=True)
    _run([sys.executable, "-m", "speechsum.cli", "train", "sft", "--config", str(one)], ENV)
    _launch("sft", two)
    state = lambda d: json.loads((d / "memory.json").read_text())["state_mb"]  # noqa: E731
    encoder = sum(p.nbytes for p in SpeechLM.from_pretrained(tmp_path / "one" / "final").encoder.parameters()) / 2**20
    assert state(tmp_path / "two") == pytest.approx(encoder + (state(tmp_path / "one") - encoder) / 2, rel=0.02)


@pytest.mark.slow
def test_fsdp_kd_samples_on_policy_from_the_gathered_layers(tmp_path, tiny_data):
    # on-policy samples need every layer whole on every rank: each rank samples its own items from
    # the gathered weights (no collective inside), then the layers go back to their shards
    _, llm = save_tiny_models(tmp_path / "models")
    cfg = _config(tmp_path, tiny_data, tmp_path / "two", batch_size=1, teacher=str(llm), lam=1.0, max_new_tokens=8)
    out = _launch("kd", cfg, "loop.fsdp=true")  # the config's switch, under a plain multi-process launch
    assert "fsdp: 2 decoder layers sharded over 2 ranks" in out
    rows = _metrics(tmp_path / "two")
    assert [r["on_policy"] for r in rows] == [1, 1] and all(r["completion_tokens"] > 0 for r in rows)
    SpeechLM.from_pretrained(tmp_path / "two" / "final")


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True])
def test_align_two_ranks_equal_one_rank(tmp_path, tiny_data, fsdp):
    # behaviour targets from the student's own LLM (rank 0 writes them into the data's cache first,
    # the other rank reads them) plus the feature term; the connector alone trains. The feature term
    # is a mean over each micro-batch's audio spans, so one audio span per example (one sentence, no
    # interleaving) makes 2 ranks x 1 example the same average as 1 rank x 2 examples
    one, two = _one_and_two_ranks(tmp_path, tiny_data, "align", examples_per_doc=2, feature_weight=0.5,
                                  max_sentences=1, interleave_prob=0.0, tasks=["transcribe", "title"], fsdp=fsdp)
    _assert_same(one, two, "loss", "feature")


@pytest.mark.slow
def test_kd_two_ranks_equal_one_rank(tmp_path, tiny_data):
    # Off-policy (lam=0): on-policy samples cannot match, because each rank draws its micro-batch's
    # tokens from one generator seeded by (seed, step, micro, rank), so splitting a micro-batch
    # over 2 ranks changes the random numbers every row gets. Everything downstream of the
    # completions (teacher scoring, divergence, SFT term, gradient averaging) is what is compared.
    _vary_target_lengths(tiny_data)
    _, llm = save_tiny_models(tmp_path / "models")
    one, two = _one_and_two_ranks(tmp_path, tiny_data, "kd", teacher=str(llm), lam=0.0, divergence="jsd",
                                  sft_weight=0.5)
    _assert_same(one, two, "loss", "completion_tokens")
    assert all(r["on_policy"] == 0 for r in one + two)


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [False, True])
def test_dpo_two_ranks_equal_one_rank(tmp_path, tiny_data, fsdp):
    # a given preference file, with chosen/rejected of different lengths per pair (the pair
    # sampling is rank 0's alone; this compares the training)
    eot = 4  # <|im_end|> in the tiny tokenizer
    pairs = tmp_path / "preferences.jsonl"
    pairs.write_text("".join(json.dumps({"id": f"train{i}-0", "pair": {
        "instruction": "summarize", "chosen_ids": list(range(20, 22 + 2 * i)) + [eot],
        "rejected_ids": list(range(40, 41 + i)) + [eot], "ref_chosen": -10.0 - i, "ref_rejected": -8.0 - i,
    }}) + "\n" for i in range(6)))
    # with dev selection at every checkpoint: scored by rank 0 alone (under FSDP from the gathered
    # layers, the other rank waiting), the best step's folder loaded back on every rank
    one, two = _one_and_two_ranks(tmp_path, dev_with_facts(tiny_data), "dpo", pairs=str(pairs), sft_weight=0.5,
                                  beta=0.1, fsdp=fsdp, select="best", select_max_new_tokens=6)
    _assert_same(one, two, "loss", "reward_margin", "reward_accuracy", "reward_chosen", "reward_rejected")
    select = lambda d: json.loads((d / "select.json").read_text())  # noqa: E731
    assert select(tmp_path / "one") == select(tmp_path / "two") and len(select(tmp_path / "one")["scores"]) == 2


def test_a_stage_called_from_python_closes_its_process_group_at_exit(tmp_path):
    # library use never reaches cli.main's `finally`; start_run registers the same close at exit
    script = f"""
import torch.distributed as dist
from speechsum.training import close_process_group_at_exit
dist.init_process_group("gloo", init_method="file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
real = dist.destroy_process_group
def destroy(*a, **k):
    print("destroyed", flush=True)
    real(*a, **k)
dist.destroy_process_group = destroy
close_process_group_at_exit()
close_process_group_at_exit()  # a second stage in the same process: still one close
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["destroyed"]
