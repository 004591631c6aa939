"""The defended-vs-undefended evaluation behind `ebmctl attack` and `ebmctl quickstart`."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ebmctl.artifacts import atomic_write_json
from ebmctl.console import progress_bar
from ebmctl.context import environment, get_task, load_dataset
from ebmctl.defense import Defense, EnergyModel, TaskModel
from ebmctl.device import resolve_precision
from ebmctl.errors import ConfigError
from ebmctl.evaluate.attack_eval import evaluate_attack
from ebmctl.evaluate.plots import save_curves, save_grid
from ebmctl.plugins import get_registries
from ebmctl.profiles import Config


def attack_radius(cfg: Config) -> float:
    return cfg["attack.eps"] if cfg["attack.norm"] == "linf" else cfg["attack.eps_l2"]


def make_attack(cfg: Config, method: str, defended: bool):
    cls = get_registries().attacks.get(method)
    eps = attack_radius(cfg)
    step = cfg["attack.step_size"]
    if cfg["attack.norm"] == "l2" and step <= 2 / 255 + 1e-12:
        step = eps / 4  # l∞ step sizes are meaningless in l2; default to ε/4
    return cls(norm=cfg["attack.norm"], eps=eps, step_size=step, steps=cfg["attack.steps"],
               restarts=cfg["attack.restarts"], eot_reps=cfg["attack.eot_reps"] if defended else 1,
               verify_reps=cfg["defense.eot_reps"] if defended else 1,
               random_start=cfg["attack.random_start"], config=cfg)


def build_defense(cfg: Config, model: TaskModel, ebm: EnergyModel | None, device) -> Defense:
    return Defense(model, ebm, steps=cfg["defense.steps"] if ebm else 0,
                   reps=cfg["defense.eot_reps"] if ebm else 1, average=cfg["defense.average"],
                   clamp=cfg["defense.clamp"],
                   precision=resolve_precision(cfg["langevin.precision"], device),
                   chunk_size=cfg["langevin.chunk_size"],
                   channels_last=cfg["langevin.channels_last"])


def evaluation_images(cfg: Config, model: TaskModel, split: str = "test"):
    bundle = load_dataset(cfg)
    data = bundle.split(split)
    n = min(cfg["attack.n_images"], len(data))
    if n == 0:
        raise ConfigError(f"the {split} split of {bundle.name!r} is empty")
    return bundle, data.x[:n], data.y[:n]


def run_evaluation(cfg: Config, model_path: Path, ebm_path: Path | None, device: torch.device,
                   out: Path, *, undefended: bool = True, defended: bool = True,
                   method: str | None = None) -> dict:
    task = get_task(cfg)
    model = TaskModel.load(model_path, device)
    if model.task and model.task != task.name:
        raise ConfigError(f"{model_path} is a model for task {model.task!r}, but the profile's "
                          f"task.name is {task.name!r}")
    ebm = EnergyModel.load(ebm_path, device) if (defended and ebm_path) else None
    if defended and ebm is None:
        raise ConfigError("a defended evaluation needs an EBM (--ebm FILE)")
    bundle, x, y = evaluation_images(cfg, model)
    runs = []
    if undefended:
        runs.append(("undefended", build_defense(cfg, model, None, device),
                     make_attack(cfg, cfg["attack.undefended_method"], False)))
    if defended:
        runs.append(("defended", build_defense(cfg, model, ebm, device),
                     make_attack(cfg, method or cfg["attack.method"], True)))
    seeds = cfg["attack.seeds"] or [cfg["run.seed"]]
    report: dict = {
        "command": "attack", "task": task.name, "metric": task.metric_name,
        "dataset": bundle.name, "split": "test", "n_images": len(x),
        "threat": {"norm": cfg["attack.norm"], "eps": attack_radius(cfg),
                   "step_size": runs[0][2].step_size if runs else None,
                   "steps": cfg["attack.steps"], "restarts": cfg["attack.restarts"],
                   "units": "[0,1] pixels"},
        "defense": {"steps": cfg["defense.steps"], "eot_reps": cfg["defense.eot_reps"],
                    "attack_eot_reps": cfg["attack.eot_reps"], "average": cfg["defense.average"],
                    "ebm": str(ebm_path) if ebm_path else None},
        "model": str(model_path), "results": {}, "environment": environment(cfg, device),
        "config": cfg.to_dict(),
    }
    curves = {}
    for label, defense, attack in runs:
        per_seed = []
        total = len(seeds) * attack.restarts * (attack.steps + 1) * (
            (len(x) + cfg["attack.batch_size"] - 1) // cfg["attack.batch_size"])
        t0 = time.time()
        with progress_bar(total, f"attack {label} ({attack.name})") as bar:
            for s in seeds:
                res = evaluate_attack(attack, defense, task, x, y, seed=s,
                                      batch_size=cfg["attack.batch_size"], device=device,
                                      label=label, progress=bar.advance)
                x_adv = res.pop("_x_adv")
                per_seed.append({"seed": s, **res})
        nat = sum(r["natural"] for r in per_seed) / len(per_seed)
        adv = min(r["adversarial"] for r in per_seed)
        report["results"][label] = {"attack": attack.name, "natural": nat, "adversarial": adv,
                                    "seconds": round(time.time() - t0, 1), "per_seed": per_seed}
        curves[f"{label} ({attack.name})"] = (list(range(attack.steps + 1)),
                                              per_seed[0]["robust_by_step"][0])
        save_grid(x_adv[:64], out.with_name(out.stem + f".{label}-adv.png"))
    atomic_write_json(out, report)
    save_curves(out.with_suffix(".png"), curves, "attack step",
                f"robust {task.metric_name} (restart 1)",
                f"{bundle.name}: {cfg['attack.norm']} eps={attack_radius(cfg):.4g}")
    return report


def format_table(report: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for label, r in report["results"].items():
        rows.append((label, r["attack"], f"{r['natural']:.3f}", f"{r['adversarial']:.3f}"))
    return rows
