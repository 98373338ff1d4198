"""A bounded exemplar memory, replayed while later experiences train.

Pure regularisation collapses when new classes join one head (old classes are never seen again, so nothing
keeps their logits competitive).  A few stored samples per class fix that.  Two budgets (``balance``):

* ``class-task`` (benchmark protocol version 2, the default): one ``total`` memory, balanced over the classes seen so
  far (``total // classes`` each, at most ``per_class`` when set) and, within a class, over the experiences ("tasks")
  it appeared in: equal shares, the remainder to the newest, and a share a task cannot fill (too few samples) goes to
  the class's other tasks.  When a class or task arrives the shares shrink; each (class, task) keeps a prefix of its
  selection order, as iCaRL reduces exemplar sets.  So domain-incremental learning (two classes over five tasks)
  keeps every task's digits, and permuted MNIST every permutation.
* ``class`` (protocol version 1): at most ``per_class`` exemplars per class and, if set, ``total`` overall (then each
  class keeps an equal share), selected anew over the old exemplars and the new samples of a class together.

Selection within a class (``class``) or a (class, task) pair (``class-task``):

* ``herding`` (Rebuffi et al. 2017, iCaRL, Alg. 4): greedily pick the samples whose running feature mean best
  approximates the class mean (L2-normalised features); the order is a priority, so shrinking keeps a prefix;
* ``reservoir``: a uniform sample (``class``: Vitter's algorithm R per class, a uniform sample of every sample of the
  class ever seen, even when a class arrives over several experiences; ``class-task``: a random order per task).

Replay (the schedule): ``concat`` adds the exemplars to the experience's training data once per epoch (rehearsal as
iCaRL and WA do it: old classes are rare in every batch, which weight aligning then corrects); ``batch`` mixes a
replayed batch of ``replay_ratio`` × the batch size into every training batch (experience replay as in Chaudhry et
al. 2019 and the usual replay baselines).

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
Balance = Literal["class-task", "class"]
DEFAULT_REPLAY: ReplayMode = "batch"
DEFAULT_REPLAY_RATIO = 2.0
"""The default schedule and ratio: chosen on the validation split of the protocol's split domain- and class-IL
(a memory batch per step beat concatenation, ratio 2 at least matched 1; see the README)."""
DEFAULT_TOTAL = 200


def balanced_shares(budget: int, capacities: list[int]) -> list[int]:
    """Split ``budget`` over tasks (oldest first) as equally as possible, the remainder to the newest; what a task
    cannot hold (its capacity) goes to the others in the same way.  Never more than ``sum(capacities)``."""
    shares = [0] * len(capacities)
    remaining = budget
    open_tasks = [i for i, c in enumerate(capacities) if c > 0]
    while remaining > 0 and open_tasks:
        each, extra = divmod(remaining, len(open_tasks))
        remaining = 0
        still_open = []
        for j, i in enumerate(open_tasks):
            give = each + (1 if j >= len(open_tasks) - extra else 0)
            taken = min(give, capacities[i] - shares[i])
            shares[i] += taken
            remaining += give - taken
            if shares[i] < capacities[i]:
                still_open.append(i)
        open_tasks = still_open
    return shares


class ExemplarMemory:
    """Stored (input, label, active outputs) triples, per class within a budget; a `ReplaySource`."""

    def __init__(
        self,
        per_class: int | None = None,
        total: int | None = DEFAULT_TOTAL,
        selection: Selection = "herding",
        replay: ReplayMode = DEFAULT_REPLAY,
        seed: int = 0,
        balance: Balance = "class-task",
        replay_ratio: float = DEFAULT_REPLAY_RATIO,
    ) -> None:
        for label, value in (("per_class", per_class), ("total", total)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{label} must be a positive integer or None, got {value!r}")
        if per_class is None and total is None:
            raise ValueError("an exemplar memory needs a budget: per_class, total or both")
        if selection not in ("herding", "reservoir"):
            raise ValueError(f"unknown selection {selection!r}; expected 'herding' or 'reservoir'")
        if replay not in ("concat", "batch"):
            raise ValueError(f"unknown replay mode {replay!r}; expected 'concat' or 'batch'")
        if balance not in ("class-task", "class"):
            raise ValueError(f"unknown balance {balance!r}; expected 'class-task' (protocol 2) or 'class' (1)")
        if balance == "class" and per_class is None:
            raise ValueError("the per-class budget (balance 'class', protocol 1) needs per_class")
        if isinstance(replay_ratio, bool) or not isinstance(replay_ratio, int | float) or not 0 < replay_ratio <= 16:
            raise ValueError(f"replay_ratio must be in (0, 16], got {replay_ratio!r}")
        self.replay: ReplayMode = replay
        self.per_class = per_class
        self.total = total
        self.selection: Selection = selection
        self.seed = seed
        self.balance: Balance = balance
        self.replay_ratio = float(replay_ratio)
        self.inputs: Tensor | None = None
        self.targets = torch.zeros(0, dtype=torch.long)
        self.groups = torch.zeros(0, dtype=torch.long)
        self.ids = torch.zeros(0, dtype=torch.long)  # the store's sample ids (-1: unknown), for deletion requests
        self.tasks = torch.zeros(0, dtype=torch.long)  # the update (task) that stored each exemplar
        self.active: list[tuple[int, ...] | None] = []
        self.seen: dict[int, int] = {}  # samples of each class offered so far (reservoir, balance 'class')
        self.appearances: dict[int, list[int]] = {}  # tasks each class appeared in (balance 'class-task')
        self._updates = 0

    def hparams(self) -> dict[str, Any]:
        return {
            "per_class": self.per_class,
            "total": self.total,
            "selection": self.selection,
            "replay": self.replay,
            "seed": self.seed,
            "balance": self.balance,
            "replay_ratio": self.replay_ratio,
        }

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def classes(self) -> list[int]:
        return sorted(set(self.targets.tolist()))

    def quota(self, num_classes: int) -> int:
        """Exemplars each class may keep: ``total // classes`` (at least 1), at most ``per_class``."""
        if self.total is None or num_classes == 0:
            assert self.per_class is not None or self.total is not None
            return self.per_class if self.per_class is not None else self.total  # type: ignore[return-value]
        share = max(1, self.total // num_classes)
        return share if self.per_class is None else min(self.per_class, share)

    # -- filling -------------------------------------------------------------------------------------------------
    def update(self, model: nn.Module, experience: Experience) -> None:
        """Offer an experience's labeled samples; each class (and, by default, each of its tasks) keeps its best
        (herding) or a uniform sample within its share."""
        if experience.targets is None:
            return
        if self.balance == "class-task":
            self._update_balanced(model, experience)
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
        self.tasks = torch.zeros_like(self.targets)
        self._drop_unused_groups()

    def _update_balanced(self, model: nn.Module, experience: Experience) -> None:
        """Protocol 2: shares per class, then per task within a class; old (class, task) sets keep a prefix."""
        assert experience.targets is not None
        self._updates += 1
        task = self._updates
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + task)
        group = self._group(experience.active_outputs)
        labels = experience.targets.cpu()
        ids = experience.ids.cpu() if experience.ids is not None else torch.full((len(labels),), -1)
        tags = torch.stack([torch.full_like(ids, group), ids], dim=1)
        for cls in sorted(set(labels.tolist())):
            self.appearances.setdefault(int(cls), []).append(task)
        quota = self.quota(len(self.appearances))
        # Old rows are kept by index; new ones are appended to a pool after them; one gather builds the memory (a
        # class can hold one exemplar from each of hundreds of updates: no per-(class, task) copies).
        fresh: list[tuple[Tensor, Tensor]] = []  # the new selections (inputs, tags), in pool order
        index: list[int] = []  # the kept rows of the pool, (class, task) after (class, task)
        classes: list[int] = []
        kept_tasks: list[int] = []
        lengths: list[int] = []
        fresh_rows = 0 if self.inputs is None else len(self.inputs)  # where the next new selection starts
        for cls in sorted(self.appearances):
            tasks = self.appearances[cls]
            mine = (self.targets == cls).nonzero().flatten()
            by_task: dict[int, list[int]] = {}
            for row, t in zip(mine.tolist(), self.tasks[mine].tolist(), strict=True):
                by_task.setdefault(t, []).append(row)  # ascending, as a mask's nonzero() gives them
            new = (labels == cls).nonzero().flatten()
            capacities = [len(new) if t == task else len(by_task.get(t, ())) for t in tasks]
            shares = balanced_shares(quota, capacities)
            # A task left without rows can never hold any again (old tasks keep a prefix; `balanced_shares` gives
            # nothing to an empty one), so it is forgotten: the list stays within the quota, however many updates
            # a class appears in (the newest stays, so that the class keeps counting in the quota).
            self.appearances[cls] = [t for t, share in zip(tasks, shares, strict=True) if share > 0] or tasks[-1:]
            for t, share in zip(tasks, shares, strict=True):
                if share == 0:
                    continue
                if t == task:
                    x, tag = self._select(model, experience.inputs[new].cpu(), tags[new], share, generator)
                    fresh.append((x, tag))
                    rows = list(range(fresh_rows, fresh_rows + len(x)))
                    fresh_rows += len(x)
                else:
                    rows = by_task[t][:share]  # the prefix of the selection order
                index.extend(rows)
                classes.append(cls)
                kept_tasks.append(t)
                lengths.append(len(rows))
        if not index:
            return
        pool_x = [x for x, _ in fresh] if self.inputs is None else [self.inputs, *(x for x, _ in fresh)]
        tags_pool = torch.cat([torch.stack([self.groups, self.ids], dim=1), *(tag for _, tag in fresh)])
        gather = torch.tensor(index, dtype=torch.long)
        self.inputs = torch.cat(pool_x)[gather]
        self.groups, self.ids = tags_pool[gather, 0].clone(), tags_pool[gather, 1].clone()
        counts = torch.tensor(lengths)
        self.targets = torch.repeat_interleave(torch.tensor(classes, dtype=torch.long), counts)
        self.tasks = torch.repeat_interleave(torch.tensor(kept_tasks, dtype=torch.long), counts)
        self._drop_unused_groups()

    def _select(
        self, model: nn.Module, x: Tensor, tags: Tensor, share: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """``share`` of one class's new samples in priority order: herding, or a uniformly random order."""
        if self.selection == "herding":
            order = herding_order(model, x, min(share, len(x)))
        else:
            order = torch.randperm(len(x), generator=generator)[:share]
        return x[order], tags[order]

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
        index = herding_order(model, cand, quota)
        return cand[index], cand_g[index]

    # -- replay --------------------------------------------------------------------------------------------------
    def replay_batch(
        self, size: int, num_outputs: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor | None] | None:
        if self.inputs is None or len(self) == 0:
            return None
        want = max(1, round(self.replay_ratio * size))
        index = torch.randint(0, len(self), (min(want, len(self)),), generator=generator)
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
            "tasks": self.tasks.contiguous(),
            "appear_classes": torch.tensor([c for c, ts in self.appearances.items() for _ in ts], dtype=torch.long),
            "appear_tasks": torch.tensor([t for ts in self.appearances.values() for t in ts], dtype=torch.long),
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
        # states saved before protocol 2 have no tasks: each class then counts as having appeared in one task
        self.tasks = state["tasks"].clone() if "tasks" in state else torch.zeros_like(self.targets)
        self.appearances = {}
        if "appear_classes" in state:
            pairs = zip(state["appear_classes"].tolist(), state["appear_tasks"].tolist(), strict=True)
        else:
            pairs = zip(sorted(set(self.targets.tolist())), [0] * len(self.targets), strict=False)
        for cls, task in pairs:
            self.appearances.setdefault(int(cls), []).append(int(task))

    def keep_only(self, keep: Tensor) -> None:
        """Drop exemplars where ``keep`` is False."""
        if self.inputs is None:
            return
        self.inputs, self.targets = self.inputs[keep], self.targets[keep]
        self.groups, self.ids, self.tasks = self.groups[keep], self.ids[keep], self.tasks[keep]
        self._drop_unused_groups()

    def forget(self, ids: set[int]) -> int:
        """Drop the exemplars of deleted samples; returns how many were held."""
        if self.inputs is None or not ids:
            return 0
        gone = torch.isin(self.ids, torch.tensor(sorted(ids), dtype=torch.long))
        self.keep_only(~gone)
        return int(gone.sum())


@torch.no_grad()
def herding_order(model: nn.Module, x: Tensor, count: int) -> Tensor:
    """Indices of ``count`` samples in iCaRL's herding order (Alg. 4): each next pick brings the running mean of the
    picked L2-normalised features closest to the class mean; a prefix of the order is the herding of that size."""
    feats = _features(model, x)
    feats = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    mean = feats.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(mean)
    available = torch.ones(len(x), dtype=torch.bool)
    for k in range(1, count + 1):
        # p_k = argmin_x ‖μ − (Σ_{j<k} φ(p_j) + φ(x)) / k‖
        dist = (mean - (running + feats) / k).norm(dim=1)
        dist[~available] = float("inf")
        pick = int(dist.argmin())
        chosen.append(pick)
        available[pick] = False
        running += feats[pick]
    return torch.tensor(chosen, dtype=torch.long)


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
