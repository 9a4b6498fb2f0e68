"""The `bertkit` command: argument parsing only.

Each subcommand maps onto exactly one library function; nothing else in
bertkit imports this module. A subcommand is one `_add_<name>` function that
declares its arguments and sets `func` to a small adapter calling the library.
"""

from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """Bad input from the user: printed as one line, no traceback."""


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenize", help="tokenize texts (one per line, or tab-separated pairs) to JSON lines")
    p.add_argument("--vocab", required=True, help="directory with vocab.txt (or a vocab.txt file, or a model name)")
    p.add_argument("--input", default="-", help="input file, '-' for stdin")
    p.add_argument("--output", default="-", help="output file, '-' for stdout")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--cased", action="store_true", help="do not lowercase (overrides tokenizer_config.json)")

    def run(a):
        from bertkit.tokenizer import tokenize_file

        tokenize_file(a.vocab, a.input, a.output, max_length=a.max_length,
                      do_lower_case=False if a.cased else None)

    p.set_defaults(func=run)


# Registered in the order `bertkit --help` lists them.
SUBCOMMANDS = [_add_tokenize]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertkit", description="BERT from first principles.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, FileNotFoundError, ValueError) as e:
        # One clear line for bad input; real bugs still get a traceback.
        print(f"bertkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bertkit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
