"""Training totals across stages: the log-summing rule, the fallback for old checkpoints, unknown times."""

import json
from pathlib import Path

import pytest

from diffdistill.train.lineage import (
    logged_seconds,
    run_log_seconds,
    stages_before,
    stages_of_export,
    stages_of_ode_pairs,
    total_training,
)


def test_logged_seconds_adds_up_launches_whose_clock_restarts():
    rows = [{"step": 50, "time_s": 10.0}, {"step": 100, "time_s": 20.0},      # launch 1, killed after step 100
            {"step": 150, "time_s": 9.0}, {"step": 200, "time_s": 19.5}]      # launch 2 restarts its clock
    assert logged_seconds(rows) == pytest.approx(39.5)
    assert logged_seconds([]) == 0.0


def _write_run(run_dir, step, state_extra=None, log_rows=()):
    ckpt = run_dir / "checkpoints" / f"step-{step:06d}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": step, "data_position": 0, **(state_extra or {})}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log_rows))
    return ckpt


def test_stages_before_reads_the_checkpoint_or_falls_back_to_its_runs_log(tmp_path):
    rows = [{"step": 10, "time_s": 5.0}, {"step": 20, "time_s": 10.0}, {"step": 30, "time_s": 15.0}]
    old = _write_run(tmp_path / "old", 20, log_rows=rows)          # written before train_seconds was recorded
    assert stages_before(old) == [{"run": str(tmp_path / "old"), "checkpoint": "step-000020", "steps": 20,
                                   "seconds": 10.0}]                 # the log up to the checkpoint's step only
    earlier = [{"run": "a", "checkpoint": "step-000100", "steps": 100, "seconds": 50.0}]
    new = _write_run(tmp_path / "new", 40, {"train_seconds": 33.3, "lineage": earlier})
    assert stages_before(new) == [*earlier, {"run": str(tmp_path / "new"), "checkpoint": "step-000040",
                                             "steps": 40, "seconds": 33.3}]
    assert run_log_seconds(tmp_path / "nowhere") is None


def test_stages_of_export_counts_our_trained_exports_only(tmp_path):
    earlier = [{"run": "a", "checkpoint": "step-000100", "steps": 100, "seconds": 50.0}]
    (tmp_path / "diffdistill.json").write_text(json.dumps({"trained_steps": 30, "train_seconds": 12.5,
                                                            "earlier_stages": earlier}))
    assert stages_of_export(tmp_path) == [*earlier, {"run": str(tmp_path), "checkpoint": "export", "steps": 30,
                                                     "seconds": 12.5}]
    (tmp_path / "diffdistill.json").write_text(json.dumps({"model": {"kind": "unet"}}))   # no training recorded
    assert stages_of_export(tmp_path) == []
    assert stages_of_export(tmp_path / "a-diffusers-pipeline") == []


def test_total_training_adds_every_stage_and_refuses_to_undercount():
    stages = [{"steps": 100, "seconds": 50.0}, {"steps": 40, "seconds": 33.3}]
    assert total_training({"trained_steps": 10, "train_seconds": 7.0, "earlier_stages": stages}) == (150, 90.3)
    assert total_training({"trained_steps": 10, "train_seconds": 7.0}) == (10, 7.0)
    unknown = [{"steps": 100, "seconds": None}]
    assert total_training({"trained_steps": 10, "train_seconds": 7.0, "earlier_stages": unknown}) == (110, None)


@pytest.mark.parametrize("name", ["dmd2_1step", "dmd2_4step"])
def test_shipped_students_record_the_stages_their_cards_add_up(name):
    # compare.py's steps / time columns read the export's lineage; the card states the same totals
    folder = Path(__file__).resolve().parents[1] / "diffdistill" / "assets" / "fmnist" / name
    meta = json.loads((folder / "diffdistill.json").read_text())
    card = json.loads((folder / "card.json").read_text())
    assert len(meta["earlier_stages"]) == 1 and meta["earlier_stages"] == card["earlier_stages"]
    assert total_training(meta) == (card["trained_steps"], card["wall_time_s"])


def test_ode_pairs_count_their_generation_time_and_older_folders_count_nothing(tmp_path):
    (tmp_path / "meta.json").write_text(json.dumps({"format": 1, "count": 8, "generation_seconds": 12.5}))
    assert stages_of_ode_pairs(tmp_path) == [{"run": str(tmp_path), "checkpoint": "ode-pairs", "steps": 0,
                                              "seconds": 12.5}]
    (tmp_path / "meta.json").write_text(json.dumps({"format": 1, "count": 8}))     # written before the field
    assert stages_of_ode_pairs(tmp_path) == []
    assert stages_of_ode_pairs(tmp_path / "missing") == []
