"""Detection on a pruned ResNet-50: builders, data, COCO evaluation, training end to end, resume, visualisation.

Everything runs on the CPU on a tiny COCO-format set drawn in a temporary directory, at 128-160 pixel images and
with the detectors' proposal counts turned down, so the file stays fast.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from coring.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from data import DataNotFoundError
from detection import train as det_train
from detection.coco_data import (
    GroupedBatchSampler,
    RandomHorizontalFlip,
    aspect_ratio_groups,
    build_dataset,
    check_coco_layout,
)
from detection.coco_eval import CocoEvaluator
from detection.detectors import ResNet50Body, fasterrcnn, keypointrcnn, maskrcnn
from detection.tiny_coco import KEYPOINT_NAMES, make_tiny_coco
from models import build_model
from tests.helpers import randomise_batchnorm

REPO = Path(__file__).resolve().parent.parent
RATE = "[0.]+[0.5]*3+[0.6]*16"
SMALL = {"rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 50,
         "rpn_post_nms_top_n_test": 20, "box_batch_size_per_image": 16, "box_detections_per_img": 4}
SMALL_ARGS = ["--min-size", "128", "--max-size", "160", "--box-score-thresh", "0", "--model-kwargs",
              json.dumps(SMALL), "-j", "0", "-b", "2", "--print-freq", "1", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_coco(tmp_path_factory.mktemp("coco") / "tiny", num_images=4)


@pytest.fixture(scope="module")
def backbone_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pruned ResNet-50 checkpoint as the classification code writes it (DDP prefix, fc included)."""
    torch.manual_seed(1)
    net = randomise_batchnorm(build_model("resnet_50", RATE))
    path = tmp_path_factory.mktemp("ckpt") / "pruned_resnet50.pth.tar"
    save_checkpoint({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}, "epoch": 3,
                     "best_top1_acc": 12.5}, path)
    return path


def test_fpn_in_channels_follow_the_pruned_stages() -> None:
    model = fasterrcnn(RATE, **SMALL)
    assert [b[0].in_channels for b in model.backbone.fpn.inner_blocks] == [128, 256, 512, 2048]
    assert model.backbone.out_channels == 256
    unpruned = fasterrcnn(None)
    assert [b[0].in_channels for b in unpruned.backbone.fpn.inner_blocks] == [256, 512, 1024, 2048]


def test_state_dict_keys_are_torchvisions() -> None:
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    reference = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    ours = fasterrcnn(None)
    assert set(ours.state_dict()) == set(reference.state_dict())
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_body_computes_what_the_classification_model_computes() -> None:
    net = build_model("resnet_50", RATE).eval()
    body = ResNet50Body(net).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(body(x), net.forward_features(x))


def test_pruned_backbone_checkpoint_loads_and_freezes(backbone_ckpt: Path) -> None:
    from torchvision.ops import FrozenBatchNorm2d

    model = maskrcnn(RATE, weights_backbone=backbone_ckpt)
    body = model.backbone.body
    state = load_checkpoint(backbone_ckpt)["state_dict"]
    assert torch.equal(body.layer2[1].conv2.weight, state["module.layer2.1.conv2.weight"])
    assert isinstance(body.bn1, FrozenBatchNorm2d)  # auto: frozen BN with loaded weights
    assert torch.equal(body.layer3[0].bn3.running_var, state["module.layer3.0.bn3.running_var"])
    trainable = {n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}  # default: the last 3 stages
    plain = fasterrcnn(RATE, weights_backbone=backbone_ckpt, norm_layer="bn", trainable_layers=5)
    assert isinstance(plain.backbone.body.bn1, nn.BatchNorm2d)
    assert all(p.requires_grad for p in plain.backbone.body.parameters())


def test_backbone_checkpoint_of_another_rate_is_a_clear_error(backbone_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match=r"layer1\.0\.conv1\.weight.*shape"):
        fasterrcnn("[0.]*20", weights_backbone=backbone_ckpt)


