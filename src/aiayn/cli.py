"""The `aiayn` command: a thin table of subcommands. The only module that reads argv.

Errors a user can fix (`aiayn.errors.UserError`: bad data, config, model folder, request) print one line
`error: ...` and exit with code 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable

from aiayn.commands import (
    _average,
    _checkpoint_consolidate,
    _demo,
    _evaluate,
    _explain,
    _export,
    _generate,
    _import,
    _info,
    _perplexity,
    _plot,
    _serve,
    _tokenizer_train,
    _train,
    _translate,
)
from aiayn.errors import UserError

EXIT_USER_ERROR = 2


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="a run folder (its best checkpoint) or a checkpoint")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when there is one)")


def _add_quantize(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8: int8 linear layers for faster CPU decoding (default: none, fp32)")  # fmt: skip


def _add_decoding(p: argparse.ArgumentParser) -> None:
    from aiayn.config.decode import DEFAULTS as D

    p.add_argument("--beam", type=int, default=D.beam_size, help=f"beam size (default {D.beam_size}, the paper's; "
                   "1 = greedy)")  # fmt: skip
    p.add_argument("--alpha", type=float, default=D.alpha, help=f"length penalty ((5+len)/6)^alpha (default {D.alpha})")
    p.add_argument("--max-len", type=int, default=None, help="new tokens per sentence (default: source length + 50)")
    p.add_argument("--batch-tokens", type=int, default=D.batch_tokens,
                   help=f"source tokens x beam per batch (default {D.batch_tokens})")  # fmt: skip


def _parser_train(sub) -> None:
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


def _parser_tokenizer(sub) -> None:
    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True)
    t = tsub.add_parser("train", help="train a subword BPE tokenizer on text files")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE", help="text files (TSV: first two columns)")
    t.add_argument("--vocab-size", type=int, required=True, help="vocabulary size, special and byte tokens included")
    t.add_argument("--out", required=True, help="where to write tokenizer.json")
    t.add_argument("--kind", choices=["bpe", "char"], default="bpe")
    t.add_argument("--min-frequency", type=int, default=2, help="a merge must occur this often (default 2)")
    t.set_defaults(func=_tokenizer_train)


def _parser_checkpoint(sub) -> None:
    p = sub.add_parser("checkpoint", help="checkpoint tools")
    tools = p.add_subparsers(dest="tool", required=True)
    c = tools.add_parser("consolidate", help="an FSDP checkpoint's sharded state as an ordinary model folder")
    c.add_argument("checkpoint", metavar="DIR", help="a checkpoint folder (run/checkpoints/step-N, run/last, ...)")
    c.add_argument("--out", required=True, metavar="DIR", help="the model folder to write")
    c.set_defaults(func=_checkpoint_consolidate)


def _parser_average(sub) -> None:
    p = sub.add_parser("average", help="average the weights of checkpoints (the paper averages the last 5)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--models", nargs="+", metavar="DIR", help="checkpoint folders of one run")
    which.add_argument("--run", metavar="DIR", help="a run folder: average its last --last checkpoints (by step)")
    p.add_argument("--last", type=int, default=5, metavar="N", help="with --run: how many (default 5)")
    p.add_argument("--out", required=True, metavar="DIR", help="the averaged model folder to write")
    p.set_defaults(func=_average)


def _parser_info(sub) -> None:
    p = sub.add_parser(
        "info",
        help="this machine as aiayn sees it: CPU and its flags, cores, torch build, GEMM path, bf16, precision",
        description="Print the CPU (model, vendor, AMX / AVX512-BF16), the cores this process may use, the torch "
        "version and build, the faster path for fp32 linear layers here (measured: MKL or oneDNN), bf16 "
        "support, any GPUs, and the training precision that train.precision=auto picks.",
    )
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.set_defaults(func=_info)


def _parser_import(sub) -> None:
    p = sub.add_parser(
        "import",
        help="a Hugging Face Marian or GPT-2 model (folder or hub name) as an aiayn model folder",
        description="Convert a Hugging Face MarianMTModel or GPT2LMHeadModel, with its tokenizer, into an aiayn "
        "model folder that translate, generate, evaluate, perplexity, plot, explain and serve take.",
    )
    p.add_argument("src", metavar="SRC", help="a folder written by save_pretrained, or a hub name (online only)")
    p.add_argument("--out", required=True, metavar="DIR", help="the aiayn model folder to write")
    p.set_defaults(func=_import)


def _parser_export(sub) -> None:
    p = sub.add_parser("export", help="an aiayn model folder for another tool: hf (transformers), ctranslate2, onnx")
    p.add_argument("--model", required=True, metavar="DIR", help="a model folder, or a run folder (its best)")
    p.add_argument("--to", required=True, choices=["hf", "ctranslate2", "onnx"],
                   help="hf: a folder MarianMTModel / GPT2LMHeadModel load; ctranslate2: a Translator / Generator "
                   "folder; onnx: encoder and decoder-step graphs for onnxruntime "
                   "(aiayn.interop.onnx.greedy)")  # fmt: skip
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.set_defaults(func=_export)


def _parser_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: train a small model on built-in data (no download) and show what it learned",
        description="Train a small encoder-decoder to translate dates written many ways (English and Chinese) "
        "into ISO dates, then report exact-match accuracy on 1,000 held-out dates. --task lm trains a small "
        "language model on Python's standard library source instead and samples from it.",
    )
    p.add_argument("--task", choices=["dates", "lm"], default="dates")
    p.add_argument(
        "--arch",
        choices=["transformer", "rnn"],
        default="transformer",
        help="dates task only: rnn trains a bidirectional LSTM with additive attention instead (runs/demo-dates-rnn)",
    )
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (default runs/demo-<task>[-rnn])")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's config)")
    p.set_defaults(func=_demo, extra_ok=True)


def _parser_translate(sub) -> None:
    p = sub.add_parser("translate", help="translate lines of text (stdin or a file), one output line per input line")
    _add_model(p)
    _add_quantize(p)
    _add_decoding(p)
    p.add_argument("--n-best", type=int, default=1, help="K > 1: each output line is a JSON list of the K best")
    p.add_argument("--input", default=None, metavar="FILE", help="one sentence per line (default: stdin)")
    p.add_argument("--output", default=None, metavar="FILE", help="where to write the translations (default: stdout)")
    p.set_defaults(func=_translate)


def _parser_generate(sub) -> None:
    from aiayn.config.decode import DEFAULTS as D

    p = sub.add_parser("generate", help="continue a prompt with a language model")
    _add_model(p)
    _add_quantize(p)
    p.add_argument("--prompt", required=True, help="the text to continue ('-': read it from stdin)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to add (default 200)")
    p.add_argument("--temperature", type=float, default=D.temperature, help="softmax temperature; 0 = greedy "
                   f"(default {D.temperature:g})")  # fmt: skip
    p.add_argument("--top-k", type=int, default=D.top_k, help="sample from the k most probable tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=D.top_p, help="nucleus: the smallest set with probability p "
                   "(1 = all)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="random seed: the same seed gives the same text")
    p.add_argument("--num-samples", type=int, default=1, help="independent continuations (default 1)")
    p.set_defaults(func=_generate)


def _parser_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="translate a test set and score it: sacreBLEU, chrF, lowercased BLEU")
    _add_model(p)
    _add_quantize(p)
    _add_decoding(p)
    p.add_argument("--src", required=True, metavar="FILE", help="source sentences, one per line")
    p.add_argument("--ref", required=True, metavar="FILE", help="reference translations, line-aligned with --src")
    p.add_argument("--output", default=None, metavar="FILE", help="also write the translations here")
    p.add_argument("--moses-lang", default=None, metavar="LANG",
                   help="also tokenized lowercased BLEU as fairseq scores it: hypotheses and references "
                        "Moses-tokenized by the rules of LANG (the target language: de for en-de); default: "
                        "the model's data.moses target, if it was trained on Moses-tokenized text")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_evaluate)


def _parser_perplexity(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity of a text (LM) or of targets given sources (seq2seq)")
    _add_model(p)
    p.add_argument("--text", required=True, metavar="FILE", help="LM: a text file; seq2seq: the target sentences")
    p.add_argument("--src", default=None, metavar="FILE", help="seq2seq: the source sentences, line-aligned")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_perplexity)


def _parser_plot(sub) -> None:
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


def _parser_explain(sub) -> None:
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
    p.add_argument("--layer", type=int, default=0, help="recurrent models (arch rnn): the encoder layer whose "
                   "gates and cell states are shown (default 0; the Transformer shows every layer)")  # fmt: skip
    p.set_defaults(func=_explain)


def _parser_serve(sub) -> None:
    p = sub.add_parser("serve", help="a local HTTP API and web page for a trained model")
    _add_model(p)
    _add_quantize(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--max-in-flight", type=int, default=4, help="requests run at once; more wait (default 4)")
    p.add_argument("--queue", type=int, default=None, help="requests that may wait for a slot; more get 503 at "
                   "once (default 2 x --max-in-flight)")  # fmt: skip
    p.add_argument("--request-timeout", type=float, default=30.0, metavar="S",
                   help="seconds a request may take, waiting included, before a 503 (default 30)")  # fmt: skip
    p.add_argument("--idle-timeout", type=float, default=10.0, metavar="S",
                   help="seconds a connection may take to send a request, or sit idle, before it is closed "
                   "(default 10)")  # fmt: skip
    p.add_argument("--max-work", type=int, default=None, metavar="N",
                   help="largest texts x beam x token positions one request may ask (default 16384)")  # fmt: skip
    p.add_argument("--allowed-host", action="append", metavar="HOST", help="also accept this Host header")
    p.add_argument("--cors-origin", action="append", metavar="ORIGIN", help="allow browser requests from ORIGIN")
    p.set_defaults(func=_serve)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiayn", description="The Transformer of 'Attention Is All You Need'.")
    sub = parser.add_subparsers(dest="command", required=True)
    _parser_train(sub)
    _parser_tokenizer(sub)
    _parser_average(sub)
    _parser_checkpoint(sub)
    _parser_info(sub)
    _parser_import(sub)
    _parser_export(sub)
    _parser_demo(sub)
    _parser_translate(sub)
    _parser_generate(sub)
    _parser_evaluate(sub)
    _parser_perplexity(sub)
    _parser_plot(sub)
    _parser_explain(sub)
    _parser_serve(sub)
    return parser


def _show_note(message, category, filename, lineno, file=None, line=None) -> None:
    """Config notes (an old key's new name) as one line `note: ...`; other warnings as Python prints them."""
    from aiayn.config import ConfigNote

    if issubclass(category, ConfigNote):
        print(f"note: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, filename, lineno, file, line)


_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    warnings.showwarning = _show_note
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "extra_ok", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    func: Callable[[argparse.Namespace, list[str]], int] = args.func
    try:
        return func(args, extra)
    except UserError as e:  # what the user can fix: one line; anything else is a bug and keeps its traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        # A path the user gave that cannot be read or written (e.g. --output in a folder that does not exist).
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
