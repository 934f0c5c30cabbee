"""How to sample an exported model: the typed spec a method writes and the one sampling path reads.

A method returns a :class:`SamplingSpec` (``Method.sampling_spec``); the trainer stores ``spec.to_dict()`` as the
``sampling`` entry of the export's ``diffdistill.json``; ``sample``, ``eval``, the demo and the benchmark scripts
read it back with :meth:`SamplingSpec.from_export` and sample through :func:`diffdistill.inference.generate.generate`.

* ``sampler``: ``ode`` (DDIM / Euler on the probability-flow ODE: teachers), ``few_step`` (predict x0, re-noise
  with fresh noise, repeat: distilled students, DMD2 sec. 4.5, arXiv:2405.14867) or ``tcd`` (trajectory
  consistency sampling with stochasticity ``eta``, arXiv:2402.19159: Hyper-SD's unified student at any of 1-8
  steps on the ``tcd`` grid).
* ``times``: the continuous times of the steps, noisy -> clean (1 = noise). A distilled student's are the times it was
  trained on; other step counts are off its distribution.
* ``guidance``: the standard-form CFG scale ``uncond + w (cond - uncond)``; 1 = none (students that distil a guided
  teacher bake the guidance in and sample at 1).
* ``fixed``: the times of an ``ode``-sampled student are the ones it was trained on (Phased DMD's experts step with
  Euler between their phase boundaries, arXiv:2510.27684 sec. 3); like ``few_step``, other step counts leave them.
* ``chunk_frames``: video students that generate causally, chunk by chunk with a KV cache, each chunk on ``times``
  (inference/streaming.py; 0 = the whole sample at once).
* ``ladder``: the schedules of every step count one student serves, fewest steps first (an adversarial
  self-distillation student serves 1, 2 and 4 steps, arXiv:2511.01419); another step count picks its rung, on the
  student's distribution.
* ``first_chunk_times``: first-frame enhancement (ASD sec. 3.3): the first chunk's own, longer schedule (later chunks
  take ``times``: fewer steps with larger skips); empty = every chunk on ``times``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from ..schedule import Schedule

Sampler = Literal["ode", "few_step", "tcd"]
SAMPLERS: tuple[Sampler, ...] = ("ode", "few_step", "tcd")
Spacing = Literal["leading", "trailing", "linspace", "tcd"]


@dataclass(frozen=True)
class SamplingSpec:
    sampler: Sampler
    times: tuple[float, ...]
    guidance: float = 1.0
    num_classes: int = 0
    spacing: Spacing = "trailing"          # the grid for another step count (ODE samplers)
    timesteps: tuple[int, ...] = ()        # the network's own timesteps for ``times`` (diffusers pipelines)
    chunk_frames: int = 0
    fixed: bool = False
    eta: float = 0.0                       # the tcd sampler's stochasticity (its gamma): 0 = DDIM, 1 = re-noise x0
    ladder: tuple[tuple[float, ...], ...] = ()     # one schedule per step count the student serves, fewest first
    first_chunk_times: tuple[float, ...] = ()      # first-frame enhancement: the first chunk's schedule

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        object.__setattr__(self, "times", _check_times(self.times, "sampling times"))
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"the tcd sampler's eta must lie in [0, 1], got {self.eta}")
        object.__setattr__(self, "ladder", tuple(_check_times(rung, "a ladder schedule") for rung in self.ladder))
        if any(len(b) <= len(a) for a, b in zip(self.ladder, self.ladder[1:])):
            raise ValueError(f"the ladder's schedules must have strictly more steps each, got "
                             f"{[len(r) for r in self.ladder]} steps")
        if self.first_chunk_times:
            object.__setattr__(self, "first_chunk_times", _check_times(self.first_chunk_times, "first_chunk_times"))
            if not self.chunk_frames:
                raise ValueError("first_chunk_times (first-frame enhancement) applies to causal students "
                                 "(chunk_frames > 0) only")
        if self.chunk_frames < 0:
            raise ValueError(f"chunk_frames must be >= 0, got {self.chunk_frames}")
        if self.chunk_frames and self.guidance != 1.0:
            raise ValueError(f"a causal student (chunk_frames={self.chunk_frames}) samples without CFG (guidance 1, "
                             f"the teacher's guidance is distilled in; its KV cache holds one batch), got guidance "
                             f"{self.guidance}")

    @property
    def steps(self) -> int:
        return len(self.times)

    @property
    def distilled(self) -> bool:
        """A student trained on its own fixed times (only those times are on its distribution)."""
        return self.sampler == "few_step" or self.fixed

    @property
    def first_chunk_steps(self) -> int:
        """The first chunk's step count (first-frame enhancement; otherwise ``steps``)."""
        return len(self.first_chunk_times) or self.steps

    @property
    def nfe(self) -> int:
        """Network evaluations per sample (per chunk for causal students; the first chunk's extra steps under
        first-frame enhancement are in ``first_chunk_steps``): CFG runs the conditional and the unconditional model
        at every step."""
        return self.steps * (1 if self.guidance == 1.0 else 2)

    def rung(self, steps: int) -> tuple[float, ...] | None:
        """The ladder's schedule of ``steps`` steps (None: the student serves no such rung)."""
        return next((r for r in self.ladder if len(r) == steps), None)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "times": list(self.times), "timesteps": list(self.timesteps), "steps": self.steps,
                "ladder": [list(r) for r in self.ladder], "first_chunk_times": list(self.first_chunk_times)}

    @classmethod
    def from_dict(cls, info: dict[str, Any], schedule: Schedule) -> "SamplingSpec":
        """Read an export's ``sampling`` entry (older exports: an ODE teacher recorded only its step count)."""
        sampler = info.get("sampler", "ode")
        spacing = info.get("spacing", "trailing")
        times = info.get("times") or [float(t) for t in schedule.step_grid(int(info.get("steps", 50)), spacing)]
        return cls(sampler, tuple(times), float(info.get("guidance", 1.0)), int(info.get("num_classes", 0)), spacing,
                   tuple(info.get("timesteps", ())), int(info.get("chunk_frames", 0)), bool(info.get("fixed", False)),
                   float(info.get("eta", 0.0)), tuple(tuple(r) for r in info.get("ladder", ())),
                   tuple(info.get("first_chunk_times", ())))

    def off_schedule(self, steps: int | None = None, sampler: Sampler | None = None) -> str | None:
        """Why ``steps`` / ``sampler`` would sample a distilled student off what it was trained for (None: they
        would not). A teacher's ODE takes any step count."""
        if not self.distilled:
            return None
        asked = []
        if steps is not None and steps != self.steps and self.rung(steps) is None:
            asked.append(f"{steps} steps")
        if sampler is not None and sampler != self.sampler:
            asked.append(f"the {sampler} sampler")
        if not asked:
            return None
        served = (f" (or the ladder's {[len(r) for r in self.ladder]} steps)" if self.ladder else "")
        return (f"this student was distilled for {self.steps} {self.sampler} step(s) at t = "
                f"{[round(t, 4) for t in self.times]}{served}; {' and '.join(asked)} would sample it off its training "
                "distribution (washed-out samples)")

    def override(self, schedule: Schedule, steps: int | None = None, sampler: Sampler | None = None,
                 guidance: float | None = None, eta: float | None = None,
                 ffe: int | None = None) -> "SamplingSpec":
        """This spec with a user's choices: another sampler, another step count (the ladder's rung of that many
        steps; else a ``spacing`` grid: a student sampled off its distilled times), another CFG scale, another TCD
        ``eta``, first-frame enhancement with the ladder's ``ffe``-step rung on the first chunk (0: off)."""
        if steps is not None and steps <= 0:
            raise ValueError(f"steps must be > 0, got {steps}")
        if sampler is not None and sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        out = replace(self, sampler=sampler or self.sampler,
                      guidance=float(guidance) if guidance is not None else self.guidance,
                      eta=float(eta) if eta is not None else self.eta)
        if steps is not None and steps != self.steps:
            out = replace(out, times=self.schedule_of(steps, schedule), timesteps=())
        if ffe is not None:
            out = replace(out, first_chunk_times=self._ffe_times(ffe, out.steps, schedule))
        return out

    def schedule_of(self, steps: int, schedule: Schedule) -> tuple[float, ...]:
        """The times for ``steps`` steps: the student's own, its ladder's rung, or (a distilled student asked for
        fewer steps than it was trained on) the evenly spaced subset of its own times, so a 4-step student at 2 steps
        keeps its first time and skips (ASD's "without ASD" baselines, arXiv:2511.01419 sec. 4; a ``spacing`` grid
        there would put a flow student's second step at t = 0.009); otherwise the ``spacing`` grid (teachers, TCD,
        more steps than trained)."""
        if steps == self.steps:
            return self.times
        rung = self.rung(steps)
        if rung is not None:
            return rung
        if self.distilled and steps < self.steps:
            return evenly_spaced_subset(self.times, steps)
        return tuple(float(t) for t in schedule.step_grid(steps, self.spacing))

    def _ffe_times(self, ffe: int, steps: int, schedule: Schedule) -> tuple[float, ...]:
        """The first chunk's schedule for ``ffe`` first-chunk steps (0: none), with a clear error when the student
        does not serve it."""
        if ffe == 0:
            return ()
        if not self.chunk_frames:
            raise ValueError("first-frame enhancement (--ffe) applies to causal video students (chunk_frames > 0)")
        if ffe < steps:
            raise ValueError(f"first-frame enhancement gives the first chunk MORE steps than the others: ffe={ffe} "
                             f"< {steps} steps")
        if self.ladder:
            if self.rung(ffe) is None:
                raise ValueError(f"this student serves {[len(r) for r in self.ladder]} steps; first-frame "
                                 f"enhancement needs one of them for the first chunk, got ffe={ffe}")
        elif ffe > self.steps:
            raise ValueError(f"this student was trained for {self.steps} steps; first-frame enhancement can give the "
                             f"first chunk at most those, got ffe={ffe}")
        return self.schedule_of(ffe, schedule)


def evenly_spaced_subset(times: tuple[float, ...] | list[float], n: int) -> tuple[float, ...]:
    """``n`` of the N ``times`` at indices round(j N / n), j < n: always the first (noisiest) time, then even skips
    (the default ladder of an ASD student, arXiv:2511.01419 sec. 3.2, and fewer steps of any distilled student)."""
    if not 1 <= n <= len(times):
        raise ValueError(f"a subset of {len(times)} times needs 1..{len(times)} of them, got {n}")
    return tuple(float(times[round(j * len(times) / n)]) for j in range(n))


def _check_times(times: Any, what: str) -> tuple[float, ...]:
    """``times`` as floats, strictly decreasing within [0, 1]."""
    out = tuple(float(t) for t in times)
    if not out or any(not 0.0 <= t <= 1.0 for t in out) or any(b >= a for a, b in zip(out, out[1:])):
        raise ValueError(f"{what} must decrease strictly within [0, 1], got {list(out)}")
    return out
