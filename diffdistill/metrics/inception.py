"""The FID Inception-v3 network: TensorFlow's 2015-12-05 ImageNet graph (the one Heusel et al.'s TTUR code used),
ported to PyTorch, returning the 2048-d ``pool_3`` features.

It is torchvision's Inception-v3 layout with the differences of that TF graph (pytorch-fid calls the patched blocks
FIDInceptionA/C/E_1/E_2; same architecture in clean-fid's torchscript and torch-fidelity):

* the average pools inside the A, C and first E blocks leave the zero padding out of the mean
  (``count_include_pad=False``, TF's ``SAME`` padding);
* the pool branch of the second E block (Mixed_7c) is a **max** pool;
* the classifier has 1008 outputs (the TF graph's label map), not 1000; there is no auxiliary head.

Module and parameter names equal pytorch-fid's state-dict keys (``Conv2d_1a_3x3.conv.weight``, ..., ``fc.bias``),
so ``pt_inception-2015-12-05-6726825d.pth`` loads with ``strict=True``.

Input normalisation (:func:`tf_normalize`): the TF graph takes 0..255 pixels and computes ``(x - 128) / 128``
(its ``Sub`` and ``Mul(1/128)`` nodes), which clean-fid reproduces before calling the torchscript's ``layers``.
pytorch-fid instead takes [0, 1] images and computes ``2 x - 1`` (:func:`pytorch_fid_normalize`), i.e. x/127.5 - 1
on the 0..255 scale: a 0.4 % different scale and half a level of offset. Each mode keeps its own convention.

Weights (:func:`load_inception`; none ship with diffdistill): two published files, one per resize mode
(:mod:`diffdistill.metrics.resize`):

* ``clean``: clean-fid's detector, NVIDIA's torchscript ``inception-2015-12-05.pt`` (stylegan2-ada metrics). We call
  its ``layers`` submodule on ``(x - 128) / 128`` exactly as clean-fid does, so the TF-style resize built into the
  file's own ``forward`` is bypassed and the clean PIL resize is used instead.
* ``legacy``: pytorch-fid's state dict ``pt_inception-2015-12-05-6726825d.pth``, loaded with
  ``torch.load(weights_only=True)`` (no pickled code runs) into :class:`FIDInceptionV3`, strictly.

Search order: the explicit ``path``; ``$DIFFDISTILL_INCEPTION`` (the file itself, or a folder holding it); the cache
folder (``$DIFFDISTILL_CACHE`` or ``~/.cache/diffdistill``); then a download into the cache with urllib. Offline
machines (the build machines reach only PyPI) get an error naming the file, its URL and where to put it. The SHA-256
of whatever file is loaded is recorded on the returned network and in every feature protocol, so a score always
says which weights made it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEATURE_DIM = 2048
NUM_LOGITS = 1008


def tf_normalize(x: Tensor) -> Tensor:
    """TF graph / clean-fid input transform: 0..255 -> [-1, 127/128]."""
    return (x - 128.0) / 128.0


def pytorch_fid_normalize(x: Tensor) -> Tensor:
    """pytorch-fid input transform: [0, 1] -> [-1, 1]."""
    return 2.0 * x - 1.0


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, TF's value) -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    # TF's SAME average pool divides by the number of real pixels under the window, not 9
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, c_in: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction (Mixed_6a)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..e)."""

    def __init__(self, c_in: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        d = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(d))))
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction (Mixed_7a)."""

    def __init__(self, c_in: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 outputs (Mixed_7b, Mixed_7c).

    ``max_pool``: the TF graph's Mixed_7c pools with max, not average (pytorch-fid's FIDInceptionE_2; "likely an
    error in that graph", but the published FIDs were computed with it).
    """

    def __init__(self, c_in: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The FID Inception-v3 trunk: normalised images -> 2048-d pool_3 features.

    ``forward`` takes images already normalised to about [-1, 1] (:func:`tf_normalize` or
    :func:`pytorch_fid_normalize`), like the ``layers`` module inside clean-fid's torchscript file. The protocol
    size is 299 x 299; any size >= 75 runs (the trunk is convolutional up to the global average pool).
    Shapes: x [N, 3, H, W] -> [N, 2048].
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)      # unused by FID; kept so the published weights load strictly

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)      # pool_3: global average over the 8 x 8 map

    def logits(self, features: Tensor) -> Tensor:
        """The 1008 ImageNet logits of the TF graph from pool_3 features (Inception Score uses these)."""
        return self.fc(features)


def random_inception(seed: int = 0) -> FIDInceptionV3:
    """The trunk with random weights, for tests and speed measurements (no pretrained weights exist offline).
    Scaled so activations stay O(1) through the 94 conv layers: the default init shrinks them to ~1e-8, which
    makes feature comparisons weak and, on CPUs, can hit slow denormal arithmetic."""
    gen = torch.Generator().manual_seed(seed)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
            nn.init.uniform_(m.weight, 0.5, 1.5, generator=gen)
            nn.init.uniform_(m.bias, -0.1, 0.1, generator=gen)
    return net.eval()