def test_missing_coco_directory_says_where_files_go(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        check_coco_layout(tmp_path / "coco", "train", "bbox")
    message = str(info.value)
    assert "\n" not in message and "instances_train2017.json" in message and "train2017" in message
    result = subprocess.run([sys.executable, "detection/train.py", "--data-path", str(tmp_path / "coco"),
                             "--model", "keypointrcnn", "--output-dir", str(tmp_path / "run")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "person_keypoints_val2017.json" in result.stderr


def test_tiny_coco_targets_for_every_task(tiny: Path) -> None:
    segm = build_dataset(tiny, "train", "segm", train=False)
    image, target = segm[2]
    assert image.shape[0] == 3 and image.dtype == torch.float32
    assert target["masks"].shape == (3, *image.shape[1:]) and target["masks"].sum() > 0
    assert target["labels"].tolist() == [1, 3, 37]
    assert (target["boxes"][:, 2:] > target["boxes"][:, :2]).all()
    kps = build_dataset(tiny, "train", "keypoints", train=True)
    _, target = kps[0]
    assert target["keypoints"].shape == (1, len(KEYPOINT_NAMES), 3) and target["labels"].tolist() == [1]


def test_hflip_swaps_left_and_right_keypoints() -> None:
    kps = torch.zeros(1, 17, 3)
    kps[0, 1] = torch.tensor([30.0, 10.0, 2])  # left eye
    kps[0, 2] = torch.tensor([20.0, 10.0, 2])  # right eye
    target = {"boxes": torch.tensor([[10.0, 5.0, 40.0, 50.0]]), "keypoints": kps,
              "masks": torch.zeros(1, 60, 100, dtype=torch.uint8)}
    image, flipped = RandomHorizontalFlip(p=1.0)(torch.rand(3, 60, 100), target)
    assert flipped["boxes"].tolist() == [[60.0, 5.0, 90.0, 50.0]]
    assert flipped["keypoints"][0, 1, :2].tolist() == [80.0, 10.0]  # the old right eye, mirrored
    assert flipped["keypoints"][0, 2, :2].tolist() == [70.0, 10.0]
    assert flipped["keypoints"][0, 0].tolist() == [0.0, 0.0, 0.0]  # invisible stays zero


def test_grouped_batches_share_an_aspect_ratio_and_match_across_ranks() -> None:
    ratios = [1.3, 0.7] * 7 + [1.3]
    groups = aspect_ratio_groups(ratios, k=3)
    assert len(set(groups)) == 2
    batches = list(GroupedBatchSampler(SequentialSampler(ratios), groups, 2))
    assert len(batches) == 7 and all(len(b) == 2 for b in batches)
    assert all(len({groups[i] for i in b}) == 1 for b in batches[:6])
    assert len({i for b in batches for i in b}) == 14
    lengths = [len(list(GroupedBatchSampler(DistributedSampler(ratios, num_replicas=2, rank=r), groups, 2)))
               for r in range(2)]
    assert lengths == [4, 4]


@pytest.mark.parametrize("task", ["bbox", "segm", "keypoints"])
def test_evaluator_scores_ground_truth_as_perfect(tiny: Path, task: str) -> None:
    dataset = build_dataset(tiny, "val", task, train=False)
    iou_types = ("bbox", task) if task != "bbox" else ("bbox",)
    evaluator = CocoEvaluator(dataset.coco, iou_types, dataset.ids)
    for index in range(len(dataset)):
        _, target = dataset[index]
        output = {"boxes": target["boxes"], "labels": target["labels"], "scores": torch.ones(len(target["labels"]))}
        if task == "segm":
            output["masks"] = target["masks"][:, None].float()
        if task == "keypoints":
            output["keypoints"] = target["keypoints"]
        evaluator.update({target["image_id"]: output})
    stats, text = evaluator.summarize()
    for iou_type in iou_types:
        assert stats[iou_type]["AP"] == pytest.approx(1.0), text
    empty = CocoEvaluator(dataset.coco, iou_types, dataset.ids)
    assert empty.summarize()[0]["bbox"]["AP"] == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("model", ["fasterrcnn", "maskrcnn", "keypointrcnn"])
def test_detector_trains_and_evaluates_on_tiny_coco(tiny: Path, backbone_ckpt: Path, tmp_path: Path,
                                                    model: str) -> None:
    extra = ["--weights-backbone", str(backbone_ckpt)] if model == "keypointrcnn" else []
    out = det_train.run_training(["--model", model, "--data-path", str(tiny), "--output-dir", str(tmp_path),
                                  "--compress_rate", RATE, "--epochs", "1", "--limit-val", "2", *SMALL_ARGS, *extra])
    expected = {"fasterrcnn": {"bbox"}, "maskrcnn": {"bbox", "segm"}, "keypointrcnn": {"bbox", "keypoints"}}[model]
    assert set(out["stats"]) == expected
    assert all(0.0 <= v["AP"] <= 1.0 for v in out["stats"].values())
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pth")
    assert set(checkpoint) == {"model", "optimizer", "lr_scheduler", "args", "epoch", "best"}
    assert checkpoint["epoch"] == 0 and checkpoint["best"]["epoch"] == 0
    assert checkpoint["args"].lr_steps == ([36, 43] if model == "keypointrcnn" else [16, 22])
    best = load_checkpoint(tmp_path / "model_best.pth")
    assert set(best) == {"model", "args", "epoch", "stats"}  # weights and scores, no optimizer state
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and "bbox_AP" in rows[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    metric = {"fasterrcnn": "bbox_AP", "maskrcnn": "segm_AP", "keypointrcnn": "keypoints_AP"}[model]
    assert summary["primary_metric"] == metric and summary["best_epoch"] == 0
    assert summary["final_stats"] == out["stats"] and set(summary["files_bytes"]) == {
        "checkpoint.pth", "model_best.pth", "metrics.csv", "curves.png"}
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_resume_continues_from_the_next_epoch(tiny: Path, tmp_path: Path) -> None:
    common = ["--model", "fasterrcnn", "--data-path", str(tiny), "--output-dir", str(tmp_path), "--compress_rate",
              RATE, "--limit-train", "2", "--limit-val", "1", "--lr-steps", "1", "--trainable-backbone-layers", "2",
              *SMALL_ARGS]
    det_train.run_training([*common, "--epochs", "1"])
    first = load_checkpoint(tmp_path / "checkpoint.pth")
    out = det_train.run_training([*common, "--epochs", "2", "--resume"])
    second = load_checkpoint(tmp_path / "checkpoint.pth")
    assert out["epoch"] == 1 and second["epoch"] == 1
    assert first["lr_scheduler"]["last_epoch"] == 1 and second["lr_scheduler"]["last_epoch"] == 2
    assert second["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.02 * 0.1)
    assert [r.split(",")[0] for r in (tmp_path / "metrics.csv").read_text().splitlines()[1:]] == ["0", "1"]
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["checkpoint.pth", "model_best.pth"]  # last and best
    assert out["best"]["epoch"] in (0, 1) and load_checkpoint(tmp_path / "model_best.pth")["epoch"] == out["best"][
        "epoch"]
    evaluated = det_train.run_training([*common, "--test-only", "--weights", str(tmp_path / "checkpoint.pth")])
    assert set(evaluated["stats"]) == {"bbox"}

    slim_dir = tmp_path / "fpn_pruned"
    pruned = det_train.run_training([*common, "--output-dir", str(slim_dir), "--epochs", "1", "--fpn-rate", "0.5",
                                     "--prune-from", str(tmp_path / "checkpoint.pth")])
    assert set(pruned["stats"]) == {"bbox"}
    slim_state = load_checkpoint(slim_dir / "checkpoint.pth")["model"]
    assert slim_state["backbone.fpn.layer_blocks.0.0.weight"].shape == (128, 128, 3, 3)
    assert slim_state["roi_heads.box_head.fc6.weight"].shape == (1024, 128 * 7 * 7)


@pytest.mark.slow
def test_visualize_writes_a_side_by_side_image(tiny: Path, tmp_path: Path) -> None:
    from PIL import Image

    from detection.visualize import main as visualize_main

    source = tiny / "val2017" / "000000000001.png"
    out = tmp_path / "side_by_side.png"
    small = ["--min-size", "128", "--max-size", "160", "--device", "cpu", "--proposals", "20"]
    assert visualize_main(["--image", str(source), "--compress_rate", RATE, "--fpn-rate", "0.5", "--out", str(out),
                           "--score-thresh", "0", *small]) == 0
    with Image.open(source) as original, Image.open(out) as drawn:
        assert drawn.width == 2 * original.width + 4 and drawn.height > original.height  # banner strip above
    frames = tmp_path / "frames.gif"
    assert visualize_main(["--video", str(tiny / "val2017"), "--max-frames", "2", "--compress_rate", RATE, "--out",
                           str(frames), *small]) == 0
    with Image.open(frames) as gif:
        assert gif.n_frames == 2


def _kill_removed_inputs(full: nn.Module, keep: dict[str, torch.Tensor]) -> None:
    """Zero every weight of ``full`` that reads a channel the slim twin drops, so both must compute the same."""
    from detection.fpn_pruning import fpn_layout

    layout = fpn_layout(full)
    modules = dict(full.named_modules())
    widths = layout.widths(full)
    with torch.no_grad():
        for name, (group,) in layout.inputs.items():
            dropped = torch.ones(widths[group], dtype=torch.bool)
            dropped[keep[group]] = False
            weight = modules[name].weight
            view = weight.view(weight.shape[0], widths[group], -1)  # conv: [out, in, k*k]; fc6: [out, C, 7*7]
            view[:, dropped] = 0


@pytest.mark.parametrize("builder", [fasterrcnn, maskrcnn, keypointrcnn])
def test_fpn_pruning_keeps_what_the_kept_channels_compute(builder) -> None:
    from detection.fpn_pruning import prune_fpn

    small = {"min_size": 96, "max_size": 96, "rpn_pre_nms_top_n_test": 30, "rpn_post_nms_top_n_test": 10,
             "box_score_thresh": 0.0}
    torch.manual_seed(0)
    full = builder(RATE, **small).eval()
    slim = builder(RATE, fpn_rate=0.5, **small).eval()
    keep = prune_fpn(full, slim)
    assert {k: len(v) for k, v in keep.items()} == {"fpn.inner": 128, "fpn.out": 128, "rpn.conv": 128}
    assert slim.backbone.out_channels == 128 and slim.roi_heads.box_head.fc6.in_features == 128 * 7 * 7
    _kill_removed_inputs(full, keep)
    image = [torch.rand(3, 96, 96)]
    with torch.no_grad():
        full_features, slim_features = full.backbone(image[0][None]), slim.backbone(image[0][None])
        for level in full_features:
            torch.testing.assert_close(slim_features[level], full_features[level][:, keep["fpn.out"]])
        ours, theirs = slim(image)[0], full(image)[0]
    assert set(ours) == set(theirs) and len(ours["boxes"]) > 0
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], atol=1e-4, rtol=1e-4)


def test_fpn_rate_out_of_range_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"fpn_rate must be in \[0, 1\).*got 1.0"):
        fasterrcnn(RATE, fpn_rate=1.0)


def test_prune_from_without_an_fpn_rate_is_a_one_line_error(capsys: pytest.CaptureFixture) -> None:
    assert det_train.main(["--dataset", "tiny", "--prune-from", "model_25.pth", "--device", "cpu"]) == 2
    assert "--prune-from needs --fpn-rate > 0" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_and_score_like_one(tiny: Path, tmp_path: Path) -> None:
    """Two gloo processes under torchrun: one set of checkpoints, and COCO scores equal to a 1-process evaluation
    of the same weights (the evaluation shards are gathered by image id; 3 images do not split evenly)."""
    job = tmp_path / "ddp"
    args = ["--model", "fasterrcnn", "--data-path", str(tiny), "--compress_rate", RATE, "--limit-val", "3",
            "--epochs", "1", *SMALL_ARGS, "-b", "1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "detection" / "train.py"), *args, "--output-dir", str(job)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in job.glob("*.pth")) == ["checkpoint.pth", "model_best.pth"]
    rows = (job / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2
    header, values = rows[0].split(","), rows[1].split(",")
    distributed_ap = float(values[header.index("bbox_AP")])
    single = det_train.run_training([*args, "--output-dir", str(tmp_path / "single"), "--test-only",
                                     "--weights", str(job / "model_best.pth")])
    assert single["stats"]["bbox"]["AP"] == pytest.approx(distributed_ap, abs=1e-9)

    def scored(run_dir: Path) -> list[str]:
        (log,) = (run_dir / "logs").iterdir()
        return [line.split("IoU metric: ")[1] for line in log.read_text().splitlines() if "IoU metric" in line]

    # box_detections_per_img = 4 at score threshold 0: all 3 images' detections, each counted once
    assert scored(job) == scored(tmp_path / "single") == ["bbox (12 detections on 3 images)"]


# ---------------------------------------------------------------------------------------------- the tiny demo
def test_tiny_dataset_takes_the_demo_recipe_where_no_flag_was_given() -> None:
    args = det_train.resolve_args(det_train.get_args_parser().parse_args(
        ["--dataset", "tiny", "--epochs", "3", "--model-kwargs", '{"box_detections_per_img": 5}']))
    assert (args.min_size, args.max_size, args.lr, args.warmup_iters, args.lr_steps, args.tiny_images) == (
        128, 160, 0.0025, 20, [10], 16)
    assert args.epochs == 3  # given on the command line: it wins
    kwargs = json.loads(args.model_kwargs)
    assert kwargs["box_detections_per_img"] == 5 and kwargs["rpn_post_nms_top_n_test"] == 50
    coco = det_train.resolve_args(det_train.get_args_parser().parse_args([]))
    assert (coco.min_size, coco.max_size, coco.lr, coco.warmup_iters, coco.epochs) == (800, 1333, 0.02, 1000, 26)
    assert json.loads(coco.model_kwargs) == {}


def test_bad_model_kwargs_are_a_one_line_error_naming_the_flag(capsys: pytest.CaptureFixture) -> None:
    assert det_train.main(["--dataset", "tiny", "--model-kwargs", "{oops", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--model-kwargs '{oops' is not a JSON object" in err and err.strip().count("\n") == 0


def test_best_epoch_and_curves_come_from_the_metrics_rows(tmp_path: Path) -> None:
    from detection.curves import best_epoch, plot_detection_curves

    metrics = tmp_path / "metrics.csv"
    metrics.write_text("epoch,train_loss,lr,bbox_AP,bbox_AP50\n0,3.0,0.01,0.0,0.0\n1,2.0,0.01,0.4,0.8\n"
                       "2,1.5,0.001,0.4,0.9\n3,1.4,0.001,0.3,0.7\n")
    from coring.run_logging import read_metrics

    assert best_epoch(read_metrics(metrics), "bbox_AP") == (1, 0.4)  # the first of the tied best epochs
    assert best_epoch(read_metrics(metrics), "segm_AP") is None
    png = plot_detection_curves(metrics, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_detections_are_drawn_and_a_long_banner_wraps_instead_of_being_cut() -> None:
    from PIL import Image, ImageDraw

    from detection.visualize import _COLORS, banner_lines, draw_detections

    image = Image.new("RGB", (120, 90), (0, 0, 0))
    output = {"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0], [0.0, 0.0, 5.0, 5.0]]),
              "labels": torch.tensor([1, 3]), "scores": torch.tensor([0.02, 0.01])}
    banner = "pruned [0.]+[0.5]*3+[0.6]*16, FPN 0.5: 12.34 FPS (mean 11.90)"
    lines = banner_lines(banner, image.width)
    assert len(lines) > 1 and "".join(lines).replace(" ", "") == banner.replace(" ", "")  # nothing dropped
    assert all(ImageDraw.Draw(image).textlength(line) <= image.width for line in lines)  # nothing cut off
    drawn = draw_detections(image, output, ["bg", "person", "x", "car"], 0.015, banner, banner_height=5)
    strip = drawn.height - image.height
    assert strip == 5 * 12 + 4  # at least the requested lines, so side-by-side panels line up
    assert drawn.getpixel((10, 45 + strip)) == _COLORS[0]  # the left edge of the box above the threshold
    assert drawn.getpixel((2, 2 + strip)) == (0, 0, 0)  # the box below --score-thresh is not drawn


def test_visualize_keeps_detections_down_to_the_score_threshold() -> None:
    from detection.visualize import _load_model, get_args_parser

    args = get_args_parser().parse_args(["--image", "x.png", "--out", "y.png", "--compress_rate", RATE,
                                         "--score-thresh", "0"])
    model = _load_model(args, RATE, None, torch.device("cpu"))
    assert model.roi_heads.score_thresh == 0.0  # torchvision's default floor (0.05) would hide a random model's boxes
