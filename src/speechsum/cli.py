"""`speechsum` command line: one dispatch table, lazy imports inside each handler.

Errors a user can fix (bad input file, bad config, missing model) print one line
`speechsum: error: ...` on stderr and exit 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

EXIT_USAGE = 2
MIN_WINDOW_S = 1.0  # `summarize --window-seconds`: shorter parts are noise (and 1e-9 s would be a billion of them)


def at_least(low: int):
    """An argparse type: an int >= `low`."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"{value}: expected >= {low}")
        return value

    parse.__name__ = "int"  # argparse names the type in "invalid int value"
    return parse


def _quiet_hf() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def error(msg: str) -> None:
    print(f"speechsum: error: {msg}", file=sys.stderr)


# ---------------------------------------------------------------------------------------- models


def cmd_models(args) -> int:
    from speechsum.models import registry

    if args.action == "list":
        print(f"{'name':24} {'kind':19} {'size':>8}  {'licence':24} {'ready':5}  source")
        for s in registry.REGISTRY.values():
            ready = "yes" if registry.is_ready(s.name) else "no"
            wheels = s.wheels[0].package + (f" (+{len(s.wheels) - 1} parts)" if len(s.wheels) > 1 else "")
            print(f"{s.name:24} {s.kind:19} {s.size_mb:>5} MB  {s.licence:24} {ready:5}  "
                  f"hub {s.hub_id} | registry {wheels}=={s.wheels[0].version}")
        print(f"\ncache: {registry.home()}  (set SPEECHSUM_HOME to move it)")
        return 0
    names = args.names or (list(registry.REGISTRY) if args.action == "verify" else [])
    if not names:
        error("models fetch: name at least one model (see `speechsum models list`)")
        return EXIT_USAGE
    failed = 0
    for name in names:
        try:
            if args.action == "fetch":
                t = time.time()
                path = registry.fetch_model(name)
                print(f"{name}: ready at {path} ({registry.folder_size_mb(path):.0f} MB, {time.time() - t:.0f} s)")
            else:
                if not registry.is_ready(name) and not args.names:
                    print(f"{name}: not fetched (skipped)")
                    continue
                problems = registry.verify_model(name)
                print(f"{name}: " + ("ok" if not problems else "FAILED"))
                for p in problems:
                    error(p)
                failed += bool(problems)
        except registry.ModelError as e:
            error(str(e))
            failed += 1
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------- summarize


def load_speechlm(model: str | None):
    """A trained SpeechLM folder, or (no --model) the untrained default assembly."""
    from speechsum.models.speech_lm import CONFIG_NAME, SpeechLM, SpeechLMConfig

    if model is None:
        print("speechsum: note: no --model given: using the untrained default assembly (whisper-base + "
              "smollm2-135m-instruct with a random projector); its summaries are not meaningful. "
              "Train one with `make demo`.", file=sys.stderr)
        return SpeechLM.from_config(SpeechLMConfig())
    from speechsum.training.common import resolve_init

    try:  # a checkpoint folder or a run folder, resolved as every stage's `init` is
        folder = resolve_init(model)
    except FileNotFoundError:
        raise FileNotFoundError(f"{model}: not a SpeechLM checkpoint folder (no {CONFIG_NAME}) nor a run folder "
                                f"with final/{CONFIG_NAME}") from None
    if folder.name == "model" and folder.parent.parent.name == "checkpoints":
        print(f"speechsum: note: {model} has no final/ (an unfinished run): using its latest checkpoint, "
              f"{folder.parent.name}", file=sys.stderr)
    return SpeechLM.from_pretrained(folder)  # its own errors name what is missing (say projector.safetensors)


