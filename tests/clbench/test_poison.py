"""`clbench poison` on one case and one seed: the table it prints and the records it writes."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cl_core.data import load_mnist5k
from clbench.cli import app
from clbench.poison import HEADER, cases


def test_every_case_is_drawn_from_the_train_split_with_its_flips_marked() -> None:
    train = load_mnist5k().train
    drawn = cases(train, 0)
    assert len({c.name for c in drawn}) == len(drawn)
    by_name = {c.name: c for c in drawn}
    partial = by_name["25 % of 3 as 8, after 5-9 (a)"].posts[0]
    assert sum(partial.flipped) == 105 and partial.labels.count("8") == 105 and len(partial.labels) == 400
    ten = by_name["(b) split over ten posts"].posts
    one = by_name["25 % of 3 as 8, with new 5-9 (b)"].posts[0]
    assert len(ten) == 10 and sum(len(p.labels) for p in ten) == len(one.labels) == 2400
    assert sum(sum(p.flipped) for p in ten) == sum(one.flipped) == 105
    assert all(c.clean == (not any(f for p in c.posts for f in p.flipped)) for c in drawn if c.clean)
    assert cases(train, 1)[1].posts[0].flipped != partial.flipped  # the seed draws the flipped images


@pytest.mark.slow
def test_the_cli_prints_the_table_and_writes_records(tmp_path: Path) -> None:
    args = ["poison", "--seeds", "0", "--case", "relabel digit 1", "--threads", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| " + " | ".join(HEADER) + " |" in result.output
    assert "| relabel digit 1 as 7 | 0 / 1 | rejected | 400 of 400 | 400 / 400 | 0 |" in result.output
    [record] = [json.loads(line) for line in (tmp_path / "poison.jsonl").read_text().splitlines()]
    assert record["case"] == "relabel digit 1 as 7" and record["promoted"] is False
    assert (tmp_path / "poison.md").read_text().startswith("| case |")
