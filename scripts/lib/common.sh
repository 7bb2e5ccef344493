# Shared by the scripts under scripts/ (sourced, never run): environment, launchers, dry-run overrides.
#
# Environment read by every script (all optional):
#   DATA_DIR    the data set: CIFAR-10 in torchvision's layout (default <repo>/data/cifar10) or ImageNet
#               train/ and val/ ImageFolders (default <repo>/data/imagenet); nothing is downloaded
#   PRETRAIN    checkpoint of the unpruned network (default <repo>/runs/baseline/<arch>/model_best.pth.tar,
#               what scripts/train_baseline.sh writes; the paper's released baselines load too)
#   JOB_DIR     output directory (default <repo>/runs/<arch>/<row>); pruning writes JOB_DIR/prune,
#               fine-tuning JOB_DIR/finetune
#   GPUS        processes (GPUs) per node for fine-tuning (default 1); > 1 runs torchrun
#   NNODES      nodes for fine-tuning (default 1); > 1 runs `srun torchrun --nnodes ...` and needs
#               RDZV_ENDPOINT=host:port (see scripts/slurm/)
#   DRY_RUN=1   a handful of iterations on the embedded data on CPU (digits; ResNet-50: the synthetic ImageNet
#               set, since its 1000-way classifier is part of the counted parameters); PRETRAIN may be unset, a
#               one-epoch baseline is then trained first (into DRY_RUN_BASELINE, default JOB_DIR/dry_run_baseline)
#   PYTHON      interpreter (default <repo>/.venv/bin/python when it exists, else python3)
#   FORCE_PRUNE=1  prune again even if JOB_DIR/prune/pruned.pth.tar exists (by default a re-run, e.g. after a
#               Slurm requeue, keeps the pruned model and resumes fine-tuning from JOB_DIR/finetune; the
#               fine-tuning of a replaced pruning is moved to JOB_DIR/finetune.stale-<date>)
#
# The batch sizes written in the scripts are global (the paper's); under torchrun each process gets
# batch / (GPUS * NNODES), so the learning rate needs no rescaling.

CORING_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$CORING_REPO/.venv/bin/python" ]]; then PYTHON="$CORING_REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

coring_die() { echo "error: $*" >&2; exit 2; }

# Print a command (shell-quoted, so it can be copied) and run it.
coring_run() {
    printf '+' >&2; printf ' %q' "$@" >&2; printf '\n' >&2
    "$@"
}

_coring_int() {  # name value
    [[ "$2" =~ ^[1-9][0-9]*$ ]] || coring_die "$1 must be a positive integer, got '$2'"
}

# coring_setup ARCH NAME DATASET: resolve the environment of one run.
coring_setup() {
    ARCH="$1"; ROW="$2"; DATASET="$3"
    DRY_RUN="${DRY_RUN:-0}"
    GPUS="${GPUS:-1}"; NNODES="${NNODES:-1}"
    _coring_int GPUS "$GPUS"; _coring_int NNODES "$NNODES"
    WORLD=$((GPUS * NNODES))
    JOB_DIR="${JOB_DIR:-$CORING_REPO/runs/$ARCH/$ROW}"
    DATA_DIR="${DATA_DIR:-$CORING_REPO/data/$DATASET}"
    mkdir -p "$JOB_DIR"

    # Fine-tuning launcher. torchrun is invoked as `python -m torch.distributed.run` (what the torchrun command
    # runs) so that it uses the same interpreter as everything else.
    if (( NNODES > 1 )); then
        [[ -n "${RDZV_ENDPOINT:-}" ]] || coring_die "NNODES=$NNODES needs RDZV_ENDPOINT=host:port (the first node)"
        FT_LAUNCH=(srun --nodes "$NNODES" --ntasks-per-node 1 "$PYTHON" -m torch.distributed.run
                   --nnodes "$NNODES" --nproc_per_node "$GPUS" --rdzv_backend c10d
                   --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-coring-$ARCH-$ROW}")
    elif (( GPUS > 1 )); then
        FT_LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$GPUS")
    else
        FT_LAUNCH=("$PYTHON")
    fi

    # Dry run: the same commands; these flags come last, so they override the recipe's.
    DRY_PRUNE=(); DRY_FINETUNE=()
    if [[ "$DRY_RUN" == 1 ]]; then
        local data=(--dataset digits --limit_train 16 --limit_test 16 --batch_size 8 --workers 0)
        [[ "$DATASET" == imagenet ]] && data=(--dataset synthetic_imagenet --limit_train 8 --limit_test 8
                                              --batch_size 4 --workers 0)
        DRY_PRUNE=("${data[@]}" --calib_epochs 1 --bn_recalib 16 --device cpu)
        DRY_FINETUNE=("${data[@]}" --epochs 1 --device cpu --no-progress)
    elif [[ "$DRY_RUN" != 0 ]]; then
        coring_die "DRY_RUN must be 0 or 1, got '$DRY_RUN'"
    fi
}