def cmd_summarize(args) -> int:
    from speechsum.device import resolve_device
    from speechsum.audio import AudioError
    from speechsum.data.styles import instruction_for, style_names

    device = resolve_device(args.device)  # a bad name: main()'s one-line error
    if args.instruction is None and args.style not in style_names():
        error(f"--style {args.style}: unknown style (choose from {', '.join(style_names())})")
        return EXIT_USAGE
    from speechsum.models.generation import check_repeat_stop

    check_repeat_stop(args.repeat_stop, "--repeat-stop")
    if not args.window_seconds >= 0:  # also NaN
        error(f"--window-seconds {args.window_seconds:g}: expected >= 0 (0: one pass however long)")
        return EXIT_USAGE
    if not args.min_speech >= 0:
        error(f"--min-speech {args.min_speech:g}: expected seconds >= 0 (0: no speech check)")
        return EXIT_USAGE
    if args.window_seconds and args.window_seconds < max(MIN_WINDOW_S, args.min_speech):
        error(f"--window-seconds {args.window_seconds:g}: a part must last at least {MIN_WINDOW_S:g} s and "
              f"--min-speech ({args.min_speech:g} s); 0 for one pass")
        return EXIT_USAGE
    instruction = args.instruction if args.instruction is not None else instruction_for(args.style)
    from speechsum.longform import Recording, num_parts, summarize_long

    recs, names, failed = [], [], 0
    for path in args.audio:  # validate every file first: bad ones are reported, good ones still run
        try:  # one pass over the file, never held whole: a long one is read again part by part
            recs.append(Recording.scan(path, min_speech=args.min_speech))
            names.append(path)
        except AudioError as e:
            error(str(e))
            failed += 1
    if not recs:
        return EXIT_USAGE
    model = load_speechlm(args.model)
    model.eval().to(device)
    model.decode_int8 = args.int8 and model.decode_bf16  # int8 weights are used on the CPU only
    from speechsum.models.speech_lm import AudioTooLongError

    long = [num_parts(r.num_samples, args.window_seconds) > 1 for r in recs]
    groups: list[list[int]] = []  # short files batched together; a long one alone (in parts)
    for i in range(len(recs)):
        if groups and not long[i] and not long[groups[-1][0]] and len(groups[-1]) < args.batch_size:
            groups[-1].append(i)
        else:
            groups.append([i])
    for group in groups:
        t = time.time()
        try:
            if long[group[0]]:
                res = summarize_long(model, recs[group[0]], instruction, args.window_seconds, args.max_new_tokens,
                                     args.repeat_stop, min_speech=args.min_speech)
                outs = [(res.text, res.finished, res.looped, len(res.parts), sum(not p.speech for p in res.parts))]
            else:
                gens = model.generate([recs[i].whole() for i in group], [instruction] * len(group),
                                      max_new_tokens=args.max_new_tokens, repeat_stop=args.repeat_stop)
                outs = [(g.text, g.finished, g.looped, 1, 0) for g in gens]
        except AudioTooLongError as e:
            error(f"{', '.join(names[i] for i in group)}: {e}")
            failed += len(group)
            continue
        except AudioError as e:  # a file read again (short: whole; long: part by part) that changed since
            error(str(e))
            failed += len(group)
            continue
        dt = time.time() - t
        for i, (text, finished, looped, parts, silent) in zip(group, outs):
            name, seconds = names[i], recs[i].num_samples / 16000
            if args.json:
                print(json.dumps({"file": name, "style": args.style if args.instruction is None else None,
                                  "instruction": instruction, "summary": text,
                                  "audio_seconds": round(seconds, 2), "seconds": round(dt / len(group), 2),
                                  "parts": parts, "parts_without_speech": silent,
                                  "complete": finished or looped, "looped": looped}))
            else:
                print(f"== {name} ({seconds:.1f} s audio" + (f", {parts} parts" if parts > 1 else "")
                      + (f", {silent} without speech left out" if silent else "") + ")")
                note = " [stopped: the answer began to repeat]" if looped else " [cut at --max-new-tokens]"
                print(text + ("" if finished else note))
    return EXIT_USAGE if failed else 0


# ---------------------------------------------------------------------------------------- train

