#!/usr/bin/env bash
# Train an unpruned network: the baseline the row scripts prune (the paper's released baselines cannot be
# downloaded here; if you have them, pass them as PRETRAIN instead: main/test.py evaluates them).
#
# Usage: DATA_DIR=data/cifar10 [JOB_DIR=runs/baseline/<arch>] [GPUS=N] bash scripts/train_baseline.sh <arch>
#        DRY_RUN=1 bash scripts/train_baseline.sh <arch>: one epoch on a handful of embedded images.
# Writes JOB_DIR/model_best.pth.tar (the row scripts' default PRETRAIN), checkpoint.pth.tar, metrics.csv, logs/;
# a re-run resumes from JOB_DIR/checkpoint.pth.tar. Other variables: scripts/lib/common.sh.
#
# Recipes (coring_baseline_args in scripts/lib/common.sh; the paper's lineage did not publish its own):
#   CIFAR-10, every arch but DenseNet: 300 epochs, SGD lr 0.1 x0.1 at epochs 150 and 225, momentum 0.9,
#     weight decay 5e-4, batch 128 (the common CIFAR recipe of the pruning literature: Li et al. 2017,
#     Liu et al. 2017, the HRank/HRankPlus line whose baselines the paper prunes);
#   DenseNet-40: the DenseNet paper's (300 epochs, lr 0.1 x0.1 at 150 and 225, weight decay 1e-4, batch 64);
#   ResNet-50/ImageNet: torchvision's references/classification recipe (90 epochs, SGD lr 0.1 for batch 256,
#     momentum 0.9, weight decay 1e-4, x0.1 every 30 epochs). The paper prunes torchvision's pretrained
#     ResNet-50 (76.15 %); its IMAGENET1K_V1 state dict loads as PRETRAIN directly (same key names).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

arch="${1:-}"
case "$arch" in
    vgg_16_bn|resnet_56|resnet_110|densenet_40|googlenet|mobilenet_v2) dataset=cifar10 ;;
    resnet_50) dataset=imagenet ;;
    *) coring_die "usage: bash scripts/train_baseline.sh <arch>; arch: vgg_16_bn resnet_56 resnet_110 densenet_40 \
googlenet mobilenet_v2 resnet_50" ;;
esac
JOB_DIR="${JOB_DIR:-$CORING_REPO/runs/baseline/$arch}"
coring_setup "$arch" baseline "$dataset"
coring_train_baseline "$JOB_DIR"
