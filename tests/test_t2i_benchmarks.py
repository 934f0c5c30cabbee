"""Text-to-image benchmarks (diffdistill/eval/t2i_benchmarks.py, t2i_data.py, evaluation/t2i/run.py) on fake COCO and
MJHQ folders, a tiny SD1.5 text export and a 4-d colour-statistics extractor (no 299-px Inception): the subset is
the documented one, both sides get the same crop + LANCZOS, the reference is cached, and the report's FID / CLIP
score are the numbers computed independently from the saved images."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from tiny_diffusers import (export_text_model, save_pipeline, tiny_clip_model, tiny_clip_tokenizer,  # noqa: E402
                            tiny_sd15_pipeline)

from diffdistill.data import t2i as t2i_data  # noqa: E402
from diffdistill.eval.evaluate import image_files, load_images  # noqa: E402
from diffdistill.metrics.clip_score import CLIPScoreConfig, CLIPScorer  # noqa: E402
from diffdistill.metrics.extractors import CustomExtractor  # noqa: E402
from diffdistill.metrics.frechet import FeatureStats, frechet_distance  # noqa: E402
from diffdistill.inference.side_by_side import DEFAULT_TEACHER  # noqa: E402
from diffdistill.eval.t2i_benchmarks import (BENCHMARKS, T2IConfig, cached_reference, generate_batches,  # noqa: E402
                                        load_text_model, run_benchmark)
from diffdistill.data.t2i import center_crop_resize, prepare_generated, read_coco, read_mjhq  # noqa: E402
from repo_scripts import load_script  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RES = 16                                              # eval resolution: the tiny VAE decodes 32 x 32 images
SIZES = [(40, 30), (30, 44), (36, 36), (50, 28), (41, 30), (28, 46), (33, 40), (45, 45)]   # (w, h), non-square
COCO_IDS = [391, 42, 7, 1000, 73, 5, 250, 88]        # not sorted: the selection must sort them itself


def colour_stats(x: torch.Tensor) -> torch.Tensor:
    """4-d features: channel means and overall std of uint8 images (in pixel levels)."""
    x = x.float()
    return torch.cat([x.mean((2, 3)), x.std((1, 2, 3))[:, None]], dim=1)


def extractor() -> CustomExtractor:
    return CustomExtractor(colour_stats, "colour-stats", {"features": "channel means + std, 4-d"})


def random_image(w: int, h: int, seed: int, grey: bool = False) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def make_coco(root: Path) -> dict[str, str]:
    """A val2014 folder with 8 images (one grey) and 3 captions each, annotation ids out of order. Returns the
    expected caption (the lowest annotation id, stripped) per image id."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2014").mkdir()
    images, annotations, expected = [], [], {}
    for i, (image_id, (w, h)) in enumerate(zip(COCO_IDS, SIZES)):
        name = f"COCO_val2014_{image_id:012d}.jpg"
        random_image(w, h, i, grey=i == 2).save(root / "val2014" / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        ann_ids = [5000 + 3 * i + 2, 5000 + 3 * i, 5000 + 3 * i + 1]
        for a in ann_ids:
            annotations.append({"image_id": image_id, "id": a, "caption": f"  photo {image_id} caption {a}\n"})
        expected[str(image_id)] = f"photo {image_id} caption {min(ann_ids)}"
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": images,
                                                                            "annotations": annotations[::-1]}))
    return expected


def make_mjhq(root: Path) -> dict[str, int]:
    counts = {"animals": 5, "logo": 4, "people": 5}          # logo: 4 samples for 4-d features, too few
    meta, k = {}, 0
    for category, count in counts.items():
        (root / "mjhq30k_imgs" / category).mkdir(parents=True)
        for _ in range(count):
            image_id = f"{k * 2654435761 % 2**32:08x}"
            random_image(*SIZES[k % len(SIZES)], 100 + k).save(root / "mjhq30k_imgs" / category / f"{image_id}.jpg")
            meta[image_id] = {"category": category, "prompt": f"a {category} picture number {k} "}
            k += 1
    (root / "meta_data.json").write_text(json.dumps(meta))
    return counts


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    captions = make_coco(root / "coco")
    counts = make_mjhq(root / "mjhq")
    pipeline = save_pipeline(tiny_sd15_pipeline(), root / "sd15")
    export = export_text_model(pipeline, root / "export")
    tok = tiny_clip_tokenizer()
    tiny_clip_model(len(tok)).save_pretrained(root / "clip")
    tok.save_pretrained(root / "clip")
    return {"root": root, "coco": root / "coco", "mjhq": root / "mjhq", "captions": captions, "counts": counts,
            "pipeline": pipeline, "export": export, "clip": root / "clip"}


