"""A per-model file of filter saliencies, reused while nothing that determines them has changed.

One cache file per model (conventionally ``<checkpoint>.ranks.pt``, see :meth:`RankCache.for_checkpoint`)
maps each (group name, criterion, strategy, seed) to a SHA-256 of the group's weights and the saliency, so the
ranks of several criteria live side by side. Data-driven criteria (``hrank``, ``chip``, ``taylor``) also key on
what the images give (``data=``, see ``coring.feature_criteria.data_key``: a digest of the batches, their number
and a hash of the whole model); weight-only criteria keep the keys they always had. :meth:`RankCache.get` returns
the stored saliency only if all of these match; otherwise the caller recomputes and :meth:`RankCache.put`
replaces the entry. The file is written atomically (temporary file in the same directory, then ``os.replace``) and
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from coring.checkpoint import save_checkpoint
from coring.rank import canonical_criterion, canonical_strategy, rank_groups

__all__ = ["RankCache", "weights_hash"]

_log = logging.getLogger("coring.rank_cache")

_FORMAT = 2


def weights_hash(weights: Sequence[Tensor]) -> str:
    """SHA-256 (hex) of a group's weights: for each tensor in order, its dtype and shape, then its raw bytes.

    The dtype/shape header keeps two groups whose bytes happen to concatenate identically apart.
    """
    if isinstance(weights, Tensor):
        weights = [weights]
    digest = hashlib.sha256()
    for w in weights:
        t = w.detach().cpu().contiguous()
        digest.update(f"{t.dtype}|{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class RankCache:
    """Saliency of every named group of a model, keyed on (criterion, strategy, seed, weights hash).

    >>> cache = RankCache("model.pth.tar.ranks.pt")            # doctest: +SKIP
    >>> sal = cache.get("layer1.0.conv1", [w], "VBD_dis", "min_sum", 0)
    >>> if sal is None:
    ...     sal = filter_saliency(w); cache.put("layer1.0.conv1", [w], "VBD_dis", "min_sum", 0, sal)
    >>> cache.save()

    Criterion and strategy names are canonicalised, so ``"vbd"`` and ``"VBD_dis"`` share an entry. A file
    that cannot be read (corrupt, another format) is ignored with a warning and overwritten on the next save.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._entries: dict[str, dict] = {}
        self.dirty = False
        if self.path.exists():
            self._load()

    @classmethod
    def for_checkpoint(cls, checkpoint: str | os.PathLike[str]) -> RankCache:
        """The cache file that belongs to a checkpoint: ``<checkpoint>.ranks.pt`` next to it."""
        return cls(f"{os.fspath(checkpoint)}.ranks.pt")

    def _load(self) -> None:
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or data.get("format") != _FORMAT or not isinstance(data.get("entries"), dict):
                raise ValueError(f"not a rank cache of format {_FORMAT}")
        except Exception as exc:  # a cache must never block ranking
            warnings.warn(f"ignoring unreadable rank cache {self.path}: {exc}", stacklevel=3)
            return
        self._entries = dict(data["entries"])

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return any(key.split("|", 1)[0] == name for key in self._entries)

    @staticmethod
    def _entry_name(name: str, criterion: str, strategy: str, seed: int) -> str:
        return f"{name}|{canonical_criterion(criterion)}|{canonical_strategy(strategy)}|{int(seed)}"

    @staticmethod
    def _key(weights: Sequence[Tensor], criterion: str, strategy: str, seed: int,
             data: Mapping[str, object] | None = None) -> dict:
        key = {
            "criterion": canonical_criterion(criterion),
            "strategy": canonical_strategy(strategy),
            "seed": int(seed),
            "hash": weights_hash(weights),
        }
        if data:
            reserved = set(key) & set(data) | ({"saliency"} & set(data))
            if reserved:
                raise ValueError(f"data key {min(reserved)!r} is reserved by the rank cache")
            key.update(data)
        return key

    def get(
        self, name: str, weights: Sequence[Tensor], criterion: str, strategy: str, seed: int = 0, *,
        data: Mapping[str, object] | None = None,
    ) -> Tensor | None:
        """The stored saliency of group ``name`` if its weights, criterion, strategy, seed (and ``data``) are unchanged.

        ``data``: plain values that the saliency depends on besides the weights (data-driven criteria). Returns a
        copy on the device of the group's first weight, or None (a miss).
        """
        entry = self._entries.get(self._entry_name(name, criterion, strategy, seed))
        if entry is None:
            return None
        key = self._key(weights, criterion, strategy, seed, data)
        if any(entry.get(k) != v for k, v in key.items()):
            return None
        weights = [weights] if isinstance(weights, Tensor) else list(weights)
        return entry["saliency"].clone().to(weights[0].device)

    def put(
        self, name: str, weights: Sequence[Tensor], criterion: str, strategy: str, seed: int, saliency: Tensor, *,
        data: Mapping[str, object] | None = None,
    ) -> None:
        """Store (or replace) the saliency of group ``name``; call :meth:`save` to write the file."""
        entry = self._key(weights, criterion, strategy, seed, data)
        entry["saliency"] = saliency.detach().to("cpu", torch.float64).clone()
        self._entries[self._entry_name(name, criterion, strategy, seed)] = entry
        self.dirty = True

    def rank_groups(
        self,
        groups: Sequence[Sequence[Tensor]],
        names: Sequence[str],
        criterion: str = "VBD_dis",
        strategy: str = "min_sum",
        *,
        seed: int = 0,
        data: Mapping[str, object] | None = None,
        compute: Callable[[list[int]], Sequence[Tensor]] | None = None,
    ) -> list[Tensor]:
        """:func:`coring.rank.rank_groups` through the cache: hits are reused, misses ranked together and stored.

        ``compute(indices)``, when given, scores the missed groups ``indices`` instead of ``rank_groups`` (the
        data-driven criteria, whose saliencies come from feature maps); ``data`` goes into their keys.
        """
        groups, names = list(groups), list(names)
        if len(groups) != len(names):
            raise ValueError(f"got {len(names)} names for {len(groups)} groups")
        out: list[Tensor | None] = [self.get(n, g, criterion, strategy, seed, data=data) for n, g in zip(names, groups)]
        missing = [i for i, sal in enumerate(out) if sal is None]
        _log.info("rank cache %s: %d of %d groups reused, %d to rank (%s, %s)", self.path, len(out) - len(missing),
                  len(out), len(missing), criterion, strategy)
        if missing:
            if compute is not None:
                fresh = list(compute(missing))
            else:
                fresh = rank_groups([groups[i] for i in missing], criterion, strategy, seed=seed,
                                    names=[names[i] for i in missing])
            for i, sal in zip(missing, fresh):
                self.put(names[i], groups[i], criterion, strategy, seed, sal, data=data)
                out[i] = sal
        return out  # type: ignore[return-value]

    def save(self) -> None:
        """Write the cache file atomically (``coring.checkpoint.save_checkpoint``)."""
        save_checkpoint({"format": _FORMAT, "entries": self._entries}, self.path)
        self.dirty = False
