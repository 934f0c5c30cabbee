"""Reading weight files with errors a user can act on: which file, what is wrong with it, what to do.

safetensors raises ``SafetensorError("Error while deserializing header: ...")`` naming no file, and diffusers'
``from_pretrained`` wraps the same error in an OSError or lets it through; a training run, ``sample`` or ``export``
then ends in a traceback. Every weight file the toolkit reads goes through here.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from torch import Tensor


class DamagedFileError(ValueError):
    """A weight or state file exists but cannot be read (truncated, garbage, another format)."""


def load_safetensors(path: str | Path, hint: str = "") -> dict[str, Tensor]:
    """``safetensors.torch.load_file`` with a one-line error naming the file. ``hint``: what to do about it."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing{'; ' + hint if hint else ''}")
    try:
        return load_file(str(path))
    except Exception as err:     # SafetensorError (no public base class), or an OSError while reading
        raise damaged(path, err, hint) from None


def damaged(path: str | Path, err: BaseException, hint: str = "") -> DamagedFileError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return DamagedFileError(f"{path} is damaged and cannot be read ({reason}): the file is truncated or not a "
                            f"safetensors file{'; ' + hint if hint else ''}")


@contextmanager
def reading_weights(folder: str | Path, hint: str = "") -> Iterator[None]:
    """Turn a deserialisation failure inside a diffusers/transformers ``from_pretrained(folder)`` into one line."""
    try:
        yield
    except (FileNotFoundError, DamagedFileError):
        raise
    except Exception as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, OSError) and "no file named" in str(err):          # diffusers: a weight file is absent
            raise FileNotFoundError(f"{folder}: {first}{'; ' + hint if hint else ''}") from None
        if isinstance(err, OSError) or "safetensor" in type(err).__name__.lower():
            raise DamagedFileError(f"the weights in {folder} cannot be read ({first}): a file is truncated or "
                                   f"damaged{'; ' + hint if hint else ''}") from None
        raise
