"""The `jaxcirc` command (`jaxcirc patch|trace|iia|bench|lasso|prune|sae|shift|sparse …`).

A thin `argparse` layer; each subcommand lives in its own module and imports JAX only when
it runs, so `jaxcirc --help` is instant. Every parser is a `_parsing.Parser` (no
abbreviations, suggestions for typos, errors with the subcommand's own usage).
"""

from __future__ import annotations

import argparse
import sys

from . import _bench, _discover, _iia, _lasso, _patch, _prune, _sae, _shift, _sparse, _trace
from ._parsing import Parser


def parser() -> argparse.ArgumentParser:
    """The `jaxcirc` argument parser with its subcommands."""
    from .. import __version__

    root = Parser(prog="jaxcirc", description="Causal, mechanistic interpretability in JAX.")
    root.add_argument("--version", action="version", version=f"jaxcirc {__version__}")
    commands = root.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", parser_class=Parser
    )
    _discover.add_parser(commands)
    _patch.add_parser(commands)
    _iia.add_parser(commands)
    _trace.add_parser(commands)
    _bench.add_parser(commands)
    _lasso.add_parser(commands)
    _prune.add_parser(commands)
    _sae.add_parser(commands)
    _shift.add_parser(commands)
    _sparse.add_parser(commands)
    return root


def main(argv: list[str] | None = None) -> int:
    """Run the `jaxcirc` command with `argv` (default `sys.argv[1:]`); return its exit code.

    Usage errors exit with 2 (after an argparse message on stderr), failures with 1.
    """
    root = parser()
    command = "jaxcirc"
    try:
        args = root.parse_args(argv)
        if args.command is None:
            root.print_help(sys.stderr)
            return 2
        command = f"jaxcirc {args.command}"
        return args.run(args)
    except SystemExit as e:  # argparse: --help, --version, usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except (ValueError, OSError) as e:
        print(f"{command}: error: {e}", file=sys.stderr)
        return 1
