import random

import pytest

from crashsearch.lab.space import InvalidCell, Space, SpaceError


@pytest.fixture(scope="module")
def space():
    return Space.load()


def test_default_space_has_108000_cells_in_four_groups(space):
    assert space.size == space.full_size == 108_000
    assert {a.group for a in space.axes} == {"arch", "loss", "train", "data"}


def test_id_dict_id_round_trip(space):
    rng = random.Random(0)
    for cell_id in [0, 1, 107_999, *rng.sample(range(108_000), 200)]:
        cell = space.cell(cell_id)
        assert cell.id == cell_id
        assert space.validate(cell.to_dict()).id == cell_id


def test_validate_coerces_and_explains(space):
    cell = space.cell(4242)
    loose = {k: str(v).upper() if isinstance(v, str) else str(v) for k, v in cell.to_dict().items()}
    assert space.validate(loose).id == 4242
    with pytest.raises(InvalidCell, match=r"encoder='lstm' is not a value of this axis; allowed: \[meanpool_mlp"):
        space.validate({**cell.to_dict(), "encoder": "lstm"})
    assert "missing axes ['augment']" in space.explain({k: v for k, v in cell.to_dict().items() if k != "augment"})
    assert "unknown axes ['dropout']" in space.explain({**cell.to_dict(), "dropout": 0.1})
    assert "must be an object" in space.explain(["not", "a", "dict"])
    assert "\n" not in space.explain({**cell.to_dict(), "lr": 0.5})


def test_neighbours_differ_in_exactly_one_axis(space):
    cell = space.cell(777)
    neighbours = space.neighbours(cell)
    assert len(neighbours) == sum(len(a.values) - 1 for a in space.axes)
    for other in neighbours:
        assert sum(cell[a] != other[a] for a in space.axis_names) == 1


def test_restriction_keeps_parent_ids(space):
    sub = space.restrict(backbone=["pixels", "vjepa2_vitl"])
    assert sub.size == 108_000 * 2 // 5
    cells = sub.sample(random.Random(1), 50)
    assert {c["backbone"] for c in cells} <= {"pixels", "vjepa2_vitl"}
    assert all(space.validate(c.to_dict()).id == c.id for c in cells)
    with pytest.raises(InvalidCell, match="outside the current sub-space"):
        sub.validate({**cells[0].to_dict(), "backbone": "r2plus1d_18"})


def test_malformed_yaml_names_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("groups:\n  arch:\n    encoder:\n      values: []\n")
    with pytest.raises(SpaceError, match="groups.arch.encoder.values is empty"):
        Space.load(bad)
    bad.write_text("groups:\n  optimiser:\n    lr: [1, 2]\n")
    with pytest.raises(SpaceError, match="groups.optimiser is not one of"):
        Space.load(bad)
    bad.write_text("groups: [\n")
    with pytest.raises(SpaceError, match="not valid YAML"):
        Space.load(bad)
