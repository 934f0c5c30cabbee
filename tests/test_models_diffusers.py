"""The diffusers adapters on tiny random models: loading, schedules, parameterisation, export, errors, LoRA."""

import ast
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("peft")

from diffusers import (DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel,  # noqa: E402
                       WanTransformer3DModel)

from diffdistill.config import ConfigError  # noqa: E402
from diffdistill.models import diffusers as adapters  # noqa: E402
from diffdistill.models.class_tokens import CLASS_TOKENS  # noqa: E402
from diffdistill.models.base import NULL_LABEL, Cond, LoraConfig, freeze, guided, role_copy  # noqa: E402
from diffdistill.models.registry import EXPORT_META, build_model, load_model, save_model  # noqa: E402
from tiny_diffusers import (save_model_folder, save_pipeline, sd_scheduler, tiny_sd15_unet_config,  # noqa: E402
                            tiny_sdxl_unet_config, tiny_unet, tiny_wan, tiny_wan_config, tiny_wan_pipeline,
                            tiny_sdxl_pipeline)

# Round trips compare to EXACT = (rtol 1e-5, atol 1e-6), not bit equality: diffusers' from_pretrained leaves CPU
# parameters in the safetensors mmap, unaligned (data_ptr % 64 == 24 seen), so oneDNN takes another code path and
# the last float32 bit can differ (4.8e-7 seen on Wan); cloning the parameters restores bit equality.
EXACT = dict(rtol=1e-5, atol=1e-6)
TIME_IDS = torch.tensor([[32.0, 32.0, 0.0, 0.0, 32.0, 32.0]])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Pipeline-like folders: SD1.5 (eps and v schedulers), a full tiny SDXL pipeline, a full tiny Wan pipeline."""
    root = tmp_path_factory.mktemp("pipelines")
    out = {}
    for pred in ("epsilon", "v_prediction"):
        out[f"sd15-{pred}"] = save_model_folder(root / f"sd15-{pred}", tiny_unet(tiny_sd15_unet_config()),
                                                sd_scheduler(pred), "unet")
    out["sdxl"] = save_pipeline(tiny_sdxl_pipeline(), root / "sdxl")
    out["wan"] = save_pipeline(tiny_wan_pipeline(shift=7.0), root / "wan")
    return out


def unet_inputs(name, batch=2):
    x = torch.randn(batch, 4, 16, 16)
    if name == "sdxl":
        return x, Cond(text=torch.randn(batch, 7, 64), pooled=torch.randn(batch, 32), time_ids=TIME_IDS.repeat(batch, 1))
    return x, Cond(text=torch.randn(batch, 7, 32))


def raw_unet_kwargs(cond):
    added = None if cond.pooled is None else {"text_embeds": cond.pooled, "time_ids": cond.time_ids}
    return dict(encoder_hidden_states=cond.text, added_cond_kwargs=added)


def test_module_imports_diffusers_lazily():
    """Only function bodies may import diffusers/peft/transformers, so the core works without the extra."""
    tree = ast.parse(Path(adapters.__file__).read_text())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = {a.name for n in top for a in n.names} | {n.module or "" for n in top if isinstance(n, ast.ImportFrom)}
    assert not {m for m in names if m.split(".")[0] in {"diffusers", "peft", "transformers"}}


@pytest.mark.parametrize("name, kind", [("sd15-epsilon", "eps"), ("sd15-v_prediction", "v"), ("sdxl", "eps")])
def test_unet_from_folder_reads_schedule_and_matches_raw_diffusers(folders, name, kind):
    folder = folders[name]
    model = build_model({"kind": "unet", "pretrained": str(folder)})
    assert model.kind == kind and model.data_shape == (4, *[model.unet.config.sample_size] * 2)
    sched = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    alpha, sigma = model.schedule.alpha_sigma(torch.arange(1000) / 999)
    torch.testing.assert_close(alpha**2, sched.alphas_cumprod.double(), rtol=1e-5, atol=0)
    torch.testing.assert_close(sigma**2, 1 - sched.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)

    x, cond = unet_inputs("sdxl" if name == "sdxl" else "sd15")
    taus = torch.tensor([999, 400])
    pred = model(x, taus.float() / 999, cond)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    with torch.no_grad():
        raw = unet(x, taus, **raw_unet_kwargs(cond)).sample                # the integer timesteps diffusers uses
    ab = sched.alphas_cumprod[taus].view(-1, 1, 1, 1)
    x0 = (x - (1 - ab).sqrt() * raw) / ab.sqrt() if kind == "eps" else ab.sqrt() * x - (1 - ab).sqrt() * raw
    torch.testing.assert_close(pred.native, raw, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pred.x0, x0, rtol=1e-4, atol=1e-4)


def test_wan_from_folder_reads_shift_and_matches_raw_diffusers(folders):
    model = build_model({"kind": "wan", "pretrained": str(folders["wan"]), "num_frames": 3, "height": 8, "width": 8})
    assert model.kind == "flow" and model.schedule.kind == "flow" and model.schedule.shift == 7.0
    assert model.data_shape == (3, 16, 8, 8)
    x, t, text = torch.randn(2, 3, 16, 8, 8), torch.tensor([0.9, 0.25]), torch.randn(2, 5, 32)
    pred = model(x, t, Cond(text=text))
    net = WanTransformer3DModel.from_pretrained(folders["wan"], subfolder="transformer")
    with torch.no_grad():     # diffusers' Wan: [B, C, T, H, W] and timestep = sigma * 1000
        raw = net(x.permute(0, 2, 1, 3, 4), t * 1000, encoder_hidden_states=text).sample.permute(0, 2, 1, 3, 4)
    torch.testing.assert_close(pred.native, raw, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pred.x0, x - t.view(-1, 1, 1, 1, 1) * raw, rtol=1e-5, atol=1e-5)   # x_t - t v

    per_frame = model(x, t[:, None].expand(2, 3), Cond(text=text))            # [B, T] times, all equal
    torch.testing.assert_close(per_frame.native, pred.native, rtol=1e-5, atol=1e-5)
    mixed = model(x, torch.tensor([[0.9, 0.5, 0.1], [0.25, 0.25, 0.25]]), Cond(text=text))
    assert not torch.allclose(mixed.native[0], pred.native[0], atol=1e-3)
    torch.testing.assert_close(mixed.native[1], pred.native[1], rtol=1e-5, atol=1e-5)


def test_unet_export_round_trip_loads_in_plain_diffusers(folders, tmp_path):
    model = build_model({"kind": "unet", "pretrained": str(folders["sd15-v_prediction"])})
    x, cond = unet_inputs("sd15")
    t = torch.tensor([0.8, 0.3])
    save_model(model, tmp_path, extra={"note": "test"})
    meta = json.loads((tmp_path / EXPORT_META).read_text())
    assert meta["model"]["prediction"] == "v" and meta["model"]["schedule"]["beta_schedule"] == "scaled_linear"
    assert not list(tmp_path.glob("**/*.bin"))                               # safetensors only
    again = load_model(tmp_path)
    assert again.kind == "v"
    torch.testing.assert_close(again(x, t, cond).native, model(x, t, cond).native, **EXACT)

    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    with torch.no_grad():
        raw = unet(x, model.schedule.model_time(t).float(), **raw_unet_kwargs(cond)).sample
    torch.testing.assert_close(raw, model(x, t, cond).native, **EXACT)
    ddim = DDIMScheduler.from_pretrained(tmp_path, subfolder="scheduler")
    assert ddim.config.prediction_type == "v_prediction" and not ddim.config.clip_sample
    torch.testing.assert_close(ddim.alphas_cumprod.double(), model.schedule.alpha_sigma(torch.arange(1000) / 999)[0] ** 2,
                               rtol=1e-5, atol=0)


def test_wan_export_round_trip_and_dtype(tmp_path):
    cfg = {"kind": "wan", "config": tiny_wan_config(), "schedule": {"kind": "flow", "shift": 3.0}, "num_frames": 3,
           "height": 8, "width": 8}
    model = build_model(cfg)
    x, t, cond = torch.randn(1, 3, 16, 8, 8), torch.tensor([0.6]), Cond(text=torch.randn(1, 4, 32))
    save_model(model, tmp_path)
    again = load_model(tmp_path)
    assert again.schedule.shift == 3.0 and again.data_shape == (3, 16, 8, 8)
    torch.testing.assert_close(again(x, t, cond).native, model(x, t, cond).native, **EXACT)
    assert FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path, subfolder="scheduler").config.shift == 3.0
    assert WanTransformer3DModel.from_pretrained(tmp_path / "transformer").config.text_dim == 32

    half = build_model({**cfg, "dtype": "bfloat16", "gradient_checkpointing": True})
    assert half.transformer.is_gradient_checkpointing
    assert half.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert half.transformer.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32   # kept fp32
    out = half(x, t, cond)
    assert out.native.dtype == torch.float32 and torch.isfinite(out.x0).all()


def test_class_tokens_condition_the_unet_and_survive_export(tmp_path):
    cfg = dict(tiny_sd15_unet_config(), in_channels=1, out_channels=1, sample_size=28)
    model = build_model({"kind": "unet", "config": cfg, "num_classes": 3, "class_tokens": 2})
    assert model.data_shape == (1, 28, 28)
    x, t = torch.randn(4, 1, 28, 28), torch.full((4,), 0.5)
    labels = torch.tensor([0, 1, 2, NULL_LABEL])
    out = model(x, t, Cond(labels=labels)).native
    assert not torch.allclose(model(x, t, Cond(labels=torch.tensor([1, 2, 0, 0]))).native, out, atol=1e-4)
    null = model(x, t, Cond(labels=torch.full((4,), NULL_LABEL))).native
    torch.testing.assert_close(null[3], out[3])
    torch.testing.assert_close(model(x, t, Cond()).native, null)            # no labels = unconditional
    c, u = out, model(x, t, model.null_cond(Cond(labels=labels))).native
    torch.testing.assert_close(guided(model, 3.0)(x, t, Cond(labels=labels)).native, u + 3.0 * (c - u),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"0\.\.2 or NULL_LABEL"):
        model(x, t, Cond(labels=torch.tensor([0, 1, 3, 0])))

    save_model(model, tmp_path)
    assert (tmp_path / CLASS_TOKENS).is_file()
    again = load_model(tmp_path)
    torch.testing.assert_close(again(x, t, Cond(labels=labels)).native, out, **EXACT)
    # `pretrained: <an export of ours>` alone is enough: num_classes/class_tokens come from its diffdistill.json
    from_recipe = build_model({"kind": "unet", "pretrained": str(tmp_path)})
    assert (from_recipe.cfg.num_classes, from_recipe.cfg.class_tokens) == (3, 2)
    torch.testing.assert_close(from_recipe(x, t, Cond(labels=labels)).native, out, **EXACT)
    (tmp_path / EXPORT_META).unlink()           # a foreign folder holding class tokens still gets the clear error
    with pytest.raises(ConfigError, match="num_classes=0"):
        build_model({"kind": "unet", "pretrained": str(tmp_path)})


def test_bad_inputs_name_expected_and_got(folders, tmp_path):
    sdxl = build_model({"kind": "unet", "config": tiny_sdxl_unet_config()})
    x, cond = unet_inputs("sdxl")
    t = torch.full((2,), 0.5)
    with pytest.raises(ValueError, match=r"x_t: expected \[B, C, H, W\] = \[\*, 4, \*, \*\], got \[2, 3, 16, 16\]"):
        sdxl(torch.randn(2, 3, 16, 16), t, cond)
    with pytest.raises(ValueError, match=r"needs cond.pooled .* missing: \['pooled', 'time_ids'\]"):
        sdxl(x, t, Cond(text=cond.text))
    with pytest.raises(ValueError, match=r"cond.text: expected .* = \[2, \*, 64\], got \[2, 7, 48\]"):
        sdxl(x, t, Cond(text=torch.randn(2, 7, 48), pooled=cond.pooled, time_ids=cond.time_ids))
    with pytest.raises(ValueError, match=r"give 88 added features, expected projection_class_embeddings_input_dim=80"):
        sdxl(x, t, Cond(text=cond.text, pooled=cond.pooled, time_ids=torch.zeros(2, 7)))
    with pytest.raises(ValueError, match="empty-prompt embedding"):
        guided(sdxl, 5.0)(x, t, cond)
    sd15 = build_model({"kind": "unet", "pretrained": str(folders["sd15-epsilon"])})
    with pytest.raises(ValueError, match=r"cond.text: expected .*, got nothing"):
        sd15(x, t)
    with pytest.raises(ValueError, match="no class tokens"):
        sd15(x, t, Cond(labels=torch.zeros(2, dtype=torch.long)))

    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match=r"no-such-model.*does not exist; expected a diffusers pipeline folder"):
        build_model({"kind": "unet", "pretrained": str(missing)})
    with pytest.raises(FileNotFoundError, match=r"holds neither config.json nor unet/config.json"):
        build_model({"kind": "unet", "pretrained": str(tmp_path)})
    for spec in ({}, {"pretrained": str(folders["sdxl"]), "config": tiny_sdxl_unet_config()}):
        with pytest.raises(ConfigError, match="exactly one of `pretrained`.*got (neither|both)"):
            build_model({"kind": "unet", **spec})

    wan = build_model({"kind": "wan", "config": tiny_wan_config()})
    with pytest.raises(ValueError, match=r"x_t: expected \[B, T, C, H, W\] = \[\*, \*, 16, \*, \*\], got \[1, 16, 3, 8, 8\]"):
        wan(torch.randn(1, 16, 3, 8, 8), torch.tensor([0.5]), Cond(text=torch.randn(1, 4, 32)))
    with pytest.raises(ValueError, match="multiples of the patch size"):
        wan(torch.randn(1, 3, 16, 7, 8), torch.tensor([0.5]), Cond(text=torch.randn(1, 4, 32)))
    with pytest.raises(ValueError, match=r"cond.text: expected .* = \[1, \*, 32\], got \[1, 4, 64\]"):
        wan(torch.randn(1, 3, 16, 8, 8), torch.tensor([0.5]), Cond(text=torch.randn(1, 4, 64)))
    with pytest.raises(ValueError, match="negative-prompt embedding"):
        wan.null_cond(Cond(text=torch.randn(1, 4, 32)))


def test_bare_unet_folder_uses_sibling_scheduler_and_exports_pipeline_layout(folders, tmp_path):
    model = build_model({"kind": "unet", "pretrained": str(folders["sd15-v_prediction"] / "unet"), "subfolder": None})
    assert model.kind == "v"        # prediction_type read from ../scheduler
    save_model(model, tmp_path)
    assert (tmp_path / "unet" / "config.json").is_file() and load_model(tmp_path).kind == "v"


def test_lora_role_copy_of_sdxl_unet_trains_adapters_only_and_exports_merged(tmp_path):
    teacher = freeze(build_model({"kind": "unet", "config": tiny_sdxl_unet_config()}))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = role_copy(teacher, LoraConfig(rank=4))
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    x, cond = unet_inputs("sdxl")
    t = torch.tensor([0.7, 0.2])
    torch.testing.assert_close(student(x, t, cond).native, teacher(x, t, cond).native)      # LoRA B starts at zero

    opt = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    student(x, t, cond).native.pow(2).mean().backward()
    opt.step()
    after = teacher.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    with torch.no_grad():
        moved = student(x, t, cond).native
    assert not torch.allclose(moved, teacher(x, t, cond).native, atol=1e-5)

    save_model(student, tmp_path)            # LoRA merged on export: plain diffusers loads it
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    assert not any("lora" in k for k in unet.state_dict())
    torch.testing.assert_close(load_model(tmp_path)(x, t, cond).native, moved, rtol=1e-4, atol=1e-5)


def test_wan_reads_unipc_flow_scheduler_of_diffusers_wan_folders(tmp_path):
    """diffusers' Wan 2.1 folders ship UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3) with beta keys."""
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction")
    folder = save_model_folder(tmp_path, tiny_wan(), sched, "transformer")
    model = build_model({"kind": "wan", "pretrained": str(folder / "transformer")})     # bare folder, sibling scheduler
    assert model.schedule.kind == "flow" and model.schedule.shift == 3.0