# ---- the weights: finding, downloading, hashing, loading ------------------------------------------------------------

InceptionMode = Literal["clean", "legacy"]
ENV_WEIGHTS = "DIFFDISTILL_INCEPTION"
ENV_CACHE = "DIFFDISTILL_CACHE"


@dataclass(frozen=True)
class WeightsFile:
    name: str
    url: str
    # torch.hub convention: the hex digits after the last '-' of a file name start its SHA-256 (empty: not known)
    sha256_prefix: str = ""


WEIGHTS: dict[str, WeightsFile] = {
    "clean": WeightsFile("inception-2015-12-05.pt",
                         "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
                         "inception-2015-12-05.pt"),
    "legacy": WeightsFile("pt_inception-2015-12-05-6726825d.pth",
                          "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                          "pt_inception-2015-12-05-6726825d.pth", sha256_prefix="6726825d"),
}


class InceptionNetwork(nn.Module):
    """A loaded FID Inception with its mode's input convention; records the weights file and its SHA-256.

    ``forward`` takes the output of the same mode's resize: clean -> float 0..255 (normalised as the TF graph does,
    (x - 128) / 128); legacy -> [0, 1] (normalised as pytorch-fid does, 2x - 1). Shapes: [N, 3, 299, 299] -> [N, 2048].
    """

    def __init__(self, trunk: nn.Module, mode: InceptionMode, path: Path, sha256: str) -> None:
        super().__init__()
        self.trunk = trunk
        self.mode, self.path, self.sha256 = mode, path, sha256
        self._normalize: Callable[[Tensor], Tensor] = tf_normalize if mode == "clean" else pytorch_fid_normalize

    def forward(self, x: Tensor) -> Tensor:
        return self.trunk(self._normalize(x.float())).reshape(x.shape[0], FEATURE_DIM)


class UnverifiedWeightsError(ValueError):
    """An Inception file that is not the one its name or its download record promises."""


def load_inception(path: str | Path | None = None, mode: InceptionMode = "clean", device: str | torch.device = "cpu",
                   download: bool = True, cache_dir: str | Path | None = None,
                   allow_unverified: bool = False) -> InceptionNetwork:
    """Find (or download) and load the FID Inception for ``mode``; eval mode, no gradients.

    A file whose SHA-256 contradicts its published name (torch.hub's hash prefix) or the ``<name>.sha256`` record
    written when it was downloaded is refused: FIDs from other weights do not compare with published ones, and a
    changed file may be a tampered one. ``allow_unverified`` loads it anyway, with a warning."""
    if mode not in WEIGHTS:
        raise ValueError(f"unknown Inception mode {mode!r}; use 'clean' (clean-fid) or 'legacy' (pytorch-fid)")
    file = find_weights(mode, path, download=download, cache_dir=cache_dir)
    digest = sha256_file(file)
    problem = _digest_problem(file, digest, WEIGHTS[mode])
    if problem and not allow_unverified:
        raise UnverifiedWeightsError(f"{problem}; download the published file again ({WEIGHTS[mode].url}), or pass "
                                     "--allow-unverified-inception (load_inception(allow_unverified=True)) to score "
                                     "with it anyway, knowing the scores will not match published FIDs")
    if problem:
        warnings.warn(f"{problem}: scores will not match published FIDs", stacklevel=2)
    trunk = _load_torchscript(file, device) if mode == "clean" else _load_state_dict(file, device)
    net = InceptionNetwork(trunk, mode, file, digest).to(device).eval()
    return net.requires_grad_(False)


def _digest_problem(file: Path, digest: str, spec: WeightsFile) -> str | None:
    if spec.sha256_prefix and file.name == spec.name and not digest.startswith(spec.sha256_prefix):
        return (f"{file} has SHA-256 {digest[:16]}..., but its name promises one starting with {spec.sha256_prefix}: "
                "not the published weights")
    record = file.with_name(file.name + ".sha256")
    if record.is_file() and record.read_text().split()[:1] != [digest]:
        return f"{file} has SHA-256 {digest[:16]}..., not the one recorded in {record.name} when it was downloaded"
    return None


def default_cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "diffdistill")


