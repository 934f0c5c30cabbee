import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffdistill.train.lineage import total_training

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "diffdistill.cli", *map(str, args)], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=timeout)


def test_train_then_sample_end_to_end(tmp_path):
    out = cli("train", "recipes/toy/teacher_gmm2d.yaml", f"output_dir={tmp_path}", "trainer.max_steps=30",
              "trainer.log_every=10", "trainer.preview_count=64")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "export" / "diffdistill.json").is_file()
    meta = json.loads((tmp_path / "export" / "diffdistill.json").read_text())
    assert meta["trained_steps"] == 30 and meta["run_config"]["trainer"]["max_steps"] == 30
    assert meta["model"]["kind"] == "mlp" and meta["sampling"]["steps"] == 50
    sample = cli("sample", tmp_path, "--n", 100, "--steps", 5)
    assert sample.returncode == 0, sample.stderr
    report = json.loads(sample.stdout)
    assert report["samples"] == 100 and report["steps"] == 5 and 0 <= report["on_mode"] <= 1
    assert report["sliced_w2"] > 0 and Path(report["png"]).is_file()


@pytest.mark.parametrize("args,match", [
    (("train", "recipes/missing.yaml"), "does not exist"),
    (("train", "recipes/toy/teacher_gmm2d.yaml", "trainer.max_step=3"), "Did you mean 'max_steps'"),
    (("train", "recipes/toy/teacher_gmm2d.yaml", "trainer.max_steps=0"), "max_steps must be > 0"),
    (("train", "recipes/toy/teacher_gmm2d.yaml", "trainer.optimizers.critic.lr=1"), "unknown group"),
    (("sample", "runs/definitely-not-here"), "does not exist"),
    (("validate", "recipes/toy/teacher_gmm2d.yaml", "model.kind=resnet"), "kind=mlp"),
])
def test_bad_input_exits_2_with_a_message_and_no_traceback(args, match):
    out = cli(*args)
    assert out.returncode == 2, out
    assert match in out.stderr and "Traceback" not in out.stderr


def test_sample_rejects_nonpositive_steps(tmp_path):
    assert cli("train", "recipes/toy/teacher_gmm2d.yaml", f"output_dir={tmp_path}", "trainer.max_steps=2").returncode == 0
    out = cli("sample", tmp_path, "--steps", "-1")
    assert out.returncode == 2 and "must be > 0" in out.stderr


def test_validate_prints_the_resolved_config_and_ls_lists_recipes():
    out = cli("validate", "recipes/toy/teacher_gmm2d.yaml", "trainer.max_steps=9")
    assert out.returncode == 0
    resolved = json.loads(out.stdout)
    assert resolved["trainer"]["max_steps"] == 9 and resolved["method"]["t_sampler"] == "uniform"
    listing = cli("ls")
    assert listing.returncode == 0 and "recipes/toy/teacher_gmm2d.yaml" in listing.stdout
    assert "teacher:" in listing.stdout and "toy_gmm" in listing.stdout


def test_export_writes_the_newest_checkpoint_without_training(tmp_path):
    out = cli("train", "recipes/toy/teacher_gmm2d.yaml", f"output_dir={tmp_path}", "trainer.max_steps=4",
              "trainer.checkpoint_every=2")
    assert out.returncode == 0
    import shutil

    shutil.rmtree(tmp_path / "export")
    shutil.rmtree(tmp_path / "checkpoints" / "step-000004")          # as if the run had been stopped after step 3
    config_before = (tmp_path / "config.yaml").read_text()
    exported = cli("export", tmp_path)
    assert exported.returncode == 0, exported.stderr
    meta = json.loads((tmp_path / "export" / "diffdistill.json").read_text())
    assert meta["trained_steps"] == 2 and (tmp_path / "config.yaml").read_text() == config_before
    assert not (tmp_path / "checkpoints" / "step-000004").exists()
    missing = cli("export", tmp_path / "nothing")
    assert missing.returncode == 2 and "no complete checkpoint" in missing.stderr


def test_export_of_a_copied_run_exports_the_copy_not_the_original(tmp_path):
    import shutil

    original, copy = tmp_path / "original", tmp_path / "copy"
    out = cli("train", "recipes/toy/teacher_gmm2d.yaml", f"output_dir={original}", "trainer.max_steps=4",
              "trainer.checkpoint_every=2")
    assert out.returncode == 0, out.stderr
    shutil.copytree(original, copy)
    shutil.rmtree(copy / "export")
    shutil.rmtree(copy / "checkpoints" / "step-000004")            # the copy holds an older checkpoint only
    before = (original / "export" / "model.safetensors").read_bytes()
    exported = cli("export", copy)
    assert exported.returncode == 0, exported.stderr
    assert json.loads((copy / "export" / "diffdistill.json").read_text())["trained_steps"] == 2
    assert json.loads((original / "export" / "diffdistill.json").read_text())["trained_steps"] == 4
    assert (original / "export" / "model.safetensors").read_bytes() == before