def config(data, tmp_path, benchmark="coco30k", **kw) -> T2IConfig:
    base = dict(data=str(data["coco" if benchmark.startswith("coco") else "mjhq"]), checkpoint=str(data["export"]),
                pipeline=str(data["pipeline"]), resolution=RES, batch_size=3, device="cpu",
                cache_dir=str(tmp_path / "cache"), workers=2)
    return T2IConfig(benchmark=benchmark, **{**base, **kw})


def reference_features(items, size=RES) -> torch.Tensor:
    """Real images cropped and resized here by hand, not through the library's batching and threads."""
    out = []
    for it in items:
        with Image.open(it.path) as im:
            out.append(torch.from_numpy(np.array(center_crop_resize(im.convert("RGB"), size))).permute(2, 0, 1))
    return colour_stats(torch.stack(out))


def fid(a: torch.Tensor, b: torch.Tensor) -> float:
    return frechet_distance(FeatureStats.from_features(a), FeatureStats.from_features(b))


# ---------------------------------------------------------------------- data
def test_coco_subset_is_seeded_sorted_and_keeps_the_lowest_id_caption(data):
    items = read_coco(data["coco"], 8, seed=0)
    assert items == read_coco(data["coco"], 8, seed=0)
    ordered = sorted(COCO_IDS)            # the documented protocol, spelled out
    assert [it.key for it in items] == [str(ordered[i]) for i in np.random.default_rng(0).permutation(8)]
    assert all(it.prompt == data["captions"][it.key] for it in items)
    assert all(it.path == data["coco"] / "val2014" / f"COCO_val2014_{int(it.key):012d}.jpg" for it in items)
    small, other = read_coco(data["coco"], 4, seed=0), read_coco(data["coco"], 4, seed=1)
    assert small == items[:4] and [it.key for it in small] != [it.key for it in other]
    assert BENCHMARKS["coco30k"].n == 30_000 and BENCHMARKS["coco10k"].n == 10_000
    assert (BENCHMARKS["coco30k"].resolution, BENCHMARKS["coco10k"].resolution) == (256, 512)


def test_mjhq_reads_categories_prompts_and_files(data):
    items = read_mjhq(data["mjhq"], 14)
    assert {c: sum(it.category == c for it in items) for c in data["counts"]} == data["counts"]
    assert all(it.path == data["mjhq"] / "mjhq30k_imgs" / it.category / f"{it.key}.jpg" for it in items)
    assert all(it.prompt.startswith(f"a {it.category} picture") and not it.prompt.endswith(" ") for it in items)


