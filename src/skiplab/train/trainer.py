"""``fit``: train any ``nn.Module`` on a ``TensorData`` with a ``Recipe``, resumably.

A run folder holds ``run.json`` (what ran, with provenance, status and final metrics),
``metrics.jsonl`` (one object per epoch), ``checkpoint.safetensors`` (the resume point,
rewritten atomically after every epoch) and, when finished, ``model.safetensors``.

Resuming reproduces the uninterrupted run bit for bit on the CPU: each epoch's shuffling
and augmentation come from a generator seeded by (seed, epoch), the learning rate is a
function of the step, and the checkpoint holds the weights, buffers, optimizer state and
the global RNG state (dropout).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.blocks import find_units, fit_problem
from ..analysis.gradflow import unit_grad_norms
from ..data import TensorData, iterate_batches, parse_augment
from ..io import atomic_write_text, differences
from ..models.unet import center_crop
from ..provenance import provenance
from .checkpoint import (
    load_checkpoint,
    load_model_state,
    optimizer_tensors,
    restore_optimizer,
    restore_rng,
    resume_point,
    rng_tensors,
    save_checkpoint,
    unwrap,
)
from .distributed import DistInfo
from .graphs import GraphedStep, eager_step
from .recipe import Recipe

log = logging.getLogger(__name__)

RUN_FILE, METRICS_FILE, CKPT_FILE, WEIGHTS_FILE = (
    "run.json",
    "metrics.jsonl",
    "checkpoint.safetensors",
    "model.safetensors",
)
GRADS_FILE = "grad_norms.jsonl"


@dataclass
class RunResult:
    """What ``fit`` returns: the run folder, its status and the per-epoch metrics."""

    out_dir: Path
    status: str
    metrics: list[dict[str, Any]] = field(default_factory=list)
    message: str = ""

    @property
    def final(self) -> dict[str, Any]:
        return self.metrics[-1] if self.metrics else {}


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(
            f"invalid device={device!r}; allowed: 'cpu', 'cuda', 'cuda:N', 'auto'"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("invalid device='cuda': no CUDA GPU is available here; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"invalid device={device!r}; allowed: 'cpu', 'cuda', 'auto'")
    return dev


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The recipe's optimizer; on a GPU its fused form (one kernel per step, not one per
    parameter tensor and operation)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = True if params and params[0].is_cuda else None
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov and recipe.momentum > 0,
                               weight_decay=recipe.weight_decay, fused=fused)  # fmt: skip
    cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=recipe.lr, weight_decay=recipe.weight_decay, fused=fused)


def task_loss(out: Tensor, y: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy for classification ([N, C] vs [N]) and segmentation ([N, C, H, W] vs
    [N, H, W]; targets centre-cropped when the net's output is smaller, as in U-Net 'valid')."""
    if out.dim() == 4 and y.shape[-2:] != out.shape[-2:]:
        y = center_crop(y, out.shape[-2:])
    return F.cross_entropy(out.float(), y, label_smoothing=label_smoothing)


def check_model_fits_data(model: nn.Module, data: TensorData, amp: torch.dtype | None) -> None:
    """Run two training inputs through ``model`` (eval mode, nothing updated) and raise one
    ``ValueError`` when its input or output does not fit ``data``."""
    problem = fit_problem(model, data.train_x, data.num_classes, exact=True, amp=amp,
                          segmentation=data.task == "segmentation")  # fmt: skip
    if problem is not None:
        raise ValueError(
            f"the model does not fit {data.name!r} ({data.task}, {data.num_classes} classes, "
            f"inputs {list(data.input_shape)}): {problem[1]}; build the model for "
            f"{data.name!r}: in_channels={data.in_channels}, num_classes={data.num_classes}"
        )


def check_recipe_fits_data(recipe: Recipe, data: TensorData, augment: str) -> None:
    """Raise one ``ValueError`` for an augmentation the data cannot take; warn when the
    batch is larger than the training set (every epoch is then one smaller batch)."""
    if parse_augment(augment).needs_mask and data.task != "segmentation":
        raise ValueError(
            f"invalid recipe.augment={augment!r} for {data.name!r} ({data.task}): it flips "
            "segmentation masks; use 'crop<N>-flip', 'crop<N>' or 'none'"
        )
    n = data.train_x.shape[0]
    if recipe.batch_size > n:
        log.warning(
            "recipe.batch_size=%d is larger than the %d training examples of %r: each epoch "
            "is one batch of %d",
            recipe.batch_size, n, data.name, n,
        )  # fmt: skip