def test_unrepresentable_schedule_is_copied_verbatim_on_export(tmp_path):
    betas = torch.linspace(1e-4, 0.03, 1000).tolist()                   # trained_betas: no ScheduleConfig says this
    folder = save_model_folder(tmp_path / "src", tiny_unet(tiny_sd15_unet_config()), DDPMScheduler(trained_betas=betas),
                               "unet")
    model = build_model({"kind": "unet", "pretrained": str(folder)})
    assert model.export_config()["schedule"] is None
    save_model(model, tmp_path / "out")
    again = load_model(tmp_path / "out")
    taus = torch.arange(0, 1000, 111)
    t = taus.double() / 999
    torch.testing.assert_close(again.schedule.alpha_sigma(t)[0], model.schedule.alpha_sigma(t)[0], rtol=0, atol=0)
    expected = torch.cumprod(1 - torch.tensor(betas, dtype=torch.float64), 0)[taus]
    torch.testing.assert_close(model.schedule.alpha_sigma(t)[0] ** 2, expected, rtol=1e-12, atol=0)


def test_attention_and_memory_switches_reach_the_network(tmp_path):
    """attention / gradient_checkpointing / compile in a model section act through diffusers' and torch's own
    switches; xformers without the package is a clear error; an export carries none of them."""
    import importlib.util

    from diffdistill.config import ConfigError

    spec = {"kind": "unet", "config": tiny_sd15_unet_config()}
    plain = build_model(spec)
    assert {type(p).__name__ for p in plain.unet.attn_processors.values()} == {"AttnProcessor2_0"}   # SDPA
    assert not plain.unet.is_gradient_checkpointing and plain.unet._compiled_call_impl is None
    switched = build_model({**spec, "gradient_checkpointing": True, "compile": True})
    assert switched.unet.is_gradient_checkpointing and switched.unet._compiled_call_impl is not None
    assert list(switched.state_dict()) == list(plain.state_dict())          # compile in place: same names
    if importlib.util.find_spec("xformers") is None:
        with pytest.raises(ConfigError, match="xformers package is not installed"):
            build_model({**spec, "attention": "xformers"})
    with pytest.raises(ConfigError, match="'flash' is not one of 'sdpa', 'xformers'"):
        build_model({**spec, "attention": "flash"})
    exported = switched.export_config()
    assert (exported["attention"], exported["compile"], exported["gradient_checkpointing"]) == ("sdpa", False, False)


