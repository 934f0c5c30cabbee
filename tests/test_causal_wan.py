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
