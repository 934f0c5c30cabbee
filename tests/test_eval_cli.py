"""`diffdistill eval` / `eval ref` and the export-driven sampler behind them (diffdistill/eval/evaluate.py, generate.py)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from diffdistill.cli import main
from diffdistill.data import FMNIST_DEB_DIR, load_fashion_mnist
from diffdistill.eval.evaluate import Reference, check_protocols, load_images, image_files
from diffdistill.inference.generate import export_spec, generate
from diffdistill.inference.spec import SamplingSpec
from diffdistill.metrics.fmnist import ASSETS, FMNISTEvaluator
from diffdistill.models.registry import find_export, load_model, read_export_meta

needs_fmnist = pytest.mark.skipif(not (FMNIST_DEB_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="needs Fashion-MNIST")
TEACHER = str(ASSETS / "teacher")


def write_pngs(folder, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:05d}.png")


def run_json(capsys, *argv) -> dict:
    assert main([str(a) for a in argv]) == 0
    return json.loads(capsys.readouterr().out)


@needs_fmnist
def test_identical_folders_score_zero_and_other_images_do_not(tmp_path, capsys):
    test_images, _ = load_fashion_mnist("test")
    write_pngs(tmp_path / "real", test_images[:300])
    write_pngs(tmp_path / "other", test_images[300:600])
    ref = tmp_path / "ref.safetensors"
    made = run_json(capsys, "eval", "ref", "--images", tmp_path / "real", "--features", "fmnist", "--out", ref)
    assert made["n"] == 300 and made["dim"] == 128
    same = run_json(capsys, "eval", "--images", tmp_path / "real", "--ref", ref, "--features", "fmnist")
    assert same["fid"] < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    assert abs(same["kid_mean"]) < 0.05                # unbiased MMD: ~0, either sign
    other = run_json(capsys, "eval", "--images", tmp_path / "other", "--ref", ref, "--features", "fmnist",
                     "--out", tmp_path / "report.json")
    assert other["fid"] > 0.5 and other["protocol"]["weights_sha256"] == made["protocol"]["weights_sha256"]
    assert json.loads((tmp_path / "report.json").read_text())["fid"] == other["fid"]
    # the folder's uint8 PNGs give the same features as the data module's tensors
    loaded = load_images(image_files(tmp_path / "real"))
    assert loaded.dtype == torch.uint8 and loaded.shape == (300, 1, 28, 28)
    assert torch.equal(loaded[:, 0], torch.from_numpy(np.array(test_images[:300])))


@pytest.mark.slow
@needs_fmnist
def test_checkpoint_eval_equals_scoring_the_same_samples_directly(tmp_path, capsys):
    report = run_json(capsys, "eval", "--checkpoint", TEACHER, "--features", "fmnist", "--n", 200, "--steps", 2,
                      "--seed", 3, "--no-pr", "--cache-dir", tmp_path)
    assert (report["steps"], report["nfe"], report["guidance"]) == (2, 4, 3.0)    # CFG 3 from the teacher's export
    model = load_model(find_export(TEACHER)).eval()
    plan = export_spec(find_export(TEACHER), model, steps=2)
    samples, labels, _ = generate(model, plan, 200, seed=3, progress=False)
    direct = FMNISTEvaluator().score(samples.clamp(-1, 1), labels)
    assert report["fid"] == pytest.approx(direct.fid, rel=1e-6)
    assert report["class_accuracy"] == direct.accuracy
    assert (tmp_path / "fmnist-test-reference.safetensors").is_file()        # B1's reference, built once


def test_spec_follows_the_export_and_its_overrides():
    model = load_model(find_export(TEACHER))
    student = SamplingSpec.from_dict({"sampler": "few_step", "times": [1.0, 0.5], "guidance": 1.0, "num_classes": 10},
                                     model.schedule)
    assert student.times == (1.0, 0.5) and student.nfe == 2 and student.distilled      # its own distilled times
    assert student.override(model.schedule, steps=4).steps == 4            # an explicit other count: a grid
    assert student.override(model.schedule, steps=2) == student            # its own count: its own times
    teacher = export_spec(find_export(TEACHER), model, steps=8)
    assert teacher.sampler == "ode" and teacher.nfe == 16 and teacher.times[0] == pytest.approx(1.0)
    assert SamplingSpec.from_dict(teacher.to_dict(), model.schedule) == teacher          # the export round trip
    with pytest.raises(ValueError, match="steps must be > 0"):
        student.override(model.schedule, steps=0)
    with pytest.raises(ValueError, match="decrease strictly"):
        SamplingSpec("few_step", (0.5, 1.0))


def test_generation_is_reproducible_and_independent_of_batch_size_and_n():
    """The one seeding rule: sample i depends on (seed, i) only, also for the re-noising few-step sampler."""
    model = load_model(find_export(TEACHER)).eval()
    spec = SamplingSpec("few_step", (1.0, 0.5), num_classes=10)
    a, labels, _ = generate(model, spec, 6, seed=1, batch_size=6, progress=False)
    b, _, _ = generate(model, spec, 6, seed=1, batch_size=4, progress=False)
    c, _, _ = generate(model, spec, 6, seed=2, batch_size=6, progress=False)
    tail, tail_labels, _ = generate(model, spec, 2, seed=1, first=4, progress=False)     # samples 4 and 5 alone
    assert torch.allclose(a, b, atol=1e-5) and not torch.allclose(a, c) and labels.tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.allclose(tail, a[4:], atol=1e-5) and tail_labels.tolist() == [4, 5]


def test_bad_folders_and_references_say_what_to_do(tmp_path, capsys):
    assert main(["eval", "--images", str(tmp_path / "nope"), "--ref", "x", "--features", "fmnist"]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "ref", "--images", str(tmp_path / "empty"), "--out", str(tmp_path / "r.safetensors"),
                 "--features", "fmnist"]) == 2
    assert "no images" in capsys.readouterr().err
    mixed = tmp_path / "mixed"
    write_pngs(mixed, np.zeros((2, 28, 28), np.uint8))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(mixed / "z.png")
    with pytest.raises(ValueError, match="differ in size"):
        load_images(image_files(mixed))
    assert main(["eval", "--images", str(mixed), "--ref", str(tmp_path / "missing.safetensors"),
                 "--features", "fmnist"]) == 2
    assert "eval ref" in capsys.readouterr().err                          # how to make the reference
    assert main(["eval", "--images", str(mixed), "--checkpoint", TEACHER]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_too_few_images_for_the_feature_dimension_is_an_error_unless_allowed(tmp_path, capsys):
    rng = np.random.default_rng(0)
    write_pngs(tmp_path / "few", rng.integers(0, 255, (20, 28, 28), dtype=np.uint8))
    ref = tmp_path / "ref.safetensors"
    assert main(["eval", "ref", "--images", str(tmp_path / "few"), "--features", "fmnist", "--out", str(ref)]) == 0
    capsys.readouterr()
    assert main(["eval", "--images", str(tmp_path / "few"), "--ref", str(ref), "--features", "fmnist"]) == 2
    assert "singular" in capsys.readouterr().err
    report = run_json(capsys, "eval", "--images", tmp_path / "few", "--ref", ref, "--features", "fmnist",
                      "--allow-small-n")
    assert np.isfinite(report["fid"]) and report["fid"] >= 0


def test_a_reference_from_another_protocol_is_refused(tmp_path):
    protocol = {"extractor": "fmnist-classifier", "features": "penultimate, 128-d", "resize": "none",
                "resolution": "32", "weights_sha256": "abc"}
    check_protocols(protocol, dict(protocol, torch="other"))                # versions may differ
    with pytest.raises(ValueError, match="weights_sha256"):
        check_protocols(protocol, dict(protocol, weights_sha256="def"))
    ref = Reference.from_features(torch.randn(10, 4), protocol)
    ref.save(tmp_path / "r.safetensors")
    back = Reference.load(tmp_path / "r.safetensors")
    assert back.protocol == protocol and torch.allclose(back.stats.sigma, ref.stats.sigma)
    save_file({"mu": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not a diffdistill reference"):
        Reference.load(tmp_path / "plain.safetensors")
    with safe_open(str(tmp_path / "r.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["protocol"])["extractor"] == "fmnist-classifier"