# coring_batch GLOBAL: the per-process batch of a global batch (an error unless it divides evenly).
coring_batch() {
    if [[ "$DRY_RUN" == 1 ]]; then echo "$1"; return; fi
    (( $1 % WORLD == 0 )) || coring_die "batch $1 does not split over $WORLD processes (GPUS=$GPUS NNODES=$NNODES)"
    echo $(($1 / WORLD))
}

# coring_baseline_args: the arguments that train the unpruned ARCH (train_baseline.sh), in BASELINE_ARGS.
coring_baseline_args() {
    case "$ARCH" in
        resnet_50)
            # torchvision's references/classification ResNet-50 recipe: 90 epochs, SGD lr 0.1 (global batch 256),
            # momentum 0.9, weight decay 1e-4, step x0.1 every 30 epochs, no label smoothing.
            BASELINE_ARGS=(--recipe imagenet --epochs 90 --lr 0.1 --momentum 0.9 --weight_decay 1e-4 --lr_type step
                           --lr_decay_step 30,60 --warmup_epochs 0 --label_smooth 0
                           --batch_size "$(coring_batch 256)")
            ;;
        densenet_40)
            # DenseNet paper (Huang et al. 2017) CIFAR recipe: 300 epochs, lr 0.1 x0.1 at 50% and 75%,
            # weight decay 1e-4, batch 64.
            BASELINE_ARGS=(--recipe cifar --epochs 300 --lr 0.1 --momentum 0.9 --weight_decay 1e-4 --lr_type step
                           --lr_decay_step 150,225 --label_smooth 0 --batch_size "$(coring_batch 64)")
            ;;
        *)
            # The common CIFAR recipe of the pruning literature (Li et al. 2017, Liu et al. 2017 and the
            # HRank/HRankPlus line): 300 epochs, SGD lr 0.1 x0.1 at epochs 150 and 225, momentum 0.9,
            # weight decay 5e-4, batch 128.
            BASELINE_ARGS=(--recipe cifar --epochs 300 --lr 0.1 --momentum 0.9 --weight_decay 5e-4 --lr_type step
                           --lr_decay_step 150,225 --label_smooth 0 --batch_size "$(coring_batch 128)")
            ;;
    esac
}

# coring_train_baseline DIR: train the unpruned ARCH into DIR (the baseline recipe; resumable).
coring_train_baseline() {
    local dir="$1"
    coring_baseline_args
    coring_run "${FT_LAUNCH[@]}" "$CORING_REPO/main/finetune.py" --arch "$ARCH" \
        --dataset "$DATASET" --data_dir "$DATA_DIR" --job_dir "$dir" --resume \
        "${BASELINE_ARGS[@]}" "${DRY_FINETUNE[@]}"
}

# coring_pretrain: set PRETRAIN (in a dry run without one, train a one-epoch baseline first).
coring_pretrain() {
    if [[ -n "${PRETRAIN:-}" ]]; then
        [[ -f "$PRETRAIN" ]] || coring_die "PRETRAIN=$PRETRAIN does not exist"
        return
    fi
    if [[ "$DRY_RUN" == 1 ]]; then
        local dir="${DRY_RUN_BASELINE:-$JOB_DIR/dry_run_baseline}"
        PRETRAIN="$dir/checkpoint.pth.tar"
        if [[ ! -f "$PRETRAIN" ]]; then
            local launch=("${FT_LAUNCH[@]}")
            FT_LAUNCH=("$PYTHON")
            coring_train_baseline "$dir"
            FT_LAUNCH=("${launch[@]}")
        fi
        return
    fi
    PRETRAIN="$CORING_REPO/runs/baseline/$ARCH/model_best.pth.tar"
    [[ -f "$PRETRAIN" ]] || coring_die "set PRETRAIN to the unpruned $ARCH checkpoint (scripts/train_baseline.sh $ARCH \
writes $PRETRAIN; the paper's released baselines load too)"
}

