import pytest
import torch

from diffdistill.methods.losses import denoising_loss
from diffdistill.models.base import DiffusionModel
from diffdistill.models.toy import ScheduleConfig


class ZeroEps(DiffusionModel):
    """Predicts eps = 0 and records its inputs, so the loss is mean(target^2) and x_t reveals the noise drawn."""

    def __init__(self):
        super().__init__()
        self.schedule, self.kind, self.data_shape = ScheduleConfig().build(), "eps", (1, 16, 16)
        self.seen = []

    def predict(self, x_t, t, cond):
        self.seen.append(x_t)
        return torch.zeros_like(x_t)


@pytest.mark.parametrize("offset", [0.0, 0.1])
def test_offset_noise_adds_one_constant_per_sample_and_channel(offset):
    """Per-image noise means have variance 1/(H W) + offset^2 (Guttenberg 2023), and the eps target includes it."""
    torch.manual_seed(0)
    model = ZeroEps()
    x0, t = torch.zeros(4000, 1, 16, 16), torch.full((4000,), 0.5)
    loss = denoising_loss(model, model.schedule, x0, t, noise_offset=offset)
    eps = model.seen[0] / model.schedule.alpha_sigma(t)[1].float().view(-1, 1, 1, 1)    # x0 = 0: x_t = sigma eps
    var_of_means = eps.mean(dim=(2, 3)).var().item()
    assert var_of_means == pytest.approx(1 / 256 + offset**2, rel=0.1)
    assert loss.item() == pytest.approx(eps.pow(2).mean().item(), rel=1e-5)    # target = the offset noise itself
    with pytest.raises(ValueError, match="noise_offset"):
        denoising_loss(model, model.schedule, x0, t, noise_offset=-0.1)
