"""The `bertkit` command: argument parsing only.

Each subcommand maps onto exactly one library function; nothing else in
bertkit imports this module. A subcommand is one `_add_<name>` function that
declares its arguments and sets `func` to a small adapter calling the library.

One name for each concept on every subcommand: `--model` (a checkpoint folder, a run folder
or an installed model name), `--output` (the file or folder written), `--max-length`,
`--no-progress`, `--device`, `--dtype`. Every argument is checked when it is parsed (the
`type=` functions below), so bad values fail in one line before any work starts.
Exit codes: 0 done, 1 the run failed (e.g. training diverged), 2 bad input,
130 interrupted (SIGINT), 143 terminated (SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys


class UserError(Exception):
    """Bad input from the user: printed as one line, no traceback."""


class Stopped(Exception):
    """The run was stopped by a signal after saving its state; carries the exit code (128 + signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.code = 128 + signum


# ---------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number")
    return value


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1")
    return value


def max_length(text: str) -> int:
    value = positive_int(text)
    if not 8 <= value <= 512:  # BERT checkpoints have 512 positions; below 8 nothing useful fits
        raise argparse.ArgumentTypeError(f"{text!r} must be between 8 and 512 tokens")
    return value


def device(text: str) -> str:
    """cpu, cuda, cuda:N (checked against the machine here, not at the first tensor)."""
    import re

    if text == "cpu":
        return text
    if not re.fullmatch(r"cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: use cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device on this machine (use cpu)")
    index = int(text.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def shard(text: str) -> tuple[int, int]:
    """i/n: part i (counted from 0) of n disjoint parts, e.g. 0/4 ... 3/4 on four machines."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        i, n = -1, 0
    if not sep or n < 1 or not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r} is not i/n with 0 <= i < n (e.g. 0/4 for the first of four parts)")
    return i, n


def _stop_on(signum: int, message: str) -> None:
    """Turn signal `signum` into Stopped(signum, message): the command's own state is consistent at
    every moment (it writes atomically), so stopping anywhere is safe."""
    def stop(sig, frame):
        raise Stopped(sig, message)

    signal.signal(signum, stop)


def _parser(sub: argparse._SubParsersAction, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand parser whose --help shows every default."""
    return sub.add_parser(name, help=help, description=help, formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="tokenize texts (one per line, or tab-separated pairs) to JSON lines")
    p.add_argument("--vocab", required=True, help="directory with vocab.txt (and tokenizer_config.json), "
                   "a vocab.txt file, or an installed model name")
    p.add_argument("--input", default="-", help="input file, '-' for stdin")
    p.add_argument("--output", default="-", help="output file, '-' for stdout")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--cased", action="store_true", help="do not lowercase (overrides tokenizer_config.json)")

    def run(a):
        from bertkit.tokenizer import tokenize_file

        tokenize_file(a.vocab, a.input, a.output, max_length=a.max_length,
                      do_lower_case=False if a.cased else None)

    p.set_defaults(func=run)


def _add_vocab(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("vocab", help="learn a WordPiece vocabulary (vocab.txt + tokenizer_config.json) from text")
    p.add_argument("inputs", nargs="+", help="text files, one text per line (.jsonl: one JSON object per line)")
    p.add_argument("--output", required=True, help="directory to write vocab.txt and tokenizer_config.json")
    p.add_argument("--vocab-size", type=int, default=30522, help="tokens in all, special tokens included")
    p.add_argument("--cased", action="store_true", help="keep case and accents (default: lowercase, strip accents)")
    p.add_argument("--text-field", default=None, help="read every input as JSON lines, text in this field "
                   "(default: 'text' for .jsonl files, plain lines otherwise)")
    p.add_argument("--unused", type=int, default=0, help="[unusedN] slots after [PAD], as in bert-base (which has 994)")
    p.add_argument("--min-frequency", type=int, default=2, help="never merge pairs seen fewer times")
    p.add_argument("--criterion", choices=["likelihood", "ratio"], default="likelihood",
                   help="merge score: unigram likelihood gain, or count(ab)/(count(a)*count(b))")
    p.add_argument("--workers", type=int, default=None, help="processes for word counting (default: all cores)")
    p.add_argument("--no-progress", action="store_true")

    def run(a):
        from bertkit.vocab import build_vocab

        build_vocab(a.inputs, a.output, vocab_size=a.vocab_size, do_lower_case=not a.cased,
                    text_field=a.text_field, num_unused=a.unused, min_frequency=a.min_frequency,
                    criterion=a.criterion, workers=a.workers, progress=not a.no_progress)

    p.set_defaults(func=run)

def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="corpus files -> NSP instances in numpy shards for `bertkit pretrain`")
    p.add_argument("--vocab", required=True, help="directory with vocab.txt (e.g. a model directory)")
    p.add_argument("--input", required=True, nargs="+", help="text files (one sentence per line, blank line "
                   "between documents), or .jsonl with a text field")
    p.add_argument("--output", required=True, help="directory for the shards")
    p.add_argument("--format", default="auto", choices=["auto", "sentences", "paragraphs", "jsonl"],
                   help="auto: jsonl for .jsonl/.json, else sentences; paragraphs: one document per line")
    p.add_argument("--text-field", default="text", help="JSON field holding the document text")
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--short-seq-prob", type=float, default=0.1)
    p.add_argument("--dupe-factor", type=int, default=1, help="passes over the corpus with different pairings")
    p.add_argument("--docs-per-shard", type=int, default=2000)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--shard", type=shard, default=None, help="i/n: documents i, i+n, i+2n, ... only, into "
                   "OUTPUT/part-i-of-n (e.g. one part per machine); `pretrain data=OUTPUT` reads all parts as one")

    def run(a):
        from bertkit.data import prepare

        prepare(a.vocab, a.input, a.output, max_seq_length=a.max_seq_length, short_seq_prob=a.short_seq_prob,
                dupe_factor=a.dupe_factor, seed=a.seed, docs_per_shard=a.docs_per_shard, workers=a.workers,
                fmt=a.format, text_field=a.text_field, shard=a.shard)

    p.set_defaults(func=run)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="MLM + NSP pre-training (or continued pre-training) on prepared shards")
    p.add_argument("--config", default=None, help="YAML or JSON file mirroring bertkit.pretrain.PretrainConfig")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. data=DIR model=mini train.max_steps=1000 train.lr=1e-4 resume=true")

    def run(a):
        from bertkit.pretrain import load_config, pretrain

        result = pretrain(load_config(a.config, a.overrides))
        if result.stopped:
            print("bertkit pretrain: stopped by signal; state saved, rerun with resume=true to continue",
                  file=sys.stderr)

    p.set_defaults(func=run)


