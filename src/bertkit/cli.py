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

from bertkit.hub import DEFAULT_MODEL

# The packages of bertkit's optional extras (pip install 'bertkit[onnx]'), and the extra that brings
# each: a command that needs one that is missing says in one line what to install.
OPTIONAL_PACKAGES = {"onnx": "onnx", "onnxruntime": "onnx", "fastapi": "serve", "uvicorn": "serve",
                     "prometheus_client": "serve", "starlette": "serve", "pydantic": "serve", "ray": "ray"}


class UserError(Exception):
    """Bad input from the user: printed as one line, no traceback."""


class RunFailed(Exception):
    """The run itself failed (e.g. training diverged): printed as one line, exit code 1."""


class Stopped(Exception):
    """The run was stopped by a signal after saving its state; carries the exit code (128 + signal)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.code = 128 + signum


# ---------------------------------------------------------------------------- argument types


def _number(text: str, kind: type, ok, needs: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole number' if kind is int else 'number'}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be {needs}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "at least 1")


def non_negative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "0 or more")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: 0 < v < float("inf"), "a positive number")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "between 0 and 1")


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


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v < float("inf"), "0 or more")


def open_fraction(text: str) -> float:
    value = fraction(text)
    if value in (0, 1):
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1 (both excluded)")
    return value


def existing_file(text: str) -> str:
    from pathlib import Path

    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return text


def existing_dir(text: str) -> str:
    from pathlib import Path

    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return text


def label_list(text: str) -> list[str]:
    labels = [x.strip() for x in text.split(",")]
    if len(labels) < 2 or not all(labels):
        raise argparse.ArgumentTypeError(f"{text!r}: give at least two comma-separated label names")
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"{text!r} names a label twice")
    return labels


def task_name(text: str) -> str:
    from bertkit.tasks.datasets import get_task

    try:
        return get_task(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def train_device(text: str) -> str:
    """auto (cuda when there is one), or a device as `device` checks it."""
    return text if text == "auto" else device(text)


def port(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return value


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line on stderr (and exit code 2), without the usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _ShowDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each argument's default, but not None or False: there the help says what happens."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


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
    return sub.add_parser(name, help=help, description=help, formatter_class=_ShowDefaults)


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "tokenize", "tokenize texts (one per line, or tab-separated pairs) to JSON lines")
    p.add_argument("--model", "--vocab", default=DEFAULT_MODEL, help="model or tokenizer folder (with "
                   "vocab.txt), a vocab.txt file, a run folder or an installed model name")
    p.add_argument("--input", default="-", help="input file, '-' for stdin")
    p.add_argument("--output", default="-", help="output file (written whole or not at all), '-' for stdout")
    p.add_argument("--max-length", type=max_length, default=None, help="truncate to this many tokens "
                   "(None: never)")
    p.add_argument("--cased", action="store_true", help="do not lowercase (overrides tokenizer_config.json)")
    p.add_argument("--workers", type=positive_int, default=None, help="processes (None: all cores); "
                   "the output is the same for any number")
    p.add_argument("--no-progress", action="store_true")

    def run(a):
        from bertkit.tokenizer import tokenize_file

        tokenize_file(a.model, a.input, a.output, max_length=a.max_length, do_lower_case=False if a.cased else None,
                      workers=a.workers, progress=not a.no_progress)

    p.set_defaults(func=run)


def _add_vocab(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "vocab", "learn a WordPiece vocabulary (vocab.txt + tokenizer_config.json) from text")
    p.add_argument("inputs", nargs="+", help="text files, one text per line (.jsonl: one JSON object per line)")
    p.add_argument("--output", required=True, help="directory to write vocab.txt and tokenizer_config.json")
    p.add_argument("--vocab-size", type=positive_int, default=30522, help="tokens in all, special tokens included")
    p.add_argument("--cased", action="store_true", help="keep case and accents (default: lowercase, strip accents)")
    p.add_argument("--text-field", default=None, help="read every input as JSON lines, text in this field "
                   "(default: 'text' for .jsonl files, plain lines otherwise)")
    p.add_argument("--unused", type=non_negative_int, default=0,
                   help="[unusedN] slots after [PAD], as in bert-base (which has 994)")
    p.add_argument("--min-frequency", type=positive_int, default=2, help="never merge pairs seen fewer times")
    p.add_argument("--criterion", choices=["likelihood", "ratio"], default="likelihood",
                   help="merge score: unigram likelihood gain, or count(ab)/(count(a)*count(b))")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="processes for word counting (default: all cores)")
    p.add_argument("--no-progress", action="store_true")

    def run(a):
        from bertkit.vocab import build_vocab

        build_vocab(a.inputs, a.output, vocab_size=a.vocab_size, do_lower_case=not a.cased,
                    text_field=a.text_field, num_unused=a.unused, min_frequency=a.min_frequency,
                    criterion=a.criterion, workers=a.workers, progress=not a.no_progress)

    p.set_defaults(func=run)

def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "prepare", "corpus files -> NSP instances in numpy shards for `bertkit pretrain`")
    p.add_argument("--model", "--vocab", dest="vocab", required=True, help="the model whose vocabulary "
                   "tokenizes (a folder with vocab.txt, a run folder or an installed model name)")
    p.add_argument("--input", required=True, nargs="+", help="text files (one sentence per line, blank line "
                   "between documents), or .jsonl with a text field")
    p.add_argument("--output", required=True, help="directory for the shards")
    p.add_argument("--format", default="auto", choices=["auto", "sentences", "paragraphs", "jsonl"],
                   help="auto: jsonl for .jsonl/.json, else sentences; paragraphs: one document per line")
    p.add_argument("--text-field", default="text", help="JSON field holding the document text")
    p.add_argument("--max-seq-length", "--max-length", type=max_length, default=128)
    p.add_argument("--short-seq-prob", type=fraction, default=0.1, help="share of instances made shorter")
    p.add_argument("--dupe-factor", type=positive_int, default=1, help="passes over the corpus with different pairings")
    p.add_argument("--docs-per-shard", type=positive_int, default=2000)
    p.add_argument("--workers", type=positive_int, default=None, help="processes (default: all cores)")
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
    p = _parser(sub, "pretrain", "MLM + NSP pre-training (or continued pre-training) on prepared shards")
    p.add_argument("--config", default=None, help="YAML or JSON file mirroring bertkit.pretrain.PretrainConfig")
    p.add_argument("--model", default=None, help="preset (tiny, mini, small, medium, base, large) or a checkpoint "
                   "to continue from; sets `model`")
    p.add_argument("--output", default=None, help="the run folder; sets `train.out_dir`")
    p.add_argument("--device", type=device, default=None, help="cpu, cuda or cuda:N; sets `train.device`")
    p.add_argument("--no-progress", action="store_true", help="no progress bar; sets `train.progress=false`")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="e.g. data=DIR train.max_steps=1000 train.lr=1e-4 train.mixed_precision=bf16 resume=true")

    def run(a):
        from bertkit.pretrain import load_config, pretrain
        from bertkit.train import Diverged

        flags = {"model": a.model, "train.out_dir": a.output, "train.device": a.device,
                 "train.progress": "false" if a.no_progress else None}
        overrides = [f"{k}={v}" for k, v in flags.items() if v is not None] + a.overrides  # key=value wins
        try:
            result = pretrain(load_config(a.config, overrides))
        except Diverged as e:
            raise RunFailed(str(e)) from None
        if result.stopped:
            raise Stopped(result.stopped, f"stopped at step {result.step}; state saved; rerun with resume=true "
                          "to continue")

    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- fine-tuning


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    import dataclasses

    from bertkit.tasks.datasets import TASKS, USER_FILES_RECIPE
    from bertkit.tasks.settings import FinetuneConfig

    recipes = "; ".join(f"{name} {r.epochs} epoch(s), lr {r.lr:g}, batch {r.batch_size}, max length {r.max_length}"
                        for name, r in [*((n, t.recipe) for n, t in TASKS.items()), ("your files", USER_FILES_RECIPE)])
    p = _parser(sub, "finetune", "fine-tune a checkpoint on a built-in task or on your own files")
    p.epilog = (f"Settings left unset take the task's recipe: {recipes}; all with warmup 0.1 and weight decay "
                "0.01. Precedence: command-line flags, then key=value, then --config, then the defaults.")
    p.add_argument("--config", type=existing_file, default=None, help="YAML or JSON file of FinetuneConfig settings")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="FinetuneConfig settings, e.g. lr=3e-5 labels=[neg,pos] resume=auto")
    defaults = FinetuneConfig()

    def flag(*names: str, help: str, shown: str | None = None, **kw) -> None:
        """A setting's flag: absent, it leaves the setting to key=value, --config or the default."""
        dest = kw.setdefault("dest", names[0].lstrip("-").replace("-", "_"))
        value = getattr(defaults, dest)
        shown = shown or ("the task's recipe" if value is None else value)
        target = kw.pop("group", p)
        target.add_argument(*names, default=argparse.SUPPRESS, help=f"{help} (default: {shown})", **kw)

    flag("--task", type=task_name, help=f"built-in task: {', '.join(TASKS)}", shown="none: your --train-file")
    flag("--model", help="checkpoint folder, run folder or installed model name")
    flag("--output", "--out-dir", help="folder for best/, last/, state.pt, metrics.jsonl, finetune.json")
    flag("--epochs", type=positive_int, help="passes over the train split")
    flag("--lr", type=positive_float, help="peak learning rate (AdamW)")
    flag("--batch-size", type=positive_int, help="examples per micro-batch")
    flag("--warmup", type=non_negative_float, help="warmup: a fraction of the steps (< 1) or a step count")
    flag("--weight-decay", type=non_negative_float, help="AdamW weight decay (not on biases and LayerNorm)")
    flag("--max-steps", type=positive_int, help="stop after this many optimizer steps", shown="the epochs'")
    flag("--grad-accum", type=positive_int, help="micro-batches per optimizer step")
    flag("--max-length", type=max_length, help="word pieces per input (QA: per window)")
    flag("--doc-stride", type=positive_int, help="QA: context tokens shared by consecutive windows")
    flag("--seed", type=non_negative_int, help="head initialisation, data order, dropout, example subsets")
    precision = p.add_mutually_exclusive_group()
    flag("--bf16", action="store_const", const="bf16", dest="mixed_precision", group=precision,
         help="bf16 autocast (fast on CPUs with AMX/AVX512-BF16, and on GPUs)", shown="fp32")
    flag("--fp16", action="store_const", const="fp16", dest="mixed_precision", group=precision,
         help="fp16 autocast with loss scaling (CUDA only)", shown="fp32")
    flag("--device", type=train_device, help="auto, cpu, cuda or cuda:N")
    flag("--freeze-encoder", action="store_const", const=True, shown="off",
         help="train only the pooler and the head on frozen BERT features (wants a larger --lr, e.g. 1e-3)")
    flag("--max-train-examples", type=positive_int, help="a fixed random subset of the train split", shown="all")
    flag("--max-eval-examples", type=positive_int, help="a fixed random subset of the dev split", shown="all")
    flag("--data-dir", type=existing_dir, help="folder with glue/, conll2003/, imdb/, squad_v1.1/",
         shown="$BERTKIT_DATA")
    flag("--train-file", type=existing_file, help="your own .csv/.tsv/.jsonl training file (no --task)",
         shown="none")
    flag("--dev-file", type=existing_file, help="your own validation file: picks the best epoch", shown="none")
    flag("--dev-split", type=open_fraction, help="without --dev-file: this fraction of --train-file validates",
         shown="none")
    flag("--text-column", help="column name (or 0-based index) of the text, in your files")
    flag("--text-pair-column", help="column of the second text, for pairs", shown="none")
    flag("--label-column", help="column of the label, in your files")
    flag("--regression", action="store_const", const=True, help="your labels are numbers (one output)",
         shown="off")
    flag("--labels", type=label_list, help="your label set, comma-separated, in class-id order",
         shown="those in --train-file, sorted")
    flag("--resume", action="store_const", const=True, help="continue the killed or stopped run in --output",
         shown="off: start a new run")
    flag("--no-progress", action="store_const", const=False, dest="progress", help="no progress bar",
         shown="a progress bar")
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}

    def run(a):
        from bertkit.config import load_settings
        from bertkit.tasks.finetune import finetune
        from bertkit.train import Diverged

        cfg = load_settings(FinetuneConfig, a.config, a.overrides)
        try:
            s = finetune(dataclasses.replace(cfg, **{k: v for k, v in vars(a).items() if k in fields}))
        except Diverged as e:
            raise RunFailed(str(e)) from None
        if s["status"] == "stopped":
            raise Stopped(s["signal"], f"stopped at step {s['step']}; state saved in {s['settings']['output']}; "
                          "rerun with --resume to continue")
        best = "none" if s["best"] is None else f"{s['best']:.4f}"
        print(f"best {s['metric']} {best} at step {s['best_step']} -> {s['best_dir']}")

    p.set_defaults(func=run)


