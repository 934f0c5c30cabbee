"""Real-use failures: damaged checkpoints and exports, resumed logs, a run folder two processes would share, bad
input through every CLI entry point (one clear line, exit 2, nothing under an existing run changed)."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from diffdistill.train.checkpoint import RNG_FILE, RunLock, latest_checkpoint
from diffdistill.cli import main
from diffdistill.config import ConfigError
from diffdistill.data import build_stream
from diffdistill.train.recipe import resolve

REPO = Path(__file__).resolve().parents[1]
RECIPE = str(REPO / "recipes/toy/teacher_gmm2d.yaml")
FAST = ["trainer.checkpoint_every=3", "trainer.log_every=1", "trainer.batch_size=32", "trainer.preview_count=32",
        "trainer.sample_every=0", "trainer.keep_checkpoints=5"]


def train(run_dir: Path, steps: int, *extra: str) -> int:
    return main(["train", RECIPE, f"output_dir={run_dir}", f"trainer.max_steps={steps}", *FAST, *extra])


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffdistill.cli", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, cwd=REPO, timeout=300)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its SHA-256 (the run lock's pid note aside: it records who holds the lock)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".run.lock"}


@pytest.fixture(scope="module")
def run6(tmp_path_factory):
    """A finished 6-step toy run with checkpoints at steps 3 and 6 (copied by tests that damage it)."""
    run_dir = tmp_path_factory.mktemp("run6") / "run"
    assert train(run_dir, 6) == 0
    return run_dir


def copy_run(run_dir: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run_dir, to)
    return to


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------ damaged checkpoints fall back, saying so
@pytest.mark.parametrize("damage", ["truncate_model", "garbage_model", "tamper_rng", "drop_rng"])
def test_a_damaged_newest_checkpoint_is_skipped_for_the_previous_one(run6, tmp_path, capsys, damage):
    run_dir = copy_run(run6, tmp_path / "run")
    newest = latest_checkpoint(run_dir)
    model, rng = newest / "model.safetensors", newest / RNG_FILE.format(rank=0)
    if damage == "truncate_model":
        model.write_bytes(model.read_bytes()[:100])
    elif damage == "garbage_model":
        model.write_bytes(b"\x00garbage" * (model.stat().st_size // 8))
    elif damage == "tamper_rng":        # a pickle of the same size that is not the state written (e.g. a payload)
        data = bytearray(rng.read_bytes())
        data[len(data) // 2] ^= 0xFF
        rng.write_bytes(bytes(data))
    else:
        rng.unlink()
    assert train(run_dir, 9) == 0
    out = capsys.readouterr()
    assert f"checkpoint {newest} is damaged" in out.out + out.err
    assert "resumed from" in out.out + out.err and "step-000003" in out.out + out.err
    assert steps_logged(run_dir) == list(range(1, 10))     # steps 4..6 taken again; their old lines dropped


def test_with_every_checkpoint_damaged_the_resume_stops_with_one_line(run6, tmp_path):
    run_dir = copy_run(run6, tmp_path / "run")
    for ckpt in (run_dir / "checkpoints").glob("step-*"):
        (ckpt / "model.safetensors").write_bytes(b"not safetensors")
    before = snapshot(run_dir)
    out = cli("train", RECIPE, f"output_dir={run_dir}", "trainer.max_steps=9", *FAST)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "no checkpoint of" in out.stderr and "model.safetensors" in out.stderr
    assert snapshot(run_dir) == before


def test_a_damaged_export_names_the_file_and_says_how_to_rewrite_it(run6, tmp_path):
    run_dir = copy_run(run6, tmp_path / "run")
    weights = run_dir / "export" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = cli("sample", run_dir, "--n", "4")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert str(weights) in out.stderr and "diffdistill export" in out.stderr
    assert cli("export", run_dir).returncode == 0              # rewrites the export from the intact checkpoint
    assert cli("sample", run_dir, "--n", "4").returncode == 0


def test_a_resume_after_a_kill_past_the_checkpoint_keeps_one_log_line_per_step(tmp_path):
    """Killed after logging steps 4 and 5 (last checkpoint 3): the resumed log has steps 1..8 once each."""
    run_dir = tmp_path / "run"
    killed = cli("train", RECIPE, f"output_dir={run_dir}", "trainer.max_steps=8", *FAST,
                 env={"DIFFDISTILL_FAULT_AT_STEP": "5"})
    assert killed.returncode == -9 and steps_logged(run_dir) == [1, 2, 3, 4, 5]
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 6, "time_')                     # a line cut short by the kill
    assert train(run_dir, 8) == 0
    assert steps_logged(run_dir) == list(range(1, 9))


def test_a_checkpoint_of_another_process_count_is_refused(run6, tmp_path):
    run_dir = copy_run(run6, tmp_path / "run")
    state_file = latest_checkpoint(run_dir) / "trainer_state.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "world_size": 2}))
    out = cli("train", RECIPE, f"output_dir={run_dir}", "trainer.max_steps=9", *FAST)
    assert out.returncode == 2 and "written by 2 process(es) but this run has 1" in out.stderr


# ------------------------------------------------------------------ one writer per run folder
def test_a_second_run_into_a_busy_output_dir_is_refused(tmp_path):
    lock = RunLock(tmp_path / "run")
    lock.acquire()                                   # as a training process holds it
    try:
        out = cli("train", RECIPE, f"output_dir={tmp_path / 'run'}", "trainer.max_steps=2", *FAST)
    finally:
        lock.release()
    assert out.returncode == 2 and "is in use by pid" in out.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert train(tmp_path / "run", 2) == 0          # free again once the holder is gone


# ------------------------------------------------------------------ configs
def test_a_toy_mixture_whose_modes_do_not_split_evenly_over_classes_is_rejected():
    with pytest.raises(ConfigError, match="modes=8 is not a multiple of num_classes=3"):
        resolve(RECIPE, ["data.mixture.num_classes=3"])
    stream = build_stream({"name": "toy_gmm", "labels": True, "mixture": {"modes": 6, "num_classes": 3}}, 3000, 0, 0)
    means = stream.mixture.means
    batch = stream.next()
    nearest = ((batch.x0.double()[:, None] - means[None]) ** 2).sum(-1).argmin(1)
    assert set(nearest.tolist()) == set(range(6))                       # every mode is drawn
    assert bool((nearest % 3 == batch.cond.labels).all())                # each from its own class


# ------------------------------------------------------------------ bad input through the CLI: one line, exit 2
BAD_INPUTS = [
    (("train", RECIPE, "trainer.max_steps=[1,"), "override 'trainer.max_steps=[1,': invalid YAML"),
    (("train", RECIPE, "trainer.max_steps=!!python/object/apply:os.system [echo]"), "is not allowed"),
    (("train", "{bad_yaml}"), "invalid YAML: line 3"),
    (("train", "{python_tag_yaml}"), "YAML tag"),
    (("train", RECIPE, "trainer.max_steps=10", "trainer.batch_size=64"), "holds checkpoints of a run with other"),
    (("validate", RECIPE, "data.mixture.num_classes=3"), "not a multiple of num_classes=3"),
    (("export", "{tmp}/nothing-here"), "holds no complete checkpoint"),
    (("sample", "{run}", "--n", "0"), "--n must be > 0"),
    (("sample", "{run}", "--prompt", "a cat"), "not a text-conditioned model"),
    (("sample", "{run}", "--steps", "3", "--sampler", "euler"), "invalid choice"),
    (("eval", "--checkpoint", "{tmp}/nothing-here", "--features", "fmnist", "--n", "10"), "does not exist"),
    (("demo", "{tmp}/nothing-here", "--no-teacher"), "does not exist"),
]


@pytest.mark.parametrize("args,match", BAD_INPUTS, ids=[" ".join(a[:2]) + f" #{i}" for i, (a, _) in
                                                         enumerate(BAD_INPUTS)])
def test_bad_input_is_one_clear_line_and_leaves_an_existing_run_untouched(run6, tmp_path, args, match):
    (tmp_path / "bad.yaml").write_text("model:\n  kind: mlp\n   hidden: 3\n")
    (tmp_path / "tag.yaml").write_text("model: !!python/object/apply:os.system ['echo hi']\n")
    fill = {"{run}": str(run6), "{tmp}": str(tmp_path), "{bad_yaml}": str(tmp_path / "bad.yaml"),
            "{python_tag_yaml}": str(tmp_path / "tag.yaml")}
    for key, value in fill.items():
        args = [a.replace(key, value) for a in args]
    if args[0] == "train":      # into the existing run, with its settings; the case's own overrides come last
        args = [*args[:2], f"output_dir={run6}", *FAST, "trainer.max_steps=6", *args[2:]]
    before = snapshot(run6)
    out = cli(*args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and match in out.stderr
    assert len([line for line in out.stderr.splitlines() if "error:" in line]) == 1    # argparse adds its usage
    assert snapshot(run6) == before


def test_demo_help_shows_the_default_host():
    out = cli("demo", "--help")
    assert out.returncode == 0 and "default: 127.0.0.1" in out.stdout
