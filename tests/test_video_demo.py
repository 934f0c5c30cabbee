"""The demo's video tab: the engine (diffdistill/inference/video_side_by_side.py) streams a causal student chunk by
chunk next to its teacher's clip, and the Gradio app serves it (`/stream`, through gradio_client on a loopback port).
The models are tiny class-conditioned Wans built from configs and exported here."""

import copy
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

from tiny_diffusers import tiny_wan_config  # noqa: E402

from diffdistill.inference.video_side_by_side import VideoSideBySide  # noqa: E402
from diffdistill.models.registry import build_model, save_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("video")
    torch.manual_seed(0)
    teacher = build_model({"kind": "wan", "config": {**tiny_wan_config(), "in_channels": 1, "out_channels": 1},
                           "num_classes": 10, "num_frames": 4, "height": 8, "width": 8})
    names = {"run_config": {"data": {"name": "moving_fmnist"}}}
    save_model(teacher, root / "teacher", {"sampling": {"sampler": "ode", "steps": 4, "guidance": 3.0,
                                                        "num_classes": 10}, **names})
    student = copy.deepcopy(teacher).make_causal(chunk_frames=2)
    save_model(student, root / "student", {"sampling": {"sampler": "few_step", "times": [1.0, 0.5], "guidance": 1.0,
                                                        "num_classes": 10, "chunk_frames": 2}, **names})
    ladder = copy.deepcopy(student)
    save_model(ladder, root / "ladder", {"sampling": {"sampler": "few_step", "times": [1.0], "guidance": 1.0,
                                                      "num_classes": 10, "chunk_frames": 2,
                                                      "ladder": [[1.0], [1.0, 0.5]]}, **names})
    return root / "student", root / "teacher"


def test_the_student_streams_chunk_by_chunk_then_the_teacher_shows_its_clip(exports):
    student, teacher = exports
    engine = VideoSideBySide(student, teacher, device="cpu")
    updates = list(engine.stream(label=3, seed=7, teacher_steps=4))
    assert [(u.model, u.frames.shape[0], u.done) for u in updates] == [("student", 2, False), ("student", 4, True),
                                                                      ("teacher", 4, True)]
    assert updates[0].first_chunk_seconds == updates[1].first_chunk_seconds <= updates[1].seconds
    assert torch.equal(updates[1].frames[:2], updates[0].frames)          # streamed frames never change afterwards
    assert updates[2].nfe == 8 and updates[0].nfe == 2
    again = list(engine.stream(label=3, seed=7, teacher_steps=4))
    assert torch.equal(again[1].frames, updates[1].frames)                # same seed, same clip


def test_a_ladder_student_streams_any_rung_and_first_frame_enhancement(exports):
    """An ASD-style student (a ladder of 1 and 2 steps): the tab offers both; with first-frame enhancement the first
    chunk is exactly the 2-step clip's first chunk (same seed) and the later chunks are the 1-step clip's."""
    engine = VideoSideBySide(exports[0].parent / "ladder", device="cpu")
    assert engine.student_step_choices == [1, 2]
    one, two, ffe = (list(engine.stream(label=3, seed=7, student_steps=s, ffe=f))[-1]
                     for s, f in ((1, 0), (2, 0), (1, 2)))
    assert (one.nfe, one.first_chunk_nfe, ffe.nfe, ffe.first_chunk_nfe, two.nfe) == (1, 1, 1, 2, 2)
    assert torch.equal(ffe.frames[:2], two.frames[:2]) and not torch.equal(ffe.frames[:2], one.frames[:2])
    assert not torch.equal(ffe.frames[2:], two.frames[2:])
    with pytest.raises(ValueError, match="student steps must be one of \\[1, 2\\]"):
        next(engine.stream(label=3, student_steps=4))


def test_the_video_tab_refuses_what_it_cannot_stream(exports):
    student, teacher = exports
    with pytest.raises(ValueError, match="samples whole clips: the video tab streams a causal student"):
        VideoSideBySide(teacher, device="cpu")
    with pytest.raises(ValueError, match="class must be in 0..9"):
        next(VideoSideBySide(student, device="cpu").stream(label=12))
    from diffdistill.inference.side_by_side import DEFAULT_TEACHER, SideBySide

    with pytest.raises(ValueError, match="a video model: give it to the video tab"):
        SideBySide(student, DEFAULT_TEACHER, device="cpu")                # an image tab asked for video sampling
    with pytest.raises(ValueError, match="an image model: give it to the image tab"):
        VideoSideBySide(DEFAULT_TEACHER, device="cpu")


@pytest.mark.slow          # a server in a subprocess (~20 s); the engine above is tested in the default tier
def test_the_app_streams_through_gradio(exports):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    from gradio_client import Client

    student, teacher = exports
    spec = importlib.util.spec_from_file_location("demos_screenshot", REPO / "demos" / "screenshot.py")
    screenshot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(screenshot)
    args = ["--video-student", str(student), "--video-teacher", str(teacher), "--students-from", str(student.parent)]
    with screenshot.running_demo(args, command=[sys.executable, "-m", "diffdistill.cli", "demo"], env=ENV) as url:
        client = Client(url, verbose=False)
        student_gif, teacher_gif, timings = client.predict(5, 4, 3, 2, 0, api_name="/stream")
        *_, status = client.predict(str(student.parent / "ladder"), api_name="/pick_video_student")
        assert "ladder" in status
        _, _, ladder_timings = client.predict(5, 4, 3, 1, 2, api_name="/stream")      # 1 step, first chunk on 2
        assert "1 steps/chunk, first 2" in ladder_timings
    path = lambda out: Path(out["path"] if isinstance(out, dict) else out)       # noqa: E731 (client versions)
    assert path(student_gif).suffix == ".gif" and path(teacher_gif).suffix == ".gif"
    assert "first chunk" in timings and "Streaming speed-up" in timings
