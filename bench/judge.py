"""How far an LLM judge (`judge: llm` in DPO) agrees with the exact fact judge, and what it costs.

    .venv/bin/python bench/judge.py --pairs runs/tiny/dpo/preferences.jsonl --data runs/tiny/data \\
        [--judges qwen2.5-0.5b-instruct qwen2.5-1.5b-instruct] [--limit N]

The pairs are a fact-judged preference file (DPO's `preferences.jsonl` with `judge: facts`): for
each, the fact judge's chosen summary carries more of the document's facts or invents fewer names,
numbers and dates, so it is the reference verdict. Each LLM judge is asked the DPO rubric
(evaluation/judge.py, faithfulness first) twice per pair, the order swapped, exactly as DPO asks
it (`dpo.make_llm_verdict`), with the gold transcript of the item.

Per judge and verdict mode (`llm_verdict`): agree (picks the fact judge's chosen summary),
disagree (picks the rejected one), dropped (answers: the two written answers disagree, the verdict
follows the position; logprobs: zero evidence), how often it writes "1" (position bias), and
seconds per verdict (two asks). Prints a table and writes JSON to bench/results/judge.json. No
goal: the table tells which judge to trust for items without known facts (real recordings),
where the fact judge cannot run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import machine_info, write_result


def load_pairs(pairs_path: str, data: str, split: str, limit: int) -> list[dict]:
    """(item, chosen, rejected) records of the file's pairs, items from `data/split`."""
    from speechsum.training.sft import DataConfig, load_items

    items = {r["id"]: r for r in load_items(DataConfig(path=data), split)}
    out = []
    for line in Path(pairs_path).read_text().splitlines():
        rec = json.loads(line) if line.strip() else {}
        if not rec.get("pair"):
            continue
        if rec["id"] not in items:
            raise SystemExit(f"{pairs_path}: item {rec['id']} is not in {data}/{split}")
        out.append({"item": items[rec["id"]], "chosen": rec["pair"]["chosen"], "rejected": rec["pair"]["rejected"]})
    return out[:limit] if limit else out


def run_judge(name: str, pairs: list[dict], mode: str, backend=None) -> dict:
    """One judge's verdicts on `pairs` in one `llm_verdict` mode, through DPO's own
    `make_llm_verdict` (`backend`: the loaded local judge, shared by the modes)."""
    from speechsum.training.dpo import DPOConfig, make_llm_verdict

    cfg = DPOConfig(judge="llm", judge_model=name, llm_verdict=mode)
    verdict = make_llm_verdict(cfg, backend)
    t0 = time.perf_counter()
    verdicts = [verdict(p["item"]["instruction"], p["item"]["transcript"], p["chosen"], p["rejected"]) for p in pairs]
    seconds = time.perf_counter() - t0
    n = len(pairs)
    return {"judge": name, "mode": mode, "pairs": n, "agree": sum(v == "a" for v in verdicts) / n,
            "disagree": sum(v == "b" for v in verdicts) / n, "dropped": sum(v is None for v in verdicts) / n,
            "seconds_per_verdict": seconds / n,
            "verdicts": ["agree" if v == "a" else "disagree" if v == "b" else "dropped" for v in verdicts]}


class Recorder:
    """Wraps a local judge backend: records its written answers (for the position-bias column)."""

    def __init__(self, backend):
        self.backend, self.llm, self.tokenizer, self.answers = backend, backend.llm, backend.tokenizer, []

    def chat(self, conversations, max_new_tokens=8):
        out = self.backend.chat(conversations, max_new_tokens=max_new_tokens)
        self.answers += out
        return out


def main(argv=None) -> None:
    from speechsum.evaluation.judge import parse_preference
    from speechsum.models.text_lm import chat_backend

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", required=True, help="a fact-judged preferences.jsonl")
    ap.add_argument("--data", required=True, help="the dataset folder the pairs come from")
    ap.add_argument("--split", default="train")
    ap.add_argument("--judges", nargs="+", default=["qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct"])
    ap.add_argument("--limit", type=int, default=0, help="only the first N pairs")
    ap.add_argument("--out", default="bench/results/judge.json")
    args = ap.parse_args(argv)
    if not Path(args.pairs).is_file():
        raise SystemExit(f"--pairs {args.pairs}: no such file")
    t_start = time.perf_counter()
    pairs = load_pairs(args.pairs, args.data, args.split, args.limit)
    if not pairs:
        raise SystemExit(f"--pairs {args.pairs}: no pairs in the file")
    rows = []
    for name in args.judges:
        t0 = time.perf_counter()
        backend = Recorder(chat_backend(name))
        load_s = time.perf_counter() - t0
        for mode in ("answers", "logprobs"):
            rows.append({**run_judge(name, pairs, mode, backend), "load_seconds": load_s})
        rows[-2]["answers_1"] = sum(parse_preference(a) == 1 for a in backend.answers) / len(backend.answers)
        rows[-2]["unparsed"] = sum(parse_preference(a) is None for a in backend.answers) / len(backend.answers)
    print(f"\n{len(pairs)} fact-judged pairs from {args.pairs}; each LLM verdict = two asks, order swapped;")
    print("answers: its written digits must agree; logprobs: its log-odds of 1 vs 2 summed over both orders\n")
    print("| judge | verdict from | agree | disagree | dropped | answers '1' | s/verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ones = f"{r['answers_1']:.2f}" if "answers_1" in r else "-"
        print(f"| {r['judge']} | {r['mode']} | {r['agree']:.2f} | {r['disagree']:.2f} | {r['dropped']:.2f} | "
              f"{ones} | {r['seconds_per_verdict']:.1f} |")
    write_result(args.out, {"pairs_file": args.pairs, "data": args.data, "n_pairs": len(pairs), "rows": rows,
                            "machine": machine_info(), "bench_seconds": round(time.perf_counter() - t_start, 1)})


if __name__ == "__main__":
    main()
