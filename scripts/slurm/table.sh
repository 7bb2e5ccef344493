#!/usr/bin/env bash
# Submit a whole table of the paper to Slurm: one job per row script of scripts/<arch>/, after the baseline
# (when there is none yet) and, for ResNet-50, the ranks. Run from the repository root:
#   DATA_DIR=/datasets/cifar10 bash scripts/slurm/table.sh resnet_56
#   DATA_DIR=/datasets/imagenet NODES=2 GPUS_PER_NODE=8 SBATCH_ARGS="--partition=gpu --account=abc" \
#       bash scripts/slurm/table.sh resnet_50
# PRETRAIN (else runs/baseline/<arch>/model_best.pth.tar, trained first when missing), DATA_DIR and the other
# variables of scripts/lib/common.sh reach the jobs through sbatch's exported environment.
set -euo pipefail
arch="${1:?usage: bash scripts/slurm/table.sh <arch>  (vgg_16_bn resnet_56 densenet_40 googlenet mobilenet_v2 resnet_50)}"
[[ -d "scripts/$arch" && -f scripts/slurm/row.sbatch ]] || { echo "error: no scripts/$arch (run from the repository root)" >&2; exit 2; }
mkdir -p runs/slurm
# shellcheck disable=SC2206  # SBATCH_ARGS is a list of options
common=(--parsable --nodes "${NODES:-1}" --gpus-per-node "${GPUS_PER_NODE:-4}" ${SBATCH_ARGS:-})
after=()
if [[ -z "${PRETRAIN:-}" && ! -f "runs/baseline/$arch/model_best.pth.tar" ]]; then
    id="$(sbatch "${common[@]}" --job-name "baseline-$arch" scripts/slurm/row.sbatch train_baseline "$arch")"
    echo "baseline $arch: job $id"
    after=(--dependency "afterok:$id")
fi
if [[ "$arch" == resnet_50 ]]; then
    id="$(sbatch "${common[@]}" --nodes 1 --gpus-per-node 1 "${after[@]}" --job-name ranks-resnet_50 \
        scripts/slurm/row.sbatch generate_rank_resnet50)"
    echo "ranks resnet_50: job $id"
    after=(--dependency "afterok:$id")
fi
for script in "scripts/$arch"/*.sh; do
    row="$(basename "$script" .sh)"
    id="$(sbatch "${common[@]}" "${after[@]}" --job-name "$arch-$row" scripts/slurm/row.sbatch "$arch/$row")"
    echo "$arch/$row: job $id"
done
echo "when they finish: python main/report.py --job_dir runs --out results"
