"""The block-causal Wan (diffdistill/models/causal.py) on a tiny WanTransformer3DModel built from a config: streaming
chunk by chunk through the KV cache computes exactly what the masked full forward computes, later chunks never
change earlier ones, the rolling cache equals the windowed mask past the trained length, and exports stay plain
diffusers folders."""

import pytest
import torch

pytest.importorskip("diffusers")

from tiny_diffusers import tiny_wan_config  # noqa: E402

from diffdistill.config import ConfigError  # noqa: E402
from diffdistill.models.base import Cond  # noqa: E402
from diffdistill.models.causal import block_causal_mask  # noqa: E402
from diffdistill.models.registry import build_model, load_model, save_model  # noqa: E402

FRAMES, SIZE = 4, 4


def causal(chunk: int = 1, window: int = 0, frames: int = FRAMES, seed: int = 0):
    torch.manual_seed(seed)
    return build_model({"kind": "wan", "config": tiny_wan_config(), "num_classes": 10, "num_frames": frames,
                        "height": SIZE, "width": SIZE, "chunk_frames": chunk, "window_chunks": window}).eval()


def clip(frames: int = FRAMES, batch: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, Cond]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, frames, 16, SIZE, SIZE, generator=gen)
    t = torch.rand(batch, frames, generator=gen)                        # per-frame times
    return x, t, Cond(labels=torch.arange(batch) % 10)


def streamed(model, x: torch.Tensor, t: torch.Tensor, cond: Cond, chunk: int) -> tuple[torch.Tensor, object]:
    """Each chunk run against the cache and then written into it, in order: the outputs of the writing passes."""
    cache, outs = model.new_cache(), []
    with torch.no_grad():
        for start in range(0, x.shape[1], chunk):
            part = slice(start, start + chunk)
            with model.streaming(cache):
                read = model(x[:, part], t[:, part], cond).native
            with model.streaming(cache, write=True):
                written = model(x[:, part], t[:, part], cond).native
            torch.testing.assert_close(read, written, rtol=0, atol=0)         # writing does not change the output
            outs.append(written)
    return torch.cat(outs, dim=1), cache


def test_block_causal_mask_layout():
    mask = block_causal_mask(frames=4, tokens_per_frame=2, chunk_frames=2)
    chunk_of = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    assert torch.equal(mask, chunk_of[None, :] <= chunk_of[:, None])
    windowed = block_causal_mask(frames=3, tokens_per_frame=1, chunk_frames=1, window_chunks=2)
    assert windowed.tolist() == [[True, False, False], [True, True, False], [False, True, True]]


def test_one_chunk_is_the_bidirectional_model_and_our_attention_matches_diffusers():
    """chunk_frames = num_frames masks nothing: the same weights without our processor give the same output."""
    x, t, cond = clip()
    one_chunk, plain = causal(chunk=FRAMES), causal(chunk=0)
    plain.load_state_dict(one_chunk.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(one_chunk(x, t, cond).native, plain(x, t, cond).native, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 2])
