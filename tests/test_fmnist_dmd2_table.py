"""The B1 table runner (evaluation/fmnist/dmd2_table.py) and the scorer it calls (compare.py), end to end on the
shipped teacher with one training step per stage."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from diffdistill.data import FMNIST_DEB_DIR

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(not (FMNIST_DEB_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="needs Fashion-MNIST")
def test_each_row_trains_with_its_one_change_and_all_are_scored_in_one_run(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "scores"
    subprocess.run([sys.executable, "evaluation/fmnist/dmd2_table.py", "--rows", "1step", "no_gan", "no_backsim",
                    "--steps", "1", "--n", "160", "--teacher-steps", "1", "--runs", str(runs), "--out", str(out),
                    "--name", "table"], check=True, capture_output=True, cwd=REPO, timeout=600)
    method = {row: yaml.safe_load((runs / f"b1-{row}" / "stage2" / "config.yaml").read_text())["method"]
              for row in ("1step", "no_gan", "no_backsim")}
    assert method["1step"]["gan_student_weight"] > 0 and method["no_gan"]["gan_student_weight"] == 0
    assert method["no_gan"]["gan_critic_weight"] == 0 and method["no_gan"]["student_times"] == method["1step"]["student_times"]
    assert method["no_backsim"]["backward_simulation"] is False and len(method["no_backsim"]["student_times"]) == 4
    assert method["no_backsim"]["student_every"] == 1        # the four-step stage 2: one critic update per student update
    first = yaml.safe_load((runs / "b1-no_backsim" / "stage1" / "config.yaml").read_text())["method"]
    assert first["student_every"] == 5                        # stage 1's fresh critic keeps DMD2's ratio
    result = json.loads((out / "table.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names == ["teacher 1 steps", "1step", "no_gan", "no_backsim"]
    teacher, *students = result["rows"]
    assert teacher["nfe"] == 2 and teacher["speed_ratio_vs_teacher"] == 1.0          # CFG: two evaluations a step
    # two stages of one step each; the second stage's lower learning rate and its start from the first stage
    assert method["1step"]["guidance"] == 2.0 and method["no_backsim"]["guidance"] == 2.0
    second = yaml.safe_load((runs / "b1-no_backsim" / "stage2" / "config.yaml").read_text())["trainer"]
    assert second["optimizers"]["student"]["lr"] == 2e-5 and second["init_from"] == str(runs / "b1-no_backsim" / "stage1")
    assert [s["nfe"] for s in students] == [1, 1, 4] and all(s["trained_steps"] == 2 for s in students)
    assert all(s["train_seconds"] > 0 and s["stages"] == 2 for s in students)     # both stages, from the export
    for row in result["rows"]:
        assert row["fid_fmnist"] > 0 and 0 <= row["class_accuracy"] <= 1 and row["speed_ratio_vs_teacher"] > 0
    assert (out / "table.md").read_text().count("\n| ") == 5         # header + 4 rows
