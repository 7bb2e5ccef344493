"""The toolkit's one command-line dialect: an ``argparse.ArgumentParser`` every entry point builds on.

- Every long flag answers to both spellings: ``--job_dir`` and ``--job-dir`` (the paper's scripts use underscores,
  torchvision's references hyphens). Help lists the spelling the flag was declared with.
- Every boolean is a pair ``--x`` / ``--no_x`` (also ``--no-x``); ``store_true`` flags become such pairs.
- Every help line shows its default; a bad command line is one ``error: ...`` line (no usage block).
- Numeric types that name the bad value: ``positive_float``, ``fraction``, ``positive_int``, ``nonnegative_int``.
"""
from __future__ import annotations

import argparse
import math
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from coring.threads import parse_threads

__all__ = ["Parser", "BooleanFlag", "positive_float", "fraction", "positive_int", "nonnegative_int", "nonnegative_float", "target_fraction", "threads", "argument_type"]

SPELLING_NOTE = "Every --flag_name is also accepted as --flag-name, and every boolean --x has its --no_x."


def _canonical(option: str) -> str:
    return "--" + option[2:].replace("-", "_")


class BooleanFlag(argparse.Action):
    """``--x`` sets True, ``--no_x`` (or ``--no-x``) sets False; a flag declared as ``--no_x`` pairs with ``--x``."""

    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = None, required: bool = False,
                 help: str | None = None, **_: Any) -> None:
        self._values: dict[str, bool] = {}
        for option in option_strings:
            self._values[option] = True
            if option.startswith(("--no_", "--no-")):
                self._values["--" + option[5:]] = False
            elif option.startswith("--"):
                self._values[f"--no{'-' if '-' in option[2:] and '_' not in option else '_'}{option[2:]}"] = False
        super().__init__(list(self._values), dest, nargs=0, default=default, required=required, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, self._values.get(option_string or "", True))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class _StoreTrueFlag(BooleanFlag):
    def __init__(self, option_strings: Sequence[str], dest: str, default: Any = False, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, default=default, **kwargs)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown (unless None or already written), flags never broken at their hyphens."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return textwrap.fill(" ".join(text.split()), width, initial_indent=indent, subsequent_indent=indent,
                             break_on_hyphens=False)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """ArgumentParser with the toolkit's dialect (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        epilog = kwargs.pop("epilog", None)
        kwargs["epilog"] = f"{epilog}\n\n{SPELLING_NOTE}" if epilog else SPELLING_NOTE
        super().__init__(*args, **kwargs)
        self.register("action", "store_true", _StoreTrueFlag)
        self.register("action", argparse.BooleanOptionalAction, BooleanFlag)

    def error(self, message: str) -> NoReturn:
        """A bad command line is one line on stderr (no usage block) and exit status 2."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")

    def _spellings(self) -> dict[str, str]:
        known: dict[str, str] = {}
        for action in self._actions:
            for option in action.option_strings:
                if option.startswith("--"):
                    known.setdefault(_canonical(option), option)
        return known

    def _respell(self, args: Sequence[str]) -> list[str]:
        known = self._spellings()
        declared = set(known.values())
        out: list[str] = []
        for index, arg in enumerate(args):
            if arg == "--":
                out.extend(args[index:])
                break
            if arg.startswith("--"):
                name, eq, value = arg.partition("=")
                if name not in declared and _canonical(name) in known:
                    arg = known[_canonical(name)] + eq + value
            out.append(arg)
        return out

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args(self._respell(args), namespace)


def _number(text: str, kind: type, what: str) -> Any:
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    return value


def positive_float(text: str) -> float:
    """A finite float > 0 (learning rates)."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return value


def fraction(text: str) -> float:
    """A float in [0, 1) (label smoothing, rates)."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1)")
    return value


def target_fraction(text: str) -> float:
    """A float in (0, 1) (FLOPs and params targets: the fraction to remove)."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in (0, 1)")
    return value


def nonnegative_float(text: str) -> float:
    """A finite float >= 0 (momentum, weight decay)."""
    value = _number(text, float, "a number")
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number >= 0")
    return value


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    value = _number(text, int, "a whole number")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def nonnegative_int(text: str) -> int:
    """A whole number >= 0."""
    value = _number(text, int, "a whole number")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def argument_type(check: Callable[[str], Any], *, returns_text: bool = False) -> Callable[[str], Any]:
    """An argparse ``type=`` made from a library check: its ValueError becomes argparse's one-line error.

    The converter returns what ``check`` returns, or the text as given with ``returns_text``.
    """

    def convert(text: str) -> Any:
        try:
            value = check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
        return text if returns_text else value

    convert.__name__ = getattr(check, "__name__", "value")
    return convert


#: ``--threads``: 'auto' or a whole number >= 1.
threads = argument_type(parse_threads)
