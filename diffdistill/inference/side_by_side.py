"""A distilled student and its teacher sampled side by side from the same noise, with timings (the demo's engine).

:class:`SideBySide` loads a student export (and optionally a teacher export) once, keeps both on one device, and
turns a :class:`Request` (class or prompt, step counts, guidance, seed, number of images) into a :class:`Comparison`:
images of both models plus ms per image, NFE and the student's speed-up measured in the same call. It holds no UI:
``demos/gradio_sampler.py`` draws it with Gradio (gradio is imported only in ``demos/``, tests/test_imports.py).

Step choices come from each export's sampling spec (written by the method's ``sampling_spec``): a distilled
student (``sampler: few_step``) offers only its distilled step count, because its times are the ones it was trained
on; a teacher (``sampler: ode``) offers a few DDIM step counts. Guidance applies to ODE models only: distilled
students bake CFG in (DMD2 distils the teacher's guided score) and sample at guidance 1.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor

from ..data import class_names
from ..models.base import Cond, DiffusionModel
from ..models.registry import find_export, load_model, read_export_meta
from .catalog import Medium, describe_export
from .generate import export_spec, generate, sync
from .spec import SamplingSpec

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "fmnist"
DEFAULT_STUDENT = ASSETS / "dmd2_1step"
DEFAULT_TEACHER = ASSETS / "teacher"
TEACHER_STEPS = (50, 25, 10)        # DDIM step counts offered for ODE models, besides their export's own
MAX_IMAGES = 16
MAX_SEED = 2**31 - 1
HOW_TO_GET_A_STUDENT = ("train one with `diffdistill train recipes/dmd2/fmnist_1step_quick.yaml` and pass its run "
                        "directory (or the run's export/ folder)")
Conditioning = Literal["class", "text"]


@dataclass(frozen=True)
class Request:
    """One click of the demo. ``label`` None = one image of each class in turn; steps None = the model's default;
    ``guidance`` (teacher CFG, standard form ``uncond + w (cond - uncond)``) None = its export's setting."""

    label: int | None = None
    prompt: str = ""
    student_steps: int | None = None
    teacher_steps: int | None = None
    guidance: float | None = None
    seed: int | None = 0            # None = draw a random seed (returned in Comparison.seed)
    n: int = 4


@dataclass
class Result:
    """One model's images and timing. Shapes: images [n, C, H, W] in [-1, 1] (pixels; latents are decoded)."""

    images: Tensor
    seconds: float                  # sampling (+ VAE decode) wall time for the whole batch
    steps: int
    nfe: int                        # network evaluations per image: steps x 2 with CFG (cond + uncond)
    guidance: float

    @property
    def ms_per_image(self) -> float:
        return 1000.0 * self.seconds / self.images.shape[0]


@dataclass
class Comparison:
    seed: int
    student: Result
    teacher: Result | None

    @property
    def speedup(self) -> float | None:
        """Teacher ms per image / student ms per image, both measured in the same call."""
        if self.teacher is None:
            return None
        return self.teacher.ms_per_image / max(self.student.ms_per_image, 1e-9)

    def timings(self) -> dict:
        """Plain numbers for the UI and API clients."""
        out: dict = {"seed": self.seed, "speedup": self.speedup}
        for name, r in (("student", self.student), ("teacher", self.teacher)):
            out[name] = None if r is None else {"steps": r.steps, "nfe": r.nfe, "guidance": r.guidance,
                                                "ms_per_image": r.ms_per_image, "total_ms": 1000.0 * r.seconds,
                                                "images": int(r.images.shape[0])}
        return out