STAGES = {  # stage -> (module, config class name)
    "align": ("speechsum.training.align", "AlignConfig"),
    "sft": ("speechsum.training.sft", "SFTConfig"),
    "kd": ("speechsum.training.kd", "KDConfig"),
    "dpo": ("speechsum.training.dpo", "DPOConfig"),
}


def cmd_train(args) -> int:
    import importlib

    from speechsum.config import load_config

    module_name, cfg_name = STAGES[args.stage]
    module = importlib.import_module(module_name)
    module.train(load_config(getattr(module, cfg_name), args.config, args.overrides), resume=args.resume)
    return 0


def cmd_eval(args) -> int:
    from speechsum.device import resolve_device
    from speechsum.evaluation.run_eval import evaluate, split_pair

    device = resolve_device(args.device)  # a bad name: main()'s one-line error
    pairs = []
    for spec in args.compare:  # A:B, A and B --model entries (which may hold colons: text:DIR) or lists A1,A2
        pair = split_pair(spec, args.model)
        if pair is None:
            error(f"--compare {spec}: expected A:B with A and B among the --model entries "
                  f"(e.g. runs/tiny/sft:runs/tiny/kd, or runs/s0/sft,runs/s1/sft:runs/s0/kd,runs/s1/kd)")
            return EXIT_USAGE
        pairs.append(pair)
    evaluate(args.model, args.data, args.out, llm=args.llm, limit=args.limit, batch_size=args.batch_size,
             max_new_tokens=args.max_new_tokens, task=args.task, compare=pairs, repeat_stop=args.repeat_stop,
             int8=args.int8, device=device)
    return 0


def cmd_compare(args) -> int:
    from speechsum.evaluation.run_eval import compare_saved

    compare_saved(args.eval_dirs, args.compare, out=args.out)
    return 0


def cmd_report(args) -> int:
    from speechsum.evaluation.report import build_report

    path = build_report(args.run_dir, eval_dir=args.eval, out=args.out, max_examples=args.examples)
    print(f"report: {path}")
    return 0


def cmd_synth(args) -> int:
    from speechsum.data.synth import synth_command

    return synth_command(args.config, args.out, args.overrides)


def cmd_import(args) -> int:
    from speechsum.data.user import UserDataError, convert_user_data

    if (Path(args.out) / args.split / "manifest.parquet").exists():
        raise UserDataError(f"--out {args.out}: already holds a {args.split} split (nothing written; "
                            "choose another folder or --split)")
    counts = convert_user_data(args.source, args.out, args.split)
    print(f"import: {counts['items']} recordings ({counts['with_summary']} with a summary, {counts['with_facts']} "
          f"with facts) -> {Path(args.out) / args.split}", file=sys.stderr)
    return 0


def cmd_pipeline(args) -> int:
    from speechsum.config import load_config
    from speechsum.pipeline import PipelineConfig, run

    run(load_config(PipelineConfig, args.config, args.overrides))
    return 0


# ---------------------------------------------------------------------------------------- dispatch


