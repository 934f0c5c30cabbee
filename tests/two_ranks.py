"""Launch a script or module on two CPU processes (torchrun; accelerate forms a MULTI_CPU gloo job), for the tests
that check what ranks share: one place for the command line and the environment such runs need."""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def torchrun_two(args: list[str], port: int, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node 2 ARGS`` from the repository root, one thread per rank, no GPU, offline; the
    test fails with the tail of stderr when a rank fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(HERE.parent),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=HERE.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def rank_reports(folder: Path, pattern: str = "rank{}.json") -> tuple[dict, dict]:
    """The JSON each rank wrote into ``folder``."""
    return tuple(json.loads((folder / pattern.format(r)).read_text()) for r in (0, 1))