def test_dmd2_recipe_trains_and_its_student_samples_with_its_own_schedule(tmp_path):
    out = cli("train", "recipes/dmd2/toy_gmm2d.yaml", f"output_dir={tmp_path}", "trainer.max_steps=6",
              "trainer.log_every=3", "trainer.preview_count=64")
    assert out.returncode == 0, out.stderr
    meta = json.loads((tmp_path / "export" / "diffdistill.json").read_text())
    assert meta["sampling"] == {"sampler": "few_step", "steps": 1, "times": [1.0], "timesteps": [1000],
                                "guidance": 1.0, "num_classes": 0, "spacing": "trailing", "chunk_frames": 0,
                                "fixed": False, "eta": 0.0, "ladder": [],
                                "first_chunk_times": []}
    assert meta["model"]["kind"] == "mlp" and meta["model"]["prediction"] == "x0"      # the student is exported
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # log lines average over their window: steps 1-3 hold one student update (step 1) and three critic updates
    assert [r["step"] for r in rows] == [3, 6] and all("critic/denoise" in r for r in rows)
    assert "student/dm" in rows[0] and "student/dm" in rows[1]                         # student steps 1 and 6
    # the process's peak memory (CPU: resident set; this Python with torch holds far more than 50 MB), never falling
    assert 50 < rows[0]["peak_mem_mb"] <= rows[1]["peak_mem_mb"] < 24 * 1024
    sample = cli("sample", tmp_path, "--n", 64)
    assert sample.returncode == 0, sample.stderr
    assert json.loads(sample.stdout)["sampler"] == "few_step"


@pytest.mark.slow        # three CLI subprocesses, ~27 s: the default tier stays under 5 minutes
def test_a_run_starts_from_another_runs_checkpoint_with_its_own_settings(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    out = cli("train", "recipes/dmd2/toy_gmm2d.yaml", f"output_dir={first}", "trainer.max_steps=4",
              "trainer.checkpoint_every=2")
    assert out.returncode == 0, out.stderr
    # a second stage with other maths (TTUR 2) and learning rate 0: its export must be the first run's weights
    out = cli("train", "recipes/dmd2/toy_gmm2d.yaml", f"output_dir={second}", f"trainer.init_from={first}",
              "method.student_every=2", "trainer.max_steps=1", "trainer.optimizers.student.lr=0",
              "trainer.optimizers.critic.lr=0")
    assert out.returncode == 0, out.stderr
    assert "initialised from" in out.stdout and "step-000004" in out.stdout
    from safetensors.torch import load_file

    a, b = (load_file(d / "export" / "model.safetensors") for d in (first, second))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    meta = json.loads((second / "export" / "diffdistill.json").read_text())
    assert meta["trained_steps"] == 1
    # the export keeps the stage it started from, so tables count the whole model's training
    (stage,) = meta["earlier_stages"]
    first_state = json.loads((first / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert stage == {"run": str(first), "checkpoint": "step-000004", "steps": 4,
                     "seconds": first_state["train_seconds"]} and stage["seconds"] > 0
    third = tmp_path / "third-stage"
    out = cli("train", "recipes/dmd2/toy_gmm2d.yaml", f"output_dir={third}", f"trainer.init_from={second}",
              "trainer.max_steps=2")
    assert out.returncode == 0, out.stderr
    meta3 = json.loads((third / "export" / "diffdistill.json").read_text())
    assert [s["steps"] for s in meta3["earlier_stages"]] == [4, 1] and total_training(meta3)[0] == 7
    missing = cli("train", "recipes/dmd2/toy_gmm2d.yaml", f"output_dir={tmp_path / 'third'}",
                  f"trainer.init_from={tmp_path / 'nowhere'}")
    assert missing.returncode == 2 and "neither a complete checkpoint folder" in missing.stderr
    other = cli("train", "recipes/dmd2/toy_gmm2d.yaml", f"output_dir={tmp_path / 'fourth'}",
                f"trainer.init_from={first}", "student.hidden=64", "trainer.max_steps=1")
    assert other.returncode == 2 and "does not fit this run's networks" in other.stderr



def test_a_student_continued_from_an_export_counts_the_exports_training(tmp_path):
    import yaml

    first, second = tmp_path / "first", tmp_path / "second"
    out = cli("train", "recipes/dmd2/toy_gmm2d.yaml", f"output_dir={first}", "trainer.max_steps=4")
    assert out.returncode == 0, out.stderr
    recipe = yaml.safe_load((REPO / "recipes" / "dmd2" / "toy_gmm2d.yaml").read_text())
    recipe["student"] = {"kind": "mlp", "pretrained": str(first)}   # a further stage: the run's export/ is loaded
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(recipe))
    out = cli("train", tmp_path / "stage2.yaml", f"output_dir={second}", "trainer.max_steps=2",
              "trainer.optimizers.student.lr=0")
    assert out.returncode == 0, out.stderr
    from safetensors.torch import load_file

    a, b = (load_file(d / "export" / "model.safetensors") for d in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)                    # the student did start from the export
    first_meta = json.loads((first / "export" / "diffdistill.json").read_text())
    meta = json.loads((second / "export" / "diffdistill.json").read_text())
    assert meta["earlier_stages"] == [{"run": str(first / "export"), "checkpoint": "export", "steps": 4,
                                       "seconds": first_meta["train_seconds"]}]
    assert total_training(meta) == (6, round(first_meta["train_seconds"] + meta["train_seconds"], 1))
