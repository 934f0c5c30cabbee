"""The real Wan path on a tiny WanPipeline built from configs: `diffdistill encode --videos` writes what the pipeline's
own VAE and umT5 give, a teacher trains on it, and an export loads into a stock WanPipeline (transformer and scheduler
swapped in) that reproduces `diffdistill sample`'s clips."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")
iio = pytest.importorskip("imageio.v3")

from tiny_diffusers import save_pipeline, tiny_wan_pipeline  # noqa: E402

from diffdistill.cli import main  # noqa: E402
from diffdistill.data.encode import ClipSize, encode_folder  # noqa: E402
from diffdistill.data.latents import LatentsConfig, LatentsStream  # noqa: E402
from diffdistill.models.pipeline_encoder import PipelineEncoder  # noqa: E402
from diffdistill.models.registry import build_model, load_model, save_model  # noqa: E402


def write_videos(folder: Path, count: int = 3, frames: int = 7) -> Path:
    """Captioned clips of a bright square drifting right: GIFs, and one MP4 (imageio-ffmpeg, the [video] extra)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        video = np.zeros((frames, 20, 24, 3), dtype=np.uint8)
        for t in range(frames):
            left = (2 + 2 * t + i) % 14                 # wraps: no two frames alike (GIF writers merge repeats)
            video[t, 6:14, left: left + 8] = (200, 60 + 40 * i, 30 + 5 * t)
        suffix = ".mp4" if i == count - 1 else ".gif"
        if suffix == ".gif":
            iio.imwrite(folder / f"clip{i}.gif", video, duration=100, loop=0)
        else:
            iio.imwrite(folder / f"clip{i}.mp4", video, fps=8, codec="libx264", macro_block_size=1)
        (folder / f"clip{i}.txt").write_text(f"a square number {i}")
    return folder


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan")
    pipe = tiny_wan_pipeline(shift=3.0)
    pipe.text_encoder.eval()                 # built from a config in train mode; from_pretrained loads in eval mode
    return pipe, save_pipeline(pipe, root / "pipeline"), root


