"""The training engine: schedules, accuracy/evaluate bookkeeping, adaptive BN, the NaN guard, run logging."""
from __future__ import annotations

import csv
import logging
import math
import re

import pytest
import torch
from torch import nn

from coring.engine import (
    EvalResult,
    NonFiniteLossError,
    accuracy,
    amp_dtype,
    check_finite,
    evaluate,
    evaluate_pruned,
    make_grad_scaler,
    recalibrate_bn,
    train_one_epoch,
)
from coring.run_logging import METRIC_FIELDS, RunLogger, plot_curves, read_metrics
from coring.schedule import LRSchedule, build_schedule, parse_milestones
from data.common import DatasetInfo, Loaders
from data.device_loader import DeviceTensorLoader


# ---------------------------------------------------------------------------------------------- schedules
def test_step_schedule_decays_tenfold_at_each_milestone_epoch():
    s = build_schedule(None, "step", 0.01, 300, 10, lr_decay_step="150,225")
    assert s.lr_at(0, 0) == pytest.approx(0.01)
    assert s.lr_at(149, 9) == pytest.approx(0.01)
    assert s.lr_at(150, 0) == pytest.approx(0.001)
    assert s.lr_at(224, 9) == pytest.approx(0.001)
    assert s.lr_at(225, 0) == pytest.approx(0.0001)
    assert s.lr_at(299, 9) == pytest.approx(0.0001)


def test_cosine_schedule_matches_the_papers_formula_with_linear_warmup():
    s = build_schedule(None, "cos", 0.1, 105, 10, warmup_epochs=5)
    # e < 5: 0.5 * lr0 * (1 + cos(pi * (e - 5) / 100)) * (1 + it + e * 10) / 50
    assert s.lr_at(0, 0) == pytest.approx(0.5 * 0.1 * (1 + math.cos(-math.pi * 5 / 100)) / 50)
    assert s.lr_at(0, 0) == pytest.approx(0.00198768834, rel=1e-8)
    assert s.lr_at(4, 9) == pytest.approx(0.05 * (1 + math.cos(math.pi / 100)))  # warm-up factor exactly 1
    assert s.lr_at(2, 3) == pytest.approx(0.05 * (1 + math.cos(-math.pi * 3 / 100)) * 24 / 50)
    assert s.lr_at(5, 0) == pytest.approx(0.1)  # cos(0): the peak, no warm-up any more
    assert s.lr_at(5, 7) == pytest.approx(0.1)  # per epoch, not per iteration
    assert s.lr_at(55, 0) == pytest.approx(0.05)  # cos(pi/2)
    assert s.lr_at(104, 9) == pytest.approx(0.05 * (1 + math.cos(math.pi * 99 / 100)))


def test_cosine_without_room_for_warmup_drops_the_warmup_instead_of_dividing_by_zero():
    s = build_schedule(None, "cos", 0.1, 4, 3, warmup_epochs=5)
    assert s.effective_warmup == 0
    assert [round(s.lr_at(e, 0), 6) for e in range(4)] == [
        round(0.05 * (1 + math.cos(math.pi * e / 4)), 6) for e in range(4)]


