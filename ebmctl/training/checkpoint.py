"""Resumable training checkpoints (kind "checkpoint"): tensors + JSON state, no pickle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ebmctl.artifacts import (
    load_artifact,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_header,
    save_artifact,
)
from ebmctl.errors import ArtifactError, EbmctlError, NumericalError


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".safetensors", "") + ".ckpt.safetensors")


def save_checkpoint(path: Path, *, target: str, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    tensors: dict[str, torch.Tensor] | None = None, state: dict | None = None,
                    config=None, arch: str = "", arch_args: dict | None = None) -> None:
    all_t = {f"model.{k}": v for k, v in model.state_dict().items()}
    bad = [k for k, v in all_t.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:  # never replace the last good checkpoint with a diverged model
        raise numerical_stop(f"model tensor {bad[0][6:]!r} became NaN/Inf before update {step}",
                             path)
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


def numerical_stop(what: str, ckpt_file: Path) -> NumericalError:
    """The error a training loop raises on NaN/Inf: says what diverged and which checkpoint
    (untouched, since checkpoints are only written from finite models) a --resume continues from."""
    step = None
    if Path(ckpt_file).exists():
        try:
            step = read_header(ckpt_file)[0].get("ebmctl.step")
        except EbmctlError:
            step = None
    if step is not None:
        where = (f"the last good checkpoint {ckpt_file} (step {step}) is kept; lower the "
                 "learning rate or langevin.tau and rerun with --resume")
    else:
        where = "no checkpoint was written yet; lower the learning rate or langevin.tau"
    return NumericalError(f"training stopped: {what}; {where}")


def grads_finite(model: torch.nn.Module) -> bool:
    return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def finish_energy_run(out: Path, ckpt_file: Path, history: list[dict], extra: dict, config,
                      device, energy_label: str, title: str) -> None:
    """End of an energy-model run: JSON log (with environment), energy-gap curve, and the
    checkpoint removed now that the artifact is written."""
    from ebmctl.artifacts import atomic_write_json
    from ebmctl.context import environment
    from ebmctl.evaluate.plots import save_curves

    atomic_write_json(out.with_suffix(".log.json"),
                      {"history": history, "extra": extra, "config": config.to_dict(),
                       "environment": environment(config, device)})
    if history:
        save_curves(out.with_suffix(".gap.png"),
                    {"energy gap": ([h["step"] for h in history],
                                    [h["energy_gap"] for h in history])},
                    "update", f"mean {energy_label}(x+) - mean {energy_label}(x-)", title)
    ckpt_file.unlink(missing_ok=True)
