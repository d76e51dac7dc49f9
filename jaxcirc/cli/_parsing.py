"""The argument parser every `jaxcirc` command and subcommand is built from.

`Parser` is the root's class and, through `add_subparsers`, every subcommand's (argparse hands a
parser's own class to its subparsers), so each command module gets the same rules by building
its parser with `subparsers.add_parser(...)`:

- no abbreviations: `--n-prompt` is an error naming `--n-prompts`, never taken for it;
- an unknown subcommand names the nearest one (`unknown command 'pach'; did you mean 'patch'?`);
- a wrong flag prints the usage of the subcommand it was given to, not the top-level one.
"""

from __future__ import annotations

import argparse
import difflib


def _suggest(word: str, choices) -> str:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f"; did you mean {match[0]!r}?" if match else ""


class Parser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with `allow_abbrev=False`, suggestions for unknown commands
    and flags, and errors reported by the (sub)command that could not parse them."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def _check_value(self, action, value):
        if isinstance(action, argparse._SubParsersAction) and value not in action.choices:
            self.error(
                f"unknown command {value!r}{_suggest(value, action.choices)} "
                f"(commands: {', '.join(action.choices)})"
            )
        super()._check_value(action, value)

    def parse_known_args(self, args=None, namespace=None):
        """As `parse_args`: arguments this parser does not know are its error, with its usage
        (argparse would hand them up to the top-level parser and print that one's usage)."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            flags = [s for a in self._actions for s in a.option_strings]
            options = (x.split("=")[0] for x in extras if x.startswith("-"))
            hints = [f"{x}{hint}" for x in options if (hint := _suggest(x, flags))]
            self.error(
                f"unrecognized arguments: {' '.join(extras)}"
                + (f" ({', '.join(hints)})" if hints else "")
            )
        return namespace, extras
