"""On real data, consolidation keeps clearly more of the first task than fine-tuning does."""

import pytest

from cl_core.data import build_scenario, load_mnist5k
from cl_core.protocol import run_scenario
from cl_core.trainer import TrainConfig


@pytest.fixture(scope="module")
def permuted_two_tasks():  # type: ignore[no-untyped-def]
    d = load_mnist5k()
    return build_scenario("permuted", d.train, d.test, tasks=2)


def test_ewc_and_mas_keep_the_first_permuted_task(permuted_two_tasks) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(epochs=3)
    first_task_after = {
        name: run_scenario(permuted_two_tasks, name, seed=0, config=config, method_hparams=hp).acc_matrix[1][0]
        for name, hp in [("finetune", {}), ("ewc", {"lam": 1000.0}), ("mas", {"lam": 10.0})]
    }
    assert first_task_after["ewc"] >= first_task_after["finetune"] + 0.04, first_task_after
    assert first_task_after["mas"] >= first_task_after["finetune"] + 0.04, first_task_after
