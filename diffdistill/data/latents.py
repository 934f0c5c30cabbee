"""Text-to-image training data as pre-computed latents and prompt embeddings (registry name ``latents``).

DMD2 and the other SD/SDXL recipes never run the VAE or the text encoders inside the training loop (DMD2 pre-computes
SDXL latents into LMDB; Yin et al., arXiv:2405.14867, appendix): ``diffdistill encode`` (diffdistill/data/encode.py) writes a folder

    meta.json                 {"format": 1, "count": N, "shards": [...], "pipeline": ..., "resolution": ...}
    shard-00000.safetensors   latents [n, C, h, w] (VAE latents x scaling factor), text [n, L, D] (prompt embedding),
                              and for SDXL pooled [n, Dp] + time_ids [n, 6]
    null.safetensors          the unconditional condition (text [1, L, D], SDXL pooled [1, Dp]) for teacher CFG

and :class:`LatentsStream` serves it in resumable epochs (data.epoch_batch_indices), reading only the rows a batch
needs (safetensors slices), so a folder larger than memory trains as well as a small one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from . import Batch, epoch_batch_indices
from ..models.base import Cond

META = "meta.json"
NULL = "null.safetensors"
COND_KEYS = ("text", "pooled", "time_ids")      # Cond fields a shard may hold, besides `latents`


@dataclass
class LatentsConfig:
    """A folder written by ``diffdistill encode`` (latents + prompt embeddings; see diffdistill/data/latents.py)."""

    path: str = ""

    @property
    def num_classes(self) -> int:
        return 0


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"data.path={str(path)!r}: {what}. Point data.path at a folder written by `diffdistill encode --pipeline "
        f"<diffusers folder> --images <image folder with captions> --out <folder>` (see diffdistill/data/latents.py)")


class LatentsStream:
    """Batches of (latents, prompt condition, unconditional condition); position-exact resume like the other streams.

    Shapes: x0 [B, C, h, w]; cond.text [B, L, D] (+ pooled [B, Dp], time_ids [B, 6] for SDXL); uncond likewise.
    """

    def __init__(self, cfg: LatentsConfig, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1) -> None:
        from safetensors import safe_open

        root = Path(cfg.path).expanduser()
        if not cfg.path or not (root / META).is_file():
            raise _missing(root, f"no {META} there" if cfg.path else "not set")
        meta = json.loads((root / META).read_text())
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.handles = [safe_open(str(root / name), framework="pt") for name in meta["shards"]]
        self.rows: list[tuple[int, int]] = []            # global sample id -> (shard, row)
        keys = None
        for i, (name, handle) in enumerate(zip(meta["shards"], self.handles)):
            shard_keys = set(handle.keys())
            if "latents" not in shard_keys or "text" not in shard_keys:
                raise ValueError(f"{root / name} lacks `latents` or `text` (has {sorted(shard_keys)}); re-run encode")
            if keys is not None and shard_keys != keys:
                raise ValueError(f"{root / name} holds {sorted(shard_keys)} but the first shard {sorted(keys)}")
            keys = shard_keys
            self.rows += [(i, r) for r in range(handle.get_slice("latents").get_shape()[0])]
        if not self.rows:
            raise _missing(root, "its shards hold no samples")
        self.cond_keys = [k for k in COND_KEYS if k in (keys or set())]
        self.null = self._load_null(root / NULL)
        epoch_batch_indices(len(self.rows), batch_size, seed, rank, world, 0)    # fail now if the batch is too large
        self.position = 0

    def _load_null(self, path: Path) -> dict[str, Tensor] | None:
        if not path.is_file():
            return None          # guided teachers then fail with the model's own "no null condition" error
        from ..files import load_safetensors

        return load_safetensors(path, "re-run `diffdistill encode`")

    def _take(self, key: str, index: Tensor) -> Tensor:
        rows = []
        for i in index.tolist():
            shard, row = self.rows[i]
            rows.append(self.handles[shard].get_slice(key)[row:row + 1])
        return torch.cat(rows).float()

    def next(self) -> Batch:
        index = epoch_batch_indices(len(self.rows), self.batch_size, self.seed, self.rank, self.world, self.position)
        self.position += 1
        cond = Cond(**{k: self._take(k, index) for k in self.cond_keys})
        uncond = None
        if self.null is not None:
            fields = {k: self.null[k].float().expand(len(index), *self.null[k].shape[1:]) for k in self.null}
            if "time_ids" in self.cond_keys:     # SDXL's size/crop ids are not part of the prompt: shared
                fields["time_ids"] = cond.time_ids
            uncond = Cond(**fields)
        return Batch(self._take("latents", index), cond, index, uncond)
