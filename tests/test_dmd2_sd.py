"""DMD2 on SD1.5/SDXL-architecture models: data preparation, the shipped recipes, and exports diffusers can use.

Everything runs on tiny random models built from configs (tests/tiny_diffusers.py): the recipes are the real ones
with only the model and data paths (and the step count) replaced.
"""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffdistill.cli import main  # noqa: E402
from diffdistill.data import build_stream  # noqa: E402
from diffdistill.data.encode import captioned_images, encode_folder  # noqa: E402
from diffdistill.models.base import Cond, LoraConfig, role_copy  # noqa: E402
from diffdistill.models.registry import build_model, load_model, read_export_meta, save_model  # noqa: E402
from diffdistill.inference.sampling import few_step_sample  # noqa: E402
from tiny_diffusers import export_text_model, save_pipeline, tiny_sd15_pipeline, tiny_sdxl_pipeline  # noqa: E402

CAPTIONS = ["a red square", "a blue circle", "two green lines", "a yellow star", "a black cat", "an empty field"]


def write_images(folder, sizes=((48, 40), (40, 56), (64, 64), (50, 70), (33, 45), (80, 36))):
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, ((w, h), caption) in enumerate(zip(sizes, CAPTIONS)):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
    return folder


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    """(pipeline, its folder, a latents folder encoded with it at 64 px)."""
    root = tmp_path_factory.mktemp("sdxl")
    pipe = tiny_sdxl_pipeline()
    folder = save_pipeline(pipe, root / "pipe")
    latents = encode_folder(folder, write_images(root / "images"), root / "latents", shard_size=4, batch_size=2)
    return pipe, folder, latents


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd15")
    folder = save_pipeline(tiny_sd15_pipeline(), root / "pipe")
    return folder, encode_folder(folder, write_images(root / "images"), root / "latents", shard_size=4)


def test_encode_writes_latents_prompts_and_sdxl_size_conditioning(sdxl):
    pipe, _, latents = sdxl
    meta = json.loads((latents / "meta.json").read_text())
    assert meta["count"] == 6 and meta["resolution"] == 64 and len(meta["shards"]) == 2     # 4 + 2 rows
    from safetensors.torch import load_file

    first = load_file(str(latents / meta["shards"][0]))
    assert first["latents"].shape == (4, 4, 32, 32)
    assert first["text"].shape[1:] == (77, 64) and first["pooled"].shape[1:] == (32,)
    # img1 is 40 wide x 56 high: short side 40 -> 64, long side 56 -> 90 (rounded), crop top (90 - 64) // 2 = 13
    torch.testing.assert_close(first["time_ids"][1], torch.tensor([56.0, 40.0, 13.0, 0.0, 64.0, 64.0]))
    # the prompt embedding is the pipeline's own (row 0 = first caption in sorted file order)
    text, _, pooled, _ = pipe.encode_prompt([CAPTIONS[0]], device="cpu", do_classifier_free_guidance=False)
    torch.testing.assert_close(first["text"][0], text[0])
    torch.testing.assert_close(first["pooled"][0], pooled[0])
    # SDXL sets force_zeros_for_empty_prompt: the unconditional condition is zeros (as DMD2 and the pipeline use)
    null = load_file(str(latents / "null.safetensors"))
    assert null["text"].shape == (1, 77, 64) and not null["text"].any() and not null["pooled"].any()


def test_sd15_null_condition_is_the_encoded_empty_prompt(sd15):
    folder, latents = sd15
    from safetensors.torch import load_file

    null = load_file(str(latents / "null.safetensors"))
    pipe = tiny_sd15_pipeline()
    empty, _ = pipe.encode_prompt([""], "cpu", 1, False)
    torch.testing.assert_close(null["text"], empty)
    assert "pooled" not in null


def test_latents_stream_is_deterministic_resumable_and_carries_the_uncond(sdxl):
    _, _, latents = sdxl
    spec = {"name": "latents", "path": str(latents)}
    a = build_stream(spec, batch_size=2, seed=3, rank=0)
    batches = [a.next() for _ in range(4)]                         # 3 batches per epoch: crosses an epoch
    b = build_stream(spec, batch_size=2, seed=3, rank=0)
    b.position = 2
    assert b.next().fingerprint() == batches[2].fingerprint()
    assert sorted(torch.cat([x.index for x in batches[:3]]).tolist()) == list(range(6))  # one epoch = every sample
    batch = batches[0]
    assert batch.x0.shape == (2, 4, 32, 32) and batch.cond.text.shape == (2, 77, 64)
    assert batch.uncond.text.shape == (2, 77, 64) and torch.equal(batch.uncond.time_ids, batch.cond.time_ids)
    other_rank = build_stream(spec, batch_size=2, seed=3, rank=1, world=2).next()
    assert set(other_rank.index.tolist()).isdisjoint(build_stream(spec, 2, 3, 0, 2).next().index.tolist())


