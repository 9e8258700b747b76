"""Checkpoints: safetensors tensors with JSON metadata in the same file, written atomically.

Nothing is ever unpickled. A checkpoint is one ``.safetensors`` file whose header
metadata holds ``{"skiplab": "<json>"}``: the format tag, the model name and options,
the recipe, the epoch, the metric history, the optimizer's non-tensor state. Tensors are
``model.*`` (the state dict), ``optim.*`` (optimizer state) and ``rng.*`` (RNG states).
Writing goes to a temporary file in the same folder, is flushed to disk, then renamed
over the target, so a kill at any moment leaves either the old or the new checkpoint.
A CRC-32 of the metadata and every tensor (``skiplab_crc32``) is stored beside them, so a
file damaged on disk or in transfer is refused instead of loading wrong weights.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..io import atomic_write

FORMAT = "skiplab-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """A loaded checkpoint: its path, JSON metadata and tensors (on the CPU)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def section(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.`` with the prefix removed (``section("model")``)."""
        p = prefix + "."
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}

    @property
    def model_state(self) -> dict[str, torch.Tensor]:
        return self.section("model")


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def save_checkpoint(
    path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
) -> None:
    """Write tensors + metadata atomically as one safetensors file."""
    header = {"format": FORMAT, "version": VERSION, **meta}
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    text = json.dumps(header)
    metadata = {"skiplab": text, "skiplab_crc32": str(_crc32(text, cpu))}
    atomic_write(Path(path), lambda tmp: save_file(cpu, tmp, metadata=metadata))


def _crc32(text: str, tensors: dict[str, torch.Tensor]) -> int:
    """CRC-32 of the metadata text and every tensor's name, dtype, shape and bytes."""
    crc = zlib.crc32(text.encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        crc = zlib.crc32(f"{key}|{t.dtype}|{tuple(t.shape)}".encode(), crc)
        crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy(), crc)
    return crc


def _sniff(path: Path) -> str:
    """What a file that will not load as safetensors probably is ("" when it may be one).

    A safetensors file starts with its header's length (8 bytes, little-endian) and then the
    JSON header's ``{``; that length's first byte can be anything, 0x80 (a pickle's first
    byte) included, so a pickle is recognised by its protocol byte too, and only when the
    header does not follow."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[8:9] == b"{":
        return ""
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive, probably a torch.save() pickle"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "it looks like a Python pickle"
    return ""


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a skiplab checkpoint or weights file without unpickling anything.

    Raises ``ValueError`` naming the file and what is wrong when it is missing, not a
    safetensors file (a pickle, truncated, corrupt) or not written by skiplab.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"checkpoint {path} is a folder; pass the .safetensors file in it (a run folder "
            "holds model.safetensors and checkpoint.safetensors)"
        )
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist (expected a skiplab .safetensors file)")
    sniff = _sniff(path)
    if sniff:
        raise ValueError(
            f"{path} is not a skiplab checkpoint: {sniff}; skiplab never unpickles files. "
            "Save weights with safetensors (skiplab writes model.safetensors in each run)"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"{path} is not a valid safetensors file ({err}); it may be truncated or corrupt"
        ) from None
    if "skiplab" not in header:
        raise ValueError(
            f"{path} is a safetensors file but not a skiplab checkpoint (no skiplab metadata); "
            "for plain weights, load them into a model with safetensors.torch.load_file"
        )
    try:
        meta = json.loads(header["skiplab"])
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} has corrupt skiplab metadata: {err}") from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{path} has corrupt skiplab metadata: a JSON {type(meta).__name__}, not an object"
        )
    if meta.get("format") != FORMAT or not isinstance(meta.get("version"), int):
        raise ValueError(f"{path} is not a skiplab checkpoint (format {meta.get('format')!r})")
    stored = header.get("skiplab_crc32")  # absent in files written before checksums
    if stored is not None and stored != str(_crc32(header["skiplab"], tensors)):
        raise ValueError(
            f"{path} is corrupt: its contents do not match the checksum written with them "
            "(damaged on disk or in transfer); use an intact copy, or delete it and retrain"
        )
    if meta["version"] > VERSION:
        raise ValueError(
            f"{path} was written by a newer skiplab (format version {meta['version']}); upgrade skiplab"
        )
    return Checkpoint(path, meta, tensors)


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a state dict, with one clear ``ValueError`` for missing, unexpected or misshapen keys."""
    own = unwrap(model).state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]  # fmt: skip
    # load_state_dict would cast silently: float16 weights into a float32 model, integers
    # into floats (truncated), so a wrong dtype is an error, not a quiet loss of precision.
    dtypes = [f"{k} {_dtype(state[k])} vs {_dtype(v)}" for k, v in own.items()
              if k in state and state[k].dtype != v.dtype]  # fmt: skip
    problems = []
    if own and not state:
        problems.append("it holds no model weights (no model.* tensors)")
    elif missing:
        problems.append(f"missing {len(missing)} keys (e.g. {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches (e.g. {shapes[0]})")
    if dtypes:
        problems.append(f"{len(dtypes)} dtype mismatches (e.g. {dtypes[0]})")
    if problems:
        raise ValueError(
            f"{source} does not fit this model: {'; '.join(problems)}; was it saved from a "
            "different model or options"
            + (" or precision (model.to(dtype) converts a model)?" if dtypes else "?")
        )
    unwrap(model).load_state_dict(state, strict=True)


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state into tensors and JSON (no pickling)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


