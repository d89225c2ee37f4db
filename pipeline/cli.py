"""The `batchgen` command line.

Each subcommand group registers itself in its own `add_*_commands(subparsers)` function and
binds a handler with `set_defaults(handler=...)`; a handler takes the parsed namespace and
returns an exit code. To add a group (e.g. `run`, `plan`), write such a function and call it
from `build_parser`. Handlers raise ValueError/RuntimeError/OSError for user-facing failures;
`main` turns those into a message on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from engine import model_assets

EXIT_OK = 0
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand group registered."""
    parser = argparse.ArgumentParser(prog="batchgen", description="Offline batch LLM generation.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_models_commands(subparsers)
    return parser


def add_models_commands(subparsers: argparse._SubParsersAction) -> None:
    """Register `batchgen models {fetch,list}`."""
    models = subparsers.add_parser("models", help="fetch and list the real models")
    actions = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    fetch = actions.add_parser("fetch", help="install, verify and convert a model; print its path")
    known = ", ".join(sorted(model_assets.MODEL_ASSETS))
    fetch.add_argument("name", metavar="NAME", help=f"one of: {known}")
    fetch.add_argument("--cache-dir", default=None, help="cache root (default: $BATCHGEN_CACHE)")
    fetch.add_argument("--no-progress", action="store_true", help="hide progress bars")
    fetch.set_defaults(handler=_models_fetch)

    listing = actions.add_parser("list", help="show each known model and whether it is fetched")
    listing.add_argument("--cache-dir", default=None, help="cache root (default: $BATCHGEN_CACHE)")
    listing.set_defaults(handler=_models_list)


def _models_fetch(args: argparse.Namespace) -> int:
    path = model_assets.fetch_model(args.name, args.cache_dir, progress=not args.no_progress)
    print(path)
    return EXIT_OK


def _models_list(args: argparse.Namespace) -> int:
    names = sorted(model_assets.MODEL_ASSETS)
    width = max(len(name) for name in names)
    print(f"{'NAME':<{width}}  FETCHED  PATH")
    for name in names:
        fetched = "yes" if model_assets.is_fetched(name, args.cache_dir) else "no"
        print(f"{name:<{width}}  {fetched:<7}  {model_assets.model_dir(name, args.cache_dir)}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `batchgen` console script; returns the process exit code.

    argparse itself exits (code 2) on malformed arguments and (code 0) on --help.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return int(handler(args))
    except (ValueError, RuntimeError, OSError) as exc:
        print(f"batchgen: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