def test_a_class_conditioned_wan_takes_labels_through_learned_tokens_and_exports_them(tmp_path):
    """B2's teacher: the unchanged WanTransformer3DModel conditioned on sprite classes through tokens in its text
    stream (labels [B] or one per sprite [B, S]); null class for CFG; the export reloads to the same outputs."""
    model = build_model({"kind": "wan", "config": tiny_wan_config(), "num_classes": 10, "class_tokens": 2,
                         "num_frames": 4, "height": 8, "width": 8})
    x, t = torch.randn(3, 4, 16, 8, 8), torch.tensor([0.2, 0.5, 0.9])
    with torch.no_grad():
        out = model(x, t, Cond(labels=torch.tensor([0, 4, 9]))).native
        other = model(x, t, Cond(labels=torch.tensor([1, 4, 9]))).native
        two = model(x, t, Cond(labels=torch.tensor([[0, 3], [4, 4], [9, 1]]))).native
        null = model(x, t, model.null_cond(Cond(labels=torch.tensor([0, 4, 9])))).native
    assert out.shape == x.shape and (out[0] - other[0]).abs().max() > 0 and torch.equal(out[1:], other[1:])
    assert (two - out).abs().max() > 0 and (null - out).abs().max() > 0
    with pytest.raises(ValueError, match="0..9 or NULL_LABEL"):
        model(x, t, Cond(labels=torch.tensor([0, 4, 10])))
    save_model(model, tmp_path)
    assert (tmp_path / CLASS_TOKENS).is_file()
    with torch.no_grad():
        torch.testing.assert_close(load_model(tmp_path)(x, t, Cond(labels=torch.tensor([0, 4, 9]))).native, out)
    text_only = build_model({"kind": "wan", "config": tiny_wan_config()})
    with pytest.raises(ValueError, match="no class tokens.*conditioned on text"):
        text_only(x, t, Cond(labels=torch.tensor([0, 4, 9])))
    with pytest.raises(ConfigError, match=r"\[4, 9, 8\] are not multiples of the transformer's patch_size \[1, 2, 2\]"):
        build_model({"kind": "wan", "config": tiny_wan_config(), "num_frames": 4, "height": 9, "width": 8})


