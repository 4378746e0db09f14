"""Batched generation throughput: SpeechLM's decoding loop vs HF `generate`, same LLM, same prompts.

    .venv/bin/python bench/generate.py [--llm smollm2-135m-instruct] [--new-tokens 64] [--batches 1 8]

Both decode greedily from the same left-padded text prompts (the LLM path of SpeechLM with
the transcript in place of audio), stop on eos / <|im_end|>, and are counted in *useful*
tokens: generated tokens up to and excluding the stop token. HF generate keeps finished rows
in the batch until the longest one ends; ours drops them. Both are measured with fp32 and bf16
weights, and bf16 weights with int8 single-row steps (`bfloat16+int8`, precision.py: what
`summarize` decodes with where bf16 is native; both loops run on the converted layers); greedy
outputs are compared within a dtype. Prints a table, writes JSON to
bench/results/generate.json. Goal from the foundation issue: >= 3x HF generate at batch 8.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

PROMPTS = [
    "Hi Dana, it's Marcus from facilities. We agreed to push the office move to Thursday the fourteenth. "
    "The budget stays at twelve thousand five hundred dollars. Please send the floor plan to Priya by Wednesday.",
    "Welcome to the weekly status call. The release slipped by two days because of the login bug. Ana owns the fix.",
    "In today's lecture we cover photosynthesis: light reactions in the thylakoid, then the Calvin cycle.",
    "Budget review: marketing spent forty thousand of its fifty thousand dollar quarter budget; travel is frozen.",
    "Interview notes: the candidate has eight years of Rust experience and led a team of five at a logistics firm.",
    "News brief: the city council approved the new bike lanes on Main Street, construction starts in March.",
    "Podcast: our guest explains why sleep matters for memory, and recommends seven to nine hours a night.",
    "Voicemail from Tom: the plumber comes Friday at nine, please leave the back door open and the dog inside.",
]
INSTRUCTIONS = ["Summarize this in one sentence.", "List the key points as bullets.", "Write a short title."]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llm", default="smollm2-135m-instruct")
    ap.add_argument("--encoder", default="whisper-base")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16", "bfloat16+int8"],
                    choices=["float32", "bfloat16", "bfloat16+int8"], help="weight dtypes to measure")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "generate.json"))
    args = ap.parse_args(argv)

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from speechsum.models.speech_lm import SpeechLM, SpeechLMConfig
    from speechsum.precision import set_int8_decoding

    rows = []
    for dtype_name in args.dtypes:
        torch.manual_seed(0)
        dtype = getattr(torch, dtype_name.removesuffix("+int8"))
        model = SpeechLM.from_config(SpeechLMConfig(encoder=args.encoder, llm=args.llm, llm_training="frozen"),
                                     dtype=dtype)
        model.eval()
        model.decode_bf16 = False  # the loop at the weights' own dtype (bf16 rows load bf16 weights)
        model.decode_int8 = dtype_name.endswith("+int8")
        set_int8_decoding(model.base_llm, model.decode_int8)  # HF generate runs on the same layers
        rows += measure(model, args, dtype_name)
    report(rows, args)
    return 0


def measure(model, args, dtype_name: str) -> list[dict]:
    tok, llm = model.tokenizer, model.base_llm
    rows = []
    for bsz in args.batches:
        texts = [PROMPTS[i % len(PROMPTS)] for i in range(bsz)]
        instrs = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(bsz)]
        items = model.text_items(texts, instrs)
        prompts = [segs[0].ids for segs in items]
        # HF generate on the same left-padded ids
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        tmax = max(map(len, prompts))
        ids = torch.tensor([[pad] * (tmax - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (tmax - len(p)) + [1] * len(p) for p in prompts])

        def run_hf():
            with torch.inference_mode():
                out = llm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.new_tokens,
                                   do_sample=False, eos_token_id=model.stop_ids, pad_token_id=pad)
            useful = []
            for row in out[:, tmax:].tolist():
                n = next((i for i, t in enumerate(row) if t in model.stop_ids), len(row))
                useful.append(row[:n])
            return useful

        def run_ours():
            return [g.ids for g in model.generate_items(items, max_new_tokens=args.new_tokens)]

        for name, fn in (("hf_generate", run_hf), ("speechsum", run_ours)):
            fn()  # warm-up
            best, outs = float("inf"), None
            for _ in range(args.repeats):
                t = time.perf_counter()
                outs = fn()
                best = min(best, time.perf_counter() - t)
            ntok = sum(map(len, outs))
            rows.append({"impl": name, "dtype": dtype_name, "batch": bsz, "seconds": round(best, 3), "useful_tokens": ntok,
                         "tokens_per_s": round(ntok / best, 1), "outputs": outs})  # noqa: E501
        hf, ours = rows[-2], rows[-1]
        hf["same_tokens_as_speechsum"] = hf["outputs"] == ours["outputs"]
    return rows


def report(rows: list[dict], args) -> None:
    print(f"\n{'impl':12} {'dtype':13} {'batch':>5} {'seconds':>8} {'tokens':>7} {'tok/s':>7} {'vs HF fp32':>10}")
    for r in rows:
        ref = next((x for x in rows if x["batch"] == r["batch"] and x["impl"] == "hf_generate"
                    and x["dtype"] == "float32"), None)  # None when float32 was not measured
        r["speedup_vs_hf_fp32"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 2) if ref else None
        vs = f"{r['speedup_vs_hf_fp32']:>9.2f}x" if ref else f"{'-':>10}"
        print(f"{r['impl']:12} {r['dtype']:13} {r['batch']:>5} {r['seconds']:>8.2f} {r['useful_tokens']:>7} "
              f"{r['tokens_per_s']:>7.1f} {vs}")
    same = all(r.get("same_tokens_as_speechsum", True) for r in rows)
    print(f"greedy outputs identical to HF generate: {same}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"llm": args.llm, "new_tokens": args.new_tokens, "torch_threads": torch.get_num_threads(),
              "machine": platform.machine(), "python": sys.version.split()[0], "torch": torch.__version__,
              "rows": [{k: v for k, v in r.items() if k != "outputs"} for r in rows],
              "greedy_identical": same}
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
