"""The `aiayn` command: a thin table of subcommands. The only module that reads argv.

Errors a user can fix (bad data, config, model folder) print one line `error: ...` and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


def _train(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.config import RunConfig, load_yaml, merge, parse_overrides
    from aiayn.train.trainer import Trainer

    base = load_yaml(args.config) if args.config else {}
    config = RunConfig.from_dict(merge(base, parse_overrides(extra)))
    return Trainer(config, resume=args.resume, init_from=args.init_from).run()


def _tokenizer_train(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.data.reader import read_lines
    from aiayn.tokenizer import train_tokenizer_from_files

    for path in args.input:  # validate the files first: a missing or binary file is one clear line
        for _ in read_lines(path):
            pass
    tokenizer = train_tokenizer_from_files(
        args.input, args.vocab_size, kind=args.kind, min_frequency=args.min_frequency
    )
    tokenizer.save(args.out)
    print(f"tokenizer: {tokenizer.vocab_size} tokens ({args.kind}), saved to {args.out}")
    return 0


def _average(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.train.average import average_checkpoints

    out = average_checkpoints(args.models, args.out)
    print(f"averaged {len(args.models)} checkpoints into {out}")
    return 0


def _demo(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.demo import run_demo

    return run_demo(task=args.task, out_dir=args.out, steps=args.steps, overrides=extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiayn", description="The Transformer of 'Attention Is All You Need'.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a model from a YAML config",
        description="Train from a YAML config; any key can be overridden as --section.key value "
        "(sections: model, data, tokenizer, optim, train), e.g. --train.max_steps 200.",
    )
    p.add_argument("--config", help="YAML config file (configs/*.yaml); defaults are the paper's base recipe")
    p.add_argument(
        "--resume",
        default="none",
        help="'auto': continue from the newest valid checkpoint in train.out_dir; a checkpoint folder; "
        "'none' (default): start a new run",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="DIR",
        help="start a new run from the weights (and tokenizer) of a model folder, e.g. to fine-tune: "
        "fresh optimizer and schedule",
    )
    p.set_defaults(func=_train, extra_ok=True)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a subword BPE tokenizer on text files")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="text files (TSV: first two columns)")
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special and byte tokens included")
    t.add_argument("--out", required=True, help="where to write tokenizer.json")
    t.add_argument("--kind", choices=["bpe", "char"], default="bpe")
    t.add_argument("--min-frequency", type=int, default=2, help="a merge must occur this often (default 2)")
    t.set_defaults(func=_tokenizer_train)

    p = sub.add_parser("average", help="average the weights of checkpoints (the paper averages the last 5)")
    p.add_argument("--models", nargs="+", required=True, metavar="DIR", help="checkpoint folders of one run")
    p.add_argument("--out", required=True, metavar="DIR", help="the averaged model folder to write")
    p.set_defaults(func=_average)

    p = sub.add_parser(
        "demo",
        help="the main job: train a small model on built-in data (no download) and show what it learned",
        description="Train a small encoder-decoder to translate dates written many ways (English and Chinese) "
        "into ISO dates, then report exact-match accuracy on 1,000 held-out dates. --task lm trains a small "
        "language model on Python's standard library source instead and samples from it.",
    )
    p.add_argument("--task", choices=["dates", "lm"], default="dates")
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/demo-<task>)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's config)")
    p.set_defaults(func=_demo, extra_ok=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "extra_ok", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace, list[str]], int] = args.func
    from aiayn.data.reader import DataError
    from aiayn.train.checkpoint import CheckpointError

    try:
        return func(args, extra)
    except (DataError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
