"""Natural order of class names, for listings."""

from hypothesis import given
from hypothesis import strategies as st

from cl_core.labels import natural_key, natural_order


def test_digits_read_in_their_numeric_order() -> None:
    shuffled = ["0", "4", "3", "1", "2", "10", "9", "11", "5", "8", "6", "7"]
    assert natural_order(shuffled) == [str(i) for i in range(12)]


def test_names_with_numbers_text_and_ties() -> None:
    labels = ["class-10", "class-2", "b", "a", "A", "007", "7", "class-1x", "cat", "10", "ß", "2.5", "2.10"]
    assert natural_order(labels) == [
        "2.5",
        "2.10",
        "007",
        "7",
        "10",
        "A",
        "a",
        "b",
        "cat",
        "class-1x",
        "class-2",
        "class-10",
        "ß",
    ]


@given(st.lists(st.text(min_size=1, max_size=64), max_size=30))
def test_the_order_is_total_and_keeps_every_label(labels: list[str]) -> None:
    ordered = natural_order(labels)
    assert sorted(ordered) == sorted(labels)  # a permutation
    assert natural_order(reversed(labels)) == ordered  # independent of the input order
    keys = [natural_key(label) for label in ordered]
    assert keys == sorted(keys)