def test_encode_videos_writes_the_pipelines_own_latents_and_prompt_embeddings(wan):
    pipe, folder, root = wan
    out = encode_folder(folder, write_videos(root / "videos"), root / "latents", batch_size=2, shard_size=2,
                        clip=ClipSize(frames=5, height=16, width=16))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["count"] == 3 and meta["clip"] == {"frames": 5, "height": 16, "width": 16} and len(meta["shards"]) == 2
    stream = LatentsStream(LatentsConfig(str(out)), batch_size=3)
    batch = stream.next()
    assert batch.x0.shape == (3, 2, 16, 2, 2)                  # 5 frames -> 2 latent frames, 16 px -> 2 latents
    assert batch.cond.text.shape == (3, 512, 32) and batch.uncond.text.shape == (3, 512, 32)

    # known answer: the VAE posterior of clip0, normalised as WanPipeline de-normalises before decoding
    encoder = PipelineEncoder(folder)
    from diffdistill.data.encode import load_clip

    pixels = load_clip(root / "videos" / "clip0.gif", 5, 16, 16)
    posterior = pipe.vae.encode(pixels.permute(1, 0, 2, 3)[None]).latent_dist
    mean = torch.tensor(pipe.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(pipe.vae.config.latents_std).view(1, 16, 1, 1, 1)
    expected = ((posterior.mean - mean) / std).permute(0, 2, 1, 3, 4)
    ours = encoder.videos(pixels[None], torch.Generator().manual_seed(0))
    spread = (posterior.std / std).permute(0, 2, 1, 3, 4)
    assert ((ours - expected).abs() <= 6 * spread + 1e-5).all()        # a posterior sample around its mean
    row = [i for i, index in enumerate(batch.index.tolist()) if index == 0][0]
    text = pipe.encode_prompt("a square number 0", do_classifier_free_guidance=False, max_sequence_length=512)[0]
    torch.testing.assert_close(batch.cond.text[row], text[0])
    torch.testing.assert_close(encoder.decode(encoder.videos(pixels[None])).shape, torch.Size([1, 5, 3, 16, 16]))


def test_video_encode_refuses_bad_input_with_one_line(wan, tmp_path, capsys):
    pipe, folder, root = wan
    videos = write_videos(tmp_path / "videos", count=1, frames=4)
    with pytest.raises(ValueError, match="4k \\+ 1"):
        ClipSize(frames=6, height=16, width=16)
    with pytest.raises(ValueError, match="multiples of 16"):
        ClipSize(frames=5, height=20, width=16)
    with pytest.raises(ValueError, match="has 4 frames but --frames 5"):
        encode_folder(folder, videos, tmp_path / "out", clip=ClipSize(5, 16, 16))
    with pytest.raises(ValueError, match="video pipeline .*--videos"):
        encode_folder(folder, videos, tmp_path / "out2")
    assert main(["encode", "--pipeline", str(folder), "--videos", str(tmp_path / "none"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "is not a folder of captioned videos" in capsys.readouterr().err


def test_a_text_wan_export_loads_into_stock_wan_pipeline_and_reproduces_our_samples(wan, tmp_path):
    """`diffdistill sample EXPORT --prompt ...` and WanPipeline.from_pretrained(pipeline, transformer=<export>,
    scheduler=<export>) give the same clip for the same starting noise (Euler with CFG, decoded by the VAE)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    from diffdistill.inference.generate import generate
    from diffdistill.inference.noise import SampleNoise
    from diffdistill.inference.side_by_side import PromptConditioner
    from diffdistill.inference.spec import SamplingSpec

    _, folder, _ = wan
    model = build_model({"kind": "wan", "pretrained": str(folder), "num_frames": 2, "height": 2, "width": 2})
    torch.manual_seed(3)
    with torch.no_grad():                            # a "trained" transformer: other weights than the pipeline's
        for p in model.network.parameters():
            p.add_(0.02 * torch.randn_like(p))
    steps, scale, seed = 4, 4.0, 5
    spec = SamplingSpec("ode", tuple(float(t) for t in model.schedule.step_grid(steps)), scale)
    save_model(model, tmp_path / "export", {"sampling": spec.to_dict()})
    exported = load_model(tmp_path / "export").eval()

    conditioner = PromptConditioner(folder, torch.device("cpu"))
    text, uncond = conditioner.conds_many(["a cat"], exported.data_shape)
    latents, _, _ = generate(exported, spec, 1, seed, text=text, uncond=uncond, progress=False)
    ours = conditioner.decode(latents)                                            # [1, 5, 3, 16, 16]

    stock = WanPipeline.from_pretrained(folder, transformer=WanTransformer3DModel.from_pretrained(
        tmp_path / "export" / "transformer"), scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(
        tmp_path / "export" / "scheduler"))
    stock.set_progress_bar_config(disable=True)
    noise = SampleNoise(seed, exported.data_shape).initial([0]).permute(0, 2, 1, 3, 4)
    frames = stock(prompt="a cat", negative_prompt="", latents=noise, num_inference_steps=steps, guidance_scale=scale,
                   height=16, width=16, num_frames=5, output_type="pt").frames                 # [1, T, 3, H, W] in [0, 1]
    assert ours.shape == frames.shape
    torch.testing.assert_close(ours, frames * 2 - 1, rtol=0, atol=2e-4)

    png = tmp_path / "clip.png"
    assert main(["sample", str(tmp_path / "export"), "--prompt", "a cat", "--n", "1", "--seed", str(seed),
                 "--pipeline", str(folder), "--out", str(png)]) == 0
    report = json.loads(png.with_suffix(".json").read_text())
    assert report["nfe"] == 2 * steps and report["video"][0].endswith(".gif")
    assert iio.imread(png.with_suffix(".gif")).shape[0] == 5


def test_the_wan21_recipe_trains_on_encoded_clips_with_a_tiny_pipeline_swapped_in(wan, tmp_path):
    """recipes/video/wan21_t2v_1.3b_teacher.yaml as shipped, with only the folders and sizes pointed at the tiny
    pipeline: 2 steps train, checkpoint and export (the diffusers layout WanPipeline loads)."""
    _, folder, root = wan
    latents = root / "latents"
    if not (latents / "meta.json").is_file():
        encode_folder(folder, write_videos(root / "videos"), latents, clip=ClipSize(frames=5, height=16, width=16))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "video" / "wan21_t2v_1.3b_teacher.yaml"
    out = tmp_path / "run"
    assert main(["train", str(recipe), f"model.pretrained={folder}", f"data.path={latents}", "model.num_frames=2",
                 "model.height=2", "model.width=2", "model.dtype=float32", "trainer.mixed_precision=no",
                 "trainer.max_steps=2", "trainer.log_every=1", "trainer.checkpoint_every=2", "method.preview_steps=2",
                 f"output_dir={out}"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2] and all(np.isfinite(line["model/denoise"]) for line in lines)
    assert main(["export", str(out)]) == 0
    assert (out / "export" / "transformer" / "config.json").is_file()
    assert json.loads((out / "export" / "scheduler" / "scheduler_config.json").read_text())["shift"] == 3.0


@pytest.mark.parametrize("name", ["self_forcing", "asd"])
def test_the_wan21_causal_recipes_run_two_steps_on_a_tiny_wan(wan, tmp_path, name):
    """recipes/video/wan21_t2v_1.3b_{self_forcing,asd}.yaml as shipped (chunks of 3 latent frames, 4 warped steps,
    TTUR; ASD's ladder and discriminator), with the tiny pipeline and 21-frame clips (6 latent frames: 2 chunks)
    swapped in: a student and a critic step on prompts encoded by umT5, and a causal export that loads as a stock
    WanTransformer3DModel."""
    from diffusers import WanTransformer3DModel

    _, folder, _ = wan
    latents = encode_folder(folder, write_videos(tmp_path / "videos", count=2, frames=21), tmp_path / "latents",
                            clip=ClipSize(frames=21, height=16, width=16))
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "video" / f"wan21_t2v_1.3b_{name}.yaml"
    out = tmp_path / "run"
    assert main(["train", str(recipe), f"model.pretrained={folder}", f"data.path={latents}", "model.num_frames=6",
                 "model.height=2", "model.width=2", "model.dtype=float32", "trainer.mixed_precision=no",
                 "trainer.max_steps=2", "trainer.log_every=1", f"output_dir={out}"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert np.isfinite(lines[0]["student/dm"]) and np.isfinite(lines[1]["critic/denoise"])
    meta = json.loads((out / "export" / "diffdistill.json").read_text())
    assert meta["sampling"]["chunk_frames"] == 3 and meta["sampling"]["guidance"] == 1.0
    if name == "asd":
        assert np.isfinite(lines[0]["student/asd"]) and np.isfinite(lines[1]["critic/gan"])
        assert len(meta["sampling"]["times"]) == 1 and len(meta["sampling"]["first_chunk_times"]) == 4
    assert WanTransformer3DModel.from_pretrained(out / "export" / "transformer").config.num_layers == 2
