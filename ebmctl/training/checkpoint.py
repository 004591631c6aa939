"""Resumable training checkpoints (kind "checkpoint"): tensors + JSON state, no pickle."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ebmctl.artifacts import (
    file_digest,
    load_artifact,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_header,
    save_artifact,
)
from ebmctl.config import RunRecord
from ebmctl.errors import ArtifactError, ConfigError, EbmctlError, NumericalError

# --- what a checkpoint was trained with -----------------------------------------------------

#: Profile sections (or single keys) that shape what each trainer computes. Task models (any
#: other target) take every section except the ones below that belong to other trainers, so a
#: plugin's own keys count.
TRAINING_KEYS: dict[str, tuple[str, ...]] = {
    "ebm": ("run", "data", "ebm", "langevin", "train"),
    "ebm-midrun": ("run", "data", "ebm", "langevin", "train"),
    "hat-ebm": ("run", "data", "ebm", "langevin", "train", "hat"),
    "fixer": ("run", "data", "task", "fix", "defense.steps", "defense.clamp", "langevin"),
}
_OTHER_TRAINERS = ("ebm", "langevin", "train", "defense", "attack", "output", "hat", "synth",
                   "ood", "quality", "lyapunov", "autoencoder", "fix")

#: Where and how fast a run computes, not what: never compared on resume. (The memory layout
#: changes rounding only; its default became ``auto`` after checkpoints recorded ``false``.)
ENVIRONMENT_KEYS = frozenset({"run.device", "run.threads", "run.out_dir", "langevin.compile",
                              "langevin.channels_last"})

#: What ``--force-resume`` may change: how long a run goes on, how often it logs, checkpoints
#: and writes grids, how work is batched or sharded, and where the data lives. Anything else
#: (learning rates, τ, bank, architecture, data noise, seed, ...) would silently mix two
#: trainings in one artifact.
FORCE_SAFE_KEYS = frozenset({
    "train.steps", "train.log_every", "train.checkpoint_every", "train.longrun_steps",
    "train.health_chains", "train.health_horizon", "train.health_classifier",
    "train.health_every", "train.shards", "fix.stage2_epochs", "fix.patience",
    "fix.purify_batch", "langevin.chunk_size", "data.root",
})


def _in_scope(key: str, target: str) -> bool:
    if key in ENVIRONMENT_KEYS:
        return False
    scope = TRAINING_KEYS.get(target)
    if scope is None:
        return key.split(".", 1)[0] not in _OTHER_TRAINERS
    return any(key == s or key.startswith(s + ".") for s in scope)


def _flat(config: RunRecord | dict | None) -> dict[str, Any]:
    """``section.key -> value`` of a run's record or of a checkpoint's nested ``config``."""
    if isinstance(config, RunRecord):
        config = config.values
    out: dict[str, Any] = {}
    for sec, keys in (config or {}).items():
        for k, v in (keys if isinstance(keys, dict) else {}).items():
            out[f"{sec}.{k}"] = v
    return out


def module_digest(net: torch.nn.Module) -> str:
    """SHA-256 of a network's tensors (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for k, v in sorted(net.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@dataclass
