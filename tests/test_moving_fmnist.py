"""Moving Fashion-MNIST clips (benchmark B2's data): deterministic, physically right, labelled, resumable."""

import pytest
import torch

from diffdistill.config import ConfigError
from diffdistill.data import FMNIST_DEB_DIR, build_stream, data_config
from diffdistill.data.moving import MovingFMNIST, MovingFMNISTConfig, bounce

needs_fmnist = pytest.mark.skipif(not (FMNIST_DEB_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                  reason="needs Fashion-MNIST")


def test_bounce_reflects_at_both_borders_and_flips_the_velocity():
    assert bounce(5.0, 2.0, 16.0) == (7.0, 2.0)
    assert bounce(15.0, 3.0, 16.0) == (14.0, -3.0)          # 18 mirrors to 14
    assert bounce(1.0, -3.0, 16.0) == (2.0, 3.0)            # -2 mirrors to 2
    assert bounce(0.0, 40.0, 16.0) == (8.0, 40.0)           # two reflections: 40 -> -8 -> 8, velocity back to +


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="sprite_size must lie in"):
        data_config({"name": "moving_fmnist", "sprite_size": 32, "size": 32})
    with pytest.raises(ConfigError, match="sprites 1 or 2"):
        data_config({"name": "moving_fmnist", "sprites": 3})


@needs_fmnist
def test_clips_are_deterministic_stay_on_the_canvas_and_bounce():
    cfg = MovingFMNISTConfig(split="test", frames=24, sprites=2, max_speed=4.0)
    a, b, other = MovingFMNIST(cfg, seed=3), MovingFMNIST(cfg, seed=3), MovingFMNIST(cfg, seed=4)
    clip = a.clip(7)
    assert torch.equal(clip.frames, b.clip(7).frames) and not torch.equal(clip.frames, other.clip(7).frames)
    assert clip.frames.shape == (24, 1, 32, 32) and clip.frames.min() == -1 and clip.frames.max() <= 1
    limit = cfg.size - cfg.sprite_size
    bounced = 0
    for i in range(20):
        c = a.clip(i)
        assert bool(((c.positions >= 0) & (c.positions <= limit)).all())           # never leaves the canvas
        speed = c.velocities.norm(dim=-1)
        assert torch.allclose(speed, speed[:, :1].expand_as(speed))                  # constant speed
        flips = (c.velocities[:, 1:] * c.velocities[:, :-1] < 0)
        for s, t, axis in flips.nonzero().tolist():                                  # a flip happens at a border
            step = c.positions[s, t, axis] + c.velocities[s, t, axis]
            assert step < 0 or step > limit
            bounced += 1
        moved = c.positions[:, 1:] - c.positions[:, :-1]
        straight = ~flips                                                            # away from bounces
        assert torch.allclose(moved[straight], c.velocities[:, 1:][straight], atol=1e-5)
    assert bounced > 5


@needs_fmnist
def test_labels_are_the_sprites_classes_and_the_stream_resumes_per_rank():
    clips = MovingFMNIST(MovingFMNISTConfig(split="test", sprites=1), seed=0)
    clip = clips.clip(0)
    pick = (clips.labels == clip.labels[0]).nonzero()
    assert clip.labels.shape == (1,) and 0 <= int(clip.labels[0]) < 10 and len(pick) > 0
    spec = {"name": "moving_fmnist", "split": "test", "frames": 4}
    stream = build_stream(spec, 3, seed=1, rank=0, world=2)
    batches = [stream.next() for _ in range(3)]
    assert batches[0].x0.shape == (3, 4, 1, 32, 32) and batches[0].cond.labels.shape == (3,)
    again = build_stream(spec, 3, seed=1, rank=0, world=2)
    again.position = 2
    assert again.next().fingerprint() == batches[2].fingerprint()
    rank1 = build_stream(spec, 3, seed=1, rank=1, world=2).next()
    assert set(rank1.index.tolist()).isdisjoint(batches[0].index.tolist())
    two = build_stream({**spec, "sprites": 2}, 2, seed=1, rank=0).next()
    assert two.cond.labels.shape == (2, 2)


def test_video_teacher_recipe_refuses_a_missing_dataset_and_clips_of_another_size(tmp_path, capsys):
    """One error line, exit 2, nothing written: data not found (with the command that installs it), and clips whose
    size differs from what the model samples (caught before training, not inside a forward pass)."""
    from pathlib import Path

    from diffdistill.cli import main

    recipe = str(Path(__file__).resolve().parents[1] / "recipes" / "video" / "teacher.yaml")
    out = tmp_path / "run"
    assert main(["train", recipe, f"data.root={tmp_path / 'nowhere'}", f"output_dir={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Fashion-MNIST" in err[0] and "apt-get install" in err[0]
    if (FMNIST_DEB_DIR / "train-images-idx3-ubyte.gz").is_file():
        assert main(["train", recipe, "data.size=24", "data.sprite_size=12", f"output_dir={out}"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "[8, 1, 24, 24]" in err[0] and "[8, 1, 32, 32]" in err[0]
    assert not any(out.rglob("*.safetensors"))
