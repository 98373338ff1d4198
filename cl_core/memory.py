"""A bounded exemplar memory for class-incremental learning, replayed while later experiences train.

Pure regularisation collapses when new classes join one head (old classes are never seen again, so nothing
keeps their logits competitive).  A few stored samples per class fix that.  Budget: at most ``per_class``
exemplars per class and, if set, ``total`` overall (then each class keeps an equal share).  Selection:

* ``herding`` (Rebuffi et al. 2017, iCaRL, Alg. 4): greedily pick the samples whose running feature mean best
  approximates the class mean (L2-normalised features); the order is a priority, so shrinking keeps a prefix;
* ``reservoir``: a class-balanced reservoir (Vitter's algorithm R per class), a uniform sample of every sample of
  the class ever seen, even when a class arrives over several experiences.

Replay: ``concat`` adds the exemplars to the experience's training data (rehearsal as iCaRL and WA do it: old
classes are rare in every batch, which weight aligning then corrects); ``batch`` mixes a replayed batch of the
same size into every training batch (experience replay as in Chaudhry et al. 2019).

The whole memory is tensors (its state dict), so a store can persist it with the method's state.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from cl_core.experience import Experience
from cl_core.trainer import output_mask

Selection = Literal["herding", "reservoir"]
ReplayMode = Literal["concat", "batch"]


class ExemplarMemory:
    """Stored (input, label, active outputs) triples, per class within a budget; a `ReplaySource`."""

    def __init__(
        self,
        per_class: int = 20,
        total: int | None = None,
        selection: Selection = "herding",
        replay: ReplayMode = "concat",
        seed: int = 0,
    ) -> None:
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {per_class}")
        if total is not None and total < 1:
            raise ValueError(f"total must be at least 1, got {total}")
        if selection not in ("herding", "reservoir"):
            raise ValueError(f"unknown selection {selection!r}; expected 'herding' or 'reservoir'")
        if replay not in ("concat", "batch"):
            raise ValueError(f"unknown replay mode {replay!r}; expected 'concat' or 'batch'")
        self.replay: ReplayMode = replay
        self.per_class = per_class
        self.total = total
        self.selection: Selection = selection
        self.seed = seed
        self.inputs: Tensor | None = None
        self.targets = torch.zeros(0, dtype=torch.long)
        self.groups = torch.zeros(0, dtype=torch.long)
        self.ids = torch.zeros(0, dtype=torch.long)  # the store's sample ids (-1: unknown), for deletion requests
        self.active: list[tuple[int, ...] | None] = []
        self.seen: dict[int, int] = {}  # samples of each class offered so far (reservoir)
        self._updates = 0

    def hparams(self) -> dict[str, Any]:
        return {
            "per_class": self.per_class,
            "total": self.total,
            "selection": self.selection,
            "replay": self.replay,
            "seed": self.seed,
        }

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def classes(self) -> list[int]:
        return sorted(set(self.targets.tolist()))

    def quota(self, num_classes: int) -> int:
        """Exemplars each class may keep."""
        if self.total is None or num_classes == 0:
            return self.per_class
        return max(1, min(self.per_class, self.total // num_classes))

    # -- filling -------------------------------------------------------------------------------------------------
    def update(self, model: nn.Module, experience: Experience) -> None:
        """Offer an experience's labeled samples; each class keeps its best (herding) or a uniform sample."""
        if experience.targets is None:
            return
        self._updates += 1
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self._updates)
        group = self._group(experience.active_outputs)
        labels = experience.targets.cpu()
        ids = experience.ids.cpu() if experience.ids is not None else torch.full((len(labels),), -1)
        tags = torch.stack([torch.full_like(ids, group), ids], dim=1)  # (group, sample id) per sample
        old_tags = torch.stack([self.groups, self.ids], dim=1)
        all_classes = sorted(set(self.targets.tolist()) | set(labels.tolist()))
        quota = self.quota(len(all_classes))
        keep_x, keep_y, keep_t = [], [], []
        for cls in all_classes:
            old = (self.targets == cls).nonzero().flatten()
            new = (labels == cls).nonzero().flatten()
            old_x = self.inputs[old] if self.inputs is not None and len(old) else None
            new_x = experience.inputs[new].cpu()
            if self.selection == "reservoir":
                x, t = self._reservoir(cls, old_x, old_tags[old], new_x, tags[new], quota, generator)
            else:
                x, t = self._herding(model, old_x, old_tags[old], new_x, tags[new], quota)
            keep_x.append(x)
            keep_y.append(torch.full((len(x),), cls, dtype=torch.long))
            keep_t.append(t)
        self.inputs = torch.cat(keep_x)
        self.targets = torch.cat(keep_y)
        kept = torch.cat(keep_t).reshape(-1, 2)
        self.groups, self.ids = kept[:, 0].clone(), kept[:, 1].clone()
        self._drop_unused_groups()

    def _group(self, active: tuple[int, ...] | None) -> int:
        if active in self.active:
            return self.active.index(active)
        self.active.append(active)
        return len(self.active) - 1

    def _drop_unused_groups(self) -> None:
        used = sorted(set(self.groups.tolist()))
        remap = {g: i for i, g in enumerate(used)}
        self.active = [self.active[g] for g in used]
        self.groups = torch.tensor([remap[g] for g in self.groups.tolist()], dtype=torch.long)

    def _reservoir(
        self,
        cls: int,
        old_x: Tensor | None,
        old_t: Tensor,
        new_x: Tensor,
        new_t: Tensor,
        quota: int,
        generator: torch.Generator,
    ) -> tuple[Tensor, Tensor]:
        """Algorithm R: the i-th sample of a class replaces a random slot with probability quota / i.

        ``*_t`` are each sample's (group, id) tags, carried along with the inputs."""
        xs = list(old_x) if old_x is not None else []
        ts = old_t.tolist()
        xs, ts = xs[:quota], ts[:quota]
        seen = self.seen.get(cls, len(xs))
        for x, t in zip(new_x, new_t.tolist(), strict=True):
            seen += 1
            if len(xs) < quota:
                xs.append(x)
                ts.append(t)
            else:
                slot = int(torch.randint(0, seen, (1,), generator=generator))
                if slot < quota:
                    xs[slot] = x
                    ts[slot] = t
        self.seen[cls] = seen
        empty = new_x[:0] if old_x is None else old_x[:0]
        return (torch.stack(xs) if xs else empty), torch.tensor(ts, dtype=torch.long).reshape(-1, 2)

    @torch.no_grad()
    def _herding(
        self, model: nn.Module, old_x: Tensor | None, old_t: Tensor, new_x: Tensor, new_t: Tensor, quota: int
    ) -> tuple[Tensor, Tensor]:
        """iCaRL herding over the old exemplars and the new samples of one class together."""
        cand = new_x if old_x is None else torch.cat([old_x, new_x])
        cand_g = torch.cat([old_t, new_t])
        if len(cand) <= quota:
            return cand, cand_g
        feats = _features(model, cand)
        feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
        mean = feats.mean(0)
        chosen: list[int] = []
        running = torch.zeros_like(mean)
        available = torch.ones(len(cand), dtype=torch.bool)
        for k in range(1, quota + 1):
            # p_k = argmin_x ‖μ − (Σ_{j<k} φ(p_j) + φ(x)) / k‖
            dist = (mean - (running + feats) / k).norm(dim=1)
            dist[~available] = float("inf")
            pick = int(dist.argmin())
            chosen.append(pick)
            available[pick] = False
            running += feats[pick]
        index = torch.tensor(chosen)
        return cand[index], cand_g[index]

    # -- replay --------------------------------------------------------------------------------------------------
    def replay_batch(
        self, size: int, num_outputs: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor | None] | None:
        if self.inputs is None or len(self) == 0:
            return None
        index = torch.randint(0, len(self), (min(size, len(self)),), generator=generator)
        table = output_mask(self.active, num_outputs, torch.device("cpu"))
        mask = None if table is None else table[self.groups[index]]
        return self.inputs[index], self.targets[index], mask

    def as_experiences(self) -> list[Experience]:
        """The stored exemplars grouped by their active outputs."""
        if self.inputs is None:
            return []
        return [
            Experience(self.inputs[self.groups == g], self.targets[self.groups == g], active)
            for g, active in enumerate(self.active)
            if bool((self.groups == g).any())
        ]

    # -- state ---------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Tensor]:
        if self.inputs is None:
            return {}
        width = max((len(a) for a in self.active if a is not None), default=0)
        table = torch.full((len(self.active), width), -1, dtype=torch.long)
        for g, active in enumerate(self.active):
            if active is not None:
                table[g, : len(active)] = torch.tensor(active, dtype=torch.long)
        seen_classes = sorted(self.seen)
        return {
            "inputs": self.inputs.contiguous(),
            "targets": self.targets.contiguous(),
            "groups": self.groups.contiguous(),
            "ids": self.ids.contiguous(),
            "group_outputs": table,
            "group_all": torch.tensor([a is None for a in self.active], dtype=torch.bool),
            "seen_classes": torch.tensor(seen_classes, dtype=torch.long),
            "seen_counts": torch.tensor([self.seen[c] for c in seen_classes], dtype=torch.long),
            "updates": torch.tensor(self._updates),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if not state:
            self.__init__(**self.hparams())  # type: ignore[misc]
            return
        self.inputs = state["inputs"].clone()
        self.targets = state["targets"].clone()
        self.groups = state["groups"].clone()
        self.ids = state["ids"].clone() if "ids" in state else torch.full_like(self.groups, -1)
        self.active = [
            None if bool(everything) else tuple(int(o) for o in row.tolist() if o >= 0)
            for row, everything in zip(state["group_outputs"], state["group_all"], strict=True)
        ]
        self.seen = dict(zip(state["seen_classes"].tolist(), state["seen_counts"].tolist(), strict=True))
        self._updates = int(state["updates"])

    def keep_only(self, keep: Tensor) -> None:
        """Drop exemplars where ``keep`` is False."""
        if self.inputs is None:
            return
        self.inputs, self.targets = self.inputs[keep], self.targets[keep]
        self.groups, self.ids = self.groups[keep], self.ids[keep]
        self._drop_unused_groups()

    def forget(self, ids: set[int]) -> int:
        """Drop the exemplars of deleted samples; returns how many were held."""
        if self.inputs is None or not ids:
            return 0
        gone = torch.isin(self.ids, torch.tensor(sorted(ids), dtype=torch.long))
        self.keep_only(~gone)
        return int(gone.sum())


def _features(model: nn.Module, x: Tensor) -> Tensor:
    """The model's penultimate features when it exposes them, else its outputs (eval mode, batched)."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        fn = getattr(model, "features", model)
        out = [fn(x[i : i + 512].to(param.device, param.dtype)).flatten(1).cpu() for i in range(0, len(x), 512)]
        return torch.cat(out)
    finally:
        model.train(was_training)