def _model_flags(p: argparse.ArgumentParser, batch_size: int) -> None:
    """What evaluate and predict share: the model and how it runs."""
    p.add_argument("--model", required=True, help="a fine-tuning run folder (its best/), or a fine-tuned model folder")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help="inputs per forward pass")
    p.add_argument("--max-length", type=max_length, default=None, help="word pieces per input (default: as the "
                   "model was fine-tuned)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default="fp32", help="weights for inference")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "evaluate", "score a fine-tuned model on a task's split, or on your own labelled file; "
                "prints JSON")
    _model_flags(p, batch_size=64)
    p.add_argument("--task", type=task_name, default=None, help="a built-in task (default: the model's own)")
    p.add_argument("--split", choices=["train", "dev", "test"], default="dev",
                   help="test: where the task has labelled test data (conll2003)")
    p.add_argument("--data-dir", type=existing_dir, default=None, help="folder with glue/, conll2003/, imdb/, "
                   "squad_v1.1/ (default: $BERTKIT_DATA)")
    p.add_argument("--dev-file", type=existing_file, default=None,
                   help="your own labelled .csv/.tsv/.jsonl to score instead of a task's split")
    p.add_argument("--text-column", default=None, help="with --dev-file: the text's column (default: text)")
    p.add_argument("--text-pair-column", default=None, help="with --dev-file: the second text's column")
    p.add_argument("--label-column", default=None, help="with --dev-file: the label's column (default: label)")
    p.add_argument("--max-examples", type=positive_int, default=None, help="a fixed random subset (default: all)")
    p.add_argument("--seed", type=non_negative_int, default=42, help="picks the --max-examples subset "
                   "(fine-tuning's seed picks the same one)")
    p.add_argument("--output", default="-", help="JSON file for the scores, '-' for stdout")

    def run(a):
        import json

        from bertkit import io
        from bertkit.tasks.finetune import evaluate

        scores = evaluate(a.model, a.task, a.split, data_dir=a.data_dir, dev_file=a.dev_file,
                          text_column=a.text_column, text_pair_column=a.text_pair_column,
                          label_column=a.label_column, max_examples=a.max_examples, batch_size=a.batch_size,
                          max_length=a.max_length, dtype=a.dtype, device=a.device, seed=a.seed)
        if a.output == "-":
            print(json.dumps(scores, allow_nan=False))
        else:
            io.write_json(a.output, scores)

    p.set_defaults(func=run)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "predict", "labels, entities or answer spans for raw text; JSON lines out")
    _model_flags(p, batch_size=32)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", action="append", default=None,
                        help="an input (repeatable); pairs and QA as 'text<TAB>pair' / 'question<TAB>context'")
    source.add_argument("--input", default="-", help="file with one input per line (same format), '-' for stdin")
    p.add_argument("--output", default="-", help="JSON-lines file to write, '-' for stdout")

    def run(a):
        import json

        from bertkit import io
        from bertkit.tasks.predictor import Predictor

        predictor = Predictor.from_pretrained(a.model, dtype=a.dtype, device=a.device, max_length=a.max_length)
        name = "--text" if a.text is not None else ("<stdin>" if a.input == "-" else a.input)
        lines = enumerate(a.text, 1) if a.text is not None else io.read_lines(a.input)
        blank = 0

        def inputs():
            nonlocal blank
            for n, line in lines:
                if not line.strip():
                    blank += 1
                    continue
                try:
                    yield predictor.task_kind.parse_line(line)
                except ValueError as e:
                    raise UserError(f"{name}:{n}: {e}") from None

        def write(f) -> None:
            count = 0
            for chunk in io.chunked(inputs(), 1024):  # streams: memory holds one chunk, not the file
                for x, result in zip(chunk, predictor(chunk, a.batch_size)):
                    f.write(json.dumps({"input": x, **result}, ensure_ascii=False) + "\n")
                count += len(chunk)
            if count == 0:
                raise UserError(f"{name}: no input text (give --text, --input FILE, or lines on stdin)")

        if a.output == "-":
            write(sys.stdout)
        else:
            io.atomic_write(a.output, lambda path: _write_with(path, write))
        if blank:
            print(f"predict: {name}: {blank} blank line(s) skipped", file=sys.stderr)

    p.set_defaults(func=run)


