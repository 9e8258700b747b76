"""Training steps replayed from a CUDA graph.

Small CIFAR networks at the papers' batch of 128 keep an H100 waiting on the CPU: a
ResNet-56 forward + backward is about 1,500 kernels of a few microseconds each, and
launching them one by one costs more than running them. ``GraphedStep`` captures the
forward, the loss and the backward of one full-size batch once in a CUDA graph
(``torch.cuda.CUDAGraph``) and then replays it for every batch of that shape: one launch
per step. The optimizer step, gradient clipping, augmentation and the epoch metrics stay
eager (fused or foreach ops, a handful of kernels), so the learning-rate schedule and
the optimizer state work exactly as without graphs.

How it keeps the semantics of the eager step:

- the first ``warmup`` full-size steps run eagerly on a side stream (cuDNN autotuning and
  lazy initialisation must not happen inside a capture), then the next one is captured;
- inputs are copied into static tensors before each replay; the graph writes the loss,
  the output and the parameters' ``.grad`` (allocated by the captured backward) in place;
- a batch of another shape (the last, smaller batch of an epoch) runs eagerly with its
  own gradients, and the static ones are put back before the next replay;
- BatchNorm's running statistics and dropout's random numbers are updated inside the
  graph (PyTorch registers the CUDA generator with the capture);
- autocast runs with ``cache_enabled=False`` inside the capture, as PyTorch requires.

If the capture fails (a model doing something a graph cannot hold, such as a CPU sync or
data-dependent shapes), the step logs a warning once and stays eager.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]


def eager_step(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, amp: torch.dtype | None
) -> tuple[Tensor, Tensor]:
    """Forward, loss and backward of one batch; gradients replace any earlier ones."""
    for p in model.parameters():
        p.grad = None
    with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
        out = model(x)
        loss = loss_fn(out, y)
    loss.backward()
    return out.detach(), loss.detach()


class GraphedStep:
    """``step(x, y) -> (output, loss)`` with gradients left in ``p.grad``, replayed from a
    CUDA graph for batches of the captured shape (see the module docstring)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        amp: torch.dtype | None,
        warmup: int = 3,
        batch_size: int | None = None,
    ) -> None:
        if not next(model.parameters()).is_cuda:
            raise ValueError("CUDA graphs need the model on a CUDA device; use --no-cuda-graphs")
        self.model, self.loss_fn, self.amp = model, loss_fn, amp
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.warmup_left = warmup
        self.batch_size = batch_size  # only batches of this size are captured (None: any)
        self.failed = False
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, ...] = ()  # x, y, output, loss
        self.grads: list[Tensor | None] = []
        self.grads_in_place = False
        self.side = torch.cuda.Stream(device=next(model.parameters()).device)
        self.replays = 0

    def __call__(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.graph is not None and self._fits(x, y):
            return self._replay(x, y)
        full = self.batch_size is None or x.shape[0] == self.batch_size
        if self.graph is None and not self.failed and full:
            if self.warmup_left == 0:
                captured = self._capture(x, y)
                if captured is not None:
                    return captured
            else:
                self.warmup_left -= 1
                return self._on_side_stream(x, y)
        self.grads_in_place = False  # the eager backward gives parameters new .grad tensors
        return eager_step(self.model, self.loss_fn, x, y, self.amp)

    def _fits(self, x: Tensor, y: Tensor) -> bool:
        sx, sy = self.static[0], self.static[1]
        return x.shape == sx.shape and y.shape == sy.shape and x.dtype == sx.dtype

    def _replay(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        assert self.graph is not None
        sx, sy, out, loss = self.static
        if not self.grads_in_place:
            for p, g in zip(self.params, self.grads, strict=True):
                p.grad = g
            self.grads_in_place = True
        sx.copy_(x)
        sy.copy_(y)
        self.graph.replay()
        self.replays += 1
        return out, loss

    def _on_side_stream(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        # Warm-up steps on a side stream, as the CUDA-graphs notes of PyTorch ask.
        self.side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(self.side):
            out, loss = eager_step(self.model, self.loss_fn, x, y, self.amp)
        torch.cuda.current_stream(x.device).wait_stream(self.side)
        return out, loss

    def _capture(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor] | None:
        sx, sy = x.clone(), y.clone()  # clone keeps x's memory format (channels_last)
        for p in self.params:
            p.grad = None  # the captured backward allocates the static gradients
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize(x.device)
            with torch.cuda.graph(graph):
                with torch.autocast(
                    "cuda", dtype=self.amp, enabled=self.amp is not None, cache_enabled=False
                ):
                    out = self.model(sx)
                    loss = self.loss_fn(out, sy)
                loss.backward()
        except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager
            self.failed = True
            for p in self.params:
                p.grad = None
            log.warning("CUDA graph capture failed (%s); training continues eagerly", err)
            return None
        self.graph = graph
        self.static = (sx, sy, out.detach(), loss.detach())
        self.grads = [p.grad for p in self.params]
        self.grads_in_place = True
        log.info("captured the training step in a CUDA graph (batch shape %s)", tuple(x.shape))
        graph.replay()  # capturing records the kernels; this runs them for this batch
        self.replays += 1
        return self.static[2], self.static[3]