def build_parser() -> argparse.ArgumentParser:
    from speechsum.longform import WINDOW_S
    from speechsum.vad import MIN_SPEECH_S

    p = argparse.ArgumentParser(prog="speechsum", description="Speech summarization with multimodal LLMs.")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list, fetch and verify the named pretrained models")
    m.add_argument("action", choices=["list", "fetch", "verify"])
    m.add_argument("names", nargs="*", help="registry names (fetch: required; verify: default all fetched)")
    m.set_defaults(func=cmd_models)

    s = sub.add_parser("summarize", help="summarize audio files with a SpeechLM")
    s.add_argument("audio", nargs="+", help="audio files (wav/flac/ogg/mp3, any rate, mono or multi-channel)")
    s.add_argument("--model", default=None, help="SpeechLM checkpoint folder (default: untrained assembly)")
    s.add_argument("--style", default="paragraph", help="summary style: one-line, paragraph, bullets, "
                   "action-items, email, title, tldr, ... (see README)")
    s.add_argument("--instruction", default=None, help="free instruction instead of a style")
    s.add_argument("--max-new-tokens", type=at_least(1), default=256)
    s.add_argument("--repeat-stop", type=int, default=3, metavar="K",
                   help="stop an answer once it ends with K copies of one passage (keeping the first) or repeats "
                        "an earlier sentence or line (dropping it); 0: off")
    s.add_argument("--window-seconds", type=float, default=WINDOW_S, metavar="S",
                   help="a longer recording is summarized in parts of at most S seconds, then from the parts' "
                        "notes (0: one pass however long)")
    s.add_argument("--min-speech", type=float, default=MIN_SPEECH_S, metavar="S",
                   help="refuse a file in which the voice-activity detector (silero VAD) hears less than S seconds "
                        "of speech, and leave a long file's parts with less out of its notes, instead of "
                        "summarizing noise or music (0: off)")
    s.add_argument("--batch-size", type=at_least(1), default=4, help="files decoded together (the parts of a long file: 8)")
    s.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help="decode one file at a time with int8 weights where bf16 is native (~1.9x the tokens/s "
                        "here); --no-int8: bf16 weights")
    s.add_argument("--device", default="auto",
                   help="where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N")
    s.add_argument("--json", action="store_true", help="one JSON object per file on stdout")
    s.set_defaults(func=cmd_summarize)
    t = sub.add_parser("train", help="run one training stage")
    t.add_argument("stage", choices=sorted(STAGES))
    t.add_argument("--config", required=True, help="YAML config (configs/<stage>/<preset>.yaml)")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. loop.max_steps=10")
    t.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="summarize a test split with several systems and score them")
    ev.add_argument("--model", nargs="+", required=True,
                    help="SpeechLM or run folders, 'untrained', 'cascade' (whisper-base -> LLM), 'text-teacher'")
    ev.add_argument("--data", required=True, help="a split folder with manifest.parquet, e.g. runs/data/test")
    ev.add_argument("--out", default=None, help="folder for metrics.json and predictions.parquet")
    ev.add_argument("--llm", default=None, help="LLM of the cascade and text-teacher baselines")
    ev.add_argument("--limit", type=at_least(0), default=0, help="only the first N items")
    ev.add_argument("--batch-size", type=at_least(1), default=16,
                    help="items decoded together (16: a decoding step costs about what 8 rows cost on 2 cores)")
    ev.add_argument("--max-new-tokens", type=at_least(1), default=128)
    ev.add_argument("--repeat-stop", type=int, default=3, metavar="K",
                    help="as summarize's: every system stops a looping or self-repeating answer (0: off)")
    ev.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                    help="as summarize's: a single row's decoding steps use int8 weights where bf16 is native")
    ev.add_argument("--task", choices=["summarize", "transcribe", "readout"], default="summarize",
                    help="transcribe: verbatim transcripts per document, scored with WER and fact recall "
                         "(the alignment gate); readout: the connector's greedy CTC read-out per document, "
                         "no LLM (cascade: the whisper transcript)")
    ev.add_argument("--device", default="auto",
                    help="as summarize's: where the SpeechLMs and text LLMs decode (the cascade's whisper stays on the CPU)")
    ev.add_argument("--compare", nargs="*", default=[], metavar="A:B",
                    help="paired differences B - A of the fact scores with bootstrap intervals (A, B: --model entries, "
                         "or comma-separated lists of them, e.g. one stage trained with several seeds: each item's "
                         "score is then the list's mean)")
    ev.set_defaults(func=cmd_eval)

    cp = sub.add_parser("compare", help="paired differences between systems of saved evaluations (no decoding)")
    cp.add_argument("eval_dirs", nargs="+", help="`eval --out` folders of the same items and settings")
    cp.add_argument("--compare", nargs="+", required=True, metavar="A:B",
                    help="as eval's, with systems named FOLDER/NAME (FOLDER: the eval folder's last part) or NAME "
                         "where one folder has it, e.g. confirm-a/kd,confirm-b/kd:confirm-a/dpo,confirm-b/dpo")
    cp.add_argument("--out", default=None, help="write the table and the differences as JSON")
    cp.set_defaults(func=cmd_compare)

    rp = sub.add_parser("report", help="one self-contained HTML page of a run: table, curves, examples")
    rp.add_argument("run_dir", help="run folder (stage folders with metrics.jsonl, eval/ with metrics.json)")
    rp.add_argument("--eval", default=None, help="eval output folder (default RUN_DIR/eval, else RUN_DIR)")
    rp.add_argument("--out", default=None, help="folder for index.html and the PNG plots (default RUN_DIR/report)")
    rp.add_argument("--examples", type=int, default=12, help="at most this many example cards (clips are embedded)")
    rp.set_defaults(func=cmd_report)

    sy = sub.add_parser("synth", help="write a synthetic speech-summarization dataset (train/dev/test)")
    sy.add_argument("--config", required=True, help="configs/synth/<preset>.yaml")
    sy.add_argument("--out", required=True, help="dataset folder to write (resumes if it exists)")
    sy.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    sy.set_defaults(func=cmd_synth)

    im = sub.add_parser("import", help="your recordings (+ transcripts, summaries, facts) as a dataset split for eval")
    im.add_argument("source", help="a folder of audio files with <stem>.txt transcripts (optional <stem>.summary.txt, "
                                   "<stem>.facts.json), or a CSV/JSONL/Parquet manifest (audio, transcript[, summary, "
                                   "facts, id, language])")
    im.add_argument("--out", required=True, help="dataset folder; the split is written to OUT/SPLIT")
    im.add_argument("--split", default="test", choices=["train", "dev", "test"])
    im.set_defaults(func=cmd_import)

    pl = sub.add_parser("pipeline", help="run synth -> align -> sft -> kd -> dpo into one run folder (resumes)")
    pl.add_argument("--config", required=True, help="configs/pipeline/<preset>.yaml")
    pl.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    pl.set_defaults(func=cmd_pipeline)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # key=value overrides may come after options (`train sft --config X a.b=1`), which argparse's
    # greedy positional matching rejects; collect them here for commands that take overrides
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not hasattr(args, "overrides") or not all("=" in e and not e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    _quiet_hf()
    from speechsum.training import close_process_group

    try:
        return args.func(args)
    except KeyboardInterrupt:
        error("interrupted")
        return 130
    except BrokenPipeError:  # `speechsum ... | head`: the reader left; say nothing more
        try:  # and let the interpreter's final flush of stdout go nowhere
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a descriptor (captured)
            pass
        return 141
    except user_errors() as e:
        if os.environ.get("SPEECHSUM_DEBUG"):
            raise
        error(one_line(e))
        return EXIT_USAGE
    finally:
        close_process_group()


def user_errors() -> tuple[type[BaseException], ...]:
    """What a command reports as one line (exit 2) wherever it is raised: a bad config, input file,
    model folder, dataset or output path. Every input error of speechsum is a ValueError (ConfigError,
    InputError, AudioError, ...) or one of the RuntimeErrors below; SPEECHSUM_DEBUG=1 shows the
    traceback instead."""
    from speechsum.data.teacher import TeacherError
    from speechsum.models.registry import ModelError
    from speechsum.models.text_lm import RemoteError

    return (ValueError, ModelError, RemoteError, TeacherError, FileNotFoundError, FileExistsError,
            NotADirectoryError, IsADirectoryError, PermissionError)


def one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:  # not "[Errno 17] File exists: 'x'"
        return f"{e.filename}: {e.strerror.lower()}"
    lines = str(e).strip().splitlines()
    if not lines:
        return type(e).__name__
    return lines[0] + (" (SPEECHSUM_DEBUG=1 shows the rest)" if len(lines) > 1 else "")


if __name__ == "__main__":
    sys.exit(main())