class EpochStats:
    """Running sums on the device (one sync per epoch, not per step)."""

    def __init__(self, num_classes: int, segmentation: bool, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.float64, device=device)
        self.seg = segmentation
        self.k = num_classes
        self.confusion = (
            torch.zeros(num_classes * num_classes, dtype=torch.float64, device=device)
            if segmentation
            else None
        )

    @torch.no_grad()
    def add(self, out: Tensor, y: Tensor, loss: Tensor) -> None:
        if out.dim() == 4 and y.shape[-2:] != out.shape[-2:]:
            y = center_crop(y, out.shape[-2:])
        n = y.shape[0]
        pred = out.argmax(1)
        self.loss += loss.detach().double() * n
        self.count += n
        self.correct += (
            (pred == y).double().mean(dim=tuple(range(1, y.dim()))).sum()
            if y.dim() > 1
            else (pred == y).double().sum()
        )
        if self.confusion is not None:  # index_add_, not bincount: no GPU sync per step
            idx = (y * self.k + pred).flatten()
            one = torch.ones((), dtype=torch.float64, device=idx.device)
            self.confusion.index_add_(0, idx, one.expand(idx.numel()))

    def reduce(self, dist: DistInfo) -> None:
        if dist.world > 1:
            import torch.distributed as tdist

            for t in (self.loss, self.correct, self.count) + (
                (self.confusion,) if self.confusion is not None else ()
            ):
                tdist.all_reduce(t)

    def metrics(self, prefix: str) -> dict[str, float]:
        n = max(self.count.item(), 1.0)
        out = {f"{prefix}_loss": self.loss.item() / n, f"{prefix}_acc": self.correct.item() / n}
        if self.confusion is not None and prefix == "test":
            cm = self.confusion.view(self.k, self.k).cpu()
            tp = cm.diag()
            fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
            present = (tp + fp + fn) > 0
            out["test_miou"] = (tp / (tp + fp + fn).clamp_min(1))[present].mean().item()
            out["test_dice"] = (2 * tp / (2 * tp + fp + fn).clamp_min(1))[present].mean().item()
        return out


def _run_identity(
    model_name: str | None, model_options: dict | None, data: TensorData, recipe: Recipe, seed: int
) -> dict[str, Any]:
    """What makes a run this run: resuming with any of these changed is an error."""
    return {
        "model": model_name,
        "model_options": model_options or {},
        "data": data.name,
        "data_options": data.meta.get("options", {}),
        "data_subset": data.meta.get("subset"),
        "recipe": recipe.to_dict(),
        "seed": seed,
    }


def _json_norm(obj: Any) -> Any:
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def prepare_out_dir(out_dir: Path, identity: dict[str, Any], resume: bool) -> dict[str, Any] | None:
    """Check the run folder; return the existing run.json when resuming. Never overwrites."""
    run_file = out_dir / RUN_FILE
    if run_file.exists():
        try:
            existing = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            raise ValueError(
                f"{run_file} is corrupt; choose another --out or delete the folder"
            ) from None
        if not resume:
            raise ValueError(
                f"{out_dir} already holds a run (status {existing.get('status')!r}); pass --resume to "
                "continue it, or choose another --out"
            )
        old = _json_norm({k: existing.get(k) for k in identity})
        new = _json_norm(identity)
        diffs = list(differences(old, new))
        if diffs:  # every field that differs, by name (not the two whole recipes)
            what = "; ".join(f"{k}: run has {a!r}, asked for {b!r}" for k, a, b in diffs)
            raise ValueError(
                f"cannot resume {out_dir}: it differs ({what}); "
                "resume with the same model, options, data, recipe and seed, or choose another --out"
            )
        return existing
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ValueError(
            f"{out_dir} is not empty and holds no skiplab run; choose a new or empty --out"
        )
    return None


