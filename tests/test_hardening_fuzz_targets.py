"""The fuzz targets (``tests/fuzz``) run here without atheris, on their seeds and on
hypothesis' bytes, so that they cannot rot between fuzzing runs."""

from __future__ import annotations

import pathlib
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(pathlib.Path(__file__).parent / "fuzz"))
import targets

SEEDS = pathlib.Path(__file__).parent / "fuzz" / "seeds"
TARGETS = {"frame_reader": targets.frame_reader_input, "json": targets.json_input, "cbor": targets.cbor_input}


@pytest.mark.parametrize("seed", sorted(SEEDS.glob("*/*")), ids=lambda path: f"{path.parent.name}/{path.name}")
def test_every_seed_is_answered(seed):
    assert TARGETS[seed.parent.name](seed.read_bytes())


def test_seeds_reach_the_outcomes_they_are_there_for():
    assert targets.frame_reader_input((SEEDS / "frame_reader" / "fragments").read_bytes()) == "3 events"
    assert targets.frame_reader_input((SEEDS / "frame_reader" / "utf8").read_bytes()) == "close 1007"
    assert targets.json_input((SEEDS / "json" / "surrogate.json").read_bytes()) == "bad_request"
    assert targets.cbor_input((SEEDS / "cbor" / "shared.cbor").read_bytes()) == "bad_request"
    assert targets.cbor_input((SEEDS / "cbor" / "0.cbor").read_bytes()) == "answered"


@settings(max_examples=200, deadline=None)
@given(name=st.sampled_from(sorted(TARGETS)), data=st.binary(max_size=300))
def test_any_bytes_are_answered(name, data):
    assert TARGETS[name](data)