# coring_rank_dir: where scripts/generate_rank_resnet50.sh puts ranks (RANK_DIR; in a dry run, under JOB_DIR).
coring_rank_dir() {
    if [[ -n "${RANK_DIR:-}" ]]; then echo "$RANK_DIR"
    elif [[ "$DRY_RUN" == 1 ]]; then echo "$JOB_DIR/ranks"
    else echo "$CORING_REPO/runs/ranks/$ARCH"; fi
}

# coring_prune ARGS...: prune PRETRAIN into JOB_DIR/prune (one process; skipped when already done).
coring_prune() {
    coring_pretrain
    local source="$PRETRAIN" link
    # Ranks precomputed by scripts/generate_rank_resnet50.sh live beside a per-criterion link to the baseline
    # (RANK_DIR/<criterion>/<arch>.pth.tar, one cache file per criterion); prune through that link when it
    # points at PRETRAIN, so they are reused. Elsewhere the ranks are cached beside PRETRAIN itself.
    link="$(coring_rank_dir)/$CRITERION/$ARCH.pth.tar"
    if [[ -e "$link" && "$(readlink -f "$link")" == "$(readlink -f "$PRETRAIN")" ]]; then
        source="$link"
    fi
    if [[ -f "$JOB_DIR/prune/pruned.pth.tar" && "${FORCE_PRUNE:-0}" != 1 ]]; then
        if [[ -f "$JOB_DIR/prune/prune_summary.json" ]]; then  # the same pruning, not another row's?
            "$PYTHON" - "$JOB_DIR/prune/prune_summary.json" "$CRITERION" "$SHOT" "$COMPRESS_RATE" <<'PY' ||
import json, sys
summary = json.load(open(sys.argv[1]))
found = (summary.get("criterion"), str(summary.get("shot")), summary.get("compress_rate"))
sys.exit(0 if found == tuple(sys.argv[2:5]) else f"{sys.argv[1]}: criterion, K, rate = {found}")
PY
            coring_die "$JOB_DIR/prune holds another pruning than criterion $CRITERION, K $SHOT, rate $COMPRESS_RATE; \
use another JOB_DIR, or FORCE_PRUNE=1 to replace it"
        fi
        echo "$JOB_DIR/prune/pruned.pth.tar exists: not pruning again (FORCE_PRUNE=1 to redo)" >&2
        return
    fi
    coring_run "$PYTHON" "$CORING_REPO/main/prune.py" --arch "$ARCH" --pretrain_dir "$source" \
        --dataset "$DATASET" --data_dir "$DATA_DIR" --job_dir "$JOB_DIR/prune" "$@" "${DRY_PRUNE[@]}"
    # A fine-tuning of an earlier pruning must not be resumed with the new one: move it aside.
    if [[ -e "$JOB_DIR/finetune/checkpoint.pth.tar" ]]; then
        local stale="$JOB_DIR/finetune.stale-$(date +%Y%m%d-%H%M%S)"
        mv "$JOB_DIR/finetune" "$stale"
        echo "moved the fine-tuning of the previous pruning to $stale" >&2
    fi
}

# coring_finetune ARGS...: fine-tune JOB_DIR/prune/pruned.pth.tar into JOB_DIR/finetune (resumable).
coring_finetune() {
    coring_run "${FT_LAUNCH[@]}" "$CORING_REPO/main/finetune.py" --pretrained "$JOB_DIR/prune/pruned.pth.tar" \
        --dataset "$DATASET" --data_dir "$DATA_DIR" --job_dir "$JOB_DIR/finetune" --resume \
        "$@" "${DRY_FINETUNE[@]}"
}
