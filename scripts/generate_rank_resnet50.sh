#!/usr/bin/env bash
# Precompute the ResNet-50 filter ranks of the three criteria (the paper's generate_rank_resnet50.sh, min_sum).
#
# Usage: DATA_DIR=data/imagenet PRETRAIN=runs/baseline/resnet_50/model_best.pth.tar [RANK_DIR=runs/ranks/resnet_50] \
#            bash scripts/generate_rank_resnet50.sh          (DRY_RUN=1: the synthetic ImageNet set on CPU)
#
# main/prune.py has no rank-only mode: it caches the ranks it computes in <checkpoint>.ranks.pt and reuses them
# while the weights are unchanged. That file holds one criterion per layer, so each criterion gets its own link to
# the baseline, RANK_DIR/<criterion>/resnet_50.pth.tar, and prune.py runs once through each link (at the soft rate,
# no baseline evaluation, no BN re-estimation, 512 validation images) to fill RANK_DIR/<criterion>/
# resnet_50.pth.tar.ranks.pt (the probe's slim model is deleted). The ranks of a layer do not depend on the rate, so every row reuses them: the row
# scripts prune through the link when RANK_DIR (default runs/ranks/resnet_50) has one that points at PRETRAIN.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
coring_setup resnet_50 generate_rank imagenet
coring_pretrain
ranks="$(coring_rank_dir)"
for CRITERION in ${CRITERIA:-cosine_sim Euclide_dis VBD_dis}; do
    mkdir -p "$ranks/$CRITERION"
    ln -sfn "$(readlink -f "$PRETRAIN")" "$ranks/$CRITERION/resnet_50.pth.tar"
    coring_run "$PYTHON" "$CORING_REPO/main/prune.py" --arch resnet_50 --compress_rate "[0.]+[0.1]*3+[0.35]*16" \
        --criterion "$CRITERION" --strategy min_sum --shot 1 --pretrain_dir "$ranks/$CRITERION/resnet_50.pth.tar" \
        --dataset "$DATASET" --data_dir "$DATA_DIR" --job_dir "$ranks/$CRITERION/probe" \
        --skip_baseline_eval --bn_recalib 0 --limit_test 512 --batch_size 256 "${DRY_PRUNE[@]}"
    # The probe's slim model is not a result: drop it, and rename its summary so main/report.py skips it.
    rm -f "$ranks/$CRITERION/probe/pruned.pth.tar"
    mv -f "$ranks/$CRITERION/probe/prune_summary.json" "$ranks/$CRITERION/probe/rank_probe_summary.json"
    echo "ranks of $CRITERION: $ranks/$CRITERION/resnet_50.pth.tar.ranks.pt" >&2
done
