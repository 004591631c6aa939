"""Resumable training checkpoints (kind "checkpoint"): tensors + JSON state, no pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ebmctl.artifacts import (
    load_artifact,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_artifact,
)
from ebmctl.errors import ArtifactError


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".safetensors", "") + ".ckpt.safetensors")


def save_checkpoint(path: Path, *, target: str, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    tensors: dict[str, torch.Tensor] | None = None, state: dict | None = None,
                    config=None, arch: str = "", arch_args: dict | None = None) -> None:
    all_t = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_meta = None
    if optimizer is not None:
        ot, opt_meta = optimizer_to_tensors(optimizer)
        all_t.update(ot)
    for k, v in (tensors or {}).items():
        all_t[f"state.{k}"] = v
    save_artifact(path, all_t, kind="checkpoint", arch=arch, arch_args=arch_args, config=config,
                  step=step, extra={"target": target, "optimizer": opt_meta,
                                    "state": state or {}})


def load_checkpoint(path: Path, target: str) -> dict[str, Any]:
    art = load_artifact(path, "checkpoint")
    extra = art.extra
    if extra.get("target") != target:
        raise ArtifactError(f"{path} is a checkpoint of {extra.get('target')!r}, not {target!r}")
    return {
        "step": int(art.meta.get("ebmctl.step", "0")),
        "model": {k[6:]: v for k, v in art.tensors.items() if k.startswith("model.")},
        "opt_tensors": {k: v for k, v in art.tensors.items() if k.startswith("opt.")},
        "opt_meta": extra.get("optimizer"),
        "tensors": {k[6:]: v for k, v in art.tensors.items() if k.startswith("state.")},
        "state": extra.get("state", {}),
        "config": art.config,
        "artifact": art,
    }


def restore_optimizer(opt: torch.optim.Optimizer, ckpt: dict) -> None:
    if ckpt["opt_meta"]:
        optimizer_from_tensors(opt, ckpt["opt_tensors"], ckpt["opt_meta"])