def fit(
    model: nn.Module,
    data: TensorData,
    recipe: Recipe,
    out_dir: str | Path,
    *,
    seed: int = 0,
    device: str | torch.device | None = None,
    resume: bool = False,
    model_name: str | None = None,
    model_options: dict[str, Any] | None = None,
    tensorboard: bool = False,
    progress: bool = False,
    log_grad_every: int = 0,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    cuda_graphs: bool | None = None,
) -> RunResult:
    """Train ``model`` on ``data`` following ``recipe``; write the run folder ``out_dir``.

    Under ``torchrun`` the model is wrapped in DDP (gloo on CPU, nccl on GPU), each rank
    takes its share of every batch, and only rank 0 writes. Returns a ``RunResult`` whose
    status is ``finished`` or ``diverged`` (a NaN or infinite loss; the last good
    checkpoint stays).

    ``cuda_graphs``: replay the forward + backward of full-size batches from a CUDA graph
    (``train.graphs.GraphedStep``; the optimizer step stays eager). ``None`` (default):
    on a single CUDA device without ``recipe.compile``; ``True`` where that is not
    possible is an error. It does not change what is computed, so it is not part of the
    recipe or the run's identity.
    """
    if (
        isinstance(log_grad_every, bool)
        or not isinstance(log_grad_every, int)
        or log_grad_every < 0
    ):
        raise ValueError(
            f"invalid log_grad_every={log_grad_every!r}: give N >= 1 steps, or 0 (off)"
        )
    out_dir = Path(out_dir)
    dev = resolve_device(device)
    dist = DistInfo.from_env()
    # Before the run folder is made (and on every rank, so all stop): a failed import must
    # not leave a 'running' run behind that refuses the next try.
    summary_writer = _summary_writer_class() if tensorboard else None
    if dist.world > 1:
        dev = dist.setup(dev)
    identity = _run_identity(model_name, model_options, data, recipe, seed)
    existing = prepare_out_dir(out_dir, identity, resume) if dist.is_main else None
    dist.barrier()
    if not dist.is_main:
        existing = (
            json.loads((out_dir / RUN_FILE).read_text()) if (out_dir / RUN_FILE).exists() else None
        )
    if existing is not None and existing.get("status") == "finished":
        log.info("%s is already finished; nothing to do", out_dir)
        return RunResult(out_dir, "finished", _read_metrics(out_dir), "already finished")

    cuda = dev.type == "cuda"
    use_graphs = _use_cuda_graphs(cuda_graphs, cuda, dist.world, recipe.compile)
    model = model.to(dev)
    image_model = len(data.input_shape) == 3
    # channels_last: faster convolutions with cuDNN, and with oneDNN on the CPU for images
    # of 16x16 and up (resnet-20 fwd+bwd at 32x32: 21% faster on a 2-core CPU; at 8x8: 6% slower).
    big_images = image_model and min(data.input_shape[1:]) >= 16
    channels_last = recipe.channels_last and image_model and (cuda or big_images)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    amp = (
        torch.bfloat16
        if (recipe.precision == "bf16" or (recipe.precision == "auto" and cuda))
        else None
    )
    data = data.to(dev)
    check_model_fits_data(model, data, amp)  # before anything is written
    opt = make_optimizer(model, recipe)
    augment = recipe.augment if recipe.augment is not None else data.augment
    check_recipe_fits_data(recipe, data, augment)

    start_epoch, history = 0, []
    ckpt_path = out_dir / CKPT_FILE
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        start_epoch, history = resume_point(ckpt, recipe.epochs)
        load_model_state(model, ckpt.model_state, ckpt_path)
        restore_optimizer(opt, ckpt)
        restore_rng(ckpt)
        log.info("resuming %s at epoch %d", out_dir, start_epoch)

    prov = provenance(dev)
    was = ((existing or {}).get("provenance") or {}).get("device")
    if dist.is_main and start_epoch and was and was != prov["device"]:
        log.warning(
            "%s ran on %s and resumes on %s: floating-point sums are ordered differently, so "
            "the result matches an uninterrupted run to rounding, not bit for bit",
            out_dir, was, prov["device"],
        )  # fmt: skip
    run_info: dict[str, Any] = {
        **identity,
        "data_meta": data.meta,
        "provenance": prov,
        "world_size": dist.world,
        "status": "running",
        "epochs_done": start_epoch,
        "started": (existing or {}).get("started", time.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "duration_s": (existing or {}).get("duration_s", 0.0),
    }
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / RUN_FILE, json.dumps(run_info, indent=2))
        atomic_write_text(out_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
        _truncate_grads(out_dir / GRADS_FILE, start_epoch)

    train_model: nn.Module = model
    if dist.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if cuda else None
        )
    if recipe.compile:
        train_model = torch.compile(train_model)

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        return task_loss(out, y, recipe.label_smoothing)

    step_fn = (
        GraphedStep(train_model, loss_fn, amp, batch_size=recipe.batch_size)
        if use_graphs
        else lambda x, y: eager_step(train_model, loss_fn, x, y, amp)
    )

    writer = (
        summary_writer(str(out_dir / "tensorboard"))
        if summary_writer is not None and dist.is_main
        else None
    )
    units = (
        find_units(model, required=False, include_plain=True, opaque=True)
        if log_grad_every and dist.is_main
        else []
    )
    n = data.train_x.shape[0]
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    seg = data.task == "segmentation"
    bar = _Progress(progress and dist.is_main, recipe.epochs, steps_per_epoch, start_epoch)
    t_start = time.perf_counter()
    status, message = "running", ""
    benchmark = torch.backends.cudnn.benchmark  # a process-wide flag: restored below
    torch.backends.cudnn.benchmark = benchmark or cuda  # cuDNN autotuning for fixed shapes
    try:
        for epoch in range(start_epoch, recipe.epochs):
            t_epoch = time.perf_counter()
            gen = torch.Generator().manual_seed(
                seed * 1_000_003 + epoch
            )  # CPU: same batches on any device
            model.train()
            stats = EpochStats(data.num_classes, seg, dev)
            for i, (xb, yb) in enumerate(
                iterate_batches(
                    data.train_x,
                    data.train_y,
                    recipe.batch_size,
                    shuffle=True,
                    generator=gen,
                    augment=augment,
                )  # fmt: skip
            ):
                step = epoch * steps_per_epoch + i
                for group in opt.param_groups:
                    group["lr"] = recipe.lr_at(step, steps_per_epoch)
                if dist.world > 1:  # each rank takes its share of the global batch
                    xb, yb = xb[dist.rank :: dist.world], yb[dist.rank :: dist.world]
                if channels_last and xb.dim() == 4:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                out, loss = step_fn(xb, yb)  # forward, loss, backward
                if not cuda and not torch.isfinite(loss):  # on a GPU: checked per epoch
                    raise _Diverged(epoch, step, loss.item())
                if recipe.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
                if units and step % log_grad_every == 0:
                    _log_grads(out_dir, model, units, epoch, step)
                opt.step()
                stats.add(out, yb, loss)
                bar.step(epoch)
            stats.reduce(dist)
            row = {"epoch": epoch + 1, **stats.metrics("train")}  # .item(): waits for the GPU
            t_train = time.perf_counter()
            if not math.isfinite(row["train_loss"]):
                raise _Diverged(epoch, (epoch + 1) * steps_per_epoch, row["train_loss"])
            row.update(evaluate(model, data, recipe, dev, amp))
            row["lr"] = recipe.lr_at((epoch + 1) * steps_per_epoch - 1, steps_per_epoch)
            t_end = time.perf_counter()
            row["train_time_s"] = round(t_train - t_epoch, 4)
            row["test_time_s"] = round(t_end - t_train, 4)
            row["train_img_s"] = round(n / max(t_train - t_epoch, 1e-9), 1)
            row["time_s"] = round(t_end - t_start, 3)
            history.append(row)
            run_info.update(
                epochs_done=epoch + 1, duration_s=run_info["duration_s"] + t_end - t_start
            )
            t_start = t_end
            if dist.is_main:
                _save_resume(ckpt_path, model, opt, epoch + 1, history, run_info)
                with open(out_dir / METRICS_FILE, "a", encoding="utf-8") as f:
                    f.write(json.dumps(row) + "\n")
                run_info["final_metrics"] = row
                atomic_write_text(out_dir / RUN_FILE, json.dumps(run_info, indent=2))
                if writer is not None:
                    for k, v in row.items():
                        if k != "epoch":
                            writer.add_scalar(k, v, epoch + 1)
            if on_epoch is not None:
                on_epoch(row)
            bar.epoch_done(epoch, row)
        status = "finished"
    except _Diverged as d:
        status, message = "diverged", str(d)
        log.warning("%s: %s", out_dir, message)
    finally:
        torch.backends.cudnn.benchmark = benchmark
        bar.close()
        if writer is not None:
            writer.close()
    if dist.is_main:
        if status == "finished":
            save_checkpoint(
                out_dir / WEIGHTS_FILE, _prefixed(model), _weights_meta(run_info, history)
            )
        run_info.update(
            status=status, message=message, finished=time.strftime("%Y-%m-%dT%H:%M:%S%z")
        )
        if history:
            run_info["final_metrics"] = history[-1]
        atomic_write_text(out_dir / RUN_FILE, json.dumps(run_info, indent=2))
    dist.barrier()
    return RunResult(out_dir, status, history, message)


