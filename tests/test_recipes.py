"""Every shipped recipe validates, and opens with the comment that says what it does and how to launch it."""

from pathlib import Path

import pytest

from diffdistill.train.recipe import resolve

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_recipes_exist():
    assert len(RECIPES) >= 2


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_recipe_validates_and_documents_itself(path):
    run, resolved = resolve(path)
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and any(line.startswith("# Launch:") for line in lines[:8])
    assert run.trainer.max_steps > 0 and resolved["output_dir"].startswith("runs/")