class ResumeGuard:
    """The training-relevant settings of a run (profile keys, plus the content digests of
    the artifacts it trains against) as recorded in its checkpoints, and the resumes that
    changed any of them (recorded in the artifact as ``extra.resumed``)."""

    target: str
    settings: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)
    resumes: list[dict] = field(default_factory=list)

    @classmethod
    def for_run(cls, config: RunRecord, target: str,
                files: dict[str, Any] | None = None) -> "ResumeGuard":
        """The fingerprint of a run training ``target`` with the profile ``config`` (its
        record; only the keys that shape ``target``'s training count). ``files`` maps a name
        (a profile key or a CLI option such as ``--ebm``) to a path (hashed here) or to a
        ready digest; a profile key named there is compared by content, not by its path
        string."""
        digests = {name: (file_digest(v) if isinstance(v, (str, Path)) else v["sha256"])
                   for name, v in (files or {}).items() if v}
        settings = {k: v for k, v in sorted(_flat(config).items())
                    if _in_scope(k, target) and k not in digests}
        return cls(target, settings, digests)

    def record(self) -> dict:
        return {"settings": self.settings, "files": self.files, "resumes": self.resumes}

    def check(self, ckpt: dict, force: bool, path: Path) -> None:
        """Refuse a resume whose settings differ from the checkpoint's (a ConfigError naming
        the keys); with ``force``, changes of :data:`FORCE_SAFE_KEYS` only are allowed and
        recorded."""
        rec = ckpt.get("settings") or {}
        self.resumes = list(rec.get("resumes", []))
        # Checkpoints from before fingerprints still carry their whole profile.
        before = rec.get("settings") or {k: v for k, v in _flat(ckpt.get("config")).items()
                                          if _in_scope(k, self.target)}
        changed = {k: (before[k], self.settings[k]) for k in sorted(before)
                   if k in self.settings and before[k] != self.settings[k]}
        old_files = rec.get("files") or {}
        for name in sorted(set(old_files) & set(self.files)):
            if old_files[name] != self.files[name]:
                changed[name] = (f"sha256 {old_files[name][:12]}", f"sha256 {self.files[name][:12]}")
        for name in sorted(set(old_files) ^ set(self.files)):
            changed[name] = (old_files.get(name, "none"), self.files.get(name, "none"))
        if not changed:
            return
        unsafe = [k for k in changed if k not in FORCE_SAFE_KEYS]
        what = "; ".join(f"{k}: {_short(a)} in the checkpoint, {_short(b)} now"
                         for k, (a, b) in changed.items())
        if unsafe:
            raise ConfigError(f"cannot resume from {path}: it was trained with other settings "
                              f"({what}); use the checkpoint's settings, or drop --resume to "
                              f"start afresh ({', '.join(unsafe)} cannot change mid-run)")
        if not force:
            raise ConfigError(f"cannot resume from {path}: it was trained with other settings "
                              f"({what}); use the checkpoint's settings, or --force-resume to "
                              "continue with the new ones (recorded in the artifact)")
        self.resumes.append({"at_step": int(ckpt["step"]),
                             "changed": {k: {"checkpoint": a, "now": b}
                                         for k, (a, b) in changed.items()}})

    def artifact_extra(self) -> dict:
        """What goes into the artifact's ``extra``: the forced changes, if any."""
        return {"resumed": self.resumes} if self.resumes else {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name.replace(".safetensors", "") + ".ckpt.safetensors")


def save_checkpoint(path: Path, *, target: str, step: int, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer | None = None,
                    tensors: dict[str, torch.Tensor] | None = None, state: dict | None = None,
                    config: RunRecord | None = None, arch: str = "",
                    arch_args: dict | None = None,
                    guard: ResumeGuard | None = None) -> None:
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
                                    "state": state or {},
                                    "settings": guard.record() if guard else None})


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
        "settings": extra.get("settings"),
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


def finish_energy_run(out: Path, ckpt_file: Path, history: list[dict], extra: dict,
                      config: RunRecord, seed: int, device, energy_label: str,
                      title: str) -> None:
    """End of an energy-model run: JSON log (with environment), energy-gap curve, and the
    checkpoint removed now that the artifact is written."""
    from ebmctl.artifacts import atomic_write_json
    from ebmctl.context import environment
    from ebmctl.evaluate.plots import save_curves

    atomic_write_json(out.with_suffix(".log.json"),
                      {"history": history, "extra": extra, "config": config.to_dict(),
                       "environment": environment(device, seed=seed)})
    if history:
        save_curves(out.with_suffix(".gap.png"),
                    {"energy gap": ([h["step"] for h in history],
                                    [h["energy_gap"] for h in history])},
                    "update", f"mean {energy_label}(x+) - mean {energy_label}(x-)", title)
    ckpt_file.unlink(missing_ok=True)
