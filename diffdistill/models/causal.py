"""A block-causal view of a diffusers ``WanTransformer3DModel``: same class, same weights, diffusers' own modules.

Frames are grouped in chunks of ``chunk_frames`` latent frames. Inside a chunk attention is bidirectional; across
chunks it is causal (a token sees its own chunk and earlier ones), the mask of CausVid (Yin et al., arXiv:2412.07772,
sec. 3.1) and Self Forcing (Huang et al., arXiv:2506.08009, sec. 3). Two ways to run it, which give the same numbers:

* full forward: every frame at once under the block-causal mask (training on whole clips, ODE regression);
* streaming: chunk by chunk with a KV cache. Generating chunk i runs only chunk i's tokens against the cached keys and
  values of earlier chunks; the rotary positions of chunk i are those of its true frame index. Once a chunk is
  final, one more pass at t = 0 writes its clean keys/values into the cache (Self Forcing sec. 3.2).

``window_chunks`` > 0 limits attention to the last ``window_chunks`` chunks (the query's own included): the full
forward masks older chunks, the cache evicts them, so a stream can roll past the trained length with bounded memory
(Self Forcing sec. 3.4's rolling KV cache; rotary positions keep growing and must stay below the transformer's
``rope_max_seq_len``).

Only the self-attention of each block changes: its processor (``CausalSelfAttention``) is ours; projections, norms,
the cross-attention to the text/class tokens, the feed-forward and the output head are diffusers' modules, untouched.
Processors are not weights: a causal export is a plain diffusers transformer folder, and the chunking is written in
``diffdistill.json``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class KVCache:
    """Per-layer keys and values [B, S, heads, head_dim] of the chunks written so far (detached), and how many latent
    frames were written (the next chunk's first frame index, for its rotary positions)."""

    keys: list[Tensor | None]
    values: list[Tensor | None]
    frames: int = 0
    chunks: list[int] = field(default_factory=list)       # frames of each cached chunk, oldest first

    @classmethod
    def empty(cls, layers: int) -> "KVCache":
        return cls([None] * layers, [None] * layers)


@dataclass
class _Mode:
    """What the processors do on the current call: a mask for a full forward, or a cache to read (and to write)."""

    mask: Tensor | None = None
    cache: KVCache | None = None
    write: bool = False
    frame_offset: int = 0


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding on interleaved pairs (Su et al., arXiv:2104.09864, eq. 34), the layout Wan's rope tables use:
    x [B, S, H, D]; cos, sin [1, S, 1, D] with each angle repeated for its pair."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2).type_as(x)


class CausalSelfAttention:
    """Attention processor for a Wan block's self-attention (``attn1``) that honours the block-causal mask or the KV
    cache of the shared :class:`_Mode`."""

    def __init__(self, mode: _Mode, layer: int) -> None:
        self.mode, self.layer = mode, layer

    def __call__(self, attn: nn.Module, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, rotary_emb: tuple[Tensor, Tensor] | None = None) -> Tensor:
        query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
        value = attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query, key = rotate(query, *rotary_emb), rotate(key, *rotary_emb)
        mode, mask = self.mode, self.mode.mask
        if mode.cache is not None:
            cache, own_key, own_value = mode.cache, key, value
            cached_key, cached_value = cache.keys[self.layer], cache.values[self.layer]
            if cached_key is not None:
                if cached_key.shape[0] != key.shape[0]:
                    raise ValueError(f"this KV cache holds a batch of {cached_key.shape[0]}, the chunk {key.shape[0]}: "
                                     "one cache per batch (CFG's doubled batch needs its own cache)")
                key = torch.cat([cached_key.to(key.dtype), key], dim=1)
                value = torch.cat([cached_value.to(value.dtype), value], dim=1)
            if mode.write:           # the chunk attends to its context as before, then joins it
                cache.keys[self.layer] = _append(cached_key, own_key.detach())
                cache.values[self.layer] = _append(cached_value, own_value.detach())
        out = F.scaled_dot_product_attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                             attn_mask=mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def _append(old: Tensor | None, new: Tensor) -> Tensor:
    return new if old is None else torch.cat([old, new], dim=1)


def block_causal_mask(frames: int, tokens_per_frame: int, chunk_frames: int, window_chunks: int = 0,
                      device: torch.device | str = "cpu") -> Tensor:
    """Boolean [L, L] (True = may attend) for ``frames`` frames of ``tokens_per_frame`` tokens (frame-major, Wan's
    token order): query chunk q sees key chunk k iff k <= q (and q - k < window_chunks when a window is set)."""
    chunk = torch.arange(frames, device=device).div(chunk_frames, rounding_mode="floor")
    chunk = chunk.repeat_interleave(tokens_per_frame)
    visible = chunk[None, :] <= chunk[:, None]
    if window_chunks > 0:
        visible &= (chunk[:, None] - chunk[None, :]) < window_chunks
    return visible


class BlockCausal:
    """Installs :class:`CausalSelfAttention` on every block of ``transformer`` and a rotary-position offset on its
    rope module; :meth:`full` and :meth:`streaming` set what the next forward does."""

    def __init__(self, transformer: nn.Module, chunk_frames: int, window_chunks: int = 0) -> None:
        patch_t = transformer.config.patch_size[0]
        if chunk_frames < 1 or chunk_frames % patch_t:
            raise ValueError(f"model.chunk_frames={chunk_frames} must be a positive multiple of the temporal patch "
                             f"size {patch_t}")
        if window_chunks < 0 or window_chunks == 1:
            raise ValueError(f"model.window_chunks={window_chunks}: a cache window must hold the current chunk and at "
                             "least one earlier chunk (>= 2), or 0 for no window")
        self.transformer, self.chunk_frames, self.window_chunks = transformer, chunk_frames, window_chunks
        self.mode = _Mode()
        for i, block in enumerate(transformer.blocks):
            block.attn1.set_processor(CausalSelfAttention(self.mode, i))
        transformer.rope.register_forward_pre_hook(self._rope_input)
        transformer.rope.register_forward_hook(self._rope_output)

    def check_frames(self, frames: int) -> None:
        if frames % self.chunk_frames:
            raise ValueError(f"{frames} latent frames are not a whole number of chunks of {self.chunk_frames} frames "
                             "(model.chunk_frames): pick num_frames = k * chunk_frames")

    # -- rotary positions: a chunk streamed alone gets the positions of its true frames ------------------------
    def _rope_input(self, module: nn.Module, args: tuple) -> tuple | None:
        offset = self.mode.frame_offset
        if not offset:
            return None
        b, c, f, h, w = args[0].shape
        total = (offset + f) // module.patch_size[0]
        if total > module.max_seq_len:
            raise ValueError(f"frame {offset + f} is past the transformer's rotary table (rope_max_seq_len="
                             f"{module.max_seq_len} frames): roll a shorter stream or build the model with a larger "
                             "rope_max_seq_len")
        return (torch.empty(b, c, offset + f, h, w, device="meta"),)

    def _rope_output(self, module: nn.Module, args: tuple, output: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        if not self.mode.frame_offset:
            return output
        p_t, p_h, p_w = module.patch_size
        frames, height, width = self._chunk_shape
        tokens = (frames // p_t) * (height // p_h) * (width // p_w)
        return tuple(o[:, -tokens:] for o in output)

    # -- modes ------------------------------------------------------------------------------------------------
    @contextmanager
    def full(self, frames: int, height: int, width: int, device: torch.device) -> Iterator[None]:
        """A forward over whole clips under the block-causal (windowed) mask."""
        self.check_frames(frames)
        p_t, p_h, p_w = self.transformer.config.patch_size
        tokens_per_frame = (height // p_h) * (width // p_w)
        mask = block_causal_mask(frames // p_t, tokens_per_frame, self.chunk_frames // p_t, self.window_chunks, device)
        with self._set(mask=mask):
            yield

    @contextmanager
    def streaming(self, cache: KVCache, frames: int, height: int, width: int, write: bool) -> Iterator[None]:
        """A forward over one chunk of ``frames`` frames against ``cache``; ``write``: append its keys/values (and
        count the chunk) instead of attending with them."""
        if frames != self.chunk_frames:
            raise ValueError(f"a streamed chunk has {self.chunk_frames} frames (model.chunk_frames), got {frames}")
        if write and torch.is_grad_enabled():
            raise RuntimeError("cache writes run under torch.no_grad(): the cache holds detached context")
        if torch.is_grad_enabled() and getattr(self.transformer, "gradient_checkpointing", False):
            raise ValueError("gradient checkpointing recomputes forwards after the cache has moved on; turn it off "
                             "(model.gradient_checkpointing=false) for streamed training")
        self._chunk_shape = (frames, height, width)
        if cache.keys and len(cache.keys) != len(self.transformer.blocks):
            raise ValueError(f"this cache has {len(cache.keys)} layers, the transformer {len(self.transformer.blocks)}")
        with self._set(cache=cache, write=write, frame_offset=cache.frames):
            yield
        if write:
            cache.frames += frames
            cache.chunks.append(frames)
            if self.window_chunks and len(cache.chunks) > self.window_chunks - 1:
                self._evict(cache)

    def _evict(self, cache: KVCache) -> None:
        """Drop the oldest chunk's keys/values so the next query sees window_chunks chunks, itself included."""
        p_t, p_h, p_w = self.transformer.config.patch_size
        _, height, width = self._chunk_shape
        tokens = (cache.chunks.pop(0) // p_t) * (height // p_h) * (width // p_w)
        cache.keys = [k[:, tokens:] for k in cache.keys]
        cache.values = [v[:, tokens:] for v in cache.values]

    @contextmanager
    def _set(self, **values) -> Iterator[None]:
        saved = dict(vars(self.mode))
        try:
            for k, v in values.items():
                setattr(self.mode, k, v)
            yield
        finally:
            for k, v in saved.items():
                setattr(self.mode, k, v)
