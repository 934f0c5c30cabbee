"""The package's layering, checked on the source with ast (no imports executed).

    diffdistill/            core: schedule, config, files, randomness, visual, cli (the entry point)
      models/               networks behind the model contract (diffusers only in the adapters: models/diffusers.py,
                            models/pipeline_encoder.py)
      data/                 data streams, latents and their encoder, text-to-image benchmark data
      methods/              one file per training method
      inference/            samplers, the one sampling path, the side-by-side engine
      train/                the loop, checkpoints, recipes, lineage (with cli.py, the only users of accelerate)
      metrics/, eval/       feature extractors and scores; the evaluation commands and benchmarks

Arrows point one way: models <- data <- methods <- train, and inference / eval never import train."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "diffdistill"
FILES = sorted(PKG.rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:                                   # relative: resolve against the package path
                parts = path.relative_to(PKG.parent).with_suffix("").parts[:-node.level]
                names.add(".".join(parts + ((node.module,) if node.module else ())))
            else:
                names.add(node.module or "")
    return names


def rel(path: Path) -> str:
    return str(path.relative_to(PKG.parent))


def test_only_the_adapter_imports_diffusers_and_only_the_loop_imports_accelerate():
    for path in FILES:
        mods = imported_modules(path)
        if any(m.split(".")[0] == "diffusers" for m in mods):
            assert rel(path) in {"diffdistill/models/diffusers.py", "diffdistill/models/pipeline_encoder.py"}, rel(path)
        if any(m.split(".")[0] == "transformers" for m in mods):     # the CLIP-score backend loads a CLIPModel
            assert rel(path) in {"diffdistill/models/diffusers.py", "diffdistill/metrics/clip_score.py"}, rel(path)
        if any(m.split(".")[0] == "accelerate" for m in mods):
            assert rel(path) in {"diffdistill/train/trainer.py", "diffdistill/train/checkpoint.py",
                                 "diffdistill/cli.py"}, rel(path)
        assert not any(m.split(".")[0] in ("gradio", "evaluation", "demos", "torchvision") for m in mods), rel(path)


def test_methods_only_import_the_allowed_layers():
    allowed = ("diffdistill.schedule", "diffdistill.models.base", "diffdistill.models.heads", "diffdistill.models.experts",
               "diffdistill.models.reward",
               "diffdistill.methods",
               "diffdistill.inference.sampling", "diffdistill.inference.streaming", "diffdistill.inference.spec",
               "diffdistill.data", "diffdistill.config", "diffdistill.randomness")
    for path in (PKG / "methods").glob("*.py"):
        for mod in imported_modules(path):
            if mod.startswith("diffdistill"):
                assert mod.startswith(allowed), f"{rel(path)} imports {mod}"


CORE = {"__init__", "cli", "config", "files", "randomness", "schedule", "visual"}
STAGES = {"models", "data", "methods", "inference", "train", "metrics", "eval", "assets"}
# stage -> the stages it must not import (beside the rules above)
FORBIDDEN = {
    "models": {"data", "methods", "inference", "train", "eval"},
    "data": {"methods", "inference", "train", "eval"},
    "metrics": {"data", "methods", "inference", "train", "eval"},
    "methods": {"train", "eval"},
    "inference": {"methods", "train", "eval"},
    "eval": {"methods", "train"},
    "train": {"eval", "inference"},
}


def test_the_package_is_grouped_by_stage_and_stages_import_one_way():
    top = {p.stem for p in PKG.glob("*.py")}
    assert top <= CORE, f"modules outside a stage package: {sorted(top - CORE)}"
    assert {p.name for p in PKG.iterdir() if p.is_dir() and p.name != "__pycache__"} <= STAGES
    for path in FILES:
        parts = path.relative_to(PKG).parts
        if len(parts) < 2 or parts[0] not in FORBIDDEN:
            continue
        for mod in imported_modules(path):
            bits = mod.split(".")
            if bits[0] == "diffdistill" and len(bits) > 1:
                assert bits[1] not in FORBIDDEN[parts[0]], f"{rel(path)} imports {mod}"


def test_code_comments_cite_papers_or_files_users_have():
    """Not the project's internal notes (DESIGN.md, BENCHMARKS.md, reference/...), which users do not have."""
    internal = ("DESIGN.md", "BENCHMARKS.md", "anchors-", "environment.md", "aesthetics.md", "shared/")
    roots = [PKG, PKG.parent / "evaluation", PKG.parent / "demos", PKG.parent / "tests", PKG.parent / "recipes",
             PKG.parent / "scripts"]
    for root in roots:
        for path in root.rglob("*"):
            if path.suffix in (".py", ".yaml", ".sh") and path.name != "test_imports.py":
                text = path.read_text()
                assert not [w for w in internal if w in text], f"{path} cites {[w for w in internal if w in text]}"


def test_importing_the_package_does_not_import_diffusers():
    code = ("import sys, diffdistill.cli, diffdistill.train.trainer, diffdistill.models.registry, diffdistill.models.diffusers;"
            "bad = [m for m in ('diffusers', 'transformers', 'gradio', 'peft') if m in sys.modules]; print(bad);"
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
