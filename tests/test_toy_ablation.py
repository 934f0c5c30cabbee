"""The toy DMD2 ablation runner (evaluation/toy_dmd2_ablation.py): each row trains with its one change, per seed,
and the summary is the mean and range of the per-seed scores."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_rows_train_per_seed_with_their_change_and_summarise_the_seeds(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "out"
    subprocess.run([sys.executable, "evaluation/toy_dmd2_ablation.py", "--rows", "1step_ratio1", "--seeds", "0", "1",
                    "--steps", "20", "--n", "300", "--runs", str(runs), "--out", str(out), "--name", "t"],
                   check=True, capture_output=True, cwd=REPO, timeout=300)
    for seed in (0, 1):
        config = yaml.safe_load((runs / f"1step_ratio1-s{seed}" / "config.yaml").read_text())
        assert config["method"]["student_every"] == 1 and config["trainer"]["seed"] == seed
        assert config["trainer"]["max_steps"] == 20
    (row,) = json.loads((out / "t.json").read_text())["rows"]
    per_seed = [r["sliced_w2"] for r in row["runs"]]
    assert row["seeds"] == [0, 1] and per_seed[0] != per_seed[1]          # the seed reaches the training
    assert row["sliced_w2_range"] == [round(min(per_seed), 3), round(max(per_seed), 3)]
    assert abs(row["sliced_w2"] - sum(per_seed) / 2) < 1e-3
    assert all(0 <= r["on_mode"] <= 1 and r["sliced_w2_floor"] > 0 for r in row["runs"])
    assert (out / "t.md").read_text().count("\n| 1step_ratio1 | 2 |") == 1