@pytest.fixture
def schedule_records():
    """The records of the ``coring.schedule`` logger (a handler on it: a RunLogger stops propagation at 'coring')."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("coring.schedule")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_a_long_cosine_warmup_is_one_warning_line_with_the_numbers(schedule_records):
    s = build_schedule(None, "cos", 0.1, 10, 4, warmup_epochs=5)
    (record,) = schedule_records
    message = record.getMessage()
    assert record.levelname == "WARNING" and "\n" not in message
    assert "5 of 10 epochs (50% > 10%" in message and "--warmup_epochs 1" in message
    assert s.lr_at(0, 0) == 0.0 and "1 epoch(s) at lr ~0" in message  # the paper's formula is kept: it warns only
    assert "0.00, 0.03" in message  # the warm-up epochs' mean lr as a fraction of lr0


@pytest.mark.parametrize("epochs, warmup", [(105, 5), (12, 1), (6, 0), (4, 5)])
def test_a_short_or_no_warmup_does_not_warn(schedule_records, epochs, warmup):
    build_schedule(None, "cos", 0.1, epochs, 4, warmup_epochs=warmup)
    build_schedule(None, "step", 0.1, 2, 4, warmup_epochs=5)  # only the cosine schedule warms up
    assert schedule_records == []


def test_onecycle_matches_hand_values_and_torch_onecyclelr():
    s = build_schedule(None, "onecycle", 0.1, 10, 10)
    assert s.lr_at(0, 0) == pytest.approx(0.01)  # max_lr / div_factor
    assert s.lr_at(0, 9) == pytest.approx(0.1)  # the peak at pct_start * total - 1
    assert s.lr_at(5, 4) == pytest.approx(1e-4 + (0.1 - 1e-4) / 2)  # middle of the cosine descent
    assert s.lr_at(9, 9) == pytest.approx(1e-4)  # initial / final_div_factor
    assert s.momentum_at(0, 0) == pytest.approx(0.95) and s.momentum_at(0, 9) == pytest.approx(0.85)

    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, div_factor=10, final_div_factor=100, pct_start=0.1,
                                              epochs=3, steps_per_epoch=7)
    ours = LRSchedule(None, "onecycle", 0.1, 3, 7)
    for e in range(3):
        for it in range(7):
            assert ours.lr_at(e, it) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
            assert ours.momentum_at(e, it) == pytest.approx(opt.param_groups[0]["momentum"], rel=1e-12)
            opt.step()
            ref.step()


def test_schedule_sets_the_optimizer_lr_and_resumes_from_its_state():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    s = build_schedule(opt, "cos", 0.1, 20, 5)
    lr = s(3, 2)
    assert opt.param_groups[0]["lr"] == lr == pytest.approx(s.lr_at(3, 2))
    state = s.state_dict()
    assert (state["epoch"], state["iteration"]) == (3, 2)
    fresh = build_schedule(torch.optim.SGD(model.parameters(), lr=1.0), "cos", 0.1, 20, 5)
    fresh.load_state_dict(state)
    assert (fresh.epoch, fresh.iteration) == (3, 2) and fresh.last_lr == pytest.approx(lr)
    with pytest.raises(ValueError, match="--lr_type cos"):
        build_schedule(None, "step", 0.1, 20, 5).load_state_dict(state)


def test_bad_schedule_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown lr schedule 'exp'"):
        build_schedule(None, "exp", 0.1, 10, 5)
    with pytest.raises(ValueError, match="lr_decay_step"):
        parse_milestones("150,abc")
    assert parse_milestones("225, 150") == [150, 225]


# ---------------------------------------------------------------------------------------------- accuracy / evaluate
def _logits(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def test_accuracy_counts_top1_and_top5_hits_in_percent():
    # 6 classes; the target's rank in each row: 1st, 2nd, 6th, 5th
    out = _logits([[9, 1, 2, 3, 4, 5], [1, 9, 8, 3, 4, 5], [6, 5, 4, 3, 2, 1], [1, 2, 3, 4, 5, 6]])
    target = torch.tensor([0, 2, 5, 2])
    top1, top5 = accuracy(out, target, topk=(1, 5))
    assert top1.item() == pytest.approx(25.0)
    assert top5.item() == pytest.approx(75.0)


def test_top5_on_fewer_than_five_classes_is_clamped_to_all_classes():
    out = _logits([[1, 2, 3], [3, 2, 1]])
    top1, top5 = accuracy(out, torch.tensor([0, 0]))
    assert top1.item() == 50.0 and top5.item() == 100.0


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="accuracy expects"):
        accuracy(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


class _Fixed(nn.Module):
    """Returns the logits stored for each input index (inputs are [N, 1] indices)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("table", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def test_evaluate_reports_whole_set_top1_top5_loss_and_count_over_uneven_batches():
    torch.manual_seed(0)
    logits = torch.randn(23, 7)
    target = torch.randint(0, 7, (23,))
    idx = torch.arange(23, dtype=torch.float32)[:, None]
    loader = [(idx[i:i + 5], target[i:i + 5]) for i in range(0, 23, 5)]  # batches 5,5,5,5,3
    model = _Fixed(logits).train()
    result = evaluate(model, loader, "cpu", progress=False)
    assert isinstance(result, EvalResult) and result.count == 23
    expected_top1 = 100.0 * (logits.argmax(1) == target).sum().item() / 23
    expected_top5 = 100.0 * (logits.topk(5, 1).indices == target[:, None]).any(1).sum().item() / 23
    assert result.top1 == pytest.approx(expected_top1)
    assert result.top5 == pytest.approx(expected_top5)
    assert result.loss == pytest.approx(nn.functional.cross_entropy(logits, target).item(), rel=1e-6)
    assert model.training, "evaluate restores the model's mode"


# ---------------------------------------------------------------------------------------------- adaptive BN
def test_recalibrate_bn_sets_running_stats_to_the_datas_statistics_and_restores_modes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 3, 1, bias=False), nn.BatchNorm2d(3), nn.Dropout(0.5))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(3).view(3, 3, 1, 1))
    model[1].running_mean.fill_(-7.0)
    model[1].running_var.fill_(0.01)
    model.eval()
    model[2].train()  # a submodule in a different mode must get its own mode back
    scale = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    shift = torch.tensor([5.0, -1.0, 0.5]).view(1, 3, 1, 1)
    images = torch.randn(96, 3, 4, 4) * scale + shift
    loader = [(images[i:i + 32], torch.zeros(32, dtype=torch.long)) for i in range(0, 96, 32)]
    weight_before = model[0].weight.clone()

    used = recalibrate_bn(model, loader, 80, "cpu")

    assert used == 80  # the last batch is cut to the number asked for
    batches = [images[0:32], images[32:64], images[64:80]]
    mean = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches]).mean(0)  # momentum=None: plain average
    var = torch.stack([b.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_mean, torch.tensor([5.0, -1.0, 0.5]), atol=0.4, rtol=0)
    assert not model.training and not model[1].training and model[2].training
    assert model[1].momentum == 0.1
    assert torch.equal(model[0].weight, weight_before)


def test_recalibrate_bn_with_zero_images_changes_nothing():
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(3.0)
    assert recalibrate_bn(bn, [(torch.randn(4, 2), torch.zeros(4))], 0, "cpu") == 0
    assert bn.running_mean.tolist() == [3.0, 3.0]


def test_evaluate_pruned_re_estimates_bn_on_epoch_zero_whatever_ran_before(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 4, (64,), generator=gen)
    train = DeviceTensorLoader(images, labels, 16, shuffle=True, augment=True, seed=9)
    test = DeviceTensorLoader(images[:32], labels[:32], 16, shuffle=False, augment=False, seed=0)
    loaders = Loaders(train, test, DatasetInfo("t", 4, 8, (0.5,) * 3, (0.25,) * 3))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    read = []  # the order of the images each re-estimation is about to read

    def spy(net, loader, num_images, device, **kwargs):
        read.append(loader.epoch_indices(loader.epoch))
        return recalibrate_bn(net, loader, num_images, device, **kwargs)

    monkeypatch.setattr("coring.engine.recalibrate_bn", spy)
    log = logging.getLogger("test")
    evaluate_pruned(model, loaders, torch.device("cpu"), 24, amp=False, log=log)
    for _ in range(3):  # a trained baseline, or a study's earlier runs, moved the loader on
        list(train)
    evaluate_pruned(model, loaders, torch.device("cpu"), 24, amp=False, log=log)
    assert torch.equal(read[0], read[1]) and torch.equal(read[0], train.epoch_indices(0))
    assert train.epoch == 3  # the loader's own counter is put back


# ---------------------------------------------------------------------------------------------- training / NaN guard
def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 3))


