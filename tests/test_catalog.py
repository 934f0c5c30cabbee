"""The export catalogue the demo's pickers (and the leaderboard) read (diffdistill/inference/catalog.py): every export
under the roots, its method and medium from its own metadata, the step counts it serves, and no checkpoints or parts
of other exports."""

import json
from pathlib import Path

from diffdistill.inference.catalog import describe_export, find_exports


def fake_export(folder: Path, kind: str, method: str, sampling: dict, **model) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "diffdistill.json").write_text(json.dumps({"format": 1, "model": {"kind": kind, **model},
                                                         "sampling": sampling,
                                                         "run_config": {"method": {"name": method}}}))
    return folder


def test_the_catalogue_describes_every_export_once(tmp_path):
    root = tmp_path / "runs"
    fake_export(root / "dmd2" / "export", "unet", "dmd2", {"sampler": "few_step", "times": [1.0, 0.75, 0.5, 0.25]})
    fake_export(root / "dmd2" / "checkpoints" / "step-1" / "export", "unet", "dmd2", {"sampler": "few_step",
                                                                                       "times": [1.0]})
    phased = fake_export(root / "phased" / "export", "experts", "phased_dmd", {"sampler": "ode", "fixed": True,
                                                                              "times": [1.0, 0.9, 0.6, 0.3]},
                         experts=[{"kind": "unet"}, {"kind": "unet"}])
    fake_export(phased / "expert_0", "unet", "phased_dmd", {"sampler": "ode", "times": [1.0]})
    fake_export(root / "hyper" / "export", "unet", "hyper_one_step", {"sampler": "tcd", "times": [1.0, 0.7, 0.4]})
    fake_export(root / "asd" / "export", "wan", "asd", {"sampler": "few_step", "times": [1.0], "chunk_frames": 2,
                                                        "ladder": [[1.0], [1.0, 0.75], [1.0, 0.9, 0.75, 0.5]]})
    fake_export(root / "teacher" / "export", "wan", "teacher", {"sampler": "ode", "steps": 32})
    fake_export(root / "toy" / "export", "mlp", "tscd", {"sampler": "tcd", "times": [1.0]})
    (root / "notes").mkdir()
    entries = {e.name: e for e in find_exports([root, tmp_path / "missing"])}
    assert sorted(entries) == ["runs/asd/export", "runs/dmd2/export", "runs/hyper/export", "runs/phased/export",
                               "runs/teacher/export", "runs/toy/export"]
    assert (entries["runs/dmd2/export"].medium, entries["runs/dmd2/export"].step_choices) == ("image", (4,))
    assert entries["runs/phased/export"].medium == "image" and entries["runs/phased/export"].method == "phased_dmd"
    assert entries["runs/hyper/export"].step_choices == (1, 2, 3, 4, 8)              # TCD: any of 1-8, and its own
    asd = entries["runs/asd/export"]
    assert (asd.medium, asd.causal, asd.steps, asd.step_choices) == ("video", True, 1, (1, 2, 4))
    assert entries["runs/teacher/export"].is_teacher and entries["runs/toy/export"].medium == "other"
    assert "asd (1/2/4 steps)" in asd.label
    assert describe_export(tmp_path) is None


def test_the_shipped_assets_are_in_the_catalogue():
    from diffdistill.inference.catalog import ASSETS

    names = {e.name: e for e in find_exports([ASSETS])}
    assert {"assets/fmnist/dmd2_1step", "assets/fmnist/dmd2_4step", "assets/fmnist/teacher",
            "assets/moving_fmnist/teacher"} <= set(names)
    assert names["assets/fmnist/dmd2_4step"].method == "dmd2" and names["assets/fmnist/teacher"].is_teacher
