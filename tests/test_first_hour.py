"""What a new user meets first: CLI messages, console lines, sample paths, grids, warnings."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from diffdistill.cli import recipe_summary
from diffdistill.data import FMNIST_DEB_DIR, load_fashion_mnist
from diffdistill.train.trainer import loss_terms

REPO = Path(__file__).resolve().parents[1]
RECIPE = "recipes/toy/teacher_gmm2d.yaml"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffdistill.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=REPO, timeout=300)


@pytest.mark.parametrize("command", ["train", "validate"])
def test_a_missing_recipe_says_what_to_pass_and_does_not_call_overrides_required(command):
    out = cli(command)
    assert out.returncode == 2 and "needs a recipe" in out.stderr and "overrides" not in out.stderr


def test_ls_shows_each_recipes_first_sentence_whole():
    out = cli("ls").stdout
    summary = recipe_summary(REPO / "recipes/dmd2/fmnist_1step_continue.yaml")
    assert summary.endswith("warm-up stage.") and "Launch" not in summary
    assert " ".join(out.split()).count(summary) == 1          # wrapped over lines, but whole


def test_console_shows_loss_lines_with_full_names_and_quiet_hides_them(tmp_path):
    out = cli("train", RECIPE, f"output_dir={tmp_path / 'a'}", "trainer.max_steps=20", "trainer.preview_count=16",
              "--log-every", "10")
    assert out.returncode == 0, out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["10/20", "20/20"] and "model/denoise" in lines[0]
    assert "done: steps 1-20" in out.stdout
    quiet = cli("train", RECIPE, f"output_dir={tmp_path / 'b'}", "trainer.max_steps=20", "trainer.preview_count=16",
                "--quiet")
    assert quiet.returncode == 0 and not [x for x in quiet.stderr.splitlines() if x.startswith(("step ", "train"))]
    again = cli("train", RECIPE, f"output_dir={tmp_path / 'a'}", "trainer.max_steps=20", "trainer.preview_count=16")
    assert "nothing to train: the run is already at step 20" in again.stdout


def test_loss_terms_keep_each_roles_metrics_apart_and_drop_rates_and_norms():
    logs = {"student/gan": 0.5, "critic/gan": 0.25, "student/lr": 1e-4, "critic/grad_norm": 3.0, "student/k": 1.0,
            "student/dm": 0.125}
    assert loss_terms(logs) == {"student/gan": "0.5", "critic/gan": "0.25", "student/dm": "0.125"}


@pytest.mark.slow        # four CLI subprocesses, ~37 s: keeps the default tier under 5 minutes (CI runs the slow tier)
def test_sampling_never_overwrites_and_refuses_a_students_off_schedule_steps(tmp_path):
    student = REPO / "diffdistill/assets/fmnist/dmd2_1step"
    export = tmp_path / "student"
    import shutil

    shutil.copytree(student, export)
    first, second = cli("sample", export, "--n", "4"), cli("sample", export, "--n", "4")
    assert first.returncode == 0 and second.returncode == 0, first.stderr
    paths = [json.loads(o.stdout)["png"] for o in (first, second)]
    assert paths[0] != paths[1] and all(Path(p).is_file() for p in paths)
    assert Path(paths[0]).name == "samples-few_step-1steps-seed0.png"
    off = cli("sample", export, "--n", "4", "--steps", "4")
    assert off.returncode == 2 and "distilled for 1 few_step step(s)" in off.stderr and "--off-schedule" in off.stderr
    forced = cli("sample", export, "--n", "4", "--sampler", "ode", "--off-schedule")
    assert forced.returncode == 0 and "warning: this student was distilled" in forced.stderr


def test_grids_put_one_class_per_row_with_its_name(tmp_path):
    from PIL import Image

    from diffdistill.visual import save_samples

    images = torch.ones(12, 1, 8, 8)
    images[torch.arange(12) % 3 == 1] = -1.0                               # class 1 black, the others white
    path = save_samples(images, tmp_path / "grid.png", labels=torch.arange(12) % 3,
                        class_names=["T-shirt/top", "Trouser", "Pullover"])
    grid = torch.tensor(list(Image.open(path).convert("L").getdata())).view(Image.open(path).height, -1)
    assert grid.shape[0] == 3 * 10                                      # three rows of 8 + 2 px
    last = grid[:, -9:-1].float()                                       # the inside of each row's last image
    assert last[1:9].mean() == 255 and last[11:19].mean() == 0 and last[21:29].mean() == 255
    assert grid[:, :30].float().mean() > 0                              # names drawn in the left margin


@pytest.mark.skipif(not (FMNIST_DEB_DIR / "t10k-images-idx3-ubyte.gz").is_file(), reason="needs Fashion-MNIST")
def test_the_fashion_mnist_loader_gives_writable_arrays():
    images, labels = load_fashion_mnist("test")
    assert images.flags.writeable and labels.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.from_numpy(images)
