"""The Fixer (thesis Ch. 5; docs/algorithms.md#fixer): an image-to-image network G applied after
Langevin purification.

G is trained with the EBM frozen, in two stages on pairs (x̂, x) with x̂ ~ T(x):
stage 1 minimises ‖G(x̂) − x‖² (MSE warm-up), stage 2 a perceptual (feature-reconstruction)
loss on a frozen feature network, with early stopping on the validation split. The defense then
averages f(G(T_h(x))) over replicates; :class:`Fixer` maps [0,1] images to [0,1]-unit images so
it slots into :class:`ebmctl.defense.Defense` unchanged and stays differentiable for attacks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ebmctl.artifacts import atomic_write_json, load_model, model_tensors, save_artifact
from ebmctl.console import info, progress_bar
from ebmctl.data_utils import pick_subset
from ebmctl.defense import adapt_images
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.errors import ArtifactError, ConfigError, NumericalError
from ebmctl.evaluate.plots import save_curves, save_grid
from ebmctl.plugins import get_registries
from ebmctl.profiles import Config
from ebmctl.contracts import DatasetBundle, Task
from ebmctl.registry import did_you_mean
from ebmctl.seeds import keeps_global_rng, make_generator, seed_global_rng
from ebmctl.training.checkpoint import (
    ResumeGuard,
    checkpoint_path,
    module_digest,
    load_checkpoint,
    restore_optimizer,
    save_checkpoint,
)
from ebmctl.units import to_internal, to_public

# --- the fixer in public units --------------------------------------------------------------


class Fixer(nn.Module):
    """Wraps a fixer network working on [-1,1] images (tanh output) so that it maps [0,1]
    images to [0,1]-unit images of the same size. Images with another channel count are
    converted in and back, so a gray EBM's fixer can sit in an RGB pipeline and vice versa."""

    def __init__(self, net: nn.Module, channels: int = 0):
        super().__init__()
        self.net, self.channels = net, channels

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        in_ch = x01.shape[1]
        x = adapt_images(x01, 0, self.channels) if self.channels else x01
        out = to_public(self.net(to_internal(x)))
        return adapt_images(out, 0, in_ch) if out.shape[1] != in_ch else out


def load_fixer(path: str | Path, device: torch.device) -> Fixer:
    """Load a fixer artifact as a frozen, eval-mode :class:`Fixer` (input gradients still flow)."""
    net, art = load_model(path, "fixer")
    fixer = Fixer(net, int(art.data.get("channels", 0) or 0)).to(device).eval()
    for p in fixer.parameters():
        p.requires_grad_(False)
    return fixer


def fixer_arch_args(cfg: Config, channels: int) -> tuple[str, dict]:
    arch = cfg["fix.arch"]
    spec = get_registries().models.get(arch)
    if spec.kind != "fixer":
        raise ConfigError(f"fix.arch {arch!r} is a {spec.kind!r} architecture, not a fixer")
    return arch, {"channels": channels, "width": cfg["fix.width"], "n_blocks": cfg["fix.blocks"]}


# --- feature networks for the perceptual loss ------------------------------------------------

#: torchvision ``vgg16().features`` index of each ReLU output.
VGG16_LAYERS = {
    "relu1_1": 1, "relu1_2": 3, "relu2_1": 6, "relu2_2": 8, "relu3_1": 11, "relu3_2": 13,
    "relu3_3": 15, "relu4_1": 18, "relu4_2": 20, "relu4_3": 22, "relu5_1": 25, "relu5_2": 27,
    "relu5_3": 29,
}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_CONVERT_HINT = ("convert torchvision's vgg16 .pth once with: python -c \"import torch, "
                 "safetensors.torch as st; st.save_file(torch.load('vgg16.pth', "
                 "weights_only=True), 'vgg16.safetensors')\"")


_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


def vgg16_features(n_layers: int) -> nn.Sequential:
    """The first ``n_layers`` modules of torchvision's ``vgg16().features`` (same indices, so
    its state-dict keys load), built without the unused deeper layers or the classifier."""
    layers: list[nn.Module] = []
    cin = 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            # Not in place: captured activations must not be overwritten by later layers.
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=False)]
            cin = v
        if len(layers) >= n_layers:
            break
    return nn.Sequential(*layers[:n_layers])