def _user_task_args(p: argparse.ArgumentParser) -> None:
    """Columns of a user's own CSV/TSV/JSON-lines files (finetune and evaluate)."""
    p.add_argument("--data-dir", default=None, help="folder with glue/, conll2003/, imdb/, squad_v1.1/ "
                   "(default $BERTKIT_DATA)")
    p.add_argument("--train-file", default=None, help="your own .csv/.tsv/.jsonl training file (no --task)")
    p.add_argument("--dev-file", default=None, help="your own validation file (picks the best epoch)")
    p.add_argument("--text-column", default="text", help="column name (or 0-based index) of the text")
    p.add_argument("--text-pair-column", default=None, help="column of the second text, for pairs")
    p.add_argument("--label-column", default="label")
    p.add_argument("--regression", action="store_true", help="labels are numbers to predict (one output)")
    p.add_argument("--labels", default=None, help="comma-separated label set (default: those in --train-file)")


def _user_task(a) -> dict:
    return dict(dev_file=a.dev_file, text_column=a.text_column, text_pair_column=a.text_pair_column,
                label_column=a.label_column)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a checkpoint on a task (sst2, cola, rte, mrpc, qnli, stsb, "
                       "imdb, conll2003, squad) or on your own files")
    p.add_argument("--task", default=None, help="built-in task name; leave out with --train-file")
    p.add_argument("--model", required=True, help="checkpoint directory or installed model name")
    p.add_argument("--out-dir", required=True, help="where best/, last/, metrics.jsonl, finetune.json go")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps (or a step count if >= 1)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train only the pooler and the head on frozen BERT features (use a larger --lr, e.g. 1e-3)")
    p.add_argument("--max-train-examples", type=int, default=None, help="a fixed random subset of the train split")
    p.add_argument("--max-eval-examples", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None, help="default: the task's (128; 384 SQuAD, 512 IMDB)")
    p.add_argument("--seed", type=int, default=42)
    _user_task_args(p)

    def run(a):
        from bertkit.tasks.finetune import finetune

        s = finetune(a.task, a.model, a.out_dir, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size,
                     warmup=a.warmup, bf16=a.bf16, freeze_encoder=a.freeze_encoder,
                     max_train_examples=a.max_train_examples, max_eval_examples=a.max_eval_examples,
                     max_length=a.max_length, seed=a.seed, data_dir=a.data_dir, train_file=a.train_file,
                     regression=a.regression, labels=a.labels.split(",") if a.labels else None, **_user_task(a))
        for row in s["epochs"]:
            print(f"epoch {row['epoch']}: " + ", ".join(
                f"{k} {row[k]:.4f}" for k in ("train_loss", "train_accuracy", "train_span_accuracy", "val_loss",
                                              f"val_{s['metric']}") if k in row)
                  + f", {row['epoch_seconds']:.1f} s")
        print(f"best {s['metric']} {s['best']:.4f} at step {s['best_step']} -> {s['best_dir']}")

    p.set_defaults(func=run)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a fine-tuned model on a task's dev (or test) split; prints JSON")
    p.add_argument("model_dir", help="a finetune --out-dir (or its best/)")
    p.add_argument("--task", default=None, help="default: the task the model was fine-tuned on")
    p.add_argument("--split", default="dev", help="dev, or test where the task has labelled test data (conll2003)")
    p.add_argument("--max-examples", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=64)
    _user_task_args(p)

    def run(a):
        import json

        from bertkit.tasks.finetune import evaluate

        print(json.dumps(evaluate(a.model_dir, a.task, split=a.split, data_dir=a.data_dir,
                                  max_examples=a.max_examples, batch_size=a.batch_size, **_user_task(a))))

    p.set_defaults(func=run)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="labels, entities or answer spans for raw text; JSON lines out")
    p.add_argument("model_dir", help="a finetune --out-dir (or its best/)")
    p.add_argument("--text", action="append", default=None,
                   help="an input (repeatable); pairs and QA as 'text<TAB>pair' / 'question<TAB>context'")
    p.add_argument("--input", default="-", help="file with one input per line (same format), '-' for stdin")

    def run(a):
        import json

        from bertkit.tasks.finetune import predict

        if a.text is not None:
            lines = a.text
        elif a.input == "-":
            lines = sys.stdin.read().splitlines()
        else:
            with open(a.input, encoding="utf-8") as f:
                lines = f.read().splitlines()
        inputs = [tuple(x.split("\t", 1)) if "\t" in x else x for x in lines if x.strip()]
        if not inputs:
            raise UserError("no input text (give --text, --input FILE, or lines on stdin)")
        for text, result in zip(inputs, predict(a.model_dir, inputs)):
            print(json.dumps({"input": text, **result}, ensure_ascii=False))

    p.set_defaults(func=run)


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "embed", "sentence embeddings of texts (one per line, or JSON lines) to .npy or JSON lines, "
                "streamed in bounded memory; a killed run continues where it stopped")
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2",
                   help="checkpoint directory, run folder or installed model name")
    p.add_argument("--input", nargs="+", default=["-"], help="files or glob patterns ('docs/*.jsonl'), one text "
                   "per line or JSON lines; '-' for stdin")
    p.add_argument("--text-field", default=None, help="read the inputs as JSON lines, text in this field "
                   "(default: 'text' for .jsonl files, plain lines otherwise)")
    p.add_argument("--output", required=True, help="out.npy, out.jsonl, or '-' for JSON lines on stdout")
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--window", type=positive_int, default=4096, help="texts length-sorted together and written "
                   "as one chunk: memory and what a crash can cost grow with it")
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32")
    p.add_argument("--max-length", type=max_length, default=None, help="tokens per input (default: the model's 512)")
    p.add_argument("--long-inputs", choices=["truncate", "windows"], default="truncate",
                   help="texts over max-length: keep the start, or average overlapping windows")
    p.add_argument("--stride", type=non_negative_int, default=None, help="tokens shared by consecutive windows")
    p.add_argument("--normalize", action="store_true", help="unit-length vectors")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:1, ... (int8 is CPU-only)")
    p.add_argument("--workers", type=positive_int, default=None, help="processes that tokenize "
                   "(default: the tokenizer's)")
    p.add_argument("--shard", type=shard, default=None, help="i/n: embed rows i, i+n, i+2n, ... only (part i of "
                   "n, e.g. one per machine); part i interleaves back as whole[i::n]")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue an unfinished run with the same settings (--no-resume: start over)")
    p.add_argument("--overwrite", action="store_true", help="recompute a complete output")
    p.add_argument("--ray", action="store_true", help="run on a Ray cluster (pip install 'bertkit[ray]'); "
                   "inputs are read by Ray, so every node must see them; no resume")
    p.add_argument("--ray-address", default=None, help="the cluster's head, e.g. 10.0.0.1:6379 "
                   "(default: $RAY_ADDRESS, else a Ray instance on this machine)")
    p.add_argument("--no-progress", action="store_true")

    def run(a):
        options = dict(pooling=a.pooling, dtype=a.dtype, max_length=a.max_length, long_inputs=a.long_inputs,
                       stride=a.stride, normalize=a.normalize, device=a.device)
        if a.ray:
            import importlib.util

            if importlib.util.find_spec("ray") is None:
                raise UserError("--ray needs Ray: pip install 'bertkit[ray]'")
            if a.shard is not None or a.workers is not None:
                raise UserError("--ray spreads the work itself: leave out --shard and --workers")
            import ray

            from bertkit.corpus import embed_corpus_ray

            ray.init(address=a.ray_address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
            s = embed_corpus_ray(a.model, a.input, a.output, text_field=a.text_field, batch_size=a.batch_size,
                                 window=a.window, progress=not a.no_progress, **options)
        else:
            from bertkit.corpus import embed_corpus

            _stop_on(signal.SIGTERM, "stopped; rerun the same command to continue")
            s = embed_corpus(a.model, a.input, a.output, text_field=a.text_field, batch_size=a.batch_size,
                             window=a.window, shard=a.shard, workers=a.workers, resume=a.resume,
                             overwrite=a.overwrite, progress=not a.no_progress, **options)
        if not a.no_progress and not s["already_complete"]:
            resumed = f" (resumed at row {s['resumed_at']:,})" if s["resumed_at"] else ""
            print(f"embed: {s['rows']:,} vectors of {s['dim']} -> {s['output']} in {s['seconds']:.1f} s{resumed}",
                  file=sys.stderr)

    p.set_defaults(func=run)


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "convert", "Google's TensorFlow BERT checkpoint (bert_config.json, vocab.txt, "
                "bert_model.ckpt.*) -> the Hugging Face layout, without TensorFlow")
    p.add_argument("source", help="folder of the TensorFlow checkpoint (or its path prefix, e.g. DIR/model.ckpt-1000)")
    p.add_argument("--output", "-o", required=True, help="new folder for config.json, model.safetensors, vocab.txt")

    def run(a):
        from bertkit.tf_checkpoint import convert_tf_checkpoint

        print(convert_tf_checkpoint(a.source, a.output))

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole BERT story on a built-in default: data, tokenization, contextual "
                       "vectors, sentiment fine-tuning, tiny pre-training, report.md")
    p.add_argument("--work-dir", default="runs/demo", help="everything goes here; a re-run reuses what is cached")
    p.add_argument("--steps", default=None, help="comma-separated subset of: data,tokens,bat,finetune,pretrain,report")
    p.add_argument("--fast", action="store_true", help="a small budget (256 train snippets, 1 epoch, 10 "
                   "pre-training steps): every step in a minute or two")
    p.add_argument("--model", default=None, help="checkpoint to fine-tune (default all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 2)")
    p.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default 5e-5)")
    p.add_argument("--max-train-examples", type=int, default=None, help="a fixed random subset of the train split")
    p.add_argument("--pretrain-steps", type=int, default=None)

    def run(a):
        from bertkit.demo import STEPS, DemoConfig, run_demo

        given = {k: v for k, v in dict(work_dir=a.work_dir, model=a.model, epochs=a.epochs, lr=a.lr,
                                        max_train_examples=a.max_train_examples,
                                        pretrain_steps=a.pretrain_steps).items() if v is not None}
        cfg = DemoConfig.fast(**given) if a.fast else DemoConfig(**given)
        run_demo(cfg, tuple(s.strip() for s in a.steps.split(",")) if a.steps else STEPS)

    p.set_defaults(func=run)


# Registered in the order `bertkit --help` lists them.
SUBCOMMANDS = [_add_tokenize, _add_vocab, _add_prepare, _add_pretrain, _add_finetune, _add_evaluate, _add_predict,
               _add_embed, _add_convert, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    from bertkit import __version__

    parser = argparse.ArgumentParser(prog="bertkit", description="BERT from first principles.")
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except Stopped as e:
        print(f"bertkit {args.command}: {e}", file=sys.stderr)
        return e.code
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            FileExistsError, ValueError) as e:
        # One clear line for bad input; real bugs still get a traceback.
        print(f"bertkit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, I/O error: name the path
        print(f"bertkit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"bertkit {args.command}: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return " ".join(str(e).split("\n")[0].split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
