"""diffdistill: few-step distillation of diffusion and flow models."""

__version__ = "0.1.0"