def _tiny_loader(n_batches: int = 6, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 3, 8, 8, generator=g), torch.randint(0, 3, (batch,), generator=g))
            for _ in range(n_batches)]


def test_train_one_epoch_steps_the_schedule_every_iteration_and_reports_the_epoch():
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    seen: list[tuple[int, int]] = []

    def step(epoch: int, it: int) -> float:
        seen.append((epoch, it))
        for g in opt.param_groups:
            g["lr"] = 0.01 * (it + 1)
        return 0.01 * (it + 1)

    before = [p.clone() for p in model.parameters()]
    result = train_one_epoch(model, _tiny_loader(), opt, step, nn.CrossEntropyLoss(), "cpu", amp=True, epoch=3,
                             progress=False, log_every=2)
    assert seen == [(3, i) for i in range(6)]
    assert result.count == 48 and result.iterations == 6 and result.lr == pytest.approx(0.06)
    assert math.isfinite(result.loss) and 0 <= result.top1 <= 100 and result.top5 == 100.0  # 3 classes
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


class _NaNAt:
    """Cross-entropy that turns NaN from iteration ``at`` on."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(output, target)
        self.calls += 1
        return loss * float("nan") if self.calls - 1 >= self.at else loss


@pytest.mark.parametrize("deferred", [False, True], ids=["per-step check (CPU)", "device flag (CUDA/DDP path)"])
def test_nan_loss_raises_a_clear_error_naming_epoch_iteration_and_lr(deferred):
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(NonFiniteLossError) as info:
        train_one_epoch(model, _tiny_loader(), opt, lambda e, i: 0.05, _NaNAt(2), "cpu", epoch=4, progress=False,
                        log_every=4, defer_nan_check=deferred)
    message = str(info.value)
    assert "epoch 4" in message and "iteration 2" in message and "lr 0.05" in message
    assert "NaN" in message or "nan" in message


def test_per_step_nan_check_stops_before_the_weights_change():
    model = _tiny_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(NonFiniteLossError):
        train_one_epoch(model, _tiny_loader(), opt, None, _NaNAt(0), "cpu", progress=False, log_every=0,
                        defer_nan_check=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_check_finite_accepts_finite_and_rejects_inf():
    check_finite(torch.tensor(1.5))
    with pytest.raises(NonFiniteLossError, match=r"inf at epoch 0, iteration 7, lr 0\.1"):
        check_finite(torch.tensor(float("inf")), epoch=0, iteration=7, lr=0.1)


def test_cpu_runs_in_fp32_without_a_grad_scaler():
    assert amp_dtype("cpu", True) is None
    assert not make_grad_scaler("cpu", True).is_enabled()


# ---------------------------------------------------------------------------------------------- run logging
def test_run_logger_writes_log_config_csv_and_curves(tmp_path):
    with RunLogger(tmp_path, "finetune", console=False) as logger:
        logger.info("hello %d", 3)
        logger.write_config({"lr": 0.01, "arch": "resnet_56"})
        for epoch in range(3):
            logger.append_metrics({"epoch": epoch, "train_loss": 1.0 / (epoch + 1), "train_top1": 10.0 * epoch,
                                   "test_loss": 1.1, "test_top1": 20.0, "test_top5": 90.0, "lr": 0.01,
                                   "epoch_time_s": 1.5, "best_top1": 20.0})
        logger.append_metrics({"epoch": 3, "test_top1": 21.0})
        assert logger.truncate_metrics(1) == 2
    logs = list((tmp_path / "logs").iterdir())
    assert len(logs) == 1 and re.fullmatch(r"finetune_\d{8}-\d{6}\.log", logs[0].name)
    line = logs[0].read_text().splitlines()[0]
    assert line.endswith(" | hello 3")
    assert "lr: 0.01" in (tmp_path / "config.txt").read_text()
    assert (tmp_path / "args.json").exists()
    with open(tmp_path / "metrics.csv") as f:
        assert next(csv.reader(f)) == METRIC_FIELDS
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.csv")] == ["0", "1"]
    png = plot_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_non_main_rank_writes_nothing(tmp_path):
    with RunLogger(tmp_path / "job", "finetune", is_main=False) as logger:
        logger.info("rank 1 says hi")
        logger.write_config({"a": 1})
        logger.append_metrics({"epoch": 0})
    assert not (tmp_path / "job").exists()