def test_missing_latents_folder_and_captions_say_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="diffdistill encode"):
        build_stream({"name": "latents", "path": str(tmp_path / "nope")}, 2, 0, 0)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"\.txt beside each image"):
        captioned_images(tmp_path / "imgs")


def run_recipe(recipe, pipeline, latents, out, *extra):
    code = main(["train", recipe, f"model.pretrained={pipeline}", f"data.path={latents}", "trainer.max_steps=2",
                 "trainer.batch_size=2", "trainer.sample_every=0", "trainer.preview_count=2",
                 "trainer.log_with=[]", f"output_dir={out}", *extra])
    assert code == 0
    return out / "export"


@pytest.mark.slow        # 50-80 s each on 2 cores: the default tier stays under 5 minutes; CI runs them in the slow tier
@pytest.mark.parametrize("recipe", ["sdxl_4step", "sdxl_4step_lora"])
def test_sdxl_recipes_train_two_steps_on_a_tiny_sdxl_and_export_for_diffusers(sdxl, tmp_path, recipe):
    pipe, folder, latents = sdxl
    export = run_recipe(f"recipes/dmd2/{recipe}.yaml", folder, latents, tmp_path / recipe)
    meta = read_export_meta(export)
    assert meta["trained_steps"] == 2 and meta["sampling"]["timesteps"] == [999, 749, 499, 249]
    scheduler = json.loads((export / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "LCMScheduler" and scheduler["prediction_type"] == "epsilon"
    log = [json.loads(line) for line in (tmp_path / recipe / "metrics.jsonl").read_text().splitlines()]
    assert any("student/gan" in row for row in log) and any("critic/gan" in row for row in log)
    assert (export / "pytorch_lora_weights.safetensors").is_file() == recipe.endswith("lora")
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(export, subfolder="unet")
    teacher = pipe.unet
    changed = [n for n, p in unet.named_parameters() if not torch.equal(p, teacher.get_parameter(n))]
    assert changed, "the exported student equals the teacher: the student never trained"

    # `diffdistill export` takes no training step, so no training batch exists; it must still export (the preview
    # takes its prompts from data batch 0) and write the same weights as the finished run did
    import shutil

    shutil.rmtree(export)
    assert main(["export", str(tmp_path / recipe)]) == 0
    again = UNet2DConditionModel.from_pretrained(export, subfolder="unet")
    assert all(torch.equal(p, again.get_parameter(n)) for n, p in unet.named_parameters())
    assert (tmp_path / recipe / "samples" / "final.png").is_file()

    # prompted sampling from the CLI: the pipeline's own encoders (found through the export's run config), decoded
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square\n\na blue circle\n")
    png = tmp_path / f"{recipe}.png"
    assert main(["sample", str(tmp_path / recipe), "--prompts-file", str(prompts), "--n", "3", "--out", str(png)]) == 0
    report = json.loads(png.with_suffix(".json").read_text())
    assert report["prompts"] == ["a red square", "a blue circle"] and report["steps"] == 4
    from PIL import Image

    with Image.open(png) as image:            # 3 decoded 64 px RGB images in a 2 x 2 grid with 1 px borders
        assert image.mode == "RGB" and image.size == (2 * 66, 2 * 66)


def test_sampling_a_text_model_needs_prompts_and_prompts_need_a_text_model(sdxl, tmp_path, capsys):
    _, folder, _ = sdxl
    export = export_text_model(folder, tmp_path / "export")
    assert main(["sample", str(export), "--n", "1"]) == 2
    assert "--prompt" in capsys.readouterr().err
    # no run config records the pipeline: --pipeline is then required, and works
    assert main(["sample", str(export), "--prompt", "a cat", "--n", "1"]) == 2
    assert "--pipeline" in capsys.readouterr().err
    assert main(["sample", str(export), "--prompt", "a cat", "--n", "1", "--pipeline", str(folder),
                 "--out", str(tmp_path / "cat.png")]) == 0
    assert (tmp_path / "cat.png").is_file()
    toy = tmp_path / "toy"
    assert main(["train", "recipes/toy/teacher_gmm2d.yaml", "trainer.max_steps=2", f"output_dir={toy}"]) == 0
    assert main(["sample", str(toy), "--prompt", "a cat"]) == 2
    assert "not a text-conditioned model" in capsys.readouterr().err


def test_sd15_recipe_trains_two_steps_on_a_tiny_sd15(sd15, tmp_path):
    folder, latents = sd15
    export = run_recipe("recipes/dmd2/sd15_1step.yaml", folder, latents, tmp_path / "sd15",
                        "trainer.mixed_precision=no")
    assert read_export_meta(export)["sampling"]["timesteps"] == [999]


def sdxl_cond(pipe, prompt="a red square", size=64):
    text, _, pooled, _ = pipe.encode_prompt([prompt], device="cpu", do_classifier_free_guidance=False)
    return text, pooled, Cond(text=text, pooled=pooled,
                               time_ids=torch.tensor([[size, size, 0, 0, size, size]], dtype=torch.float32))


def test_exported_student_reproduces_our_samples_in_the_sdxl_pipeline_with_lcm(sdxl, tmp_path):
    """The export + its scheduler + sampling.timesteps, used the documented diffusers way, give our 4-step samples."""
    from diffusers import LCMScheduler, StableDiffusionXLPipeline

    pipe, folder, _ = sdxl
    teacher = build_model({"kind": "unet", "pretrained": str(folder)})
    student = role_copy(teacher)
    with torch.no_grad():                       # make the student differ from the teacher
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    times = [1.0, 749 / 999, 499 / 999, 249 / 999]
    sampling = {"sampler": "few_step", "times": times, "timesteps": [999, 749, 499, 249]}
    export = save_model(student, tmp_path / "export", {"sampling": sampling})
    text, pooled, cond = sdxl_cond(pipe)

    gen = torch.Generator().manual_seed(7)
    noise = torch.randn(1, 4, 32, 32, generator=gen)
    with torch.no_grad():
        ours = few_step_sample(load_model(export), noise, times, cond, generator=gen)

    from diffusers import UNet2DConditionModel

    student_pipe = StableDiffusionXLPipeline(**{**pipe.components,
                                                "unet": UNet2DConditionModel.from_pretrained(export, subfolder="unet"),
                                                "scheduler": LCMScheduler.from_pretrained(export, subfolder="scheduler")})
    student_pipe.set_progress_bar_config(disable=True)
    ref = student_pipe(prompt_embeds=text, pooled_prompt_embeds=pooled, timesteps=read_export_meta(export)[
        "sampling"]["timesteps"], guidance_scale=0.0, generator=torch.Generator().manual_seed(7),
        output_type="latent").images
    assert ref.abs().max() > 0.5
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_lora_student_export_loads_with_load_lora_weights(sdxl, tmp_path):
    """pytorch_lora_weights.safetensors on the base pipeline = our LoRA student (rank 4, alpha 2: scale 0.5)."""
    pipe, folder, _ = sdxl
    teacher = build_model({"kind": "unet", "pretrained": str(folder)})
    student = role_copy(teacher, LoraConfig(rank=4, alpha=2.0))
    with torch.no_grad():                       # lora_B starts at zero: give the adapters an effect to reproduce
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn_like(p))
    export = save_model(student, tmp_path / "export", {"sampling": {"sampler": "few_step"}})
    _, _, cond = sdxl_cond(pipe)
    x, t = torch.randn(1, 4, 32, 32), torch.tensor([0.6])
    base = tiny_sdxl_pipeline()
    with torch.no_grad():
        ours = student(x, t, cond).native
        before = teacher(x, t, cond).native
        base.load_lora_weights(export)
        timestep = teacher.schedule.model_time(t).float()
        theirs = base.unet(x, timestep, encoder_hidden_states=cond.text,
                           added_cond_kwargs={"text_embeds": cond.pooled, "time_ids": cond.time_ids}).sample
        merged = load_model(export)(x, t, cond).native        # the merged UNet in unet/ is the same student
    assert (ours - before).abs().max() > 1e-2                 # the adapters matter
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(merged, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_b4_step_benchmark_measures_each_row_on_a_tiny_sdxl_unet(tmp_path):
    """The GPU benchmark's code path (recipes, trainer step, timing, JSON) on a tiny SDXL-shaped UNet on the CPU."""
    import json
    import subprocess
    import sys

    from tiny_diffusers import tiny_sdxl_unet_config

    config = tmp_path / "unet.json"
    config.write_text(json.dumps(tiny_sdxl_unet_config()))
    subprocess.run([sys.executable, "evaluation/gpu/dmd2_step_memory.py", "--unet-config", str(config), "--device",
                    "cpu", "--weights-dtype", "float32", "--mixed-precision", "no", "--checkpointing", "off",
                    "--batch", "1", "--cycles", "1", "--out", str(tmp_path)], check=True, capture_output=True)
    result = json.loads((tmp_path / "gpu-dmd2-sdxl-step.json").read_text())
    full, lora = result["rows"]
    assert [full["student"], lora["student"]] == ["full", "lora"] and {full["status"], lora["status"]} == {"ok"}
    assert full["trainable_student_parameters"] == result["unet_parameters"]      # the whole UNet trains
    # adapters only (rank 64 on every listed module: on this tiny UNet that is more than the UNet itself has)
    assert lora["trainable_student_parameters"] not in (0, result["unet_parameters"])
    for row in (full, lora):    # the student step also runs a critic update (two time-scale rule), so it costs more
        assert row["student_step_seconds"] > row["critic_step_seconds"] > 0