def test_sample_on_a_video_model_writes_frame_strips_an_animated_gif_and_an_mp4(tmp_path, capsys):
    """`diffdistill sample` on a class-conditioned Wan export: a strip of frames per clip, a GIF whose frame t shows
    every clip's frame t, an MP4 (imageio-ffmpeg is in the dev extras) and the report naming them."""
    from diffdistill.cli import main

    imageio = pytest.importorskip("imageio.v3")
    model = build_model({"kind": "wan", "config": {**tiny_wan_config(), "in_channels": 1, "out_channels": 1},
                         "num_classes": 10, "num_frames": 3, "height": 8, "width": 8})
    save_model(model, tmp_path / "export")
    out = tmp_path / "clips.png"
    assert main(["sample", str(tmp_path / "export"), "--n", "4", "--steps", "2", "--out", str(out)]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["video"][0].endswith("clips.gif") and report["video"][1].endswith("clips.mp4")
    gif = imageio.imread(out.with_suffix(".gif"))
    assert gif.shape[0] == 3                                         # one GIF frame per clip frame
    assert (gif[0].astype(int) - gif[2].astype(int)).__abs__().max() > 0
    assert out.with_suffix(".mp4").stat().st_size > 0
    strip = imageio.imread(out)
    assert strip.shape[0] == 4 * (8 + 2)                             # one row per clip (4 classes, one clip each)