def find_weights(mode: InceptionMode, path: str | Path | None = None, download: bool = True,
                 cache_dir: str | Path | None = None) -> Path:
    """The weights file for ``mode``: explicit path, then $DIFFDISTILL_INCEPTION, then the cache, then a download."""
    spec = WEIGHTS[mode]
    if path is not None:
        found = _file_in(Path(path), spec.name)
        if found is None:
            raise FileNotFoundError(f"no Inception weights at {path} (looked for the file itself or {spec.name} in it)")
        return found
    env = os.environ.get(ENV_WEIGHTS)
    if env:
        found = _file_in(Path(env), spec.name)
        if found is None:
            raise FileNotFoundError(f"${ENV_WEIGHTS}={env} is neither the weights file nor a folder holding "
                                    f"{spec.name}")
        return found
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / spec.name
    if target.is_file():
        return target
    missing = (f"the FID Inception weights {spec.name} ({mode} mode) are not on this machine. Download them from "
               f"{spec.url} on a machine with internet access and put the file at {target}, or point "
               f"${ENV_WEIGHTS} (or load_inception(path=...)) at it")
    if not download:
        raise FileNotFoundError(missing)
    try:
        _download(spec.url, target)
    except OSError as err:                      # urllib's URLError and timeouts are OSErrors
        raise FileNotFoundError(f"{missing}. The download failed: {err}") from err
    return target


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _file_in(path: Path, name: str) -> Path | None:
    if path.is_file():
        return path
    if path.is_dir() and (path / name).is_file():
        return path / name
    return None


def _download(url: str, target: Path, timeout: float = 60.0) -> None:
    """Download to ``target`` through a partial file (an interrupted download never looks complete) and record the
    SHA-256 and source next to it (``<name>.sha256``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out)
    partial.replace(target)
    target.with_name(target.name + ".sha256").write_text(f"{sha256_file(target)}  {target.name}  {url}\n")


def _load_torchscript(file: Path, device: str | torch.device) -> nn.Module:
    try:
        script = torch.jit.load(str(file), map_location=device)
    except RuntimeError as err:
        raise ValueError(f"{file} is not a torchscript file; clean mode needs clean-fid's {WEIGHTS['clean'].name} "
                         "(pytorch-fid's .pth state dict goes with mode='legacy')") from err
    # NVIDIA's file: forward() resizes TF-style inside; clean-fid calls .layers on normalised 299 x 299 input. A file
    # without .layers (e.g. a scripted FIDInceptionV3) is taken to be that trunk itself.
    return script.layers if hasattr(script, "layers") else script


def _load_state_dict(file: Path, device: str | torch.device) -> nn.Module:
    try:
        state = torch.load(file, map_location=device, weights_only=True)
    except Exception as err:                    # torch raises several types for non-pickle / unsafe files
        raise ValueError(f"{file} is not a loadable state dict; legacy mode needs pytorch-fid's "
                         f"{WEIGHTS['legacy'].name} (clean-fid's torchscript goes with mode='clean')") from err
    net = FIDInceptionV3()
    net.load_state_dict(state, strict=True)
    return net


class _CleanFidLayout(nn.Module):
    """The layout of NVIDIA's inception-2015-12-05.pt, the file clean-fid loads: the trunk as ``layers``. Its
    forward() stands for the TF-style resize inside, which the clean protocol bypasses (it calls ``layers``), so
    here it returns zeros: any caller that used it would get features that agree with nothing."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = layers

    def forward(self, img: Tensor, return_features: bool = False) -> Tensor:
        return torch.zeros(img.shape[0], 2048)


def inception_to_torchscript(trunk: nn.Module) -> torch.jit.ScriptModule:
    """``trunk`` as a torchscript module, by tracing (its forward is straight-line code, so the trace is exact for
    any batch size and any input size >= 75).

    Why not ``torch.jit.script``: scripting compiles ``nn.Conv2d``'s Python source and looks every attribute up in
    torch's builtin-op table, which is keyed by ``id()``; ops re-registered during a process can leave stale ids
    there, and a Conv2d padding list that later lands on such an address fails with "builtin cannot be used as a
    value" (seen once in CI, depending on what ran earlier in the process). Tracing records ops and looks nothing
    up. A module that is already torchscript is returned as it is; any other is put in eval mode (the trace keeps
    BatchNorm's running statistics)."""
    if isinstance(trunk, torch.jit.ScriptModule):
        return trunk
    example = torch.zeros(1, 3, 75, 75, device=next(trunk.parameters()).device)   # smallest size: cheapest trace
    with torch.no_grad():
        return torch.jit.trace(trunk.eval(), example, check_trace=False)


def save_clean_fid_layout(trunk: nn.Module, path: str | Path) -> Path:
    """Write ``trunk`` (e.g. :func:`random_inception`) as a torchscript file in clean-fid's layout, so clean-fid and
    our clean mode can run the SAME weights where the published file cannot be downloaded (agreement tests, B4)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # only the wrapper's own forward is compiled; the trunk goes in already traced (see inception_to_torchscript)
    torch.jit.script(_CleanFidLayout(inception_to_torchscript(trunk))).save(str(path))
    return path

