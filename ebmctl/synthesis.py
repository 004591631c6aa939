"""Image synthesis from a plain EBM (Langevin from noise or data) or a Hat EBM (joint /
conditional), with an optional sample-quality score (docs/algorithms.md#sample-quality,
docs/algorithms.md#hat-ebm-sampling).

Everything is computed before anything is written, so a failure leaves no partial output.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch

from ebmctl.artifacts import atomic_write_json
from ebmctl.console import info
from ebmctl.context import environment
from ebmctl.contracts import DatasetBundle
from ebmctl.data_utils import pick_subset
from ebmctl.errors import ConfigError
from ebmctl.evaluate.plots import save_grid, save_image01
from ebmctl.evaluate.quality import (
    QualityConfig,
    classifier_features,
    inception_features,
    quality_report,
)
from ebmctl.models import EnergyModel, TaskModel, load_energy_model
from ebmctl.config import RunRecord, setting
from ebmctl.sampling.langevin import LangevinConfig
from ebmctl.seeds import make_generator


@dataclass(frozen=True)
class SynthConfig:
    """The profile section ``[synth]``: how many images ``ebmctl synthesize`` samples, with how
    many Langevin steps, and where plain-EBM chains start."""

    section: ClassVar[str] = "synth"

    n: int = setting(64, "images to sample", minimum=1)
    steps: int = setting(0, "Langevin steps (0 = the model's training K)", minimum=0)
    init: str = setting("noise", "plain EBM chains start from noise | data",
                        choices=("noise", "data"))


@dataclass(frozen=True)
class SynthesisSettings:
    """What :func:`run_synthesis` reads, built once by the command: the ``[synth]``,
    ``[langevin]`` and ``[quality]`` sections, ``train_steps`` (``train.mcmc_steps``: a plain
    EBM's K when ``synth.steps`` is 0), the run's ``seed``, ``load_data`` (gives the dataset
    bundle of the EBM's training set) and the resolved profile to write into the report."""

    synth: SynthConfig
    langevin: LangevinConfig
    quality: QualityConfig
    train_steps: int
    seed: int
    load_data: Callable[[], DatasetBundle]
    record: RunRecord


def sample_plain(model: EnergyModel, n: int, steps: int, init: str, data01: torch.Tensor | None,
                 key: tuple, precision: str = "fp32", chunk_size: int = 2048) -> dict:
    """Langevin chains of a plain EBM from uniform noise (the training bank's initialisation)
    or from data images. Returns [0,1]-unit ``samples`` and their ``initial`` states."""
    dev = next(model.net.parameters()).device
    gen = make_generator("cpu", *key, "init")
    shape = (model.channels, model.image_size, model.image_size)
    if init == "noise":
        x0 = torch.rand((n, *shape), generator=gen)
    else:
        if data01 is None or len(data01) == 0:
            raise ConfigError("synth.init = data needs a non-empty dataset")
        idx = torch.randint(0, len(data01), (n,), generator=gen)
        x0 = data01[idx]
    x = model.purify01(x0.to(dev), steps, key, precision=precision, chunk_size=chunk_size)
    return {"samples": x, "initial": x0.to(dev)}


def run_synthesis(settings: SynthesisSettings, model_path: Path, out_dir: Path,
                  device: torch.device, *, mode: str | None = None,
                  classifier: Path | None = None) -> dict:
    """Sample ``synth.n`` images, score them if a feature network is available, write a grid PNG,
    the single images and ``report.json`` into ``out_dir``.

    Raises:
        ConfigError: ``mode`` for a plain EBM, or chains from data without data.
    """
    model = load_energy_model(model_path, device)
    synth = settings.synth
    n, seed = synth.n, settings.seed
    langevin, quality = settings.langevin, settings.quality
    precision = langevin.precision_on(device)
    is_hat = model.kind == "hat-ebm"
    if mode and not is_hat:
        raise ConfigError("--mode applies to Hat EBMs only; this is a plain EBM")
    needs_data = (not is_hat and synth.init == "data") or classifier or quality.fid_features
    bundle = settings.load_data() if needs_data else None
    key = (seed, "synthesize")
    report: dict = {"command": "synthesize", "model": str(model_path), "n": n}
    if is_hat:
        steps = synth.steps or model.mcmc_steps
        out = model.sample01(n, steps, key, mode=mode, chunk_size=langevin.chunk_rows)
        sets = {"hat_ebm": out["samples"], "generator": out["generator"]}
        used_mode = mode or model.settings.mode
        report.update(kind="hat-ebm", mode=used_mode, steps=steps,
                      settings={"eps_y": model.settings.eps_y, "eps_z": model.settings.eps_z,
                                "temperature": model.settings.temperature},
                      residual_norm_mean=round(out["y"].flatten(1).norm(dim=1).mean().item(), 6),
                      energy_mean={k: round(model.energy01(v).mean().item(), 6)
                                   for k, v in sets.items()})
        samples = out["samples"]
    else:
        steps = synth.steps or settings.train_steps
        data01 = bundle.train.x if bundle is not None else None
        out = sample_plain(model, n, steps, synth.init, data01, key, precision,
                           langevin.chunk_size)
        sets = {"ebm": out["samples"]}
        samples = out["samples"]
        with torch.no_grad():
            report.update(kind="ebm", init=synth.init, steps=steps,
                          settings={"tau": model.tau, "temperature": model.temperature},
                          energy_mean={"ebm": round(model.energy01(samples).mean().item(), 6),
                                       "initial": round(model.energy01(out["initial"]).mean()
                                                        .item(), 6)})
    extractors = {}
    if classifier is not None:
        extractors["proxy_classifier_fd"] = classifier_features(TaskModel.load(classifier, device))
    if quality.fid_features:
        extractors["fid_inception"] = inception_features(quality.fid_features, device)
    if extractors:
        test = bundle.test if len(bundle.test) else bundle.val
        ref = pick_subset(test, quality.n_reference).x
        floor = (pick_subset(bundle.val, n).x if (bundle.test is test and len(bundle.val) >= 2)
                 else None)
        report["quality"] = quality_report({k: v.clamp(0, 1) for k, v in sets.items()}, ref,
                                           extractors, device, floor)
        report["quality_note"] = (
            f"Fréchet distances to {len(ref)} {bundle.name} test images; lower is better. "
            "real_images_floor: real validation images at the same sample size. "
            "proxy_classifier_fd uses the penultimate features of "
            f"{classifier} and is comparable only across runs with that classifier.")
    report["config"] = settings.record.to_dict()
    report["environment"] = environment(device, seed=seed)
    write_outputs(out_dir, samples, sets, report)
    return report


def write_outputs(out_dir: Path, samples: torch.Tensor, sets: dict, report: dict) -> None:
    out_dir = Path(out_dir)
    save_grid(samples.clamp(0, 1), out_dir / "grid.png")
    for name, x in sets.items():
        if x is not samples:
            save_grid(x.clamp(0, 1), out_dir / f"grid-{name}.png")
    for i, img in enumerate(samples):
        save_image01(img, out_dir / "images" / f"sample-{i:05d}.png")
    atomic_write_json(out_dir / "report.json", report)
    info(f"wrote {out_dir / 'grid.png'}, {len(samples)} images under {out_dir / 'images'} and "
         f"{out_dir / 'report.json'}")
