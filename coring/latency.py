"""Wall-clock latency of a model: warm-up, repeated synchronised timings, the median."""
from __future__ import annotations

import statistics
import time

import torch
from torch import nn

__all__ = ["measure_latency"]


@torch.no_grad()
def measure_latency(model: nn.Module, input_size: int, *, batch_size: int = 1, device: str | torch.device = "cpu",
                    warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """Median seconds per batch of ``batch_size`` images and the images/s it implies (eval mode)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, 3, input_size, input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - start)
    model.train(was_training)
    median = statistics.median(times)
    return {"median_s": median, "images_per_s": batch_size / median, "batch_size": batch_size,
            "threads": torch.get_num_threads(), "repeats": repeats}
