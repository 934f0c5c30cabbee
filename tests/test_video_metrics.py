"""Benchmark B2's video metrics (diffdistill/metrics/video.py): known answers for the sprite tracks, and the sanity
the benchmark needs from the shipped evaluator: real test clips score near 0; frame-shuffled and frozen clips score
far worse on the temporal metrics while their per-frame FID stays close to the real clips'."""

import pytest
import torch

from diffdistill.metrics.video import ASSETS, MOTION_FILE, VideoEvaluator, frame_differences, sprite_tracks, \
    track_statistics


def square_clip(start: tuple[int, int], velocity: tuple[int, int], frames: int = 6, size: int = 32) -> torch.Tensor:
    """A 4x4 white square moving by whole pixels on black: [T, 1, size, size] in [-1, 1]."""
    clip = -torch.ones(frames, 1, size, size)
    for t in range(frames):
        y, x = start[0] + velocity[0] * t, start[1] + velocity[1] * t
        clip[t, :, y:y + 4, x:x + 4] = 1
    return clip


def test_sprite_track_follows_the_centroid_of_a_moving_square():
    clip = square_clip((2, 3), (2, 1))
    track = sprite_tracks(clip[None])[0]
    expected = torch.tensor([[2 + 1.5 + 2 * t, 3 + 1.5 + t] for t in range(6)])
    torch.testing.assert_close(track, expected)


def test_track_statistics_speed_and_acceleration():
    steady = square_clip((1, 1), (3, 4))                                  # speed 5, no acceleration
    frozen = square_clip((10, 10), (0, 0))
    stats = track_statistics(torch.stack([steady, frozen]))
    torch.testing.assert_close(stats, torch.tensor([[5.0, 0.0], [0.0, 0.0]]))
    jitter = torch.stack([square_clip((10, 10 + 3 * (t % 2)), (0, 0), frames=1)[0] for t in range(6)])
    speed, accel = track_statistics(jitter[None])[0]
    assert speed == pytest.approx(3.0) and accel == pytest.approx(6.0)   # back-and-forth: every velocity flips
    with pytest.raises(ValueError, match="at least 3 frames"):
        track_statistics(steady[None, :2])


def test_a_single_bounce_does_not_count_as_acceleration():
    """The median over a clip's accelerations ignores one bounce: constant-velocity motion reads as smooth."""
    ys = [4, 8, 12, 16, 12, 8, 4]                                       # bounces once at y = 16
    clip = torch.stack([square_clip((y, 5), (0, 0), frames=1)[0] for y in ys])
    assert track_statistics(clip[None])[0, 1] == pytest.approx(0.0)


def test_frame_differences_are_halved_and_one_shorter():
    clip = square_clip((0, 0), (1, 1))
    diffs = frame_differences(clip[None])
    assert diffs.shape == (1, 5, 1, 32, 32)
    assert diffs.min() == -1 and diffs.max() == 1
    assert frame_differences(square_clip((5, 5), (0, 0))[None]).abs().max() == 0


shipped = pytest.mark.skipif(not (ASSETS / MOTION_FILE).is_file(),
                             reason="the video evaluator is not built (python evaluation/video/train_evaluator.py)")


@pytest.fixture(scope="module")
def real_clips():
    from diffdistill.data.moving import MovingFMNIST, MovingFMNISTConfig

    evaluator = VideoEvaluator()
    cfg = MovingFMNISTConfig(**{**{k: v for k, v in evaluator.card["clip"].items()}, "split": "test"})
    clips = MovingFMNIST(cfg, seed=123)                 # other clips than the reference (seed 0)
    made = [clips.clip(i) for i in range(300)]
    return evaluator, torch.stack([c.frames for c in made]), torch.stack([c.labels[0] for c in made])


@shipped
def test_real_clips_score_near_zero_and_are_recognised(real_clips):
    evaluator, clips, labels = real_clips
    scores = evaluator.score(clips, labels)
    # the evaluator recognises 90.0% of 5000 real test clips (its card): 16-pixel garments are ambiguous
    assert scores.class_accuracy >= 0.85 and scores.consistency >= 0.9
    assert scores.fid_frames < 2.0 and scores.fd_motion < 0.5 and scores.fd_track < 0.05


@shipped
def test_shuffled_and_frozen_clips_are_far_worse_on_the_temporal_metrics_only(real_clips):
    evaluator, clips, labels = real_clips
    real = evaluator.score(clips, labels)
    order = torch.stack([torch.randperm(clips.shape[1], generator=torch.Generator().manual_seed(i))
                         for i in range(clips.shape[0])])
    shuffled = evaluator.score(torch.stack([c[o] for c, o in zip(clips, order)]), labels)
    frozen = evaluator.score(clips[:, :1].expand_as(clips).contiguous(), labels)
    for bad in (shuffled, frozen):         # measured: 18x / 185x on fd_motion, 12000x / 1100x on fd_track
        assert bad.fd_motion > 10 * real.fd_motion
        assert bad.fd_track > 100 * real.fd_track
    assert shuffled.fid_frames == pytest.approx(real.fid_frames, rel=1e-6)     # the same frames, another order
    assert frozen.fid_frames < 3 * max(real.fid_frames, 1.0)
    assert frozen.mean_speed == 0 and shuffled.mean_speed > real.mean_speed


@shipped
def test_evaluator_refuses_clips_it_has_no_reference_for(real_clips):
    evaluator, clips, labels = real_clips
    with pytest.raises(ValueError, match=r"grey clips \[N, T >= 3, 1, 32, 32\]"):
        evaluator.score(torch.zeros(4, 8, 1, 64, 64), labels[:4])
    with pytest.raises(ValueError, match="one class label per clip"):
        evaluator.score(clips[:4], torch.zeros(4, 2, dtype=torch.long))


@shipped
def test_sample_reports_the_b2_scores_only_for_moving_fmnist_clips(real_clips):
    from diffdistill.metrics.video import video_report

    _, clips, labels = real_clips
    report = video_report(clips[:50], labels[:50], "moving_fmnist")
    assert set(report) >= {"fid_frames", "fd_motion", "fd_track", "class_accuracy", "consistency"}
    assert video_report(clips[:50], labels[:50], "fmnist") == {}                  # not B2 data
    assert video_report(clips[:50, :, :, :16, :16], labels[:50], "moving_fmnist") == {}   # other clip size
    assert video_report(clips[:50], None, "moving_fmnist") == {}                  # unlabelled