def test_streaming_through_the_kv_cache_equals_the_masked_full_forward(chunk):
    model = causal(chunk=chunk)
    x, t, cond = clip()
    with torch.no_grad():
        full = model(x, t, cond).native
    ours, cache = streamed(model, x, t, cond, chunk)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    assert cache.frames == FRAMES and cache.keys[0].shape[1] == FRAMES * (SIZE // 2) ** 2


def test_a_later_chunk_never_changes_an_earlier_chunks_output():
    model = causal(chunk=1)
    x, t, cond = clip()
    changed = x.clone()
    changed[:, 2:] = torch.randn_like(changed[:, 2:])
    with torch.no_grad():
        a, b = model(x, t, cond).native, model(changed, t, cond).native
    assert torch.equal(a[:, :2], b[:, :2]) and (a[:, 2:] - b[:, 2:]).abs().max() > 1e-3
    bidirectional = causal(chunk=0)
    with torch.no_grad():
        c, d = bidirectional(x, t, cond).native, bidirectional(changed, t, cond).native
    assert (c[:, :2] - d[:, :2]).abs().max() > 1e-3                 # without the mask they would change


def test_rolling_cache_runs_past_the_trained_length_and_equals_the_windowed_mask():
    """A model trained on 4 frames streams 12 (3x) with a window of 2 chunks: bounded cache, same numbers as the
    windowed mask over the whole long clip, positions at the true frame index."""
    model = causal(chunk=1, window=2)
    x, t, cond = clip(frames=12)
    with torch.no_grad():
        full = model(x, t, cond).native
    ours, cache = streamed(model, x, t, cond, chunk=1)
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
    assert cache.frames == 12 and cache.keys[0].shape[1] == 1 * (SIZE // 2) ** 2       # window - 1 chunks kept
    unbounded = causal(chunk=1)
    with torch.no_grad():
        assert (unbounded(x, t, cond).native[:, 3:] - full[:, 3:]).abs().max() > 1e-4   # the window matters


def test_causal_export_is_a_plain_diffusers_folder_that_reloads_causal(tmp_path):
    from diffusers import WanTransformer3DModel

    model = causal(chunk=2, window=0)
    x, t, cond = clip()
    save_model(model, tmp_path)
    reloaded = load_model(tmp_path).eval()
    assert reloaded.causal is not None and reloaded.causal.chunk_frames == 2
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, t, cond).native, model(x, t, cond).native)
    stock = WanTransformer3DModel.from_pretrained(tmp_path / "transformer")
    assert sum(p.numel() for p in stock.parameters()) == sum(p.numel() for p in model.transformer.parameters())


def test_bad_causal_settings_and_streams_are_clear_errors():
    with pytest.raises(ValueError, match="not a whole number of chunks of 3 frames"):
        causal(chunk=3)
    with pytest.raises(ValueError, match="window must hold the current chunk and at least one earlier chunk"):
        causal(chunk=1, window=1)
    with pytest.raises(ConfigError, match="window_chunks needs model.chunk_frames"):
        causal(chunk=0, window=2)
    with pytest.raises(ValueError, match="bidirectional .*streaming needs a causal model"):
        causal(chunk=0).new_cache()
    model = causal(chunk=1)
    x, t, cond = clip(frames=40, batch=1)
    cache = model.new_cache()
    with pytest.raises(ValueError, match="past the transformer's rotary table"), torch.no_grad():
        for start in range(40):
            with model.streaming(cache, write=True):
                model(x[:, start:start + 1], t[:, start:start + 1], cond)
    with pytest.raises(ValueError, match="a streamed chunk has 1 frames"), torch.no_grad(), \
            model.streaming(model.new_cache()):
        model(x[:, :2], t[:, :2], cond)