class LoadedModel:
    """One exported model on its device, with the sampling spec its export records."""

    def __init__(self, path: str | Path, device: torch.device, medium: Medium = "image") -> None:
        self.directory = find_export(path)
        meta = read_export_meta(self.directory)
        self.entry = describe_export(self.directory)
        if self.entry is None or self.entry.medium != medium:
            kind = meta.get("model", {}).get("kind")
            what = {"video": "a video model: give it to the video tab (--video-student / --video-teacher)",
                    "image": "an image model: give it to the image tab"}.get(
                self.entry.medium if self.entry else "", "use `diffdistill sample` for it")
            raise ValueError(f"{str(self.directory)!r} holds a {kind!r} model, {what}; this part of the demo "
                             f"samples {medium} models")
        sampling = meta.get("sampling", {})
        if sampling.get("sampler") == "few_step" and not sampling.get("times"):
            raise ValueError(f"{str(self.directory)!r} is a few-step student without sampling.times in its "
                             "diffdistill.json; re-export its run with `diffdistill export RUN`")
        self.model: DiffusionModel = load_model(self.directory).to(device).eval().requires_grad_(False)
        self.spec: SamplingSpec = export_spec(self.directory, self.model)
        self.num_classes = self.spec.num_classes or int(meta["model"].get("num_classes", 0))
        self.conditioning: Conditioning = "class" if self.num_classes else "text"
        dataset = meta.get("run_config", {}).get("data", {}).get("name")
        self.class_names = class_names(dataset, self.num_classes)
        self.pipeline = meta.get("run_config", {}).get("model", {}).get("pretrained")    # text models: VAE, encoders

    @property
    def distilled(self) -> bool:
        return self.spec.distilled

    @property
    def step_choices(self) -> list[int]:
        """A teacher: a few DDIM step counts. A student: the step counts it serves on its own distribution (its
        trained schedule; every rung of an ASD ladder; 1-8 TCD steps of a unified Hyper-SD student)."""
        if self.distilled or self.spec.sampler == "tcd" or self.spec.ladder:
            return list(self.entry.step_choices)
        return sorted({self.spec.steps, *TEACHER_STEPS}, reverse=True)

    @property
    def default_steps(self) -> int:
        return self.spec.steps

    @property
    def default_guidance(self) -> float:
        return self.spec.guidance


class PromptConditioner:
    """Text conditioning and latent decoding through a diffusers SD / SDXL / Wan pipeline folder (its encoders and
    VAE)."""

    def __init__(self, folder: str | Path, device: torch.device) -> None:
        from ..models.pipeline_encoder import PipelineEncoder     # needs diffusers: only text models get here

        self.encoder = PipelineEncoder(folder, str(device))
        self.device = device
        self._null: dict[str, Tensor] | None = None        # the empty prompt, encoded once (benchmarks ask per batch)

    def conds(self, prompt: str, n: int, latent_shape: Sequence[int]) -> tuple[Cond, Cond]:
        """(cond, uncond) for ``n`` images of ``prompt``; SDXL also gets its size/crop time ids."""
        fields, null = self._fields([prompt], latent_shape)
        return _expand(fields, n, self.device), _expand(null, n, self.device)

    def conds_many(self, prompts: Sequence[str], latent_shape: Sequence[int]) -> tuple[Cond, Cond]:
        """(cond, uncond) for one image per prompt, the prompts encoded in one batch (benchmark runs)."""
        if isinstance(prompts, str) or not prompts:
            raise ValueError("conds_many takes a non-empty list of prompts, one per image")
        fields, null = self._fields(list(prompts), latent_shape)
        return _expand(fields, len(prompts), self.device), _expand(null, len(prompts), self.device)

    def _fields(self, prompts: list[str], latent_shape: Sequence[int]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        if self._null is None:
            self._null = self.encoder.null()
        fields, null = self.encoder.text(prompts), self._null
        if "pooled" in fields:      # SDXL: original size, crop top-left, target size, in pixels (shared by both)
            h, w = (s * self.encoder.pipe.vae_scale_factor for s in latent_shape[-2:])
            ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32)
            fields, null = {**fields, "time_ids": ids}, {**null, "time_ids": ids}
        return fields, null

    def decode(self, latents: Tensor) -> Tensor:
        """Latents -> pixels in [-1, 1] through the pipeline's VAE (PipelineEncoder.decode)."""
        return self.encoder.decode(latents)