def test_centre_crop_and_lanczos_are_pils_own():
    wide, tall = random_image(41, 30, 0), random_image(30, 45, 1)
    # offsets as torchvision's center_crop rounds them: round(5.5) = 6, round(7.5) = 8
    assert center_crop_resize(wide, RES).tobytes() == wide.crop((6, 0, 36, 30)).resize((RES, RES), Image.LANCZOS).tobytes()
    assert center_crop_resize(tall, RES).tobytes() == tall.crop((0, 8, 30, 38)).resize((RES, RES), Image.LANCZOS).tobytes()
    assert center_crop_resize(random_image(RES, RES, 2), RES).tobytes() == random_image(RES, RES, 2).tobytes()
    pixels = torch.rand(2, 3, 24, 20, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1     # overshoots too
    u8 = ((pixels.double().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    expect = [np.array(Image.fromarray(a).crop((0, 2, 20, 22)).resize((RES, RES), Image.LANCZOS)) for a in u8]
    assert torch.equal(prepare_generated(pixels, RES), torch.from_numpy(np.stack(expect)).permute(0, 3, 1, 2))


def test_missing_or_bad_data_names_the_layout(data, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"captions_val2014.json not found; expected COCO_ROOT/annotations"):
        read_coco(tmp_path / "nowhere", 8)
    with pytest.raises(FileNotFoundError, match=r"mjhq30k_imgs/<category>/<image_id>.jpg"):
        read_mjhq(tmp_path / "nowhere", 8)
    with pytest.raises(ValueError, match=r"has 8 captioned images but 30000 were asked for; pass --n 8"):
        read_coco(data["coco"], 30_000)
    (tmp_path / "empty" / "annotations").mkdir(parents=True)
    (tmp_path / "empty" / "annotations" / "captions_val2014.json").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        read_coco(tmp_path / "empty", 1)
    (tmp_path / "empty" / "annotations" / "captions_val2014.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(ValueError, match="lists no images or no captions"):
        read_coco(tmp_path / "empty", 1)
    broken = tmp_path / "broken"
    (broken / "annotations").mkdir(parents=True)
    captions = json.loads((data["coco"] / "annotations" / "captions_val2014.json").read_text())
    (broken / "annotations" / "captions_val2014.json").write_text(json.dumps(captions))
    with pytest.raises(FileNotFoundError, match=r"8 of the 8 selected images are missing under .*val2014"):
        read_coco(broken, 8)
    captions["images"] = captions["images"][1:]                 # captions left for an image it does not list
    (broken / "annotations" / "captions_val2014.json").write_text(json.dumps(captions))
    with pytest.raises(ValueError, match="captions for 1 image ids that its 'images' list does not have"):
        read_coco(broken, 1)


# ---------------------------------------------------------------------- reference cache
def test_reference_features_are_cached_per_selection_and_resolution(data, tmp_path, monkeypatch):
    reads = []
    real = t2i_data.load_reference_image
    monkeypatch.setattr(t2i_data, "load_reference_image", lambda p, s: reads.append(p) or real(p, s))
    items, bench = read_coco(data["coco"], 8), BENCHMARKS["coco30k"]
    first, path = cached_reference(bench, items, RES, 0, extractor(), tmp_path, batch_size=3, workers=2)
    assert len(reads) == 8 and path.is_file() and path.parent == tmp_path
    torch.testing.assert_close(first.features, reference_features(items), rtol=0, atol=1e-6)
    again, same = cached_reference(bench, items, RES, 0, extractor(), tmp_path, batch_size=5)
    assert len(reads) == 8 and same == path and torch.equal(again.features, first.features)
    _, other = cached_reference(bench, items, 8, 0, extractor(), tmp_path)          # another resolution
    _, fewer = cached_reference(bench, items[:5], RES, 0, extractor(), tmp_path)    # another selection
    assert len(reads) == 8 + 8 + 5 and len({path, other, fewer}) == 3


# ---------------------------------------------------------------------- end to end
def test_coco_run_reports_the_fid_and_clip_score_of_its_saved_images(data, tmp_path):
    tok_model = CLIPScorer(CLIPScoreConfig.dmd2(str(data["clip"])))
    cfg = config(data, tmp_path, n=8, clip=str(data["clip"]), save_images=str(tmp_path / "images"),
                 out=str(tmp_path / "report.json"))
    report = run_benchmark(cfg, extractor=extractor(), clip=tok_model)
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    files = image_files(tmp_path / "images")
    lines = [json.loads(x) for x in (tmp_path / "images" / "prompts.jsonl").read_text().splitlines()]
    items = read_coco(data["coco"], 8)
    assert [x["file"] for x in lines] == [f.name for f in files] and [x["prompt"] for x in lines] == [
        it.prompt for it in items]
    generated = load_images(files)
    assert generated.shape == (8, 3, RES, RES)
    assert report["fid"] == pytest.approx(fid(colour_stats(generated), reference_features(items)), rel=1e-9)
    clip = tok_model.score(generated, [x["prompt"] for x in lines]).score
    assert report["clip_score"] == pytest.approx(clip, abs=1e-6)
    assert report["fid"] > 1 and report["n"] == 8 and "kid_mean" in report and report["images_per_second"] > 0
    assert report["deviations"] == ["n 8 instead of 30000", "resolution 16 instead of 256"]
    proto = report["protocol"]
    assert proto["benchmark"]["subset_seed"] == 0 and proto["images"]["eval_resolution"] == RES
    assert proto["sampler"]["steps"] == 1 and proto["sampler"]["nfe"] == 1 and proto["sampler"]["guidance"] == 1.0
    assert proto["features"]["extractor"] == "colour-stats" and proto["clip"]["prompt_prefix"] == "A photo depicts "
    assert {"torch", "diffusers", "transformers", "pillow"} <= set(report["environment"])
    with pytest.raises(FileExistsError, match="not empty"):      # a second run would mix its images in
        run_benchmark(cfg, extractor=extractor())


def test_each_image_gets_its_own_noise_whatever_the_batch_size(data):
    model, prompts, _ = load_text_model(data["export"], data["pipeline"], torch.device("cpu"))
    items = read_coco(data["coco"], 4)
    by = {b: torch.cat([x.images for x in generate_batches(model, prompts, items, RES, 1, 1.0, 0, b)]) for b in (1, 4)}
    assert (by[1].int() - by[4].int()).abs().max() <= 1            # batched convolutions may differ by a rounding
    cond, _ = prompts.conds_many(["a red square", "a blue circle"], model.model.data_shape)
    single, _ = prompts.conds("a blue circle", 1, model.model.data_shape)
    torch.testing.assert_close(cond.text[1:], single.text, rtol=0, atol=1e-5)


def test_mjhq_run_reports_fid_per_category(data, tmp_path):
    report = run_benchmark(config(data, tmp_path, "mjhq30k", n=14, save_images=str(tmp_path / "images")),
                           extractor=extractor())
    items = read_mjhq(data["mjhq"], 14)
    generated = colour_stats(load_images(image_files(tmp_path / "images")))
    real = reference_features(items)
    cats = np.array([it.category for it in items])
    per = report["per_category"]
    assert set(per) == {"animals", "logo", "people"}
    assert per["logo"] == {"n": 4, "fid": None, "skipped": "4 images for 4-d features: the covariance is singular "
                                                           "and FID meaningless"}
    for name in ("animals", "people"):
        mask = torch.from_numpy(cats == name)
        assert per[name]["n"] == 5 and per[name]["fid"] == pytest.approx(fid(generated[mask], real[mask]), rel=1e-9)
    assert report["fid"] == pytest.approx(fid(generated, real), rel=1e-9)
    assert report["protocol"]["benchmark"]["name"] == "mjhq30k"


def test_models_that_cannot_run_the_benchmark_are_refused(data, tmp_path):
    with pytest.raises(ValueError, match="is class-conditional .*10 classes.*text-conditioned export"):
        run_benchmark(config(data, tmp_path, checkpoint=str(DEFAULT_TEACHER), n=8), extractor=extractor())
    with pytest.raises(ValueError, match=r"trained for 1 steps; --steps 4 is not on its schedule"):
        run_benchmark(config(data, tmp_path, steps=4, n=8), extractor=extractor())
    with pytest.raises(ValueError, match="records no pipeline folder; pass --pipeline"):
        run_benchmark(config(data, tmp_path, pipeline=None, n=8), extractor=extractor())
    assert not (tmp_path / "cache").exists()                   # refused before any reference work
    with pytest.raises(ValueError, match="4 images for 4-d features"):    # refused before sampling 4 images
        run_benchmark(config(data, tmp_path, n=4, save_images=str(tmp_path / "small")), extractor=extractor())
    assert not any((tmp_path / "small").iterdir())


# ---------------------------------------------------------------------- command line
def load_cli():
    return load_script("evaluation/t2i/run.py")


def test_cli_keeps_the_config_defaults_and_reports_bad_data(tmp_path, capsys):
    cli = load_cli()
    cfg = cli.config_from_args(["--benchmark", "coco10k", "--data", "d", "--checkpoint", "c", "--n", "50"])
    defaults = T2IConfig("coco10k", "d", "c")
    assert cfg.n == 50 and (cfg.seed, cfg.clip_preset, cfg.batch_size, cfg.offline, cfg.cache_dir) == (
        defaults.seed, defaults.clip_preset, defaults.batch_size, defaults.offline, defaults.cache_dir)
    assert cli.main(["--benchmark", "mjhq30k", "--data", str(tmp_path / "none"), "--checkpoint", "c"]) == 2
    err = capsys.readouterr().err
    assert "meta_data.json not found" in err and "mjhq30k_imgs/<category>/<image_id>.jpg" in err
