"""How far an LLM judge (`judge: llm` in DPO) agrees with the exact fact judge, and what it costs.

    .venv/bin/python bench/judge.py --pairs runs/tiny/dpo/preferences.jsonl --data runs/tiny/data \\
        [--judges qwen2.5-0.5b-instruct qwen2.5-1.5b-instruct] [--limit N]

The pairs are a fact-judged preference file (DPO's `preferences.jsonl` with `judge: facts`): for
each, the fact judge's chosen summary carries more of the document's facts or invents fewer names,
numbers and dates, so it is the reference verdict. Each LLM judge is asked the DPO rubric
(evaluation/judge.py, faithfulness first) twice per pair, the order swapped, exactly as DPO asks
it (`dpo.make_llm_ask` + `pairwise_verdict`), with the gold transcript of the item.

Per judge: agree (prefers the fact judge's chosen summary in both orders), disagree (prefers the
rejected one in both orders), inconsistent (the verdict follows the position: DPO drops the pair),
how often it answers "1" (position bias), and seconds per verdict (two asks). Prints a table and
writes JSON to bench/results/judge.json. No goal: the table tells which judge to trust for items
without known facts (real recordings), where the fact judge cannot run.
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
        out.append({"item": items[rec["id"]], "chosen": rec["pair"]["chosen"], "rejected": rec["pair"]["rejected"],
                    "reason": rec["pair"].get("reason", "")})
    return out[:limit] if limit else out


def run_judge(name: str, pairs: list[dict], ask=None) -> dict:
    """One judge's verdicts on `pairs` (`ask`: DPO's asker for the local judge `name` unless given)."""
    from speechsum.evaluation.judge import pairwise_verdict
    from speechsum.training.dpo import make_llm_ask

    t0 = time.perf_counter()
    ask = ask or make_llm_ask("llm", name)
    load_s = time.perf_counter() - t0
    answers: list[int | None] = []

    def logged(instruction, transcript, first, second):
        answers.append(ask(instruction, transcript, first, second))
        return answers[-1]

    verdicts = []
    t0 = time.perf_counter()
    for p in pairs:
        it = p["item"]
        verdicts.append(pairwise_verdict(lambda x, y: logged(it["instruction"], it["transcript"], x, y),
                                         p["chosen"], p["rejected"]))
    seconds = time.perf_counter() - t0
    n = len(pairs)
    return {"judge": name, "pairs": n, "agree": sum(v == "a" for v in verdicts) / n,
            "disagree": sum(v == "b" for v in verdicts) / n, "inconsistent": sum(v is None for v in verdicts) / n,
            "answers_1": sum(a == 1 for a in answers) / len(answers),
            "unparsed": sum(a is None for a in answers) / len(answers),
            "seconds_per_verdict": seconds / n, "load_seconds": load_s,
            "verdicts": ["agree" if v == "a" else "disagree" if v == "b" else "inconsistent" for v in verdicts]}


def main(argv=None) -> None:
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
    rows = [run_judge(j, pairs) for j in args.judges]
    print(f"\n{len(pairs)} fact-judged pairs from {args.pairs}; each LLM verdict = two asks, order swapped\n")
    print("| judge | agree | disagree | inconsistent (dropped) | answers '1' | s/verdict |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['judge']} | {r['agree']:.2f} | {r['disagree']:.2f} | {r['inconsistent']:.2f} | "
              f"{r['answers_1']:.2f} | {r['seconds_per_verdict']:.1f} |")
    write_result(args.out, {"pairs_file": args.pairs, "data": args.data, "n_pairs": len(pairs), "rows": rows,
                            "machine": machine_info(), "bench_seconds": round(time.perf_counter() - t_start, 1)})


if __name__ == "__main__":
    main()
