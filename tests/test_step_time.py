"""evaluation/video/step_time.py: variants of one recipe timed side by side through the real trainer."""

import argparse
from pathlib import Path

import pytest

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def step_time():
    return load_script("evaluation/video/step_time.py")


def test_variants_parse_into_a_name_and_its_overrides():
    parse = step_time().parse_variant
    assert parse("baseline=") == ("baseline", [])
    assert parse("no-truncation=method.truncate=false trainer.batch_size=4") == (
        "no-truncation", ["method.truncate=false", "trainer.batch_size=4"])
    with pytest.raises(argparse.ArgumentTypeError, match="NAME=OVERRIDES"):
        parse("method.truncate")


def test_a_multi_role_recipe_is_timed_with_its_overrides_applied(monkeypatch):
    monkeypatch.chdir(ROOT)
    row = step_time().time_variant("recipes/dmd2/toy_gmm2d.yaml", ["trainer.batch_size=16"], steps=4)
    assert row["batch_size"] == 16 and row["steps_timed"] == 4 and row["overrides"] == ["trainer.batch_size=16"]
    assert 0 < row["median_seconds"] and 0 < row["seconds_per_step"] < 60
    assert "tokens" not in row            # only video transformers report their token count