def _use_cuda_graphs(asked: bool | None, cuda: bool, world: int, compiled: bool) -> bool:
    if asked is None:
        return cuda and world == 1 and not compiled
    if asked and not cuda:
        raise ValueError("cuda_graphs=True needs a CUDA device; use --no-cuda-graphs on the CPU")
    if asked and world > 1:
        raise ValueError("cuda_graphs=True is not supported under torchrun (DDP); drop it")
    if asked and compiled:
        raise ValueError("cuda_graphs=True and recipe.compile=True exclude each other; choose one")
    return bool(asked)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: TensorData, recipe: Recipe, dev: torch.device, amp: torch.dtype | None
) -> dict[str, float]:
    """Test loss and accuracy (segmentation: also mean IoU and Dice over the classes present)."""
    was_training = model.training
    model.eval()
    stats = EpochStats(data.num_classes, data.task == "segmentation", dev)
    try:
        for xb, yb in iterate_batches(
            data.test_x, data.test_y, recipe.eval_batch_size, shuffle=False
        ):
            with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                out = model(xb)
                loss = task_loss(out, yb)
            stats.add(out, yb, loss)
    finally:
        model.train(was_training)
    return stats.metrics("test")


class _Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(
            f"training diverged at epoch {epoch + 1}, step {step} (loss {loss}); the last good "
            "checkpoint is kept — lower the learning rate or add warm-up (recipe warmup_epochs)"
        )


