"""CLIP score on a tiny CLIP built offline: the score is the cosine of the model's own projected embeddings times
the scale, pairs stay paired across batches, the prefix and truncation reach the text tower, and the scale/clamp
conventions are the documented ones."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

from tiny_diffusers import tiny_clip_model, tiny_clip_tokenizer

from diffdistill.metrics.clip_score import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, CLIPScoreConfig, CLIPScorer,
                                            combine, load_clip, projected_embeddings)

COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0), "yellow": (1.0, 1.0, 0.0)}


def colour_images(names, h=40, w=48):
    return torch.tensor([COLOURS[n] for n in names]).view(-1, 3, 1, 1).expand(-1, 3, h, w).contiguous()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny CLIP (32 x 32 images, 16-d projections) briefly trained to pair colour images with colour words, saved
    in the save_pretrained layout."""
    tok = tiny_clip_tokenizer()
    model = tiny_clip_model(len(tok), seed=0)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    pixels = (colour_images(COLOURS, 32, 32) - mean) / std
    text = tok(list(COLOURS), padding="max_length", max_length=77, return_tensors="pt")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(30):
        loss = model(input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels,
                     return_loss=True).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("tiny_clip")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def loaded(clip_dir):
    return load_clip(clip_dir)


def scorer(loaded, **kwargs) -> CLIPScorer:
    model, tok = loaded
    return CLIPScorer(CLIPScoreConfig(**{"scale": 100.0, "clamp": "none", **kwargs}), model=model, tokenizer=tok)


def test_score_is_scale_times_cosine_of_the_models_projected_embeddings(loaded):
    s = scorer(loaded, batch_size=3)
    model = s.model
    prompts = ["red", "green", "blue", "yellow", "a red thing"]
    images = colour_images(["red", "green", "blue", "yellow", "red"])
    result = s.score(images, prompts, value_range="0..1")
    with torch.no_grad():         # the embeddings computed by hand from the towers and projections
        img = model.visual_projection(model.vision_model(pixel_values=s.preprocess(images, "0..1")).pooler_output)
        enc = s.tokenize(prompts)
        txt = model.text_projection(model.text_model(**enc).pooler_output)
    expect = 100 * F.cosine_similarity(img, txt, dim=-1).double()
    torch.testing.assert_close(result.per_sample, expect, rtol=0, atol=1e-4)
    assert result.n == 5 and result.score == pytest.approx(float(expect.mean()), abs=1e-4)


def test_matched_pairs_beat_shuffled_ones_and_pairs_survive_batching(loaded):
    s = scorer(loaded, batch_size=3)
    names = ["red", "green", "blue", "yellow", "green"]
    images = colour_images(names)
    matched = s.score(images, names, value_range="0..1")
    shuffled_names = names[1:] + names[:1]
    shuffled = s.score(images, shuffled_names, value_range="0..1")
    assert matched.score > shuffled.score + 20
    # each pair is scored on its own: the per-pair values are entries of the full similarity matrix
    sim = 100 * s.image_embeddings(images, "0..1") @ s.text_embeddings(names).T
    torch.testing.assert_close(matched.per_sample, sim.diagonal().double(), rtol=0, atol=1e-4)
    torch.testing.assert_close(shuffled.per_sample, sim[range(5), [1, 2, 3, 4, 0]].double(), rtol=0, atol=1e-4)


def test_prefix_reaches_the_text_tower_and_long_prompts_are_truncated(loaded):
    plain, prefixed = scorer(loaded), scorer(loaded, prompt_prefix="A photo depicts ")
    a, b = plain.text_embeddings(["red"]), prefixed.text_embeddings(["red"])
    assert not torch.allclose(a, b, atol=1e-3)
    torch.testing.assert_close(b, plain.text_embeddings(["A photo depicts red"]), rtol=0, atol=0)
    long = "red " * 60                                            # 240 characters -> 240 tokens at character level
    enc = plain.tokenize([long, long + "and then a different ending"])
    assert enc["input_ids"].shape == (2, 77) and enc["input_ids"][0, -1] == 1          # EOS kept at the end
    emb = plain.text_embeddings([long, long + "and then a different ending"])
    torch.testing.assert_close(emb[0], emb[1], rtol=0, atol=0)    # past token 77 nothing is seen


