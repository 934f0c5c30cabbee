"""recipes/phased_dmd/wan22_t2v_a14b.yaml on a tiny two-expert Wan (Wan2.2-A14B's layout: transformer +
transformer_2, switched at boundary_ratio) built from configs: two trainer steps, one in each phase, and an export
that a stock diffusers WanPipeline loads with both transformers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("diffusers")
pytest.importorskip("imageio.v3")

from test_wan_video import write_videos  # noqa: E402
from tiny_diffusers import save_pipeline, tiny_wan, tiny_wan_pipeline  # noqa: E402

from diffdistill.cli import main  # noqa: E402
from diffdistill.data.encode import ClipSize, encode_folder  # noqa: E402
from diffdistill.models.experts import Experts  # noqa: E402
from diffdistill.models.registry import load_model  # noqa: E402

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "phased_dmd" / "wan22_t2v_a14b.yaml"


@pytest.mark.slow
def test_the_wan22_recipe_trains_both_phases_and_exports_a_wan22_pipeline(tmp_path):
    from diffusers import UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    from diffdistill.inference.generate import generate
    from diffdistill.inference.noise import SampleNoise
    from diffdistill.inference.side_by_side import PromptConditioner
    from diffdistill.inference.spec import SamplingSpec

    pipe = tiny_wan_pipeline(shift=5.0)
    folder = save_pipeline(pipe, tmp_path / "wan22")
    tiny_wan(seed=1).save_pretrained(folder / "transformer_2", safe_serialization=True)   # the low-noise expert
    latents = encode_folder(folder, write_videos(tmp_path / "videos", count=2, frames=21), tmp_path / "latents",
                            clip=ClipSize(frames=21, height=16, width=16))
    recipe = yaml.safe_load(RECIPE.read_text())
    for expert in recipe["model"]["experts"]:
        expert.update(pretrained=str(folder), num_frames=6, height=2, width=2, dtype="float32")
    recipe["method"]["phase_steps"] = 1                         # step 0 in phase 1, step 1 in phase 2
    recipe["data"]["path"] = str(latents)
    recipe["trainer"].update(max_steps=2, mixed_precision="no", log_every=1)
    recipe["output_dir"] = str(tmp_path / "run")
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["train", str(tmp_path / "recipe.yaml")]) == 0

    out = tmp_path / "run"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["student/phase"] == 0.0 and np.isfinite(lines[0]["student/dm"])
    assert np.isfinite(lines[1]["critic/denoise"])
    export = out / "export"
    index = json.loads((export / "model_index.json").read_text())
    assert index["boundary_ratio"] == 0.875
    meta = json.loads((export / "diffdistill.json").read_text())
    assert meta["sampling"]["sampler"] == "ode" and meta["sampling"]["fixed"] and meta["sampling"]["steps"] == 4

    ours = load_model(export)
    assert isinstance(ours, Experts) and ours.boundaries == [0.875]
    high = WanTransformer3DModel.from_pretrained(export, subfolder="transformer")
    low = WanTransformer3DModel.from_pretrained(export, subfolder="transformer_2")
    for mine, theirs in zip(ours.experts, (high, low)):        # LoRA merged: plain diffusers weights
        for (name, a), b in zip(mine.transformer.state_dict().items(), theirs.state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
    # the stock pipeline with the export's scheduler (UniPC, order 1: Euler on the flow grid 999/937/833/625) gives
    # our 4-step sample from the same noise and prompt, up to the grid's rounding (its first step is fed timestep
    # 999, ours 1000; its sigmas differ from the recipe's times by < 1e-3)
    scheduler = UniPCMultistepScheduler.from_pretrained(export, subfolder="scheduler")
    stock = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, scheduler=scheduler,
                        transformer=high, transformer_2=low, boundary_ratio=index["boundary_ratio"])
    stock.set_progress_bar_config(disable=True)
    spec = SamplingSpec.from_dict(meta["sampling"], ours.schedule)
    conditioner = PromptConditioner(folder, torch.device("cpu"))
    text, uncond = conditioner.conds_many(["a square"], ours.data_shape)
    mine, _, _ = generate(ours.eval(), spec, 1, 5, text=text, uncond=uncond, progress=False)   # [1, T, C, H, W]
    noise = SampleNoise(5, ours.data_shape).initial([0]).permute(0, 2, 1, 3, 4)
    theirs = stock(prompt="a square", negative_prompt="", latents=noise, num_frames=21, height=16, width=16,
                   num_inference_steps=4, guidance_scale=1.0, output_type="latent").frames          # [1, C, T, H, W]
    grid = UniPCMultistepScheduler.from_pretrained(export, subfolder="scheduler")
    grid.set_timesteps(4)
    assert grid.sigmas[:4].tolist() == pytest.approx(spec.times, abs=1e-3)
    gap = (theirs.permute(0, 2, 1, 3, 4) - mine).abs().max() / mine.abs().max()
    assert gap < 0.02, f"stock WanPipeline differs from our sampler by {gap:.3g} of the sample's range"
