"""Data-driven pruning criteria of the field, scored from the feature maps of a few training batches.

* ``hrank`` (Lin et al., CVPR 2020): the average matrix rank of each channel's ``H x W`` feature map over the
  images; high rank = keep.
* ``chip`` (Sui et al., NeurIPS 2021): channel independence, the drop of the nuclear norm of the layer's
  ``C x HW`` feature-map matrix when channel ``c`` is zeroed, averaged over the images; high = keep.
* ``taylor`` (Molchanov et al., 2017/2019): ``|sum over H, W of activation x dLoss/dactivation|`` per channel,
  cross-entropy on the labels, averaged over the images; high = keep.

Which feature map: the output of a layer chosen by the caller, a BatchNorm after the scored conv or the conv itself
(:func:`layout_sources` for the built-in architectures, ``coring.coring_importance`` for the generic path).
``hrank`` and ``chip`` score the activation, as those papers hook it: ReLU of a BatchNorm's output (a conv output
without BatchNorm is scored as it is); ``taylor`` scores the pre-activation output (the BatchNorm's, or the conv's).
All layers are scored in one pass over the batches, in eval mode: BatchNorm running statistics are untouched, no
weight changes, and ``taylor``'s gradients are taken with ``torch.autograd.grad`` with respect to the hooked outputs
only, so no parameter's ``.grad`` is written either. ``hrank`` and ``chip`` run under ``torch.no_grad``.
"""
from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from coring.rank import DATA_CRITERIA, canonical_criterion
from coring.rank_cache import weights_hash
from data.common import at_epoch
from models.layout import ChannelGroup

__all__ = [
    "Batch",
    "batches_digest",
    "check_batches",
    "chip_scores",
    "data_key",
    "draw_batches",
    "feature_scores",
    "hrank_scores",
    "layout_sources",
    "taylor_scores",
]

Batch = tuple[Tensor, Tensor]

#: Elements (float64) of one batched eigen-decomposition of CHIP's masked Gram matrices (128 MiB).
_CHIP_BUDGET = 1 << 24
#: Feature maps per batched matrix_rank call of HRank.
_HRANK_CHUNK = 1 << 14


# ---------------------------------------------------------------------------------------------- per-layer scores
def _check_maps(maps: Tensor, what: str) -> Tensor:
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"{what} needs feature maps of shape [B, C, H, W], got {shape}")
    return maps.detach()


def hrank_scores(maps: Tensor, *, what: str = "hrank") -> Tensor:
    """Sum over the images of the matrix rank of every channel's ``H x W`` map: ``[B, C, H, W] -> [C]`` (float64).

    One batched ``torch.linalg.matrix_rank`` over ``(B*C, H, W)`` maps (chunked), with its default tolerance
    (``max(H, W) * eps * largest singular value``) in the maps' precision: float32 for float32 (or half) maps,
    as HRank's code computes it.
    """
    maps = _check_maps(maps, what)
    if maps.dtype not in (torch.float32, torch.float64):
        maps = maps.float()
    b, c, h, w = maps.shape
    flat = maps.reshape(b * c, h, w)
    ranks = torch.cat([torch.linalg.matrix_rank(flat[i:i + _HRANK_CHUNK]) for i in range(0, b * c, _HRANK_CHUNK)])
    return ranks.reshape(b, c).sum(dim=0).to(torch.float64)


def _nuclear_from_gram(gram: Tensor) -> Tensor:
    """Nuclear norm of ``A`` from a batch of Gram matrices ``A A^T`` (or ``A^T A``): the sum of ``sqrt(eig)``."""
    return torch.linalg.eigvalsh(gram).clamp_min_(0.0).sqrt_().sum(dim=-1)