def test_preprocess_resizes_the_short_side_crops_the_centre_and_normalises(loaded):
    s = scorer(loaded)
    mean, std = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # at the model size there is no resize (tolerance: the 0..1 -> 0..255 -> 0..1 round trip of the range check)
    torch.testing.assert_close(s.preprocess(x, "0..1"), (x - mean) / std, rtol=0, atol=1e-6)
    wide = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    half = F.interpolate(wide, size=(32, 48), mode="bicubic", antialias=True, align_corners=False)
    expect = (half[..., :, 8:40].clamp(0, 1) - mean) / std
    torch.testing.assert_close(s.preprocess(wide, "0..1"), expect, rtol=0, atol=1e-6)
    grey_u8 = (x[:, :1] * 255).to(torch.uint8)                   # uint8 grey works like its RGB float version
    torch.testing.assert_close(s.preprocess(grey_u8), s.preprocess(grey_u8.expand(-1, 3, -1, -1).float() / 255, "0..1"))


def test_scale_and_clamp_conventions():
    cos = torch.tensor([0.3, -0.5])
    assert combine(cos, 100.0, "mean").score == 0.0                         # torchmetrics: max(mean, 0)
    assert combine(cos, 100.0, "sample").score == pytest.approx(15.0)       # Hessel: mean of max(., 0)
    assert combine(cos, 1.0, "none").score == pytest.approx(-0.1)           # DMD2: raw cosine
    assert combine(torch.tensor([0.3, 0.2]), 100.0, "mean").score == pytest.approx(25.0)
    tm, dmd2, hessel = (CLIPScoreConfig.torchmetrics("m"), CLIPScoreConfig.dmd2("m"), CLIPScoreConfig.hessel("m"))
    assert (tm.scale, tm.clamp, tm.prompt_prefix) == (100.0, "mean", "")
    assert (dmd2.scale, dmd2.clamp, dmd2.prompt_prefix) == (1.0, "none", "A photo depicts ")
    assert (hessel.scale, hessel.clamp) == (2.5, "sample")
    with pytest.raises(ValueError, match="clamp"):
        combine(cos, 1.0, "max")


def test_scorers_with_two_scales_differ_by_the_ratio_and_record_their_protocol(loaded):
    images, names = colour_images(["red", "blue"]), ["red", "blue"]
    raw = scorer(loaded, scale=1.0).score(images, names, "0..1")
    x100 = scorer(loaded, scale=100.0).score(images, names, "0..1")
    torch.testing.assert_close(x100.per_sample, 100 * raw.per_sample)
    proto = scorer(loaded, prompt_prefix="A photo depicts ").protocol()
    assert proto["prompt_prefix"] == "A photo depicts " and proto["image_size"] == "32" and "transformers" in proto


def test_transformers_output_objects_and_bad_inputs(loaded):
    model, tok = loaded
    emb = torch.randn(2, 16)
    assert projected_embeddings(emb, model) is emb                                        # transformers 4.x: a tensor
    assert projected_embeddings(BaseModelOutputWithPooling(pooler_output=emb), model) is emb   # transformers 5
    with pytest.raises(TypeError, match="unprojected"):
        projected_embeddings(BaseModelOutputWithPooling(pooler_output=torch.randn(2, 32)), model)
    with pytest.raises(NotImplementedError, match="torchvision"):
        CLIPScorer(CLIPScoreConfig(backend="open_clip"), model=model, tokenizer=tok)
    s = scorer(loaded)
    with pytest.raises(ValueError, match="one prompt per image"):
        s.score(colour_images(["red", "blue"]), ["red"], "0..1")
    with pytest.raises(ValueError, match="list of strings"):
        s.score(colour_images(["red"]), "red", "0..1")
    with pytest.raises(ValueError, match="explicit value_range"):
        s.score(colour_images(["red"]), ["red"])
    with pytest.raises(FileNotFoundError, match="CLIP model folder"):
        load_clip("/nonexistent/clip")


def test_clip_weights_load_only_from_safetensors(clip_dir, tmp_path):
    """A pickled pytorch_model.bin can run code when loaded: the loader asks for safetensors and says how to convert."""
    import shutil

    pickled = shutil.copytree(clip_dir, tmp_path / "pickled")
    from transformers import CLIPModel

    CLIPModel.from_pretrained(clip_dir).save_pretrained(pickled, safe_serialization=False)
    for f in pickled.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="no .safetensors weights.*safe_serialization=True"):
        load_clip(pickled)
    damaged = shutil.copytree(clip_dir, tmp_path / "damaged")
    weights = next(damaged.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ValueError, match="cannot be read"):
        load_clip(damaged)


def test_importing_the_metrics_does_not_import_transformers():
    code = ("import sys, diffdistill.metrics.clip_score, diffdistill.metrics.extractors;"
            "sys.exit(1 if 'transformers' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