class VGGFeatures(nn.Module):
    """Frozen VGG-16 activations at named ReLU layers, loaded from a local safetensors file in
    torchvision's state-dict format (``features.N.weight`` ...). Never downloads."""

    def __init__(self, weights: str | Path, layers: list[str]):
        super().__init__()
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown or not layers:
            name = unknown[0] if unknown else ""
            raise ConfigError(f"unknown VGG-16 layer {name!r} in fix.vgg_layers"
                              f"{did_you_mean(name, list(VGG16_LAYERS))}")
        path = Path(weights) if weights else None
        if path is None:
            raise ConfigError("fix.feature_net = 'vgg16' needs a local VGG-16 weights file: set "
                              "fix.vgg_weights=PATH (torchvision's vgg16 state dict as "
                              ".safetensors; ebmctl never downloads), or use "
                              "fix.feature_net=classifier")
        if not path.is_file():
            raise ConfigError(f"VGG-16 weights file not found: {path} (fix.vgg_weights)")
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError):
            raise ArtifactError(f"{path} is not a safetensors file; {_CONVERT_HINT}") from None
        self.index = [VGG16_LAYERS[name] for name in layers]
        features = vgg16_features(max(self.index) + 1)
        own = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        expected = features.state_dict()
        missing = sorted(set(expected) - set(own))
        if missing:
            raise ArtifactError(f"{path} lacks VGG-16 tensors {['features.' + m for m in missing[:3]]}"
                                " (expected torchvision's vgg16 state dict)")
        for k, v in expected.items():
            if tuple(own[k].shape) != tuple(v.shape):
                raise ArtifactError(f"{path}: tensor features.{k} has shape {tuple(own[k].shape)}, "
                                    f"VGG-16 expects {tuple(v.shape)}")
        features.load_state_dict({k: own[k].float() for k in expected})
        self.features = features.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x01: torch.Tensor) -> list[torch.Tensor]:
        h = (adapt_images(x01, 0, 3) - self.mean) / self.std
        wanted, out = set(self.index), []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in wanted:
                out.append(h)
        return out


_ACTIVATION_TYPES = (nn.ReLU, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.ELU, nn.Softplus)


class ClassifierFeatures(nn.Module):
    """Activations of named modules of the task model (download-free perceptual loss).

    ``layers`` are module names of the task network (``features.3``) or ``output`` for its
    raw outputs; empty means every activation module (or the output if it has none)."""

    def __init__(self, model: TaskModel, layers: list[str]):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        modules = dict(model.net.named_modules())
        if not layers:
            layers = [n for n, m in modules.items() if isinstance(m, _ACTIVATION_TYPES)] or ["output"]
        for name in layers:
            if name != "output" and (name not in modules or name == ""):
                choices = [n for n in modules if n] + ["output"]
                raise ConfigError(f"task model has no layer {name!r} (fix.classifier_layers)"
                                  f"{did_you_mean(name, choices)}")
        self.layers = list(layers)
        self._captured: list[torch.Tensor] = []
        for name in self.layers:
            if name != "output":
                modules[name].register_forward_hook(
                    lambda _m, _i, out: self._captured.append(out))

    def forward(self, x01: torch.Tensor) -> list[torch.Tensor]:
        self._captured = []
        out = self.model(x01)
        feats = list(self._captured)
        self._captured = []
        return feats + ([out] if "output" in self.layers else [])


def build_feature_net(cfg: Config, task_model: TaskModel | None, device) -> nn.Module:
    kind = cfg["fix.feature_net"]
    if kind == "vgg16":
        return VGGFeatures(cfg["fix.vgg_weights"], list(cfg["fix.vgg_layers"])).to(device)
    if task_model is None:
        raise ConfigError("fix.feature_net = 'classifier' needs the task model: pass --model FILE")
    return ClassifierFeatures(task_model, list(cfg["fix.classifier_layers"])).to(device)


# --- losses -----------------------------------------------------------------------------------

def mse_loss(fixed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Stage 1: mean squared error in [0,1] units."""
    return F.mse_loss(fixed, target)


def perceptual_loss(features: nn.Module, fixed: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Stage 2 (thesis §5.2.1): (1/(C_j H_j W_j))·‖φ_j(G(x̂)) − φ_j(x)‖², batch- and
    layer-averaged."""
    with torch.no_grad():
        want = features(target)
    got = features(fixed)
    return sum(F.mse_loss(g, w) for g, w in zip(got, want)) / len(got)


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
    arch, args = fixer_arch_args(cfg, channels)
    seed_global_rng(cfg["run.seed"], "fix-init")  # initial weights depend on the seed only
    fixer = Fixer(get_registries().models.get(arch).build(**args), channels).to(device)
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


def fix_images(fixer: Fixer, x01: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fixer(x01)
