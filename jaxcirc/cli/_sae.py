"""`jaxcirc sae train|dashboard`: sparse autoencoders from the command line.

Each subcommand lives in its own module (`_sae_train`, `_sae_dashboard`) with an
`add_parser(subparsers)` that registers it under `jaxcirc sae`.
"""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS = ("train", "dashboard")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "sae",
        help="sparse autoencoders: train them on a model's activations, write dashboards",
        description=__doc__.splitlines()[0],
    )
    commands = parser.add_subparsers(
        title="sae commands", dest="sae_command", metavar="SAE_COMMAND"
    )
    parser.set_defaults(run=lambda args: _usage(parser))
    for name in SUBCOMMANDS:
        importlib.import_module(f"._sae_{name}", __package__).add_parser(commands)
    return parser


def _usage(parser) -> int:
    import sys

    parser.print_help(sys.stderr)
    return 2
