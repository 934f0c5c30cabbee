"""Gradio few-step sampler: a distilled student next to its teacher, same seed, timed in the same click.

    diffdistill demo                                   # shipped DMD2 1-step student vs the shipped teacher
    diffdistill demo runs/dmd2-fmnist-quick --teacher diffdistill/assets/fmnist/teacher --port 7860
    python demos/gradio_sampler.py runs/dmd2-fmnist-quick --no-teacher

Three parts (the split of Flux's demo_gr.py): :class:`~diffdistill.inference.side_by_side.SideBySide` holds the loaded models
and samples (no UI, in the package), :func:`create_demo` builds the ``gr.Blocks``, :func:`main` parses the command
line and launches. The server binds 127.0.0.1 unless ``--host`` or ``--share`` says otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import ipaddress
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")     # a local demo has no reason to phone home

from diffdistill.inference.side_by_side import (DEFAULT_STUDENT, DEFAULT_TEACHER, HOW_TO_GET_A_STUDENT, MAX_IMAGES, MAX_SEED,
                                      Comparison, Request, SideBySide)
from diffdistill.inference.catalog import ASSETS, CatalogEntry, default_roots, find_exports
from diffdistill.inference.video_side_by_side import VideoSideBySide, VideoUpdate
from diffdistill.visual import save_video, to_pil

if TYPE_CHECKING:
    import gradio

EXIT_BAD_INPUT = 2
ALL_CLASSES = -1
MIN_SIDE = 128          # 32-pixel samples are enlarged with sharp pixels (visual.to_pil)
TEXT_NOTE = ("Text-to-image students need an exported SD/SDXL pipeline: the export's UNet plus the text encoders and "
             "VAE of the diffusers pipeline folder it was distilled from (`--pipeline`, default: the recipe's "
             "`model.pretrained`). Fashion-MNIST models are class-conditional and need nothing else.")
VIDEO_NOTE = ("### Video (streaming)\nStart the demo with `--video-student RUN` (a causal student, e.g. from "
              "`diffdistill train recipes/video/self_forcing.yaml`) and optionally `--video-teacher "
              "diffdistill/assets/moving_fmnist/teacher` to stream clips chunk by chunk here, with first-chunk "
              "latency and frames/s next to the teacher's clip.")


DEFAULT_VIDEO_TEACHER = ASSETS / "moving_fmnist" / "teacher"


def create_demo(sampler: SideBySide, allow_checkpoint_switch: bool = True,
                video: VideoSideBySide | None = None, catalog: Sequence[CatalogEntry] = ()) -> "gradio.Blocks":
    """The Blocks app over ``sampler`` (and ``video``: the streaming tab's causal student and teacher).
    ``allow_checkpoint_switch`` False locks the checkpoint boxes (use it whenever the page is reachable by others: the
    boxes read any folder on this machine). ``catalog``: the exports each tab's student picker offers (the picker
    loads only those, so it stays on when the boxes are locked)."""
    import gradio as gr     # imported here: a bad command line fails fast, without gradio's import time

    with gr.Blocks(title="diffdistill few-step sampler") as demo:
        gr.Markdown("# diffdistill few-step sampler\nA distilled student next to its teacher, from the same seed "
                    "and noise; the speed-up is measured in the same click.")
        info = gr.Markdown(_model_info(sampler))
        with gr.Tab("Image"):
            with gr.Row():
                with gr.Column(scale=1, min_width=280):
                    image_students = _picker_choices(catalog, "image", sampler.student.directory)
                    picker = gr.Dropdown(choices=image_students, value=str(sampler.student.directory),
                                         label="Student (method, steps, export)", elem_id="student-picker",
                                         visible=len(image_students) > 1)
                    label = gr.Dropdown(**_class_props(sampler), label="Class", interactive=True)
                    prompt = gr.Textbox(label="Prompt", info=TEXT_NOTE, lines=2, visible=sampler.conditioning == "text")
                    student_steps = gr.Radio(**_student_props(sampler), label="Student steps")
                    teacher_steps = gr.Radio(**_teacher_props(sampler), label="Teacher steps (DDIM)",
                                             elem_id="teacher-steps")
                    guidance = gr.Slider(**_guidance_props(sampler), minimum=0.0, maximum=10.0, step=0.5,
                                         label="Teacher guidance",
                                         info="standard CFG: uncond + w (cond - uncond); 1 = none. Distilled "
                                              "students have CFG built in and take none.")
                    n = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images", elem_id="n-images")
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, elem_id="seed")
                        randomize = gr.Checkbox(True, label="Random seed", elem_id="random-seed")
                    run = gr.Button("Generate", variant="primary", elem_id="generate")
                    with gr.Accordion("Checkpoints", open=False):
                        student_path = gr.Textbox(_shown(sampler.student.directory), label="Student export",
                                                  interactive=allow_checkpoint_switch)
                        teacher_path = gr.Textbox(_shown(sampler.teacher.directory) if sampler.teacher else "",
                                                  label="Teacher export (empty: none)",
                                                  interactive=allow_checkpoint_switch)
                        load = gr.Button("Load" if allow_checkpoint_switch else
                                         "Load (off: this page is reachable from other machines)",
                                         interactive=allow_checkpoint_switch)
                    status = gr.Markdown()
                with gr.Column(scale=3):   # wide enough for 4 gallery columns per model
                    with gr.Row():
                        student_out = gr.Gallery(label="Student", columns=4, format="png", height="auto")
                        teacher_out = gr.Gallery(label="Teacher", columns=4, format="png", height="auto",
                                                 visible=sampler.teacher is not None)
                    timings = gr.Markdown(elem_id="timings")
                    used_seed = gr.Number(label="Used seed", precision=0, interactive=False)
                    with gr.Accordion("Timings (JSON)", open=False):
                        raw = gr.JSON()
        with gr.Tab("Video (streaming)"):
            if video is None:
                gr.Markdown(VIDEO_NOTE)
            else:
                with gr.Row():
                    with gr.Column(scale=1, min_width=280):
                        video_students = _picker_choices(catalog, "video", video.student.directory, causal=True)
                        v_picker = gr.Dropdown(choices=video_students, value=str(video.student.directory),
                                               label="Causal student (method, steps, export)",
                                               elem_id="video-student-picker", visible=len(video_students) > 1)
                        v_label = gr.Dropdown(choices=[(name, i) for i, name in
                                                       enumerate(video.student.class_names)], value=0,
                                              label="Class", interactive=True, elem_id="video-class")
                        steps_choices = video.student_step_choices
                        v_student_steps = gr.Radio(choices=steps_choices, value=video.student.spec.steps,
                                                   label="Student steps per chunk", elem_id="video-student-steps",
                                                   visible=len(steps_choices) > 1)
                        v_ffe = gr.Radio(choices=[0] + steps_choices, value=video.student.spec.first_chunk_steps
                                         if video.student.spec.first_chunk_times else 0,
                                         label="First chunk steps (first-frame enhancement; 0 = off)",
                                         elem_id="video-ffe", visible=len(steps_choices) > 1)
                        v_steps = gr.Radio(choices=video.teacher.step_choices if video.teacher else [],
                                           value=video.teacher.default_steps if video.teacher else None,
                                           label="Teacher steps (Euler)", visible=video.teacher is not None)
                        v_seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED,
                                           elem_id="video-seed")
                        v_run = gr.Button("Stream", variant="primary", elem_id="stream")
                    with gr.Column(scale=3):
                        with gr.Row():
                            v_student = gr.Image(label="Student (streamed chunk by chunk)", type="filepath",
                                                 elem_id="video-student")
                            v_teacher = gr.Image(label="Teacher (whole clip)", type="filepath",
                                                 visible=video.teacher is not None, elem_id="video-teacher")
                        v_timings = gr.Markdown(elem_id="video-timings")

                def on_stream(label_v, steps_v, seed_v, student_steps_v=None, ffe_v=None):
                    try:
                        shown: dict = {"student": None, "teacher": None}
                        gifs: dict = {"student": None, "teacher": None}
                        for update in video.stream(int(label_v), _int(seed_v) or 0, _int(steps_v),
                                                   student_steps=_int(student_steps_v), ffe=_int(ffe_v)):
                            shown[update.model], gifs[update.model] = update, _clip_gif(update)
                            yield gifs["student"], gifs["teacher"], _video_timings(shown)
                    except ValueError as err:
                        raise gr.Error(str(err), print_exception=False) from None

                v_run.click(on_stream, [v_label, v_steps, v_seed, v_student_steps, v_ffe],
                            [v_student, v_teacher, v_timings], api_name="stream")

                def on_pick_video(choice):
                    if choice not in {path for _, path in video_students}:
                        raise gr.Error(f"{choice!r} is not one of the listed students", print_exception=False)
                    try:
                        video.load_student(choice)
                    except (ValueError, OSError) as err:
                        raise gr.Error(str(err), print_exception=False) from None
                    spec, choices = video.student.spec, video.student_step_choices
                    return (gr.Radio(choices=choices, value=spec.steps, visible=len(choices) > 1),
                            gr.Radio(choices=[0] + choices, value=spec.first_chunk_steps if spec.first_chunk_times
                                     else 0, visible=len(choices) > 1),
                            f"Loaded {video.student.directory}.")

                v_picker.change(on_pick_video, [v_picker], [v_student_steps, v_ffe, v_timings],
                                api_name="pick_video_student")

        def on_generate(label_v, prompt_v, s_steps, t_steps, w, n_v, seed_v, random_v):
            req = Request(label=None if label_v in (None, ALL_CLASSES) else int(label_v), prompt=prompt_v or "",
                          student_steps=_int(s_steps), teacher_steps=_int(t_steps), guidance=w, n=int(n_v),
                          seed=None if random_v else _int(seed_v) or 0)
            try:
                result = sampler.generate(req)
            except ValueError as err:       # bad input: the message, no traceback (gr.Error shows it in the page)
                raise gr.Error(str(err), print_exception=False) from None
            except Exception as err:        # a bug or an exhausted device: keep the server up, log the trace here
                traceback.print_exc()
                raise gr.Error(f"generation failed ({type(err).__name__}: {err}); the server log has the details",
                               print_exception=False) from None
            return (*_galleries(sampler, result, req), _timing_table(result, sampler), result.seed,
                    result.timings(), f"Generated {req.n} image(s) per model with seed {result.seed}.")

        def on_load(s_path, t_path):
            try:
                sampler.load(s_path.strip(), t_path.strip() or None)
            except (ValueError, OSError) as err:        # missing, damaged or unsuitable exports
                gr.Warning(str(err))
                return *(gr.skip(),) * 7, f"**Could not load:** {err}\n\nThe models loaded before stay in use."
            except Exception as err:
                traceback.print_exc()
                return *(gr.skip(),) * 7, f"**Could not load** ({type(err).__name__}: {err}); see the server log."
            return (_model_info(sampler), gr.Dropdown(**_class_props(sampler)),
                    gr.Textbox(visible=sampler.conditioning == "text"), gr.Radio(**_student_props(sampler)),
                    gr.Radio(**_teacher_props(sampler)), gr.Slider(**_guidance_props(sampler)),
                    gr.Gallery(value=[], visible=sampler.teacher is not None),
                    f"Loaded {sampler.student.directory}" + (f" and {sampler.teacher.directory}." if sampler.teacher
                                                             else " (no teacher)."))

        run.click(on_generate, [label, prompt, student_steps, teacher_steps, guidance, n, seed, randomize],
                  [student_out, teacher_out, timings, used_seed, raw, status], api_name="generate")
        def on_pick(choice):
            if choice not in {path for _, path in image_students}:
                raise gr.Error(f"{choice!r} is not one of the listed students", print_exception=False)
            return on_load(choice, str(sampler.teacher.directory) if sampler.teacher else "")

        picker.change(on_pick, [picker], [info, label, prompt, student_steps, teacher_steps, guidance, teacher_out,
                                          status], api_name="pick_student")
        if allow_checkpoint_switch:     # not even an API endpoint otherwise: a locked box alone would not stop clients
            load.click(on_load, [student_path, teacher_path],
                       [info, label, prompt, student_steps, teacher_steps, guidance, teacher_out, status],
                       api_name="load")
    return demo


# ---------------------------------------------------------------------- component settings from the loaded models
def _picker_choices(catalog: Sequence[CatalogEntry], medium: str, current: Path,
                    causal: bool = False) -> list[tuple[str, str]]:
    """(label, path) of each student of ``medium`` in the catalogue (causal ones for the video tab), the loaded
    one first when the catalogue does not list it."""
    entries = [e for e in catalog if e.medium == medium and not e.is_teacher and (e.causal or not causal)]
    choices = [(e.label, str(e.path)) for e in entries]
    if str(current) not in {path for _, path in choices}:
        choices.insert(0, (f"{Path(current).name} (loaded)", str(current)))
    return choices


def _class_props(s: SideBySide) -> dict:
    names = s.student.class_names
    choices = [("All classes (one of each)", ALL_CLASSES)] + [(name, i) for i, name in enumerate(names)]
    return {"choices": choices, "value": ALL_CLASSES, "visible": s.conditioning == "class"}


def _student_props(s: SideBySide) -> dict:
    m = s.student
    if m.distilled:
        ts = ", ".join(f"{t:.3f}" for t in m.spec.times)
        note = f"the distilled schedule: t = {ts}" + (f" (timesteps {list(m.spec.timesteps)})"
                                                      if m.spec.timesteps else "")
    else:
        note = "this model is not distilled: ODE steps"
    return {"choices": m.step_choices, "value": m.default_steps, "info": note}


def _teacher_props(s: SideBySide) -> dict:
    t = s.teacher
    return {"choices": t.step_choices if t else [], "value": t.default_steps if t else None, "visible": t is not None}


def _guidance_props(s: SideBySide) -> dict:
    t = s.teacher
    uses = t is not None and not t.distilled           # CFG-distilled models sample at their exported guidance
    return {"value": t.default_guidance if t else 1.0, "visible": uses}


def _model_info(s: SideBySide) -> str:
    def line(name: str, m) -> str:
        how = (f"{m.spec.sampler} sampler, steps {m.step_choices}" if m.distilled
               else f"DDIM, {m.default_steps} steps, CFG {m.default_guidance:g}")
        return f"**{name}:** `{_shown(m.directory)}` ({how})"

    lines = [line("Student", s.student), line("Teacher", s.teacher) if s.teacher else "**Teacher:** none"]
    return "  \n".join(lines + [f"Device: `{s.device}`"])


# ---------------------------------------------------------------------- outputs
def _galleries(s: SideBySide, r: Comparison, req: Request) -> tuple[list, list]:
    if s.conditioning == "class":
        names = s.student.class_names
        captions = [names[req.label if req.label is not None else i % len(names)] for i in range(req.n)]
    else:
        captions = [req.prompt.strip()] * req.n

    def gallery(images) -> list:
        return list(zip(to_pil(images, MIN_SIDE), captions))

    return gallery(r.student.images), (gallery(r.teacher.images) if r.teacher is not None else [])


def _timing_table(r: Comparison, s: SideBySide) -> str:
    cols = [("student", r.student)] + ([("teacher", r.teacher)] if r.teacher is not None else [])
    rows = [("steps", lambda x: f"{x.steps}"),
            ("NFE per image", lambda x: f"{x.nfe}" + (f" (CFG {x.guidance:g})" if x.guidance != 1.0 else "")),
            ("ms per image", lambda x: f"{x.ms_per_image:.1f}"),
            ("total ms", lambda x: f"{1000 * x.seconds:.0f}")]
    lines = ["| | " + " | ".join(name for name, _ in cols) + " |", "|---|" + "---:|" * len(cols)]
    lines += [f"| {what} | " + " | ".join(fmt(x) for _, x in cols) + " |" for what, fmt in rows]
    if r.speedup is not None:
        lines += ["", f"**Student speed-up: {r.speedup:.1f}x** (teacher ms per image / student ms per image, "
                      f"this click, {s.device})"]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it (shorter in the page)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _clip_gif(update: VideoUpdate) -> str:
    """The frames so far as an animated GIF in a fresh temporary file (the browser reloads a new path)."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="diffdistill-video-"))
    return str(save_video(update.frames[None], folder / f"{update.model}.gif", min_side=MIN_SIDE, mp4=False)[0])