def chip_scores(maps: Tensor, *, what: str = "chip") -> Tensor:
    """Sum over the images of CHIP's channel independence: ``[B, C, H, W] -> [C]`` (float64).

    For image ``b`` with ``A = maps[b].reshape(C, H*W)`` and ``A_c`` = ``A`` with row ``c`` zeroed, the channel's
    independence is ``|A|_* - |A_c|_*`` (nuclear norms, never negative). Batched through Gram matrices of side
    ``d = min(C, H*W)`` in float64: ``A_c A_c^T`` is ``A A^T`` with row and column ``c`` zeroed, and
    ``A_c^T A_c = A^T A - a_c a_c^T``; one ``eigvalsh`` handles a chunk of (image, channel) pairs at a time
    (about 128 MiB), so there is no per-channel Python loop. Cost ``O(B C d^3)``.
    """
    maps = _check_maps(maps, what)
    b, c, h, w = maps.shape
    a = maps.to(torch.float64).reshape(b, c, h * w)
    by_rows = c <= h * w
    gram = a @ a.transpose(1, 2) if by_rows else a.transpose(1, 2) @ a  # [B, d, d]
    d = gram.shape[-1]
    full = _nuclear_from_gram(gram)  # [B]
    pairs = b * c
    chunk = max(1, _CHIP_BUDGET // (d * d))
    masked = torch.empty(pairs, dtype=torch.float64, device=maps.device)
    for start in range(0, pairs, chunk):
        idx = torch.arange(start, min(start + chunk, pairs), device=maps.device)
        img, ch = idx // c, idx % c
        g = gram[img]  # [k, d, d]
        if by_rows:
            keep = torch.ones(idx.numel(), c, dtype=torch.float64, device=maps.device)
            keep[torch.arange(idx.numel(), device=maps.device), ch] = 0.0
            g = g * keep[:, :, None] * keep[:, None, :]
        else:
            row = a[img, ch]  # [k, HW]
            g = g - row[:, :, None] * row[:, None, :]
        masked[start:start + idx.numel()] = _nuclear_from_gram(g)
    return (full[:, None] - masked.reshape(b, c)).clamp_min_(0.0).sum(dim=0)


def taylor_scores(activations: Tensor, gradients: Tensor) -> Tensor:
    """Sum over the images of ``|sum over positions of activation x gradient|`` per channel: ``[B, C, ...] -> [C]``."""
    if activations.shape != gradients.shape or activations.dim() < 2:
        raise ValueError(f"taylor needs activations and gradients of one shape [B, C, ...], got "
                         f"{tuple(activations.shape)} and {tuple(gradients.shape)}")
    prod = activations.detach().to(torch.float64) * gradients.detach().to(torch.float64)
    return prod.flatten(2).sum(dim=2).abs().sum(dim=0)


# ---------------------------------------------------------------------------------------------- batches
def check_batches(batches: Iterable[Batch] | None, criterion: str) -> list[Batch]:
    """The batches as a list of ``(images, labels)`` pairs; a one-line ValueError when there are none."""
    crit = canonical_criterion(criterion)
    listed = list(batches) if batches is not None else []
    if not listed:
        raise ValueError(f"criterion {crit!r} is data-driven: it needs batches of training images "
                         f"(batches=[(images, labels), ...]; --rank_batches N > 0 on the command line)")
    for i, item in enumerate(listed):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(t, Tensor) for t in item)):
            raise ValueError(f"batch {i} for {crit!r} must be an (images, labels) pair of tensors, "
                             f"got {type(item).__name__}")
    return [(images, labels) for images, labels in listed]


def draw_batches(loader: Iterable[Batch], count: int) -> list[Batch]:
    """The first ``count`` batches of epoch 0 of ``loader``; the loader's epoch counter is left where it was.

    The run layer draws them from the training loader, whose order and augmentation are seeded per epoch
    (``data.build_loaders``' ``seed``): the same seed gives the same batches, hence the same rank-cache key.
    """
    if count < 0:
        raise ValueError(f"--rank_batches must be >= 0, got {count}")
    if count == 0:
        return []
    with at_epoch(loader, 0):
        return [(images, labels) for images, labels in itertools.islice(iter(loader), count)]


