"""evaluation/video/train_cost.py: a run's steps, wall time, seconds per step and peak memory, from its export and
log (the self-forcing ablation without gradient truncation is judged on these)."""

import json
from pathlib import Path

import pytest

from repo_scripts import load_script

ROOT = Path(__file__).resolve().parents[1]


def train_cost():
    return load_script("evaluation/video/train_cost.py")


def fake_run(root: Path, name: str, steps: int, seconds: float, peaks: list[float], earlier: float | None = None):
    run = root / name
    (run / "export").mkdir(parents=True)
    stages = [{"run": "init", "checkpoint": "export", "steps": 100, "seconds": earlier}] if earlier else []
    (run / "export" / "diffdistill.json").write_text(json.dumps(
        {"trained_steps": steps, "train_seconds": seconds, "earlier_stages": stages}))
    rows = [{"step": 10 * (i + 1), "time_s": 1.0 + i, "peak_mem_mb": p} for i, p in enumerate(peaks)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return run


def test_cost_rows_add_earlier_stages_and_take_the_peak_over_resumes(tmp_path):
    tc = train_cost()
    base = tc.run_cost(fake_run(tmp_path, "base", 2000, 2400.0, [900.0, 950.0], earlier=1110.0))
    heavy = tc.run_cost(fake_run(tmp_path, "heavy", 600, 2400.0, [2100.0, 1800.0]))     # a resume's lower peak
    assert base["seconds_per_step"] == 1.2 and base["peak_mem_mb"] == 950.0
    assert base["total"] == {"trained_steps": 2100, "train_seconds": 3510.0, "stages": 2}
    assert heavy["seconds_per_step"] == 4.0 and heavy["peak_mem_mb"] == 2100.0
    table = tc.markdown([base, heavy])
    assert f"| {tmp_path / 'heavy'} | 600 | 2400 s | 4.000 | 2100 | 2400 s in 1 stage(s) |" in table
    with pytest.raises(SystemExit, match="no export"):
        tc.run_cost(tmp_path / "missing")
