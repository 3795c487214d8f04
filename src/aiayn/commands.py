"""The `aiayn` subcommands: each builds what it needs from its parsed arguments, runs it and prints. The
parser (aiayn.cli) maps each subcommand onto one of these.
"""

from __future__ import annotations

import argparse
import sys

from aiayn.errors import UserError


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


def _info(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from aiayn.machine import format_report, machine_report

    report = machine_report()
    print(json.dumps(report, indent=1) if args.json else format_report(report))
    return 0


def _checkpoint_consolidate(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.train.consolidate import consolidate

    print(f"consolidated {args.checkpoint} into {consolidate(args.checkpoint, args.out)}")
    return 0


def _average(args: argparse.Namespace, extra: list[str]) -> int:
    import os

    from aiayn.train.average import average_checkpoints, last_checkpoints

    models = args.models or last_checkpoints(args.run, args.last)
    out = average_checkpoints(models, args.out)
    which = f" ({', '.join(os.path.basename(m) for m in models)})" if args.run else ""
    print(f"averaged {len(models)} checkpoints{which} into {out}")
    return 0


def _import(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.interop import import_model

    out = import_model(args.src, args.out)
    print(f"imported {args.src} into {out}")
    return 0


def _export(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.interop import export_model

    out = export_model(args.model, args.to, args.out)
    print(f"exported {args.model} to {args.to}: {out}")
    return 0


def _demo(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.demo import run_demo

    if args.steps is not None and args.steps < 1:
        raise UserError(f"--steps {args.steps}: expected an integer >= 1")
    return run_demo(task=args.task, out_dir=args.out, steps=args.steps, overrides=extra, arch=args.arch)


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
    from aiayn.files import write_atomic

    write_atomic(path, text.encode("utf-8"))


def _decode_config(args: argparse.Namespace):
    """The one DecodeConfig of a command's decoding flags (validated here, once; --beam is beam_size)."""
    from aiayn.config import DecodeConfig

    options = {k: getattr(args, k) for k in ("beam", "alpha", "max_len", "n_best", "batch_tokens", "temperature",
                                             "top_k", "top_p", "seed") if hasattr(args, k)}  # fmt: skip
    return DecodeConfig.of(**options)


def _translate(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from aiayn.inference import load

    decode = _decode_config(args)
    model = load(args.model, device=args.device, quantize=args.quantize)
    lines = _input_lines(args.input)
    with _progress(len(lines), args.input not in (None, "-")) as bar:
        results = model.translate_n_best(lines, progress=bar.update, decode=decode)
    if decode.n_best == 1:
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
    from aiayn.inference import load

    decode = _decode_config(args)
    if args.num_samples < 1:
        raise UserError(f"--num-samples {args.num_samples}: expected an integer >= 1")
    model = load(args.model, device=args.device, quantize=args.quantize)
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    samples = model.generate_batch([prompt] * args.num_samples, args.max_new_tokens, decode=decode)
    for i, text in enumerate(samples):
        if args.num_samples > 1:
            print(f"--- sample {i + 1} ---")
        print(prompt + text)
    return 0


def _evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    import json
    import time

    from aiayn.evaluate import translation_scores
    from aiayn.inference import load

    decode = _decode_config(args)
    model = load(args.model, device=args.device, quantize=args.quantize)
    sources, refs = _input_lines(args.src), _input_lines(args.ref)
    if len(sources) != len(refs):
        raise UserError(f"--src {args.src} has {len(sources):,} lines but --ref {args.ref} has {len(refs):,}")
    start = time.perf_counter()
    with _progress(len(sources), True) as bar:
        hyps = model.translate(sources, progress=bar.update, decode=decode)
    seconds = time.perf_counter() - start
    if args.output:
        _write_output(args.output, hyps)
    moses_lang = args.moses_lang if args.moses_lang is not None else getattr(model.tokenizer, "moses_target", "")
    scores = translation_scores(hyps, refs, moses_lang)
    scores.update(
        {"sentences": len(sources), "beam": decode.beam_size, "alpha": decode.alpha, "seconds": round(seconds, 2),
         "model": str(model.folder)}
    )  # fmt: skip
    if args.json:
        print(json.dumps(scores, ensure_ascii=False))
    else:
        print(f"BLEU {scores['bleu']:.2f}  ({scores['bleu_signature']})")
        print(f"chrF {scores['chrf']:.2f}  ({scores['chrf_signature']})")
        print(f"BLEU lowercased {scores['bleu_lc']:.2f}  ({scores['bleu_lc_signature']})")
        if moses_lang:
            print(f"BLEU tokenized lowercased {scores['bleu_tok_lc']:.2f}  ({scores['bleu_tok_lc_signature']})")
        print(f"{len(sources):,} sentences, beam {decode.beam_size}, alpha {decode.alpha}, {seconds:.1f} s")
    return 0


def _perplexity(args: argparse.Namespace, extra: list[str]) -> int:
    import json

    from aiayn.inference import load

    model = load(args.model, device=args.device)
    texts = _input_lines(args.text)
    sources = _input_lines(args.src) if args.src else None
    if sources is not None and len(sources) != len(texts):
        raise UserError(f"--src {args.src} has {len(sources):,} lines but --text {args.text} has {len(texts):,}")
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
        if total < 1 and not args.steps and config.train.max_steps == 0:
            raise UserError("train.max_steps is 0: a run sets it from its step time; give --train.max_steps N to plot")
        if total < 1:
            raise UserError(f"--steps {total}: expected a number >= 1")
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

    out = explain(load(args.model, device=args.device), args.text, args.out, beam=args.beam, layer=args.layer)
    print(f"wrote {out}: open it in a browser (it needs no network)")
    return 0


def _serve(args: argparse.Namespace, extra: list[str]) -> int:
    from aiayn.inference import load
    from aiayn.serve import Settings, serve

    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: expected 1..65535")
    if args.max_in_flight < 1:
        raise UserError(f"--max-in-flight {args.max_in_flight}: expected a number >= 1")
    for flag, value, low in [("--queue", args.queue, 0), ("--max-work", args.max_work, 1)]:
        if value is not None and value < low:
            raise UserError(f"{flag} {value}: expected a number >= {low}")
    for flag, value in [("--request-timeout", args.request_timeout), ("--idle-timeout", args.idle_timeout)]:
        if not 0 < value < float("inf"):
            raise UserError(f"{flag} {value:g}: expected a number of seconds > 0")
    model = load(args.model, device=args.device, quantize=args.quantize)
    settings = Settings(max_in_flight=args.max_in_flight, cors_origins=args.cors_origin or [], queue=args.queue,
                        request_timeout=args.request_timeout, idle_timeout=args.idle_timeout)  # fmt: skip
    if args.max_work is not None:
        settings.max_work = args.max_work
    settings.allowed_hosts += args.allowed_host or []
    if args.host in ("0.0.0.0", "::", ""):
        print(f"warning: --host {args.host!r} serves every network interface, not only this machine: anyone who can "
              "reach it can use the model (and its CPU); the default 127.0.0.1 is this machine only",
              file=sys.stderr, flush=True)  # fmt: skip
    print(f"serving {model.folder} at http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    serve(model, args.host, args.port, settings)
    return 0