def _write_with(path, write) -> None:
    with open(path, "w", encoding="utf-8") as f:
        write(f)


def _add_embed(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "embed", "sentence embeddings of texts (one per line, or JSON lines) to .npy or JSON lines, "
                "streamed in bounded memory; a killed run continues where it stopped")
    p.add_argument("--model", default=DEFAULT_MODEL,
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
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default=None,
                   help="default fp32; an ONNX model runs in the precision it was exported in")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx: MODEL is a `bertkit export --format onnx` folder, run by ONNX Runtime")
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
                       stride=a.stride, normalize=a.normalize, device=a.device, backend=a.backend)
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


def _model_argument(p: argparse.ArgumentParser, help: str) -> None:
    """MODEL as the first argument, or as --model like every other subcommand takes it."""
    p.add_argument("model_arg", nargs="?", metavar="MODEL", help=help)
    p.add_argument("--model", default=None, help="the same as MODEL")


def _the_model(a: argparse.Namespace) -> str:
    if a.model_arg and a.model and a.model_arg != a.model:
        raise UserError(f"two models given: {a.model_arg!r} and --model {a.model!r}")
    if not (a.model_arg or a.model):
        raise UserError("no model: give MODEL (a run folder, a checkpoint folder or an installed model name)")
    return a.model_arg or a.model


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "serve", "serve a model over HTTP with dynamic batching: OpenAI /v1/embeddings, "
                "text-embeddings-inference /embed /predict /rerank /tokenize, /ner, /qa, /metrics, a playground at /")
    _model_argument(p, "a run folder, a checkpoint folder or an installed model name: an encoder serves "
                    "embeddings; a fine-tuned head labels, entities or answers")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=port, default=8080, help="0: any free port (the one taken is printed)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "int8"], default=None,
                   help="weights' precision (default fp32; an ONNX export runs as it was exported)")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:1, ... (int8 is CPU-only)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                   help="onnx: MODEL is a `bertkit export` folder, run by ONNX Runtime")
    p.add_argument("--max-length", type=max_length, default=None,
                   help="tokens per input (None: the model's, or its sentence-transformers max_seq_length)")
    p.add_argument("--max-batch-tokens", type=positive_int, default=4096,
                   help="word pieces per model batch; requests arriving together share a batch")
    p.add_argument("--max-client-batch-size", type=positive_int, default=32,
                   help="inputs per request; more get 413")
    p.add_argument("--max-concurrent-requests", type=positive_int, default=512,
                   help="requests in flight; past that new ones get 429 at once")
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set BERTKIT_API_KEY); "
                   "/health and / stay open")

    def run(a):
        import os

        model = _the_model(a)
        from bertkit.serve import ServeConfig, serve

        config = ServeConfig(host=a.host, port=a.port, dtype=a.dtype, device=a.device, backend=a.backend,
                             max_length=a.max_length,
                             max_batch_tokens=a.max_batch_tokens, max_client_batch_size=a.max_client_batch_size,
                             max_concurrent_requests=a.max_concurrent_requests,
                             api_key=a.api_key or os.environ.get("BERTKIT_API_KEY") or None)
        signum = serve(model, config)
        if signum is not None:
            raise Stopped(signum, f"stopped by {signal.Signals(signum).name} after answering every request in flight")

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


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "export", "a model (encoder or fine-tuned head) -> a folder for runtimes without PyTorch: "
                "model.onnx with dynamic batch and sequence axes, config.json, the tokenizer files")
    _model_argument(p, "a checkpoint folder, a run folder or an installed model name")
    p.add_argument("--output", "-o", required=True, help="new folder for model.onnx and its files")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="file format")
    p.add_argument("--int8", action="store_true", help="int8 weights (ONNX Runtime's dynamic quantization)")
    p.add_argument("--opset", type=positive_int, default=17, help="ONNX opset, 17 to 20")

    def run(a):
        from bertkit.export import export

        print(export(_the_model(a), a.output, format=a.format, int8=a.int8, opset=a.opset))

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "demo", "the whole BERT story on a built-in default: data, tokenization, contextual "
                "vectors, sentiment fine-tuning, tiny pre-training, report.md")
    p.add_argument("--output", "--work-dir", dest="work_dir", default=None, help="everything goes here; a re-run "
                   "reuses what is cached (default runs/demo)")
    p.add_argument("--steps", default=None, help="comma-separated subset of: "
                   "data,tokens,bat,finetune,pretrain,serve,report")
    p.add_argument("--fast", action="store_true", help="a small budget (512 train snippets, 1 epoch, 10 "
                   "pre-training steps): every step in a minute or two")
    p.add_argument("--config", type=existing_file, default=None, help="YAML or JSON file of DemoConfig settings")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="DemoConfig settings, e.g. finetune.batch_size=16 pretrain.lr=5e-4")
    p.add_argument("--model", default=None, help="checkpoint to fine-tune (default all-MiniLM-L6-v2)")
    p.add_argument("--epochs", type=positive_int, default=None, help="fine-tuning epochs (default 2)")
    p.add_argument("--lr", type=positive_float, default=None, help="fine-tuning learning rate (default 5e-5)")
    p.add_argument("--max-train-examples", type=positive_int, default=None,
                   help="a fixed random subset of the train split")
    p.add_argument("--pretrain-steps", type=positive_int, default=None)

    def run(a):
        from bertkit.config import load_settings
        from bertkit.demo import STEPS, DemoConfig, run_demo

        flags = {"work_dir": a.work_dir, "finetune.model": a.model, "finetune.epochs": a.epochs,
                 "finetune.lr": a.lr, "finetune.max_train_examples": a.max_train_examples,
                 "pretrain.steps": a.pretrain_steps}
        overrides = [*a.overrides, *(f"{k}={v}" for k, v in flags.items() if v is not None)]  # flags win
        cfg = load_settings(DemoConfig, a.config, overrides, base=DemoConfig.fast() if a.fast else None)
        run_demo(cfg, tuple(s.strip() for s in a.steps.split(",")) if a.steps else STEPS)

    p.set_defaults(func=run)