_IMPL_KEYS = ("fused", "foreach", "capturable", "differentiable")


def _unusable(ckpt: Checkpoint, problem: str) -> ValueError:
    return ValueError(
        f"{ckpt.path} is not a usable resume checkpoint: {problem}; delete it to restart the "
        "run from its first epoch, or choose another --out"
    )


def resume_point(ckpt: Checkpoint, epochs: int) -> tuple[int, list[dict[str, Any]]]:
    """``(epochs done, metric history)`` of a resume checkpoint, checked against the
    recipe's ``epochs``; ``ValueError`` when the metadata is missing or inconsistent."""
    epoch, history = ckpt.meta.get("epoch"), ckpt.meta.get("history", [])
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise _unusable(ckpt, f"epoch={epoch!r}, expected an integer in [0, {epochs}]")
    if (
        not isinstance(history, list)
        or len(history) != epoch
        or not all(isinstance(row, dict) for row in history)
    ):
        raise _unusable(ckpt, f"its metric history does not hold one row per epoch ({epoch})")
    return epoch, list(history)


def restore_optimizer(opt: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    meta = ckpt.meta.get("optimizer")
    if not isinstance(meta, dict) or "param_groups" not in meta:
        raise _unusable(ckpt, "it has no optimizer state (a weights file, not a resume checkpoint)")
    state: dict[int, dict[str, Any]] = {}
    try:
        for key, value in [*ckpt.section("optim").items(), *meta.get("scalars", {}).items()]:
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = value
    except (ValueError, AttributeError) as err:
        raise _unusable(ckpt, f"malformed optimizer state ({err})") from None
    # How the step is computed (fused, foreach) belongs to this device, not the checkpoint's.
    impl = [{k: g[k] for k in _IMPL_KEYS if k in g} for g in opt.param_groups]
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise ValueError(f"{ckpt.path}: optimizer state does not fit this model ({err})") from None
    # load_state_dict checks only the groups' sizes: a buffer of another shape would fail in
    # the first step, and one of another dtype would be cast without a word.
    params = {i: p for saved, group in zip(meta["param_groups"], opt.param_groups, strict=True)
              for i, p in zip(saved["params"], group["params"], strict=True)}  # fmt: skip
    for idx, values in sorted(state.items()):
        p = params.get(idx)
        for name, v in values.items():
            if p is None or (
                torch.is_tensor(v) and v.dim() > 0 and (v.shape != p.shape or v.dtype != p.dtype)
            ):
                what = "no such parameter" if p is None else (
                    f"{tuple(v.shape)} {_dtype(v)} for a parameter {tuple(p.shape)} {_dtype(p)}"
                )  # fmt: skip
                raise ValueError(
                    f"{ckpt.path}: optimizer state does not fit this model (optim.{idx}.{name}: "
                    f"{what}); was it saved from a different model or options?"
                )
    for group, keep in zip(opt.param_groups, impl, strict=True):
        group.update(keep)


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def restore_rng(ckpt: Checkpoint) -> None:
    rng = ckpt.section("rng")
    if "torch" not in rng:  # without it, dropout after the resume would differ
        raise _unusable(ckpt, "it holds no random number generator state (rng.torch)")
    try:
        torch.set_rng_state(rng["torch"])
        keys = sorted((k for k in rng if k.startswith("cuda.")), key=lambda k: int(k.split(".")[1]))
        cuda = [rng[k] for k in keys]
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
    except (RuntimeError, TypeError, ValueError) as err:
        raise _unusable(ckpt, f"malformed random number generator state ({err})") from None


def load_model(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a skiplab model from a run's ``model.safetensors`` (or resume checkpoint):
    the registry name and options stored in the file, then the weights. Returns
    ``(model, meta)``; the model is in eval mode."""
    from ..models import create_model

    ckpt = load_checkpoint(path)
    name = ckpt.meta.get("model")
    if not name:
        raise ValueError(
            f"{path} does not name a registered model; load its weights into your own model"
        )
    options = ckpt.meta.get("model_options") or {}
    if not isinstance(options, dict):
        raise ValueError(f"{path} has corrupt metadata: model_options is not a mapping")
    try:
        model = create_model(name, **options)
    except ValueError as err:
        raise ValueError(
            f"{path} names a model this skiplab cannot build ({err}); load its weights into "
            "your own model"
        ) from None
    load_model_state(model, ckpt.model_state, path)
    return model.eval(), ckpt.meta
