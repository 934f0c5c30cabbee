"""The few-step sampler demo: the model-holding engine (diffdistill/inference/side_by_side.py), the Gradio app driven through
gradio_client in a subprocess on a loopback port, the launch errors, and (slow) the browser screenshot script.

The student checkpoints are exports written here with ``save_model``: the shipped teacher's weights under a
distilled student's sampling meta (what ``DMD2.sampling_info`` writes), so no training run is needed.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffdistill.models.registry import load_model, save_model
from diffdistill.inference.side_by_side import DEFAULT_TEACHER, MAX_IMAGES, Request, SideBySide
from diffdistill.visual import to_pil

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}


def export_student(folder: Path, times: list[float]) -> Path:
    sampling = {"sampler": "few_step", "steps": len(times), "times": times,
                "timesteps": [round(t * 999) for t in times], "guidance": 1.0, "num_classes": 10}
    return save_model(load_model(DEFAULT_TEACHER), folder, {"sampling": sampling,
                                                            "run_config": {"data": {"name": "fmnist"}}})


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    return export_student(tmp_path_factory.mktemp("dmd2_1step") / "export", [399 / 999])


@pytest.fixture(scope="module")
def pair(student) -> SideBySide:
    return SideBySide(student, DEFAULT_TEACHER, device="cpu")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"demos_{name}", REPO / "demos" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------- the engine
def test_step_choices_come_from_the_export_meta(pair, tmp_path):
    assert pair.student.distilled and pair.student.step_choices == [1] and pair.student.default_steps == 1
    assert pair.student.class_names[7] == "Sneaker"
    assert pair.teacher.step_choices == [50, 25, 10] and pair.teacher.default_steps == 50
    four = SideBySide(export_student(tmp_path / "four", [0.999, 0.75, 0.5, 0.25]), device="cpu")
    assert four.student.step_choices == [4] and four.teacher is None
    with pytest.raises(ValueError, match=r"student steps must be one of \[4\] \(its distilled schedule\), got 1"):
        four.validate(Request(student_steps=1))
    assert four.generate(Request(n=2, seed=0)).student.nfe == 4


def test_the_same_seed_gives_the_same_images(pair):
    req = Request(label=7, teacher_steps=10, n=2, seed=3)
    a, b = pair.generate(req), pair.generate(req)
    assert a.student.images.shape == (2, 1, 32, 32) and a.teacher.images.shape == (2, 1, 32, 32)
    assert torch.equal(a.student.images, b.student.images) and torch.equal(a.teacher.images, b.teacher.images)
    other = pair.generate(Request(label=7, teacher_steps=10, n=2, seed=4))
    assert not torch.equal(a.student.images, other.student.images)
    drawn = pair.generate(Request(label=7, teacher_steps=10, n=2, seed=None))      # "random": the seed is reported
    again = pair.generate(Request(label=7, teacher_steps=10, n=2, seed=drawn.seed))
    assert torch.equal(drawn.student.images, again.student.images)


def test_timings_and_speedup_come_from_the_same_call(pair):
    result = pair.generate(Request(teacher_steps=10, n=2, seed=0))
    s, t = result.student, result.teacher
    assert (s.steps, s.nfe, s.guidance) == (1, 1, 1.0)
    assert (t.steps, t.nfe, t.guidance) == (10, 20, 3.0)          # CFG: cond + uncond per step
    assert result.speedup == pytest.approx(t.ms_per_image / s.ms_per_image)
    assert s.ms_per_image == pytest.approx(1000 * s.seconds / 2)
    timings = result.timings()
    assert timings["speedup"] == result.speedup and timings["teacher"]["ms_per_image"] == t.ms_per_image
    assert timings["student"]["images"] == 2 and timings["seed"] == 0


@pytest.mark.parametrize("req, match", [
    (Request(n=0), "between 1 and"), (Request(n=MAX_IMAGES + 1), "between 1 and"),
    (Request(student_steps=4), r"one of \[1\]"), (Request(teacher_steps=7), r"one of \[50, 25, 10\]"),
    (Request(label=10), "class must be in 0..9"), (Request(seed=-1), "seed must be"),
    (Request(guidance=-1.0), "guidance must be"),
])
def test_bad_requests_say_what_to_change(pair, req, match):
    with pytest.raises(ValueError, match=match):
        pair.generate(req)


def test_a_failed_load_keeps_the_models_in_use(pair, tmp_path):
    before = pair.student
    with pytest.raises(FileNotFoundError, match="does not exist"):
        pair.load(tmp_path / "missing", DEFAULT_TEACHER)
    assert pair.student is before


def test_to_pil_enlarges_with_whole_pixels():
    images = torch.linspace(-1, 1, 2 * 32 * 32).reshape(2, 1, 32, 32)
    pics = to_pil(images, 128)
    assert len(pics) == 2 and pics[0].size == (128, 128) and pics[0].mode == "L"
    assert pics[0].getpixel((0, 0)) == pics[0].getpixel((3, 3)) == 0
    assert to_pil(torch.zeros(1, 3, 8, 8))[0].mode == "RGB"


def test_text_students_get_prompts_and_a_vae(tmp_path):
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_diffusers import export_text_model, save_pipeline, tiny_sd15_pipeline

    pipeline = save_pipeline(tiny_sd15_pipeline(), tmp_path / "sd15")
    export = export_text_model(pipeline, tmp_path / "export")
    text = SideBySide(export, device="cpu", pipeline=pipeline)
    assert text.conditioning == "text"
    with pytest.raises(ValueError, match="enter a prompt"):
        text.generate(Request(prompt="  "))
    result = text.generate(Request(prompt="a red square", n=2, seed=0))
    assert result.student.images.shape == (2, 3, 32, 32)       # 4 x 16 x 16 latents through the tiny VAE
    with pytest.raises(ValueError, match="needs? the text encoders"):
        SideBySide(export, device="cpu")                        # no pipeline folder to encode prompts with


# ---------------------------------------------------------------------- the app, through gradio_client
@pytest.fixture(scope="module")
def server(student):
    pytest.importorskip("gradio")
    pytest.importorskip("gradio_client")
    screenshot = load_script("screenshot")
    # through the console entry (`diffdistill demo`), which finds demos/gradio_sampler.py by path
    with screenshot.running_demo([str(student)], command=[sys.executable, "-m", "diffdistill.cli", "demo"],
                                 env=ENV) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def generate(client, label=-1, student_steps=1, teacher_steps=10, guidance=3.0, n=3, seed=5, randomize=False):
    return client.predict(label, "", student_steps, teacher_steps, guidance, n, seed, randomize,
                          api_name="/generate")


def test_generate_returns_both_galleries_and_timings(client):
    from PIL import Image

    student, teacher, table, used_seed, timings, status = generate(client)
    assert len(student) == len(teacher) == 3
    sizes = {Image.open(item["image"]).size for item in student + teacher}
    assert sizes == {(128, 128)}                                # 32 px samples enlarged 4x
    assert [item["caption"] for item in student] == ["T-shirt/top", "Trouser", "Pullover"]
    assert used_seed == 5 and "seed 5" in status
    assert timings["student"]["nfe"] == 1 and timings["teacher"]["nfe"] == 20
    assert timings["speedup"] == pytest.approx(timings["teacher"]["ms_per_image"] / timings["student"]["ms_per_image"])
    assert "Student speed-up" in table and "ms per image" in table


def test_bad_input_shows_a_message_and_the_server_keeps_answering(client):
    from gradio_client.exceptions import AppError

    *_, status = client.predict("/no/such/export", "", api_name="/load")
    assert "Could not load" in status and "/no/such/export" in status and "does not exist" in status
    with pytest.raises(AppError, match="maximum value 16"):
        generate(client, n=99)
    with pytest.raises(AppError, match="not in the list of choices"):
        generate(client, student_steps=4)
    _, _, _, used_seed, _, _ = generate(client, n=1, seed=11)      # still up, still the same models
    assert used_seed == 11


def test_the_student_picker_switches_to_a_listed_student_and_refuses_others(client):
    """The demo lists the shipped exports (diffdistill/assets) and ./runs: picking the four-step DMD2 student makes
    4 the student's step count; a path that is not listed is refused. (Last of the server's tests: it leaves the
    four-step student loaded.)"""
    from gradio_client.exceptions import AppError

    four = str(REPO / "diffdistill" / "assets" / "fmnist" / "dmd2_4step")
    info, *_, status = client.predict(four, api_name="/pick_student")
    assert "dmd2_4step" in status and "4" in info
    student, teacher, table, used_seed, timings, status = generate(client, student_steps=4, n=2)
    assert len(student) == 2 and timings["student"]["steps"] == 4
    with pytest.raises(AppError, match="not one of the listed students|not in the list of choices"):
        client.predict("/etc", api_name="/pick_student")


def test_a_page_reachable_by_others_offers_no_checkpoint_loading(pair):
    pytest.importorskip("gradio")
    gradio_sampler = load_script("gradio_sampler")

    def endpoints(allow: bool) -> list:
        return [dep.get("api_name") for dep in gradio_sampler.create_demo(pair, allow).config["dependencies"]]

    # the student picker lists only catalogued exports, so it stays on; the free checkpoint boxes do not
    assert endpoints(True) == ["generate", "pick_student", "load"]
    assert endpoints(False) == ["generate", "pick_student"]
    assert gradio_sampler._is_loopback("127.0.0.1") and not gradio_sampler._is_loopback("0.0.0.0")


@pytest.mark.parametrize("entry", [["-m", "diffdistill.cli", "demo"], ["demos/gradio_sampler.py"]])
def test_a_missing_checkpoint_at_launch_exits_with_a_message(entry, tmp_path):
    pytest.importorskip("gradio")       # without it the demo stops earlier, asking for the [demo] extra
    missing = tmp_path / "no-student"
    out = subprocess.run([sys.executable, *entry, str(missing)], capture_output=True, text=True, cwd=REPO, env=ENV,
                         timeout=120)
    assert out.returncode == 2, out
    assert str(missing) in out.stderr and "diffdistill train recipes/dmd2/" in out.stderr
    assert "Traceback" not in out.stderr


# ---------------------------------------------------------------------- the browser screenshot
@pytest.mark.slow
def test_screenshot_script_writes_a_page_with_results(student, tmp_path):
    pytest.importorskip("playwright")
    screenshot = load_script("screenshot")
    try:
        screenshot.find_chromium()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    from PIL import Image, ImageStat

    out = tmp_path / "demo.png"
    run = subprocess.run([sys.executable, "demos/screenshot.py", str(student), "--out", str(out), "--n", "4",
                          "--teacher-steps", "10", "--width", "1280", "--height", "1000"], capture_output=True,
                         text=True, cwd=REPO, env=ENV, timeout=400)
    assert run.returncode == 0, run.stderr
    image = Image.open(out).convert("L")
    assert image.size == (1280, 1000)
    assert ImageStat.Stat(image).stddev[0] > 20 and len(image.getcolors(256)) > 50      # a drawn page, not blank
    video = tmp_path / "video.png"            # the video tab: the demo's default causal student and video teacher
    run = subprocess.run([sys.executable, "demos/screenshot.py", "--tab", "video", "--out", str(video)],
                         capture_output=True, text=True, cwd=REPO, env=ENV, timeout=400)
    assert run.returncode == 0, run.stderr
    assert ImageStat.Stat(Image.open(video).convert("L")).stddev[0] > 20
