"""CORING for any CNN: torchvision models and user modules pruned through Torch-Pruning's dependency graph.

    python main/prune.py --model torchvision:resnet18 --flops_target 0.5 --criterion VBD_dis \
        --pretrain_dir resnet18_cifar.pth.tar --dataset cifar10 --job_dir runs/r18
    python main/prune.py --model path/to/net.py:MyNet --params_target 0.4 --dataset digits --job_dir runs/mynet
    python main/finetune.py --pretrained runs/r18/pruned.pth.tar --dataset cifar10 --job_dir runs/r18_ft

* :func:`load_user_model` builds ``torchvision:NAME`` (``weights=None``) or ``path/to/file.py:ClassName``.
* :func:`prune_generic` ranks every channel group with :class:`coring.coring_importance.CoringImportance` and
  prunes with ``torch_pruning.pruner.BasePruner``: **uniform (local) pruning**, every group loses the same
  fraction ``r`` of its channels (CORING saliencies are removal orders inside a group, not comparable across
  groups, and the paper prunes per layer). For a FLOP or parameter target, ``r`` is the smallest multiple of
  ``search_resolution`` whose widths meet it, found by stepping a scratch copy through the pruner's iterative
  steps (widths depend on ``r`` only, so the scratch copy uses a free importance); the real model is then
  pruned once at ``r`` (one shot: all groups ranked on the original weights before any is pruned) or in
  ``iterative_steps`` shots at ``r/K, r/(K-1), ..., r`` (each ranked on the partly pruned weights).
  Layers whose output channels feed no other layer (the classifier head) are never pruned.
* :func:`save_generic` writes the pruned weights plus the Torch-Pruning history (layer name, out/in, removed
  indices), plain values only; :func:`rebuild_from_checkpoint` rebuilds the unpruned source model, replays the
  history on a freshly traced dependency graph and loads the weights strictly. ``torch.load(weights_only=True)``
  reads the file. A checkpoint never names code to run: ``torchvision:NAME`` sources are rebuilt as recorded,
  a user module only from the ``--model path/to/file.py:ClassName`` the user passes (which executes that file).
"""
from __future__ import annotations

from coring.generic.common import NOT_CNN_PREFIXES, TORCHVISION_PREFIX, GenericModelError, tp_version
from coring.generic.models import load_user_model, model_label
from coring.generic.pruning import check_forward, count_ops, output_layers, prune_generic
from coring.generic.records import generic_checkpoint, load_state_strict, rebuild_from_checkpoint, save_generic

__all__ = ['GenericModelError', 'NOT_CNN_PREFIXES', 'TORCHVISION_PREFIX', 'check_forward', 'count_ops', 'generic_checkpoint', 'load_state_strict', 'load_user_model', 'model_label', 'output_layers', 'prune_generic', 'rebuild_from_checkpoint', 'save_generic', 'tp_version']
