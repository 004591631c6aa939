"""Training the Fixer (thesis Ch. 5; docs/algorithms.md#fixer): an image-to-image network G applied
after Langevin purification.

G is trained with the EBM frozen, in two stages on pairs (x̂, x) with x̂ ~ T(x):
stage 1 minimises ‖G(x̂) − x‖² (MSE warm-up), stage 2 a perceptual (feature-reconstruction)
loss on a frozen feature network, with early stopping on the validation split. The defense then
averages f(G(T_h(x))) over replicates; :class:`ebmctl.models.Fixer` maps [0,1] images to
[0,1]-unit images so it slots into :class:`ebmctl.defense.Defense` unchanged and stays
differentiable for attacks. The network is :mod:`ebmctl.nn.fixer`, the losses
:mod:`ebmctl.training.perceptual`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ebmctl.architectures import build_model
from ebmctl.artifacts import atomic_write_json, model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.contracts import DatasetBundle, Task
from ebmctl.data_utils import pick_subset
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.evaluate.plots import save_curves, save_grid
from ebmctl.models import EnergyModel, Fixer, TaskModel
from ebmctl.config import Config
from ebmctl.seeds import keeps_global_rng, make_generator
from ebmctl.training.checkpoint import (
    ResumeGuard,
    checkpoint_path,
    module_digest,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from ebmctl.training.perceptual import build_feature_net, mse_loss, perceptual_loss


# --- training ---------------------------------------------------------------------------------

@dataclass
class FixerRun:
    """What a training run needs besides the config: frozen networks and the data."""

    energy: EnergyModel
    bundle: DatasetBundle
    task: Task | None = None
    task_model: TaskModel | None = None


def purify_images(energy: EnergyModel, x: torch.Tensor, steps: int, key: tuple, *,
                  batch: int, precision: str, chunk_size: int, clamp: bool, device,
                  bar=None) -> torch.Tensor:
    """Purify ``x`` (CPU, [0,1]) in fixed batches keyed by (key, batch start): reproducible
    for any batch size of the caller. Returns CPU tensors."""
    out = []
    for start in range(0, len(x), batch):
        xb = x[start:start + batch].to(device)
        out.append(energy.purify01(xb, steps, (*key, start), precision=precision,
                                   chunk_size=chunk_size, clamp=clamp).cpu())
        if bar is not None:
            bar.advance(len(xb), "purifying")
    return torch.cat(out) if out else x.clone()


def evaluate_losses(fixer: Fixer, features: nn.Module, purified: torch.Tensor,
                    natural: torch.Tensor, device, batch: int) -> dict[str, float]:
    """Validation MSE and perceptual loss (image-weighted means), the fixer in eval mode."""
    fixer.eval()
    tot_mse = tot_feat = 0.0
    with torch.no_grad():
        for start in range(0, len(natural), batch):
            xh = purified[start:start + batch].to(device)
            x = natural[start:start + batch].to(device)
            g = fixer(xh)
            tot_mse += mse_loss(g, x).item() * len(x)
            tot_feat += perceptual_loss(features, g, x).item() * len(x)
    n = max(1, len(natural))
    return {"val_mse": tot_mse / n, "val_perceptual": tot_feat / n}


def _accuracies(run: FixerRun, fixer: Fixer, natural, purified, y, device, batch) -> dict:
    """Single-replicate task metric on natural, purified and fixed validation images."""
    if run.task is None or run.task_model is None:
        return {}
    fixer.eval()
    scores = {"natural": [], "purified": [], "fixed": []}
    with torch.no_grad():
        for start in range(0, len(natural), batch):
            x, xh = natural[start:start + batch].to(device), purified[start:start + batch].to(device)
            yb = y[start:start + batch].to(device)
            for name, imgs in (("natural", x), ("purified", xh), ("fixed", fixer(xh))):
                scores[name].append(run.task.score(run.task_model(imgs), yb).float().cpu())
    return {k: torch.cat(v).mean().item() for k, v in scores.items()}


def _schedule(cfg: Config) -> list[tuple[int, int]]:
    """(stage, epoch within stage) for every epoch of the run, in order."""
    return ([(1, e) for e in range(cfg["fix.stage1_epochs"])]
            + [(2, e) for e in range(cfg["fix.stage2_epochs"])])


def _optimizer(fixer: Fixer, cfg: Config) -> torch.optim.Optimizer:
    return torch.optim.Adam(fixer.parameters(), lr=cfg["fix.lr"])


@keeps_global_rng
def train_fixer(cfg: Config, run: FixerRun, out: Path, device: torch.device,
                resume: bool = False, stop_after: int | None = None,
                force_resume: bool = False) -> Path:
    """Train a fixer for ``run.energy`` (frozen) in two stages; write the artifact, a JSON log,
    loss-curve PNGs and a natural|purified|fixed grid. A checkpoint after every epoch makes
    the run resumable; all randomness is keyed by (seed, epoch), so a resumed run equals an
    uninterrupted one. ``stop_after`` ends this call after that many epochs (checkpoint kept)."""
    from ebmctl.device import resolve_precision

    out = Path(out)
    ckpt_file = checkpoint_path(out)
    bundle, energy = run.bundle, run.energy
    channels = bundle.channels
    net, arch, args = build_model("fixer", cfg, bundle, (cfg["run.seed"], "fix-init"))
    fixer = Fixer(net, channels).to(device)
    features = build_feature_net(cfg, run.task_model, device)
    seed, bs = cfg["run.seed"], cfg["fix.batch_size"]
    steps = cfg["fix.purify_steps"] or cfg["defense.steps"]
    precision = resolve_precision(cfg["langevin.precision"], device)
    purify_kw = dict(batch=cfg["fix.purify_batch"], precision=precision,
                     chunk_size=cfg["langevin.chunk_size"], clamp=cfg["defense.clamp"],
                     device=device)
    train_x = pick_subset(bundle.train, cfg["fix.max_images"]).x
    val = pick_subset(bundle.val, cfg["fix.val_images"])
    val_x, val_y = val.x, val.y
    if len(train_x) == 0 or len(val_x) == 0:
        raise ConfigError(f"dataset {bundle.name!r} needs training and validation images to "
                          "train a fixer (check data.val_fraction)")
    schedule = _schedule(cfg)
    if not schedule:
        raise ConfigError("fix.stage1_epochs and fix.stage2_epochs are both 0: nothing to train")

    opt = _optimizer(fixer, cfg)
    done, history, best = 0, [], {"val": math.inf, "epoch": 0, "bad": 0, "stopped": False}
    best_state: dict[str, torch.Tensor] | None = None
    # The frozen networks shape every epoch: their contents are part of the fingerprint.
    guard = ResumeGuard.for_run(cfg, "fixer", {
        "--ebm": (energy.path if energy.path and Path(energy.path).is_file()
                  else {"sha256": module_digest(energy.net) + f":{energy.tau}:{energy.temperature}"}),
        "--model": run.task_model is not None and {"sha256": module_digest(run.task_model)},
        "fix.vgg_weights": cfg["fix.feature_net"] == "vgg16" and cfg["fix.vgg_weights"]})
    if (resume or force_resume) and ckpt_file.exists():
        ck = load_checkpoint(ckpt_file, "fixer")
        guard.check(ck, force_resume, ckpt_file)
        fixer.net.load_state_dict(ck["model"])
        done = ck["step"]
        history, best = ck["state"]["history"], ck["state"]["best"]
        restore_optimizer(opt, ck)  # the loop starts a fresh one where stage 2 begins
        saved_best = {k[5:]: v for k, v in ck["tensors"].items() if k.startswith("best.")}
        best_state = saved_best or None
        info(f"resumed from {ckpt_file} after epoch {done}")
    elif resume or force_resume:
        info(f"no checkpoint at {ckpt_file}; starting from scratch")

    repurify = cfg["fix.repurify_every"]
    n_purify, prev = len(val_x), None
    for i in range(done, len(schedule)):
        if _needs_purified(cfg, schedule[i][0]) and _purify_round(i, repurify) != prev:
            n_purify, prev = n_purify + len(train_x), _purify_round(i, repurify)
    steps_per_epoch = (len(train_x) + bs - 1) // bs
    t0 = time.time()
    with progress_bar(n_purify + steps_per_epoch * (len(schedule) - done),
                      f"train fixer ({out.name})") as bar:
        val_hat = purify_images(energy, val_x, steps, (seed, "fix", "val"), bar=bar, **purify_kw)
        if not history:
            initial = evaluate_losses(fixer, features, val_hat, val_x, device, bs)
            history.append({"stage": 0, "epoch": 0, **initial,
                            **_prefixed(_accuracies(run, fixer, val_x, val_hat, val_y, device, bs))})
        cached: tuple[int, torch.Tensor] | None = None
        for i in range(done, len(schedule)):
            stage, stage_epoch = schedule[i]
            if best["stopped"] and stage == 2:
                break
            if stage == 2 and stage_epoch == 0:
                opt = _optimizer(fixer, cfg)  # a new loss: fresh Adam moments
            if _needs_purified(cfg, stage):
                rnd = _purify_round(i, repurify)
                if cached is None or cached[0] != rnd:
                    cached = (rnd, purify_images(energy, train_x, steps, (seed, "fix", "train", rnd),
                                                 bar=bar, **purify_kw))
                inputs = cached[1]
            else:
                inputs = train_x
            perm = torch.randperm(len(train_x), generator=make_generator("cpu", seed, "fix-epoch", i))
            fixer.train()
            total = 0.0
            for b in range(steps_per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                xh, x = inputs[idx].to(device), train_x[idx].to(device)
                g = fixer(xh)
                loss = mse_loss(g, x) if stage == 1 else perceptual_loss(features, g, x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if not math.isfinite(loss.item()):
                    raise NumericalError(f"fixer loss became {loss.item()} in epoch {i + 1}; the "
                                         f"last good checkpoint is {ckpt_file}")
                opt.step()
                total += loss.item() * len(idx)
                bar.advance(1, f"stage {stage} loss {loss.item():.4g}")
            val = evaluate_losses(fixer, features, val_hat, val_x, device, bs)
            rec = {"stage": stage, "epoch": i + 1, "train_loss": total / len(train_x), **val,
                   "seconds": round(time.time() - t0, 1)}
            if stage == 2:
                # Early stopping on the validation perceptual loss; the best weights are kept.
                if val["val_perceptual"] < best["val"] - cfg["fix.min_delta"]:
                    best.update(val=val["val_perceptual"], epoch=i + 1, bad=0)
                    best_state = {k: v.detach().cpu().clone()
                                  for k, v in fixer.net.state_dict().items()}
                else:
                    best["bad"] += 1
                    if best["bad"] >= cfg["fix.patience"]:
                        best["stopped"] = True
                        info(f"early stop after epoch {i + 1}: no validation improvement for "
                             f"{cfg['fix.patience']} epochs (best epoch {best['epoch']})")
            history.append(rec)
            last = i + 1 == len(schedule) or best["stopped"]
            if not last:
                save_checkpoint(ckpt_file, target="fixer", step=i + 1, model=fixer.net,
                                optimizer=opt,
                                tensors={f"best.{k}": v for k, v in (best_state or {}).items()},
                                state={"history": history, "best": best}, config=cfg,
                                arch=arch, arch_args=args, guard=guard)
            if stop_after is not None and i + 1 - done >= stop_after and not last:
                info(f"stopped after {stop_after} epoch(s); resume with --resume")
                return ckpt_file
    if best_state is not None:
        fixer.net.load_state_dict(best_state)
    final = evaluate_losses(fixer, features, val_hat, val_x, device, bs)
    acc = _accuracies(run, fixer, val_x, val_hat, val_y, device, bs)
    extra = {"ebm": energy.path, "purify_steps": steps, "stage1_input": cfg["fix.stage1_input"],
             "feature_net": cfg["fix.feature_net"],
             "feature_layers": getattr(features, "layers", list(cfg["fix.vgg_layers"])),
             "epochs_run": len(history) - 1, "best_epoch": best["epoch"] or len(history) - 1,
             "early_stopped": best["stopped"], "final": {**final, **_prefixed(acc)},
             "initial": history[0], "seconds": round(time.time() - t0, 1),
             **guard.artifact_extra()}
    data = {"range": "[-1,1]", "image_size": bundle.image_size, "channels": channels,
            "dataset": cfg["data.dataset"]}
    save_artifact(out, model_tensors(fixer.net), kind="fixer", arch=arch, arch_args=args,
                  task=cfg["task.name"], data=data, config=cfg, step=len(history) - 1,
                  extra={**extra, "history": history})
    from ebmctl.context import environment

    atomic_write_json(out.with_suffix(".log.json"), {"history": history, **extra,
                                                     "config": cfg.to_dict(),
                                                     "environment": environment(cfg, device)})
    _write_plots(out, history, fixer, val_x, val_hat, device)
    ckpt_file.unlink(missing_ok=True)
    if acc:
        info(f"validation {run.task.metric_name} (1 replicate): natural {acc['natural']:.4f}, "
             f"purified {acc['purified']:.4f}, purified+fixer {acc['fixed']:.4f}")
    return out


def _needs_purified(cfg: Config, stage: int) -> bool:
    return stage == 2 or cfg["fix.stage1_input"] == "purified"


def _purify_round(epoch_index: int, repurify_every: int) -> int:
    """Which purified copy of the training set epoch ``epoch_index`` uses (0 = one copy)."""
    return epoch_index // repurify_every if repurify_every else 0


def _prefixed(acc: dict) -> dict:
    return {f"val_{k}_score": v for k, v in acc.items()}


def _write_plots(out: Path, history: list[dict], fixer: Fixer, val_x, val_hat, device) -> None:
    epochs = [h["epoch"] for h in history]
    save_curves(out.with_suffix(".val-mse.png"),
                {"validation MSE": (epochs, [h["val_mse"] for h in history])},
                "epoch", "MSE([0,1] units)", "fixer: validation MSE (stage 1 then 2)")
    s2 = [h for h in history if h["stage"] == 2]
    curves = {"validation perceptual": (epochs, [h["val_perceptual"] for h in history])}
    if s2:
        curves["training perceptual (stage 2)"] = ([h["epoch"] for h in s2],
                                                   [h["train_loss"] for h in s2])
    save_curves(out.with_suffix(".val-perceptual.png"), curves, "epoch", "perceptual loss",
                "fixer: perceptual loss")
    n = min(16, len(val_x))
    fixer.eval()
    with torch.no_grad():
        fixed = fixer(val_hat[:n].to(device)).cpu()
    save_grid(torch.cat([val_x[:n], val_hat[:n].clamp(0, 1), fixed]),
              out.with_suffix(".samples.png"), nrow=n)
