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


def _input_lines(path: str | None) -> list[str]:
    """Lines of a file (data.reader: clear errors for missing, binary or non-UTF-8 files) or of stdin."""
    from aiayn.data.reader import DataError, read_lines

    if path is not None and path != "-":
        return [text for _, text in read_lines(path)]
    data = sys.stdin.buffer.read()
    data = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    raw = data.split(b"\n")
    if raw and raw[-1] == b"":
        raw.pop()  # the final newline ends the last line; it does not start another
    lines = []
    for number, line in enumerate(raw, 1):
        try:
            lines.append(line.removesuffix(b"\r").decode("utf-8"))
        except UnicodeDecodeError as e:
            raise DataError(f"<stdin>: line {number}: invalid UTF-8 at byte {e.start} of the line") from None
    return lines


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="sent", disable=not (enabled and sys.stderr.isatty()), file=sys.stderr)


def _write_output(path: str | None, lines: list[str]) -> None:
    """stdout, or a file replaced atomically once every line is ready (an older file stays whole until then)."""
    text = "".join(line + "\n" for line in lines)
    if path is None or path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    from aiayn.train.checkpoint import write_atomic

    write_atomic(path, text.encode("utf-8"))


def _translate(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from aiayn.decoding import check_options
    from aiayn.inference import load

    check_options(beam_size=args.beam, alpha=args.alpha, n_best=args.n_best, max_len=args.max_len)
    model = load(args.model, device=args.device)
    lines = _input_lines(args.input)
    with _progress(len(lines), args.input not in (None, "-")) as bar:
        results = model.translate_n_best(
            lines, args.beam, args.alpha, args.max_len, args.n_best, args.batch_tokens, progress=bar.update
        )
    if args.n_best == 1:
        out = [r[0].text for r in results]
    else:  # still one line per input: a JSON list of the n best, best first
        out = [
            json.dumps([{"text": t.text, "score": round(t.score, 6), "finished": t.finished} for t in r],
                       ensure_ascii=False)
            for r in results
        ]  # fmt: skip
    _write_output(args.output, out)
    return 0


def _generate(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.decoding import check_options
    from aiayn.inference import load

    check_options(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.num_samples < 1:
        raise ValueError(f"--num-samples {args.num_samples}: expected an integer >= 1")
    model = load(args.model, device=args.device)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    samples = model.generate_batch(
        [prompt] * args.num_samples, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed
    )
    for i, text in enumerate(samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(prompt + text)
    return 0


def _evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    import json
    import time

    from aiayn.decoding import check_options
    from aiayn.evaluate import translation_scores
    from aiayn.inference import load

    check_options(beam_size=args.beam, alpha=args.alpha, max_len=args.max_len)
    model = load(args.model, device=args.device)
    sources, refs = _input_lines(args.src), _input_lines(args.ref)
    if len(sources) != len(refs):
        raise ValueError(f"--src {args.src} has {len(sources):,} lines but --ref {args.ref} has {len(refs):,}")
    start = time.perf_counter()
    with _progress(len(sources), True) as bar:
        hyps = model.translate(sources, args.beam, args.alpha, args.max_len, args.batch_tokens, progress=bar.update)
    seconds = time.perf_counter() - start
    if args.output:
        _write_output(args.output, hyps)
    scores = translation_scores(hyps, refs)
    scores.update(
        {"sentences": len(sources), "beam": args.beam, "alpha": args.alpha, "seconds": round(seconds, 2),
         "model": str(model.folder)}
    )  # fmt: skip
    if args.json:
        print(json.dumps(scores, ensure_ascii=False))
    else:
        print(f"BLEU {scores['bleu']:.2f}  ({scores['bleu_signature']})")
        print(f"chrF {scores['chrf']:.2f}  ({scores['chrf_signature']})")
        print(f"BLEU lowercased {scores['bleu_lc']:.2f}  ({scores['bleu_lc_signature']})")
        print(f"{len(sources):,} sentences, beam {args.beam}, alpha {args.alpha}, {seconds:.1f} s")
    return 0


def _perplexity(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from aiayn.inference import load

    model = load(args.model, device=args.device)
    texts = _input_lines(args.text)
    sources = _input_lines(args.src) if args.src else None
    if sources is not None and len(sources) != len(texts):
        raise ValueError(f"--src {args.src} has {len(sources):,} lines but --text {args.text} has {len(texts):,}")
    result = model.perplexity(texts, sources)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"perplexity {result['ppl']:.4f}  (nll {result['nll']:.4f} nats per token, {result['tokens']:,} tokens)")
    return 0


def _plot(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn import viz

    if args.plot_command == "attention":
        from aiayn.inference import load

        model = load(args.model, device=args.device)
        attn = model.attention(args.text, beam=args.beam)
        title = f"{args.text}  ->  {attn.text}" if attn.source else args.text
        out = viz.plot_attention(
            attn.weights, attn.source, attn.target, attn.output, args.out, args.layer, args.head, title
        )
    elif args.plot_command == "positions":
        out = viz.plot_positions(args.out, args.d_model, args.max_len, args.dims)
    elif args.plot_command == "schedule":
        from aiayn.config import RunConfig, load_yaml, merge, parse_overrides
        from aiayn.train.optim import learning_rate

        config = RunConfig.from_dict(merge(load_yaml(args.config), parse_overrides(extra)))
        total = args.steps or config.train.max_steps
        if total < 1:
            raise ValueError(f"--steps {total}: expected a number >= 1")
        steps = list(range(1, total + 1))
        rates = [learning_rate(step, config.optim, config.model.d_model, config.train.max_steps) for step in steps]
        title = f"{args.config}: {config.optim.schedule}, warmup {config.optim.warmup}"
        out = viz.plot_schedule(steps, rates, args.out, title)
    else:
        out = viz.plot_curves(args.run, args.out)
    print(f"wrote {out}")
    return 0


def _explain(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.explain import explain
    from aiayn.inference import load

    out = explain(load(args.model, device=args.device), args.text, args.out, beam=args.beam)
    print(f"wrote {out}: open it in a browser (it needs no network)")
    return 0


def _serve(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.inference import load
    from aiayn.serve import Settings, serve

    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: expected 1..65535")
    if args.max_in_flight < 1:
        raise ValueError(f"--max-in-flight {args.max_in_flight}: expected a number >= 1")
    model = load(args.model, device=args.device)
    settings = Settings(max_in_flight=args.max_in_flight, cors_origins=args.cors_origin or [])
    settings.allowed_hosts += args.allowed_host or []
    print(f"serving {model.folder} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve(model, args.host, args.port, settings)
    return 0


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="a run folder (its best checkpoint) or a checkpoint")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")


def _add_decoding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", type=int, default=4, help="beam size (default 4, the paper's; 1 = greedy)")
    p.add_argument("--alpha", type=float, default=0.6, help="length penalty ((5+len)/6)^alpha (default 0.6)")
    p.add_argument("--max-len", type=int, default=None, help="new tokens per sentence (default: source length + 50)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="source tokens x beam per batch (default 4096)")


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

    p = sub.add_parser("translate", help="translate lines of text (stdin or a file), one output line per input line")
    _add_model(p)
    _add_decoding(p)
    p.add_argument("--n-best", type=int, default=1, help="K > 1: each output line is a JSON list of the K best")
    p.add_argument("--input", default=None, metavar="FILE", help="one sentence per line (default: stdin)")
    p.add_argument("--output", default=None, metavar="FILE", help="where to write the translations (default: stdout)")
    p.set_defaults(func=_translate)

    p = sub.add_parser("generate", help="continue a prompt with a language model")
    _add_model(p)
    p.add_argument("--prompt", required=True, help="the text to continue ('-': read it from stdin)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to add (default 200)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy (default 1)")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k most probable tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: the smallest set with probability p (1 = all)")
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="independent continuations (default 1)")
    p.set_defaults(func=_generate)

    p = sub.add_parser("evaluate", help="translate a test set and score it: sacreBLEU, chrF, lowercased BLEU")
    _add_model(p)
    _add_decoding(p)
    p.add_argument("--src", required=True, metavar="FILE", help="source sentences, one per line")
    p.add_argument("--ref", required=True, metavar="FILE", help="reference translations, line-aligned with --src")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the translations here")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("perplexity", help="perplexity of a text (LM) or of targets given sources (seq2seq)")
    _add_model(p)
    p.add_argument("--text", required=True, metavar="FILE", help="LM: a text file; seq2seq: the target sentences")
    p.add_argument("--src", default=None, metavar="FILE", help="seq2seq: the source sentences, line-aligned")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_perplexity)

    p = sub.add_parser("plot", help="pictures: attention, positional encoding, LR schedule, training curves")
    psub = p.add_subparsers(dest="plot_command", required=True)
    a = psub.add_parser("attention", help="attention heatmaps of one input, per layer and head")
    _add_model(a)
    a.add_argument("--text", required=True, help="the sentence to translate (LM: the text to read)")
    a.add_argument("--layer", type=int, default=None, help="only this layer (default: all)")
    a.add_argument("--head", type=int, default=None, help="only this head (default: all)")
    a.add_argument("--beam", type=int, default=1, help="beam size of the translation shown (default 1: greedy)")
    a.add_argument("--out", required=True, metavar="FILE", help="the picture to write (.png or .svg)")
    a = psub.add_parser("positions", help="the sinusoidal positional encoding: heatmap and a few dimensions")
    a.add_argument("--d-model", type=int, default=128, help="model width (default 128)")
    a.add_argument("--max-len", type=int, default=100, help="positions to draw (default 100)")
    a.add_argument("--dims", type=int, nargs="+", default=[4, 5, 6, 7], help="dimensions drawn as curves")
    a.add_argument("--out", default="positions.png", metavar="FILE", help="(default positions.png)")
    a = psub.add_parser(
        "schedule",
        help="the learning rate of a config over its steps",
        description="The learning-rate schedule of a config; --section.key value overrides work as in train.",
    )
    a.add_argument("--config", required=True, help="YAML config file")
    a.add_argument("--steps", type=int, default=None, help="steps to draw (default train.max_steps)")
    a.add_argument("--out", default="schedule.png", metavar="FILE", help="(default schedule.png)")
    a.set_defaults(extra_ok=True)
    a = psub.add_parser("curves", help="training and validation loss, BLEU and learning rate of a run")
    a.add_argument("--run", required=True, metavar="DIR", help="a run folder (holds metrics.jsonl)")
    a.add_argument("--out", default="curves.png", metavar="FILE", help="(default curves.png)")
    p.set_defaults(func=_plot)

    p = sub.add_parser(
        "explain",
        help="walk one input through a trained model, step by step, as one self-contained HTML file",
        description="Tokens and ids, embeddings + positions, then for each layer Q, K, V, raw and scaled scores, "
        "the mask, the softmax weights per head, the weighted sum, Add & Norm and the FFN, then the output "
        "probabilities at temperatures 0.5, 1 and 2: every number from the model's own forward pass.",
    )
    _add_model(p)
    p.add_argument("text", help="the sentence to translate (LM: the text to continue)")
    p.add_argument("--out", default="report.html", metavar="FILE", help="the HTML file to write (default report.html)")
    p.add_argument("--beam", type=int, default=1, help="beam size of the translation walked (default 1: greedy)")
    p.set_defaults(func=_explain)

    p = sub.add_parser("serve", help="a local HTTP API and web page for a trained model")
    _add_model(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-in-flight", type=int, default=4, help="requests run at once; more get 503 (default 4)")
    p.add_argument("--allowed-host", action="append", metavar="HOST", help="also accept this Host header")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="allow browser requests from ORIGIN")
    p.set_defaults(func=_serve)
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