# Registered in the order `bertkit --help` lists them.
SUBCOMMANDS = [_add_tokenize, _add_vocab, _add_prepare, _add_pretrain, _add_finetune, _add_evaluate, _add_predict,
               _add_embed, _add_serve, _add_convert, _add_export, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    from bertkit import __version__

    parser = _Parser(prog="bertkit", description="BERT from first principles.")
    parser.add_argument("--version", action="version", version=f"bertkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    parser.commands = sub.choices  # name -> its parser, which reports the arguments it does not know
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            parser.commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as e:  # --help, --version, or a bad argument (its line is printed)
        return e.code if isinstance(e.code, int) else 2 if e.code else 0
    try:
        args.func(args)
    except Stopped as e:
        print(f"bertkit {args.command}: {e}", file=sys.stderr)
        return e.code
    except RunFailed as e:
        print(f"bertkit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            FileExistsError, ValueError) as e:
        # One clear line for bad input; real bugs still get a traceback.
        print(f"bertkit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        if e.name not in OPTIONAL_PACKAGES:
            raise
        extra = OPTIONAL_PACKAGES[e.name]
        print(f"bertkit {args.command}: error: this needs {e.name}, from bertkit's {extra} extra: "
              f"pip install 'bertkit[{extra}]'", file=sys.stderr)
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