def batches_digest(batches: Sequence[Batch]) -> str:
    """SHA-1 (hex) of the batches: their number, then each tensor's dtype, shape and bytes (on the CPU)."""
    digest = hashlib.sha1(f"{len(batches)} batches;".encode())
    for batch in batches:
        for t in batch:
            t = t.detach().cpu().contiguous()
            digest.update(f"{t.dtype}|{tuple(t.shape)};".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_key(model: nn.Module, batches: Sequence[Batch]) -> dict[str, object]:
    """What a data-driven saliency depends on besides its group's weights, for the rank cache.

    The batches' digest and number (``rank_batches``), and a hash of the whole model state: a layer's feature
    maps depend on every layer before it (and Taylor's gradients on every layer after it).
    """
    return {"data": batches_digest(batches), "rank_batches": len(batches),
            "model": weights_hash(list(model.state_dict().values()))}


# ---------------------------------------------------------------------------------------------- sources
def layout_sources(group: ChannelGroup, modules: Mapping[str, nn.Module]) -> list[str]:
    """The layers whose outputs score a built-in channel group: one per scored conv.

    For each scored conv, the last BatchNorm among the producers that follow it (up to the next scored conv) --
    the BatchNorm after it, or after the depthwise conv that carries the group's channels (MobileNetV2) -- else the
    conv itself (DenseNet's convs, which have no BatchNorm of their own).
    """
    scored = set(group.scored)
    out = []
    for conv in group.scored:
        source = conv
        if conv in group.producers:
            for name in group.producers[group.producers.index(conv) + 1:]:
                if name in scored:
                    break
                if isinstance(modules[name], nn.modules.batchnorm._BatchNorm):
                    source = name
        out.append(source)
    return out


# ---------------------------------------------------------------------------------------------- model pass
def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def _logits(output: object) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise ValueError(f"taylor needs the model to return class logits, it returned a {type(output).__name__}")


def feature_scores(model: nn.Module, layers: Iterable[str], criterion: str,
                   batches: Iterable[Batch] | None) -> dict[str, Tensor]:
    """Per-channel scores (float64, averaged over the images, on the model's device) of each named layer's output.

    One pass over ``batches`` scores every layer (see the module docstring for which activation each criterion
    reads). The model runs in eval mode and gets its modes back afterwards; nothing in it changes.
    """
    crit = canonical_criterion(criterion)
    if crit not in DATA_CRITERIA:
        raise ValueError(f"criterion {crit!r} is not data-driven; data-driven criteria: {', '.join(DATA_CRITERIA)}")
    batches = check_batches(batches, crit)
    named = dict(model.named_modules())
    layers = list(dict.fromkeys(layers))
    missing = [name for name in layers if name not in named]
    if missing:
        raise ValueError(f"no layer named {missing[0]!r} in the model")
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    totals: dict[str, Tensor] = {}
    captured: dict[str, Tensor] = {}

    def add(name: str, scores: Tensor) -> None:
        totals[name] = totals[name] + scores if name in totals else scores

    def score_hook(name: str, relu: bool):
        score = hrank_scores if crit == "hrank" else chip_scores

        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            maps = _check_maps(output, f"{crit} (layer {name!r})")
            add(name, score(F.relu(maps) if relu else maps))
        return hook

    def capture_hook(name: str):
        def hook(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
            captured[name] = output
            return output.clone()  # an in-place activation after the layer must not overwrite what we keep
        return hook

    modes = {m: m.training for m in model.modules()}
    handles = []
    images_seen = 0
    try:
        model.eval()
        for name in layers:
            hook = capture_hook(name) if crit == "taylor" else score_hook(name, _is_norm(named[name]))
            handles.append(named[name].register_forward_hook(hook))
        for images, labels in batches:
            images = images.to(device)
            if crit == "taylor":
                captured.clear()
                with torch.enable_grad():
                    logits = _logits(model(images.detach().requires_grad_(True)))
                    loss = F.cross_entropy(logits.float(), labels.to(device), reduction="sum")
                    names = [n for n in layers if n in captured]
                    grads = torch.autograd.grad(loss, [captured[n] for n in names], allow_unused=True)
                for name, grad in zip(names, grads):
                    act = captured[name]
                    add(name, taylor_scores(act, grad) if grad is not None  # None: the loss does not reach it
                        else act.new_zeros(act.shape[1], dtype=torch.float64))
                captured.clear()
            else:
                with torch.no_grad():
                    model(images)
            images_seen += images.shape[0]
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    not_run = [name for name in layers if name not in totals]
    if not_run:
        raise ValueError(f"layer {not_run[0]!r} produced no feature map for {crit!r} (is it used in forward?)")
    return {name: totals[name] / images_seen for name in layers}