def _video_timings(shown: dict) -> str:
    s, t = shown["student"], shown["teacher"]
    lines = ["| | frames | first chunk | seconds | frames/s |", "|---|---:|---:|---:|---:|"]
    if s is not None:
        steps = f"{s.nfe} steps/chunk" + (f", first {s.first_chunk_nfe}" if s.first_chunk_nfe != s.nfe else "")
        lines.append(f"| student ({steps}) | {s.frames.shape[0]}{'' if s.done else ' (streaming)'} | "
                     f"{s.first_chunk_seconds:.3f} s | {s.seconds:.3f} | {s.frames_per_second:.1f} |")
    if t is not None:
        lines.append(f"| teacher ({t.nfe} NFE) | {t.frames.shape[0]} | - | {t.seconds:.3f} | "
                     f"{t.frames_per_second:.1f} |")
        if s is not None:
            lines.append(f"\nStreaming speed-up, measured in this click: **{s.frames_per_second / t.frames_per_second:.1f}x** "
                         f"frames/s; the first frames show after {s.first_chunk_seconds:.3f} s instead of "
                         f"{t.seconds:.3f} s.")
    return "\n".join(lines)


def _int(v) -> int | None:
    return None if v is None or v == "" else int(v)


# ---------------------------------------------------------------------- command line
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="diffdistill demo", description=__doc__.splitlines()[0])
    p.add_argument("student", nargs="?", default=None,
                   help=f"student export or run directory (default: {DEFAULT_STUDENT} when it exists)")
    p.add_argument("--teacher", default=str(DEFAULT_TEACHER), help="teacher export (default: the shipped teacher)")
    p.add_argument("--no-teacher", action="store_true", help="show the student alone")
    p.add_argument("--pipeline", default=None,
                   help="text models: the diffusers SD/SDXL pipeline folder for text encoders and VAE")
    p.add_argument("--video-student", default=None, help="a causal video student export or run (the streaming tab)")
    p.add_argument("--video-teacher", default=None, help="its teacher (default: none)")
    p.add_argument("--no-video", action="store_true",
                   help="no video tab model unless --video-student is given (default: the first causal student the "
                        "pickers find, with the shipped Moving Fashion-MNIST teacher)")
    p.add_argument("--students-from", nargs="*", default=[], metavar="FOLDER",
                   help="more folders whose exports the student pickers list (always: the shipped assets and ./runs)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only; 0.0.0.0 exposes the demo to "
                        "the network)")
    p.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also publish a temporary public gradio.live link")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if importlib.util.find_spec("gradio") is None:
        print("error: the demo needs gradio: pip install -e '.[demo]'", file=sys.stderr)
        return EXIT_BAD_INPUT
    student = args.student or (str(DEFAULT_STUDENT) if DEFAULT_STUDENT.exists() else None)
    if student is None:
        print(f"error: no student given and the shipped {DEFAULT_STUDENT} is not there; {HOW_TO_GET_A_STUDENT}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    catalog = find_exports([*default_roots(), *args.students_from])
    video_student, video_teacher = args.video_student, args.video_teacher
    if video_student is None and not args.no_video:     # the first causal student found, beside the shipped teacher
        causal = [e for e in catalog if e.medium == "video" and e.causal and not e.is_teacher]
        # a finished student before an initialisation stage (ODE regression) when both are there
        causal.sort(key=lambda e: e.method == "ode_regression")
        video_student = str(causal[0].path) if causal else None
        video_teacher = video_teacher or (str(DEFAULT_VIDEO_TEACHER) if video_student and
                                          DEFAULT_VIDEO_TEACHER.exists() else None)
    try:
        sampler = SideBySide(student, None if args.no_teacher else args.teacher, args.device, args.pipeline)
        video = VideoSideBySide(video_student, video_teacher, args.device) if video_student else None
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}\nTo get a student: {HOW_TO_GET_A_STUDENT}; the teacher ships at {DEFAULT_TEACHER}.",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    local = not args.share and _is_loopback(args.host)
    demo = create_demo(sampler, allow_checkpoint_switch=local, video=video, catalog=catalog)
    # one generation at a time: the models live on one device, and parallel clicks would distort each other's timings
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


if __name__ == "__main__":
    sys.exit(main())
