import pytest
import torch
from PIL import Image

from diffdistill.visual import save_samples


def test_image_grid_places_each_sample_and_maps_the_range(tmp_path):
    images = torch.full((4, 1, 8, 8), -1.0)
    images[3] = 1.0                                    # last image white, the rest black
    path = save_samples(images, tmp_path / "grid.png")
    pixels = torch.tensor(list(Image.open(path).getdata())).view(20, 20)   # 2x2 grid of 8x8 with 1-px borders
    assert pixels[1:9, 1:9].max() == 0 and pixels[11:19, 11:19].min() == 255


def test_video_rows_and_scatter_and_bad_shapes(tmp_path):
    video = torch.rand(2, 3, 3, 8, 8) * 2 - 1
    assert Image.open(save_samples(video, tmp_path / "video.png")).size == (3 * 10, 2 * 10)
    assert save_samples(torch.randn(100, 2), tmp_path / "points.png").stat().st_size > 1000
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        save_samples(torch.randn(3, 5), tmp_path / "bad.png")
