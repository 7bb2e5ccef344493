#!/usr/bin/env bash
# The paper's ablations (upstream-coring.md section 6) with the recipe of one row script: the K-shot ablation
# (top-1 against K per metric) and the metric ablation (cosine / Euclidean / VBD at fixed compression).
#
# Usage: ROW=resnet_56/e5 [CRITERIA="cosine_sim Euclide_dis VBD_dis"] [SHOTS="1 5 10 15"] [COMPRESS_RATE=...] \
#            DATA_DIR=... PRETRAIN=... [JOB_DIR=runs/ablation/<arch>_<row>] [GPUS=N] bash scripts/ablation.sh
#        (DRY_RUN=1 works as for the row scripts.)
# Each combination runs scripts/<ROW>.sh with CRITERION and SHOT (and COMPRESS_RATE when given) overridden, into
# JOB_DIR/<criterion>_k<K>; `python main/report.py --job_dir JOB_DIR` tabulates and plots them. The paper's VGG
# K-shot runs used [0.05]*7+[0.2]*5 and [0.5]*2+[0.65]*5+[0.8]*5 (COMPRESS_RATE=...).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
: "${ROW:?set ROW=<arch>/<row>, e.g. ROW=resnet_56/e5 (a script under scripts/)}"
script="$CORING_REPO/scripts/$ROW.sh"
[[ -f "$script" ]] || coring_die "no row script $script"
base="${JOB_DIR:-$CORING_REPO/runs/ablation/${ROW//\//_}}"
if [[ "${DRY_RUN:-0}" == 1 && -z "${PRETRAIN:-}" ]]; then
    export DRY_RUN_BASELINE="${DRY_RUN_BASELINE:-$base/dry_run_baseline}"  # one dry-run baseline for all
fi
for criterion in ${CRITERIA:-cosine_sim Euclide_dis VBD_dis}; do
    for shot in ${SHOTS:-1 5 10 15}; do
        JOB_DIR="$base/${criterion}_k$shot" CRITERION="$criterion" SHOT="$shot" bash "$script"
    done
done
