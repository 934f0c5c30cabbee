"""evaluation/fmnist/average_exports.py: the averaged export holds the mean of the inputs' weights."""

import subprocess
import sys
from pathlib import Path

import torch

from diffdistill.models.registry import build_model, load_model, save_model

REPO = Path(__file__).resolve().parents[1]
SPEC = {"kind": "mlp", "hidden": 16, "layers": 2, "prediction": "x0"}


def test_average_of_two_exports_is_their_weight_mean(tmp_path):
    exports = []
    for i in range(2):
        torch.manual_seed(i)
        save_model(build_model(SPEC), tmp_path / f"e{i}", {"trained_steps": 10 * (i + 1)})
        exports.append(str(tmp_path / f"e{i}"))
    subprocess.run([sys.executable, "evaluation/fmnist/average_exports.py", str(tmp_path / "avg"), *exports],
                   check=True, capture_output=True, cwd=REPO, timeout=300)
    a, b, avg = (load_model(p).state_dict() for p in (*exports, tmp_path / "avg" / "export"))
    assert a.keys() == avg.keys()
    for k in a:
        assert torch.allclose(avg[k], (a[k] + b[k]) / 2) and not torch.equal(a[k], b[k])
    other = {**SPEC, "hidden": 8}
    save_model(build_model(other), tmp_path / "small")
    refused = subprocess.run([sys.executable, "evaluation/fmnist/average_exports.py", str(tmp_path / "bad"), exports[0],
                              str(tmp_path / "small")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert refused.returncode != 0 and "hold different networks" in refused.stderr
