"""The layering rules of DESIGN.md, checked on the source with ast (no imports executed)."""

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
            assert rel(path) == "diffdistill/models/diffusers.py", rel(path)
        if any(m.split(".")[0] == "transformers" for m in mods):     # the CLIP-score backend loads a CLIPModel
            assert rel(path) in {"diffdistill/models/diffusers.py", "diffdistill/metrics/clip_score.py"}, rel(path)
        if any(m.split(".")[0] == "accelerate" for m in mods):
            assert rel(path) in {"diffdistill/trainer.py", "diffdistill/checkpoint.py", "diffdistill/cli.py"}, rel(path)
        assert not any(m.split(".")[0] in ("gradio", "evaluation", "demos", "torchvision") for m in mods), rel(path)


def test_methods_only_import_the_allowed_layers():
    allowed = ("diffdistill.schedule", "diffdistill.models.base", "diffdistill.models.heads", "diffdistill.methods",
               "diffdistill.sampling",
               "diffdistill.data", "diffdistill.config", "diffdistill.randomness")
    for path in (PKG / "methods").glob("*.py"):
        for mod in imported_modules(path):
            if mod.startswith("diffdistill"):
                assert mod.startswith(allowed), f"{rel(path)} imports {mod}"


def test_importing_the_package_does_not_import_diffusers():
    code = ("import sys, diffdistill.cli, diffdistill.trainer, diffdistill.models.registry, diffdistill.models.diffusers;"
            "bad = [m for m in ('diffusers', 'transformers', 'gradio', 'peft') if m in sys.modules]; print(bad);"
            "sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