def reference_rollout(model, noise, times, cond, fresh):
    """Chunk-by-chunk few-step sampling written with the masked FULL forward only (no cache): each chunk is denoised
    in a clip whose earlier chunks are the student's own clean outputs at t = 0."""
    chunk, outputs = model.causal.chunk_frames, []
    for k in range(noise.shape[1] // chunk):
        x = noise[:, k * chunk:(k + 1) * chunk]
        for j, t in enumerate(times):
            clip_in = torch.cat(outputs + [x], dim=1)
            t_in = torch.zeros(clip_in.shape[:2], dtype=torch.float64)
            t_in[:, -chunk:] = t
            x0 = model(clip_in, t_in, cond).x0[:, -chunk:]
            if j + 1 < len(times):
                x = model.schedule.add_noise(x0, fresh(k, j), torch.full((x.shape[0],), times[j + 1],
                                                                         dtype=torch.float64))
        outputs.append(x0)
    return torch.cat(outputs, dim=1)


@pytest.mark.parametrize("steps", [1, 3])
def test_the_streaming_sampler_is_few_step_sampling_on_the_students_own_clean_context(steps):
    from diffdistill.inference.streaming import causal_sample

    model = causal(chunk=2)
    noise, _, cond = clip()
    times = [1.0, 0.7, 0.4][:steps]
    extra = torch.randn(steps, *noise.shape, generator=torch.Generator().manual_seed(9))

    def fresh(k, j):
        return extra[j][:, 2 * k:2 * k + 2]

    with torch.no_grad():
        expected = reference_rollout(model, noise, times, cond, fresh)
        ours = causal_sample(model, noise, times, cond, fresh=fresh)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_training_rollout_keeps_gradients_only_at_the_exit_step_of_each_chunk():
    """Gradient truncation: the exit step's forward carries gradients to the weights, earlier steps and the cached
    context do not (a chunk's output does not depend, through autograd, on an earlier chunk's noise)."""
    from diffdistill.inference.streaming import stream_chunks

    model = causal(chunk=2)
    noise, _, cond = clip()
    noise.requires_grad_(True)
    first, second = stream_chunks(model, noise, [1.0, 0.6, 0.3], cond, exit_step=1, grad=True)
    assert first.requires_grad and second.requires_grad
    # no autograd path into the noise at all: not into the earlier chunk's (the cache is detached), not into this
    # chunk's (step 0 ran without gradients; the exit step's input is a constant)
    assert torch.autograd.grad(second.sum(), noise, retain_graph=True, allow_unused=True) == (None,)
    second.sum().backward()
    assert model.transformer.proj_out.weight.grad.abs().max() > 0
    _, second = stream_chunks(model, noise, [1.0, 0.6, 0.3], cond, exit_step=0, grad=True)
    (grad_noise,) = torch.autograd.grad(second.sum(), noise)       # exit at step 0: its input is the noise itself
    assert grad_noise[:, 2:].abs().max() > 0 and grad_noise[:, :2].abs().max() == 0


def test_generate_streams_a_causal_spec_per_sample_and_refuses_cfg():
    from diffdistill.inference.generate import generate
    from diffdistill.inference.spec import SamplingSpec

    model = causal(chunk=2)
    spec = SamplingSpec("few_step", (1.0, 0.5), num_classes=10, chunk_frames=2)
    together, labels, _ = generate(model, spec, 3, seed=4, batch_size=3, progress=False)
    alone, _, _ = generate(model, spec, 1, seed=4, batch_size=1, progress=False, first=2)
    assert together.shape == (3, FRAMES, 16, SIZE, SIZE) and labels.tolist() == [0, 1, 2]
    torch.testing.assert_close(together[2:], alone, rtol=1e-5, atol=1e-5)
    from diffdistill.inference.generate import stream

    chunks = list(stream(model, spec, 3, seed=4))
    assert [k for k, _, _ in chunks] == [0, 1] and chunks[0][2] <= chunks[1][2]
    torch.testing.assert_close(torch.cat([c for _, c, _ in chunks], dim=1), together, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="samples without CFG"):
        SamplingSpec("few_step", (1.0, 0.5), guidance=3.0, chunk_frames=2)
    with pytest.raises(ValueError, match="not block-causal"):
        generate(causal(chunk=0), spec, 1, progress=False)


def test_the_b4_streaming_script_runs_on_a_tiny_wan(tmp_path):
    """evaluation/gpu/wan_streaming_fps.py (benchmark B4's Wan row) on the CPU with --tiny: the same code path as on
    the GPU, a JSON naming the device with first-chunk latency below the whole clip's time."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "evaluation/gpu/wan_streaming_fps.py", "--tiny", "--device", "cpu",
                           "--dtype", "float32", "--repeats", "1", "--out", str(tmp_path)], cwd=repo,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu-wan-streaming.json").read_text())
    assert "CPU" in result["device"] and result["steps"] == 4 and result["latent_clip"][0] == 6
    assert 0 < result["median"]["first_chunk_s"] < result["median"]["clip_s"]
