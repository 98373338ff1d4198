"""Protocol 2's exemplar memory: one total, balanced over the classes seen so far and, within a class, over the tasks
it appeared in; each (class, task) keeps a prefix of its herding order as shares shrink; protocol 1 stays as it was."""

import pytest
import torch
from safetensors.torch import load, save
from torch import nn

from cl_core.experience import Experience
from cl_core.memory import ExemplarMemory, balanced_shares, herding_order


class Identity(nn.Module):
    """Features are the inputs, so herding can be checked by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def samples(counts: dict[int, int], seed: int, dim: int = 4, ids_from: int = 0) -> Experience:
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.full((n,), c) for c, n in counts.items()])
    x = torch.rand(len(labels), dim, generator=g) + labels[:, None].float()
    return Experience(x, labels, ids=torch.arange(len(labels)) + ids_from)


def count(memory: ExemplarMemory, cls: int, task: int) -> int:
    return int(((memory.targets == cls) & (memory.tasks == task)).sum())


def test_shares_are_equal_the_remainder_goes_to_the_newest_and_unused_shares_move() -> None:
    assert balanced_shares(100, [800, 800, 800]) == [33, 33, 34]
    assert balanced_shares(100, [5, 800, 800]) == [5, 47, 48]
    assert balanced_shares(10, [3, 2]) == [3, 2]
    assert balanced_shares(3, [50] * 5) == [0, 0, 1, 1, 1]
    assert sum(balanced_shares(200, [40, 40, 40, 40, 40])) == 200


def test_domain_incremental_memory_keeps_every_task_of_both_classes() -> None:
    """Two classes (parity) over five tasks, 200 in all: 100 per class, 20 per (class, task) at the end."""
    memory = ExemplarMemory(total=200)
    for t in range(5):
        memory.update(Identity(), samples({0: 120, 1: 120}, seed=t, ids_from=1000 * t))
        classes_tasks = t + 1
        assert len(memory) == 200
        for c in (0, 1):
            assert [count(memory, c, k + 1) for k in range(classes_tasks)] == balanced_shares(
                100, [120] * classes_tasks
            )
    assert all(count(memory, c, k) == 20 for c in (0, 1) for k in range(1, 6))


def test_class_incremental_memory_is_200_over_the_classes_seen() -> None:
    memory = ExemplarMemory(total=200)
    for t, pair in enumerate([(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]):
        memory.update(Identity(), samples(dict.fromkeys(pair, 120), seed=t))
        seen = 2 * (t + 1)
        assert torch.bincount(memory.targets).tolist() == [200 // seen] * seen


def test_old_tasks_keep_a_prefix_of_their_herding_order() -> None:
    memory = ExemplarMemory(total=60)
    first = samples({0: 50}, seed=0)
    memory.update(Identity(), first)
    order = herding_order(Identity(), first.inputs, 60 if len(first) >= 60 else len(first))
    assert memory.inputs is not None and torch.equal(memory.inputs, first.inputs[order])
    kept = memory.inputs.clone()
    memory.update(Identity(), samples({0: 50}, seed=1, ids_from=100))  # the class's second task: 30 + 30
    assert count(memory, 0, 1) == 30 and count(memory, 0, 2) == 30
    assert torch.equal(memory.inputs[memory.tasks == 1], kept[:30])


def test_a_per_class_cap_and_a_total_bound_together() -> None:
    """The service's settings: at most per_class per class, and the total shared equally."""
    memory = ExemplarMemory(per_class=7, total=100)
    memory.update(Identity(), samples({0: 20, 1: 20}, seed=0))
    assert torch.bincount(memory.targets).tolist() == [7, 7]
    memory.update(Identity(), samples({c: 20 for c in range(2, 30)}, seed=1))
    assert len(memory) == 30 * 3 and torch.bincount(memory.targets).max() == 3


def test_state_round_trips_and_older_states_load() -> None:
    memory = ExemplarMemory(total=12, selection="reservoir", replay="batch", replay_ratio=0.5)
    memory.update(Identity(), samples({0: 10, 1: 10}, seed=0))
    memory.update(Identity(), samples({1: 10, 2: 10}, seed=1, ids_from=50))
    restored = ExemplarMemory(**memory.hparams())
    restored.load_state_dict(load(save(memory.state_dict())))
    assert restored.appearances == memory.appearances == {0: [1], 1: [1, 2], 2: [2]}
    assert torch.equal(restored.tasks, memory.tasks) and torch.equal(restored.ids, memory.ids)
    batch = restored.replay_batch(8, 3, torch.Generator().manual_seed(0))
    assert batch is not None and len(batch[1]) == 4  # half the batch: replay_ratio 0.5
    legacy = {k: v for k, v in memory.state_dict().items() if k not in ("tasks", "appear_classes", "appear_tasks")}
    old = ExemplarMemory(**memory.hparams())
    old.load_state_dict(legacy)
    assert old.appearances == {0: [0], 1: [0], 2: [0]} and len(old) == len(memory)
    old.update(Identity(), samples({0: 10}, seed=2, ids_from=90))
    assert len(old) <= 12


def test_protocol_1_budget_is_unchanged() -> None:
    memory = ExemplarMemory(per_class=3, total=None, balance="class")
    memory.update(Identity(), samples({0: 10, 1: 2}, seed=0))
    memory.update(Identity(), samples({0: 10, 2: 10}, seed=1))
    assert torch.bincount(memory.targets).tolist() == [3, 2, 3]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"total": 0},
        {"total": None, "per_class": None},
        {"per_class": -1},
        {"balance": "tasks"},
        {"balance": "class", "per_class": None},
        {"replay_ratio": 0},
        {"replay_ratio": 1e9},
        {"total": 2.5},
    ],
)
def test_bad_budgets_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ExemplarMemory(**kwargs)


def test_a_class_in_many_tasks_keeps_the_counts_of_the_full_history_with_a_bounded_task_list() -> None:
    """The service makes every update a task: a class seen in 60 updates.  Tasks left without rows are dropped from
    `appearances` (so it and the state stay within the quota), and the rows each (class, task) keeps equal what
    `balanced_shares` gives over the whole, unpruned history."""
    memory = ExemplarMemory(total=10)
    history: dict[int, list[int]] = {0: [], 1: []}  # per class: every task's capacity, the full history
    stored: dict[tuple[int, int], int] = {}
    for t in range(1, 61):
        sizes = {0: 3 + t % 4, 1: 1 + t % 3}
        memory.update(Identity(), samples(sizes, seed=t, ids_from=100 * t))
        for c, n in sizes.items():
            history[c].append(t)
            capacities = [n if k == t else stored.get((c, k), 0) for k in history[c]]
            for k, share in zip(history[c], balanced_shares(5, capacities), strict=True):
                stored[(c, k)] = share
        for c in (0, 1):
            assert [count(memory, c, k) for k in history[c]] == [stored[(c, k)] for k in history[c]]
            assert len(memory.appearances[c]) <= 5
            assert all(count(memory, c, k) > 0 for k in memory.appearances[c])
    restored = ExemplarMemory(**memory.hparams())
    restored.load_state_dict(load(save(memory.state_dict())))
    assert restored.appearances == memory.appearances
    assert len(memory.state_dict()["appear_tasks"]) <= 10