class SideBySide:
    """Holds a student and an optional teacher on ``device`` and samples both per :class:`Request`."""

    def __init__(self, student: str | Path, teacher: str | Path | None = None, device: str | None = None,
                 pipeline: str | Path | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._pipeline_arg = pipeline
        self.student, self.teacher, self.prompts = self._load(student, teacher)

    def load(self, student: str | Path, teacher: str | Path | None = None) -> None:
        """Swap in other checkpoints; on any error the models held so far stay in place."""
        self.student, self.teacher, self.prompts = self._load(student, teacher)

    def _load(self, student: str | Path,
              teacher: str | Path | None) -> tuple[LoadedModel, LoadedModel | None, PromptConditioner | None]:
        s = LoadedModel(student, self.device)
        t = LoadedModel(teacher, self.device) if teacher else None
        if t is not None and (t.conditioning, t.num_classes) != (s.conditioning, s.num_classes):
            raise ValueError(f"teacher {str(t.directory)!r} ({_describe(t)}) and student {str(s.directory)!r} "
                             f"({_describe(s)}) take different conditions; pick a matching pair")
        prompts = None
        if s.conditioning == "text":
            folder = self._pipeline_arg or s.pipeline
            if not folder or not (Path(folder) / "model_index.json").is_file():
                raise ValueError(f"{str(s.directory)!r} is a text model: its prompts need the text encoders and VAE "
                                 f"of a diffusers SD/SDXL pipeline folder (got {folder!r}); pass --pipeline")
            prompts = PromptConditioner(folder, self.device)
        probe = (prompts.conds("warm-up", 1, s.model.data_shape)[0] if prompts is not None
                 else Cond(labels=torch.zeros(1, dtype=torch.long, device=self.device)))
        for m in (s, t):
            if m is not None:
                _warm_up(m, probe)
        return s, t, prompts

    @property
    def conditioning(self) -> Conditioning:
        return self.student.conditioning

    def validate(self, req: Request) -> None:
        """Raise ValueError with a message a person can act on; nothing is sampled."""
        if not 1 <= req.n <= MAX_IMAGES:
            raise ValueError(f"number of images must be between 1 and {MAX_IMAGES}, got {req.n}")
        if req.seed is not None and not 0 <= req.seed <= MAX_SEED:
            raise ValueError(f"seed must be between 0 and {MAX_SEED}, got {req.seed}")
        if self.conditioning == "text" and not req.prompt.strip():
            raise ValueError("enter a prompt: this is a text-to-image model")
        if self.conditioning == "class" and req.label is not None and not 0 <= req.label < self.student.num_classes:
            raise ValueError(f"class must be in 0..{self.student.num_classes - 1}, got {req.label}")
        for name, m, steps in (("student", self.student, req.student_steps), ("teacher", self.teacher,
                                                                              req.teacher_steps)):
            if m is not None and steps is not None and steps not in m.step_choices:
                why = " (its distilled schedule)" if m.distilled else ""
                raise ValueError(f"{name} steps must be one of {m.step_choices}{why}, got {steps}")
        if req.guidance is not None and not 0.0 <= req.guidance <= 20.0:
            raise ValueError(f"guidance must be between 0 and 20, got {req.guidance}")

    def generate(self, req: Request) -> Comparison:
        """Sample the student, then the teacher, from the same seed; times each (including VAE decoding)."""
        self.validate(req)
        seed = random.randint(0, MAX_SEED) if req.seed is None else req.seed
        cond, uncond = self._conds(req)
        student = self._run(self.student, req.student_steps, None, cond, uncond, seed, req.n)
        teacher = None
        if self.teacher is not None:
            teacher = self._run(self.teacher, req.teacher_steps, req.guidance, cond, uncond, seed, req.n)
        return Comparison(seed, student, teacher)

    def _conds(self, req: Request) -> tuple[Cond, Cond | None]:
        if self.prompts is not None:
            return self.prompts.conds(req.prompt.strip(), req.n, self.student.model.data_shape)
        labels = torch.arange(req.n) % self.student.num_classes if req.label is None else torch.full((req.n,),
                                                                                                      req.label)
        return Cond(labels=labels.to(self.device)), None       # uncond: the model's null label

    def _run(self, m: LoadedModel, steps: int | None, guidance: float | None, cond: Cond, uncond: Cond | None,
             seed: int, n: int) -> Result:
        # students sample at their exported guidance (1 for CFG-distilled ones); only ODE models take the slider
        spec = m.spec.override(m.model.schedule, steps, guidance=None if m.distilled else guidance)
        # the one sampling path (inference/generate.py): image i of seed s is image i of `diffdistill eval` at seed s
        x, _, seconds = generate(m.model, spec, n, seed, batch_size=n, labels=cond.labels, progress=False,
                                 text=cond if cond.labels is None else None, uncond=uncond)
        sync(self.device)
        start = time.perf_counter()
        with torch.no_grad():
            images = self.prompts.decode(x.to(self.device)) if self.prompts is not None else x.clamp(-1, 1)
        sync(self.device)
        seconds += time.perf_counter() - start
        return Result(images.float().cpu(), seconds, spec.steps, spec.nfe, spec.guidance)


def _expand(fields: dict[str, Tensor], n: int, device: torch.device) -> Cond:
    """Fields of batch 1 (the null prompt, time ids) or n (encoded prompts) -> a Cond of batch n on ``device``."""
    return Cond(**{k: v.expand(n, *v.shape[1:]).to(device) for k, v in fields.items()})


def _describe(m: LoadedModel) -> str:
    return f"{m.num_classes} classes" if m.conditioning == "class" else "text-conditioned"


@torch.no_grad()
def _warm_up(m: LoadedModel, cond: Cond) -> None:
    """One forward pass at load, so the first click's timings do not include one-off allocation and kernel set-up."""
    x = torch.zeros(1, *m.model.data_shape, device=next(m.model.parameters()).device)
    m.model(x, torch.ones(1, dtype=torch.float64, device=x.device), cond)
