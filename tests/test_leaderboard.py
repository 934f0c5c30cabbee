"""The leaderboard (evaluation/leaderboard.py): the README's tables are the committed output, and the committed
output is what the committed raw results give (no hand-typed figures)."""

from pathlib import Path

import pytest
import yaml

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "evaluation" / "results" / "leaderboard"


def leaderboard():
    return load_script("evaluation/leaderboard.py")


def test_readme_tables_are_the_committed_leaderboard_output():
    lb = leaderboard()
    readme = (ROOT / "README.md").read_text()
    built = [bench for bench in lb.BENCHES if (OUT / f"{bench}.md").is_file()]
    assert "b3" in built
    for bench in built:
        assert lb.readme_block(readme, bench) == (OUT / f"{bench}.md").read_text(), \
            f"README's {bench} table differs from {OUT / bench}.md: run evaluation/leaderboard.py --readme README.md"


def test_every_other_readme_table_quotes_committed_raw_output():
    """Results tables outside the leaderboard blocks are quoted from a committed raw-output file
    (`<!-- table:PATH -->`), never typed: each block holds exactly that file's first table."""
    lb = leaderboard()
    quoted = lb.quoted_tables((ROOT / "README.md").read_text())
    assert len(quoted) >= 3
    for path, body in quoted:
        assert body == lb.first_table(ROOT / path), f"README's table from {path} differs: run " \
            "python evaluation/leaderboard.py --readme README.md"


def test_quoted_tables_are_refreshed_and_a_missing_source_is_an_error(tmp_path, monkeypatch):
    lb = leaderboard()
    monkeypatch.setattr(lb, "ROOT", tmp_path)
    (tmp_path / "r.md").write_text("title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\nnotes\n| other | table |\n")
    text = "x\n<!-- table:r.md -->\n| old |\n<!-- /table -->\ny\n"
    assert lb.fill_quoted_tables(text) == "x\n<!-- table:r.md -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- /table -->\ny\n"
    with pytest.raises(SystemExit, match="does not exist"):
        lb.fill_quoted_tables("<!-- table:gone.md -->\n<!-- /table -->\n")


def test_the_committed_b3_table_is_what_the_committed_raw_results_give():
    lb = leaderboard()
    config = yaml.safe_load((ROOT / "evaluation" / "leaderboard.yaml").read_text())
    rows = lb.toy_rows(config["b3"])
    assert lb.markdown("b3", rows, config["b3"]) == (OUT / "b3.md").read_text()
    methods = {r["method"] for r in rows}
    assert {"teacher", "DMD2", "Hyper-SD TSCD", "Phased DMD 2 phases"} <= methods
    assert all(r["train_steps"] and r["nfe"] == r["steps"] for r in rows)


def test_blocks_are_replaced_in_place_and_a_missing_block_is_an_error():
    lb = leaderboard()
    text = "intro\n<!-- leaderboard:b1 -->\nold\n<!-- /leaderboard:b1 -->\nend\n"
    assert lb.replace_block(text, "b1", "| new |\n") == "intro\n<!-- leaderboard:b1 -->\n| new |\n<!-- /leaderboard:b1 -->\nend\n"
    with pytest.raises(SystemExit, match="no <!-- leaderboard:b2 -->"):
        lb.replace_block(text, "b2", "x")


def test_b1_rows_come_from_one_rescoring_run_with_the_teacher(tmp_path):
    """B1/B2 read the raw output of the compare script's run: the teacher row, each listed student under its
    method, the speed ratio measured in that run; students no longer listed are dropped."""
    import json

    lb = leaderboard()
    raw = {"rows": [
        {"name": "teacher 32 steps", "steps": 32, "nfe": 64, "fid_fmnist": 3.5, "class_accuracy": 0.98,
         "diversity": 4.6, "speed_ratio_vs_teacher": 1.0},
        {"name": "DMD2 4-step", "steps": 4, "nfe": 4, "fid_fmnist": 2.7, "class_accuracy": 0.96, "diversity": 4.3,
         "speed_ratio_vs_teacher": 15.2, "trained_steps": 2000, "train_seconds": 5606.0},
        {"name": "old row", "steps": 1, "nfe": 1, "fid_fmnist": 9.0, "class_accuracy": 0.5, "diversity": 1.0,
         "speed_ratio_vs_teacher": 60.0}]}
    (tmp_path / "b1.json").write_text(json.dumps(raw))
    cfg = {"title": "B1", "students": {"DMD2 4-step": ["dmd2", "x", None]}}
    rows = lb.scored_rows("b1", cfg, tmp_path)
    assert [(r["method"], r["name"], r["speed_ratio"]) for r in rows] == [
        ("teacher", "teacher 32 steps", 1.0), ("dmd2", "DMD2 4-step", 15.2)]
    table = lb.markdown("b1", rows, cfg)
    assert "| dmd2 | DMD2 4-step | 4 | 4 | 2.70 | 0.960 | 4.30 | 15.2x | 2000 | 5606 s |" in table
    with pytest.raises(SystemExit, match="--rescore"):
        lb.scored_rows("b2", cfg, tmp_path)
