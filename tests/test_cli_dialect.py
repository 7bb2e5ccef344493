"""One command-line dialect: both spellings of every flag, --x/--no_x pairs, defaults in help, --threads."""
from __future__ import annotations

import pytest
import torch

from coring.cli import Parser
from coring.threads import auto_threads, configure_threads, parse_threads
from main import finetune, prune, quickstart, test
from main import report as report_entry


def test_every_long_flag_answers_to_both_spellings():
    parser = Parser()
    parser.add_argument("--job_dir", default="a")
    parser.add_argument("--output-dir", default="b")
    args = parser.parse_args(["--job-dir", "x", "--output_dir=y"])
    assert (args.job_dir, args.output_dir) == ("x", "y")


def test_store_true_and_boolean_optional_flags_come_in_pairs():
    parser = Parser()
    parser.add_argument("--dry_run", action="store_true")
    parser.add_argument("--amp", action=__import__("argparse").BooleanOptionalAction, default=True)
    assert parser.parse_args([]).dry_run is False
    assert parser.parse_args(["--dry-run"]).dry_run is True
    assert parser.parse_args(["--dry_run", "--no_dry_run"]).dry_run is False
    assert parser.parse_args(["--no-amp"]).amp is False and parser.parse_args(["--no_amp"]).amp is False
    parser.add_argument("--no_progress", action="store_true")
    assert parser.parse_args(["--no-progress"]).no_progress is True
    assert parser.parse_args(["--no_progress", "--progress"]).no_progress is False


@pytest.mark.parametrize("module", [prune, finetune, test, quickstart, report_entry])
def test_entry_point_help_shows_defaults_and_the_spelling_note(module, capsys):
    with pytest.raises(SystemExit):
        module.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "also accepted as --flag-name" in out
    assert "(default:" in out
    assert "(default: None)" not in out and "(default: (default" not in out


@pytest.mark.parametrize("module", [prune, finetune, test, quickstart])
def test_every_entry_point_takes_threads(module):
    parser = module.build_parser()
    assert parser.parse_args(["--threads", "1"] + (["--model_path", "x.pth"] if module is test else [])).threads == 1


def test_finetune_help_shows_both_recipes(capsys):
    with pytest.raises(SystemExit):
        finetune.main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "imagenet" in out and "momentum 0.99" in out and "150,225" in out


def test_threads_auto_uses_idle_cores_and_a_number_is_taken_as_is(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("os.getloadavg", lambda: (1.6, 0.0, 0.0))
        monkeypatch.setattr("coring.threads._cpu_count", lambda: 4)
        assert auto_threads() == 2
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        assert auto_threads() == 1
        monkeypatch.setattr("os.getloadavg", lambda: (9.0, 0.0, 0.0))
        assert auto_threads() == 1
        assert configure_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "-2", "many", "1.5"])
def test_bad_thread_counts_name_the_value(bad):
    with pytest.raises(ValueError, match=repr(bad)):
        parse_threads(bad)


def test_quickstart_runs_on_fashion_mnist_too_but_not_on_sets_that_need_a_download(capsys):
    assert quickstart.build_parser().parse_args(["--dataset", "fashion_mnist"]).dataset == "fashion_mnist"
    with pytest.raises(SystemExit):
        quickstart.build_parser().parse_args(["--dataset", "cifar10"])
    assert "invalid choice: 'cifar10'" in capsys.readouterr().err
