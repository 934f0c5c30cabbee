"""The demo's video engine: a causal student streamed chunk by chunk next to its bidirectional teacher's whole clip,
from the same seed, with first-chunk latency, frames/s and the speed-up measured in the same click.

:class:`VideoSideBySide` loads a causal video student (an export whose sampling has ``chunk_frames`` > 0, e.g. from
recipes/video/self_forcing.yaml) and optionally its teacher; :meth:`VideoSideBySide.stream` yields a
:class:`VideoUpdate` as each student chunk is ready (through :func:`~.generate.stream`, the path of `diffdistill sample
--stream`) and then the teacher's clip (through :func:`~.generate.generate`). No UI here: demos/gradio_sampler.py
draws it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from .generate import generate, stream
from .side_by_side import MAX_SEED, LoadedModel


@dataclass
class VideoUpdate:
    """What the page shows after one event. ``frames`` [T, C, H, W] in [-1, 1]: the student's frames so far, or the
    teacher's whole clip."""

    model: Literal["student", "teacher"]
    frames: Tensor
    seconds: float                      # since this model started sampling
    first_chunk_seconds: float | None   # student: time to its first chunk
    done: bool                          # this model's clip is complete
    nfe: int                            # network evaluations per chunk (student) or per clip (teacher)
    first_chunk_nfe: int | None = None  # student: the first chunk's (more under first-frame enhancement)

    @property
    def frames_per_second(self) -> float:
        return self.frames.shape[0] / max(self.seconds, 1e-9)


class VideoSideBySide:
    """A causal video student (class-conditioned) and an optional teacher on one device."""

    def __init__(self, student: str | Path, teacher: str | Path | None = None, device: str | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.student = self._student(student)
        self.teacher = LoadedModel(teacher, self.device, medium="video") if teacher else None
        for m in (self.student, self.teacher):
            if m is not None and m.conditioning != "class":
                raise ValueError(f"{str(m.directory)!r} is text-conditioned; the video tab streams class-conditioned "
                                 "clips (benchmark B2); use `diffdistill sample --stream --prompt` for text models")

    def _student(self, path: str | Path) -> LoadedModel:
        student = LoadedModel(path, self.device, medium="video")
        if not student.spec.chunk_frames:
            raise ValueError(f"{str(student.directory)!r} samples whole clips: the video tab streams a causal "
                             "student (an export with chunk_frames > 0, e.g. from recipes/video/self_forcing.yaml)")
        return student

    def load_student(self, path: str | Path) -> None:
        """Swap in another causal student (the teacher stays); on any error the student held so far stays."""
        student = self._student(path)
        if self.teacher is not None and student.num_classes != self.teacher.num_classes:
            raise ValueError(f"{str(student.directory)!r} has {student.num_classes} classes, the teacher "
                             f"{self.teacher.num_classes}; pick a student of this teacher")
        self.student = student

    @property
    def student_step_choices(self) -> list[int]:
        """The step counts the student serves: its ladder's (an ASD student: 1, 2, 4) or its own."""
        spec = self.student.spec
        return [len(r) for r in spec.ladder] or [spec.steps]

    def stream(self, label: int, seed: int | None = 0, teacher_steps: int | None = None,
               guidance: float | None = None, student_steps: int | None = None,
               ffe: int | None = None) -> Iterator[VideoUpdate]:
        """The student's frames after every chunk, then the teacher's clip (same seed, same class). ``student_steps``
        picks a rung of the student's ladder; ``ffe`` gives the first chunk that many steps (first-frame
        enhancement; 0: off; None: the export's setting)."""
        if not 0 <= label < self.student.num_classes:
            raise ValueError(f"class must be in 0..{self.student.num_classes - 1}, got {label}")
        if student_steps is not None and student_steps not in self.student_step_choices:
            raise ValueError(f"student steps must be one of {self.student_step_choices}, got {student_steps}")
        if teacher_steps is not None and self.teacher is not None and teacher_steps not in self.teacher.step_choices:
            raise ValueError(f"teacher steps must be one of {self.teacher.step_choices}, got {teacher_steps}")
        seed = random.randint(0, MAX_SEED) if seed is None else seed
        labels = torch.tensor([label])
        chunks: list[Tensor] = []
        first = None
        spec = self.student.spec.override(self.student.model.schedule, student_steps, ffe=ffe)
        for k, chunk, seconds in stream(self.student.model, spec, 1, seed, labels):
            chunks.append(chunk[0])
            first = seconds if first is None else first
            yield VideoUpdate("student", torch.cat(chunks).clamp(-1, 1), seconds, first,
                              done=sum(c.shape[0] for c in chunks) >= self.student.model.data_shape[0], nfe=spec.steps,
                              first_chunk_nfe=spec.first_chunk_steps)
        if self.teacher is not None:
            t = self.teacher
            plan = t.spec.override(t.model.schedule, teacher_steps, guidance=guidance)
            clip, _, seconds = generate(t.model, plan, 1, seed, batch_size=1, labels=labels.to(self.device),
                                        progress=False)
            yield VideoUpdate("teacher", clip[0].clamp(-1, 1), seconds, None, done=True, nfe=plan.nfe)
