"""SearchSpace: sampling, bounds, validation messages, encodings and serialisation."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nasbench_core.errors import ArchError, UserError
from supernets.space import Dimension, SearchSpace


@pytest.fixture
def space() -> SearchSpace:
    return SearchSpace({"resolution": [16, 24, 32], "stage0.depth": [2, 3, 4],
                        "block0.kernel": [3, 5, 7], "block0.expand": [3, 4, 6], "act": ["a", "b"]})


def test_sample_is_seeded_and_valid(space):
    assert space.sample(3) == space.sample(3)
    assert len({space.arch_id(space.sample(s)) for s in range(30)}) > 5
    assert space.validate(space.sample(random.Random(1))) == space.sample(random.Random(1))
    assert space.sample(np.random.default_rng(0)) == space.sample(0)


def test_smallest_largest_and_cardinality(space):
    assert space.smallest() == {"resolution": 16, "stage0.depth": 2, "block0.kernel": 3,
                                "block0.expand": 3, "act": "a"}
    assert space.largest()["block0.expand"] == 6
    assert space.cardinality == 3 * 3 * 3 * 3 * 2


def test_validate_names_the_key_and_allowed_values(space):
    arch = space.largest()
    with pytest.raises(ArchError, match=r"'block0.kernel' has value 4; allowed: \[3, 5, 7\]"):
        space.validate({**arch, "block0.kernel": 4})
    with pytest.raises(ArchError, match=r"missing key 'stage0.depth'; allowed: \[2, 3, 4\]"):
        space.validate({k: v for k, v in arch.items() if k != "stage0.depth"})
    with pytest.raises(ArchError, match="unknown key 'bogus'"):
        space.validate({**arch, "bogus": 1})
    with pytest.raises(UserError, match="mapping"):
        space.validate([1, 2])
    assert space.validate({**arch, "resolution": 32.0})["resolution"] == 32


def test_arch_id_is_order_independent_and_stable(space):
    arch = space.sample(0)
    shuffled = dict(reversed(list(arch.items())))
    assert space.arch_id(arch) == space.arch_id(shuffled)
    assert len(space.arch_id(arch)) == 12
    assert space.parse(space.canonical_json(arch)) == arch
    with pytest.raises(ArchError, match="not valid JSON"):
        space.parse("{oops")


def test_encode_decode_features_one_hot(space):
    arch = space.sample(2)
    idx = space.encode(arch)
    assert space.decode(idx) == arch
    assert list(space.encode(space.largest())) == list(space.num_choices - 1)
    f = space.features(space.largest())
    assert f.dtype == np.float32 and np.allclose(f, 1.0)
    assert np.allclose(space.features(space.smallest()), 0.0)
    assert space.one_hot(arch).sum() == len(space)
    with pytest.raises(ArchError, match="out of range"):
        space.decode([0, 0, 0, 0, 5])


def test_json_round_trip_and_fingerprint(space):
    again = SearchSpace.from_json(space.to_json())
    assert again == space and again.fingerprint() == space.fingerprint()
    other = SearchSpace({**space.to_dict(), "block0.kernel": [3, 5]})
    assert other.fingerprint() != space.fingerprint()


def test_bad_dimensions_are_rejected():
    with pytest.raises(ArchError, match="no choices"):
        Dimension("x", ())
    with pytest.raises(ArchError, match="repeated choices"):
        Dimension("x", (1, 1))
