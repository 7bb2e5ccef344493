"""The compact tables of criteria studies (as in ``docs/criteria_study.md``), from their ``runs.json``.

    python bench/study_summary.py runs/study/resnet56_E "runs/study/vgg16_E=VGG-16-BN, CORING-E rate"
    python bench/study_summary.py --budgets runs/study/resnet56_E=F4 runs/study/resnet56_E_F10=F10

Each argument is a study directory (or its ``runs.json``), optionally followed by ``=label``. Without
``--budgets``: one table per study (BN re-estimated and final top-1, the final paired difference against
``random`` with its bootstrap interval, the final rank, the ranks of the last three epochs, Kendall's tau of each
epoch's ordering with the final one). With ``--budgets``: the studies are one setting at several fine-tuning
budgets, compared criterion by criterion (does a longer budget change the verdict?).
"""
from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from coring.cli import Parser
from coring.study import criteria_of, read_study_record, render_budget_comparison, render_summary

__all__ = ["build_parser", "load_study", "main"]


def build_parser() -> Parser:
    parser = Parser(description="Compact tables of criteria studies (bench/criteria_study.py outputs).")
    parser.add_argument("studies", nargs="+", help="study directories or runs.json files, each optionally '=label'")
    parser.add_argument("--budgets", action="store_true",
                        help="compare the studies as one setting at several fine-tuning budgets")
    return parser


def load_study(spec: str) -> tuple[str, dict[str, Any]]:
    """``DIR[=label]`` -> (label, the study record). The label defaults to arch, rate and budget."""
    where, _, label = spec.partition("=")
    path = Path(where)
    path = path / "runs.json" if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"no study at '{where}': expected a directory holding runs.json (bench/criteria_study.py "
                         "--out) or a runs.json file")
    record = read_study_record(path)
    if not record["runs"]:
        raise ValueError(f"'{path}' holds no finished run yet")
    settings = record.get("settings", {})
    label = label or (f"{settings.get('arch', '?')} at `{settings.get('compress_rate', '?')}`, "
                      f"{settings.get('finetune_epochs', '?')} fine-tuning epochs")
    return label, record


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        studies = [load_study(spec) for spec in args.studies]
    except ValueError as error:
        parser.error(str(error))
    if args.budgets:
        criteria = criteria_of([run for _, record in studies for run in record["runs"]])
        print(render_budget_comparison([(label, record["runs"]) for label, record in studies], criteria), end="")
        return 0
    for label, record in studies:
        print(render_summary(record["runs"], criteria_of(record["runs"]), title=label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