def _prefixed(model: nn.Module) -> dict[str, Tensor]:
    return {f"model.{k}": v for k, v in unwrap(model).state_dict().items()}


def _weights_meta(run_info: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("model", "model_options", "data", "data_options", "recipe", "seed", "provenance")
    return {
        "kind": "weights",
        **{k: run_info.get(k) for k in keys},
        "epoch": len(history),
        "history": history,
    }


def _save_resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int,
                 history: list[dict[str, Any]], run_info: dict[str, Any]) -> None:  # fmt: skip
    opt_t, opt_meta = optimizer_tensors(opt)
    meta = {**_weights_meta(run_info, history), "kind": "resume", "optimizer": opt_meta}
    save_checkpoint(path, {**_prefixed(model), **opt_t, **rng_tensors()}, meta)


def _read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _log_grads(out_dir: Path, model: nn.Module, units: list, epoch: int, step: int) -> None:
    norms = unit_grad_norms(model, units)
    with open(out_dir / GRADS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"epoch": epoch + 1, "step": step, "unit_grad_norms": norms}) + "\n")


def _truncate_grads(path: Path, epochs_done: int) -> None:
    """On resume, drop the gradient rows logged in epochs after the checkpoint (they are
    logged again) and a line torn by the kill, so each step appears once."""
    if not path.exists():
        return
    rows = path.read_text().splitlines()
    keep = []
    for line in rows:
        try:
            if json.loads(line)["epoch"] <= epochs_done:
                keep.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    if len(keep) != len(rows):
        atomic_write_text(path, "".join(line + "\n" for line in keep))


def _summary_writer_class() -> Any:
    """TensorBoard's ``SummaryWriter``, or one ``ValueError`` when its package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError(
            "--tensorboard needs the tensorboard package: pip install tensorboard"
        ) from None
    return SummaryWriter


class _Progress:
    """A rich progress bar per epoch (only when asked, on rank 0) on a terminal; elsewhere
    (a log file, CI), where a bar shows nothing until it stops, one log line per epoch."""

    def __init__(self, enabled: bool, epochs: int, steps: int, start: int) -> None:
        self.bar = None
        self.lines = False
        if not enabled:
            return
        from rich.console import Console

        if not Console().is_terminal:
            self.lines, self.epochs = True, epochs
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)  # fmt: skip
        self.bar.start()
        self.steps, self.epochs = steps, epochs
        self.task = self.bar.add_task(f"epoch {start + 1}/{epochs}", total=steps, info="")

    def step(self, epoch: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def epoch_done(self, epoch: int, row: dict[str, Any]) -> None:
        keys = [k for k in ("train_loss", "test_acc", "test_miou") if k in row]
        info = " ".join(f"{k} {row[k]:.4f}" for k in keys)
        if self.lines:
            log.info("epoch %d/%d: %s (%.1f s, %.0f img/s)", epoch + 1, self.epochs, info,
                     row.get("time_s", 0.0), row.get("train_img_s", 0.0))  # fmt: skip
        if self.bar is None:
            return
        self.bar.update(self.task, description=f"epoch {epoch + 1}/{self.epochs}", info=info)
        if epoch + 1 < self.epochs:
            self.bar.reset(
                self.task, total=self.steps, description=f"epoch {epoch + 2}/{self.epochs}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
