"""The defended-vs-undefended evaluation behind `ebmctl attack` and `ebmctl quickstart`.

Every requested attack runs on every seed; a model's headline adversarial figure is the
minimum over its attacks of the mean over seeds (a defense's number is its worst case). Each
report carries sanity checks (a large ε breaks the undefended model; an iterative attack is at
least as strong as a single step; defended natural accuracy uses H_def replicates).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from ebmctl.artifacts import atomic_write_bytes, atomic_write_json
from ebmctl.console import info, progress_bar
from ebmctl.context import environment, get_task, load_dataset
from ebmctl.defense import Defense, EnergyModel, TaskModel
from ebmctl.device import resolve_precision
from ebmctl.errors import ConfigError
from ebmctl.evaluate.attack_eval import CountingDefense, evaluate_attack
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


def build_defense(cfg: Config, model: TaskModel, ebm: EnergyModel | None, device,
                  fixer: torch.nn.Module | None = None) -> Defense:
    return CountingDefense(model, ebm, steps=cfg["defense.steps"] if ebm else 0,
                   reps=cfg["defense.eot_reps"] if ebm else 1, average=cfg["defense.average"],
                   clamp=cfg["defense.clamp"],
                   precision=resolve_precision(cfg["langevin.precision"], device),
                   chunk_size=cfg["langevin.chunk_size"],
                   channels_last=cfg["langevin.channels_last"], fixer=fixer)


def evaluation_images(cfg: Config, model: TaskModel, split: str = "test"):
    bundle = load_dataset(cfg)
    data = bundle.split(split)
    n = min(cfg["attack.n_images"], len(data))
    if n == 0:
        raise ConfigError(f"the {split} split of {bundle.name!r} is empty")
    from ebmctl.data_utils import pick_subset

    held = pick_subset(data, n)
    return bundle, held.x, held.y


def method_list(cfg: Config, method: str | None, defended: bool) -> list[str]:
    """Attacks to run: ``method`` may be a comma list; else attack.methods / attack.method."""
    if not defended:
        return [m.strip() for m in cfg["attack.undefended_method"].split(",") if m.strip()]
    if method:
        names = [m.strip() for m in method.split(",") if m.strip()]
    else:
        names = list(cfg["attack.methods"]) or [cfg["attack.method"]]
    registry = get_registries().attacks
    for m in names:
        registry.get(m)  # unknown names fail before any work, with a suggestion
    return names


def _fingerprint(cfg: Config, model_path: Path, ebm_path: Path | None,
                 fixer_path: Path | None = None) -> str:
    """What a resumed evaluation must share with the one that wrote its parts: the profile and
    the contents (not the paths) of every model that shapes the result, so a model rewritten
    in place is noticed and one moved elsewhere is not."""
    from ebmctl.artifacts import file_digest

    d = cfg.to_dict()
    d.get("run", {}).pop("out_dir", None)
    d.get("run", {}).pop("threads", None)
    d.get("run", {}).pop("device", None)
    models = {"model": model_path, "ebm": ebm_path, "fixer": fixer_path}
    blob = json.dumps({"cfg": d, **{k: file_digest(p) if p else "" for k, p in models.items()}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def sanity_checks(cfg: Config, task, model: TaskModel, x: torch.Tensor, y: torch.Tensor,
                  device, results: dict, runs: list) -> dict:
    """Checks every report carries; a failed check flags an attack or evaluation bug."""
    checks = []
    bare = build_defense(cfg, model, None, device)
    batch = cfg["attack.batch_size"]
    n = min(cfg["attack.sanity_images"], len(x))
    norm = cfg["attack.norm"]
    big = cfg["attack.sanity_eps"] * (1.0 if norm == "linf" else math.sqrt(x[0].numel()))
    pgd_cls, fgsm_cls = get_registries().attacks.get("pgd"), get_registries().attacks.get("fgsm")
    large = pgd_cls(norm=norm, eps=big, step_size=big / 8, steps=max(20, cfg["attack.steps"]),
                    restarts=1, random_start=True)
    res = evaluate_attack(large, bare, task, x[:n], y[:n], seed=0, batch_size=batch,
                          device=device, label="sanity-large-eps")
    checks.append({"check": "a large radius drives the undefended model to ~0",
                   "radius": big, "images": n, "adversarial": res["adversarial"],
                   "pass": res["adversarial"] <= 0.05})
    eps = attack_radius(cfg)
    fgsm = fgsm_cls(norm=norm, eps=eps, step_size=eps, steps=1)
    single = evaluate_attack(fgsm, bare, task, x, y, seed=0, batch_size=batch, device=device,
                             label="sanity-fgsm")["adversarial"]
    und = results.get("undefended", {}).get("attacks", {})
    iterative = min((a["adversarial_mean"] for a in und.values()), default=None)
    if iterative is None:
        it = pgd_cls(norm=norm, eps=eps, step_size=make_attack(cfg, "pgd", False).step_size,
                     steps=cfg["attack.steps"], restarts=1, random_start=True)
        iterative = evaluate_attack(it, bare, task, x, y, seed=0, batch_size=batch,
                                    device=device, label="sanity-pgd")["adversarial"]
    checks.append({"check": "iterative attack at least as strong as one FGSM step "
                            "(undefended, tolerance 0.02)",
                   "fgsm": single, "iterative": iterative, "pass": iterative <= single + 0.02})
    for label, defense, attacks in runs:
        if label != "defended":
            continue
        h_def = cfg["defense.eot_reps"]
        nat = {name: [s["natural"] for s in a["per_seed"]]
               for name, a in results[label]["attacks"].items()}
        same = len({tuple(v) for v in nat.values()}) <= 1
        uses = all(att.verify_reps == h_def for att in attacks)
        checks.append({"check": "defended natural accuracy uses H_def replicates and is the "
                                "same for every attack", "h_def": h_def,
                       "natural_by_attack": nat, "pass": bool(same and uses)})
    return {"checks": checks, "all_pass": all(c["pass"] for c in checks)}


def run_evaluation(cfg: Config, model_path: Path, ebm_path: Path | None, device: torch.device,
                   out: Path, *, undefended: bool = True, defended: bool = True,
                   method: str | None = None, resume: bool = False,
                   save_adversarials: bool = False, sanity: bool | None = None,
                   fixer_path: Path | None = None) -> dict:
    """``fixer_path`` adds a "defended+fixer" run (purification then the fixer, SPEC §6) next
    to "defended", with the same attacks and seeds, so the report compares the two."""
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
                     [make_attack(cfg, m, False) for m in method_list(cfg, None, False)]))
    if defended:
        runs.append(("defended", build_defense(cfg, model, ebm, device),
                     [make_attack(cfg, m, True) for m in method_list(cfg, method, True)]))
    if defended and fixer_path is not None:
        from ebmctl.fixing import load_fixer

        runs.append(("defended+fixer",
                     build_defense(cfg, model, ebm, device, fixer=load_fixer(fixer_path, device)),
                     [make_attack(cfg, m, True) for m in method_list(cfg, method, True)]))
    seeds = cfg["attack.seeds"] or [cfg["run.seed"]]
    out = Path(out)
    parts_dir = out.with_name(out.stem + ".parts")
    fingerprint = _fingerprint(cfg, model_path, ebm_path if defended else None,
                               fixer_path if defended else None)
    if resume and not parts_dir.exists():
        info(f"--resume: no partial results in {parts_dir}; starting from scratch")
    report: dict = {
        "command": "attack", "task": task.name, "metric": task.metric_name,
        "dataset": bundle.name, "split": "test", "n_images": len(x), "seeds": list(seeds),
        "threat": {"norm": cfg["attack.norm"], "eps": attack_radius(cfg),
                   "step_size": runs[0][2][0].step_size if runs else None,
                   "steps": cfg["attack.steps"], "restarts": cfg["attack.restarts"],
                   "units": "[0,1] pixels"},
        "defense": {"steps": cfg["defense.steps"], "eot_reps": cfg["defense.eot_reps"],
                    "attack_eot_reps": cfg["attack.eot_reps"], "average": cfg["defense.average"],
                    "ebm": str(ebm_path) if (defended and ebm_path) else None,
                    "fixer": str(fixer_path) if (defended and fixer_path) else None},
        "model": str(model_path), "results": {}, "environment": environment(cfg, device),
        "config": cfg.to_dict(),
    }
    curves, task_runs, adversarials = {}, {}, {}
    for label, defense, attacks in runs:
        per_attack: dict[str, dict] = {}
        best = None
        for attack in attacks:
            per_seed = []
            total = len(seeds) * attack.restarts * (attack.steps + 1) * (
                (len(x) + cfg["attack.batch_size"] - 1) // cfg["attack.batch_size"])
            with progress_bar(total, f"attack {label} ({attack.name})") as bar:
                for s in seeds:
                    res = evaluate_attack(attack, defense, task, x, y, seed=s,
                                          batch_size=cfg["attack.batch_size"], device=device,
                                          label=label, progress=bar.advance,
                                          parts_dir=parts_dir, fingerprint=fingerprint,
                                          resume=resume)
                    x_adv = res.pop("_x_adv")
                    adversarials[f"{label}.{attack.name}.seed{s}"] = x_adv
                    per_seed.append({"seed": s, **res})
            nat_m, nat_s = _mean_std([r["natural"] for r in per_seed])
            adv_m, adv_s = _mean_std([r["adversarial"] for r in per_seed])
            steps_n = len(per_seed[0]["accuracy_curve"])
            curve = [sum(r["accuracy_curve"][i] for r in per_seed) / len(per_seed)
                     for i in range(steps_n)]
            per_attack[attack.name] = {
                "attack": attack.name, "description": attack.description,
                "gradient": getattr(attack, "gradient_mode", lambda: "exact")()
                if label == "defended" else "exact",
                "natural_mean": nat_m, "natural_std": nat_s,
                "adversarial_mean": adv_m, "adversarial_std": adv_s,
                "accuracy_curve": curve,
                "seconds": round(sum(r["seconds"] for r in per_seed), 2),
                "image_steps": sum(r["image_steps"] for r in per_seed),
                "per_seed": per_seed}
            curves[f"{label} ({attack.name})"] = (list(range(steps_n)), curve)
            if best is None or adv_m < per_attack[best]["adversarial_mean"]:
                best = attack.name
            if attack is attacks[0] or best == attack.name:
                task_runs[label] = {"defense": defense, "x_adv": x_adv, "result": per_seed[-1]}
        b = per_attack[best]
        report["results"][label] = {
            "attack": best, "natural": b["natural_mean"], "natural_std": b["natural_std"],
            "adversarial": b["adversarial_mean"], "adversarial_std": b["adversarial_std"],
            "seconds": round(sum(a["seconds"] for a in per_attack.values()), 1),
            "image_steps": sum(a["image_steps"] for a in per_attack.values()),
            "per_seed": b["per_seed"], "attacks": per_attack}
        save_grid(task_runs[label]["x_adv"][:64], out.with_name(out.stem + f".{label}-adv.png"))
    use_sanity = cfg["attack.sanity"] if sanity is None else sanity
    if use_sanity and runs:
        report["sanity"] = sanity_checks(cfg, task, model, x, y, device, report["results"], runs)
        if not report["sanity"]["all_pass"]:
            failed = [c["check"] for c in report["sanity"]["checks"] if not c["pass"]]
            info("sanity check failed: " + "; ".join(failed))
    # Task-specific figures (e.g. Dice and mIoU for segmentation); the loop above stays generic.
    extras_fn = getattr(task, "evaluation_extras", None)
    extras = extras_fn(x, y, task_runs, out, (seeds[-1], "report")) if extras_fn else None
    for label, values in ((extras or {}).pop("results", None) or {}).items():
        report["results"][label].update(values)
    if extras:
        report["task_report"] = extras
    if save_adversarials:
        adv_path = out.with_suffix(".adv.safetensors")
        tensors = {k: v.float().contiguous() for k, v in adversarials.items()}
        tensors["x_natural"], tensors["y"] = x.float().contiguous(), y.contiguous()
        atomic_write_bytes(adv_path, st_save(tensors, metadata={
            "ebmctl.kind": "adversarials", "ebmctl.config": cfg.to_json()}))
        report["adversarials_file"] = str(adv_path)
    atomic_write_json(out, report)
    save_curves(out.with_suffix(".png"), curves, "attack step",
                f"robust {task.metric_name}\n(worst restart, mean over seeds)",
                f"{bundle.name}: {cfg['attack.norm']} eps={attack_radius(cfg):.4g}")
    shutil.rmtree(parts_dir, ignore_errors=True)  # the report now holds every per-image result
    return report


def run_sweep(cfg: Config, model_path: Path, ebm_path: Path | None, device: torch.device,
              out: Path, key: str, values: list, *, method: str | None = None,
              resume: bool = False) -> dict:
    """Defended evaluation for each value of one profile key (e.g. defense.steps for the
    thesis' K study, attack.eot_reps for H_adv); writes per-value reports, a sweep JSON and a
    plot of natural and adversarial figures against the value."""
    if not values:
        raise ConfigError("--sweep needs KEY=V1,V2,...")
    rows, out = [], Path(out)
    for v in values:
        sub = cfg.with_overrides({key: v}, "--sweep")
        rep = run_evaluation(sub, model_path, ebm_path, device,
                             out.with_name(f"{out.stem}.{key}={v}.json"), undefended=False,
                             defended=True, method=method, resume=resume, sanity=False)
        r = rep["results"]["defended"]
        rows.append({"value": sub[key], "natural": r["natural"], "natural_std": r["natural_std"],
                     "adversarial": r["adversarial"], "adversarial_std": r["adversarial_std"],
                     "attack": r["attack"],
                     "attacks": {n: {"natural": a["natural_mean"],
                                     "adversarial": a["adversarial_mean"],
                                     "adversarial_std": a["adversarial_std"]}
                                 for n, a in r["attacks"].items()},
                     "seconds": r["seconds"], "image_steps": r["image_steps"]})
    report = {"command": "attack --sweep", "key": key, "values": [r["value"] for r in rows],
              "metric": rep["metric"], "n_images": rep["n_images"], "seeds": rep["seeds"],
              "threat": rep["threat"], "rows": rows, "config": cfg.to_dict(),
              "environment": environment(cfg, device)}
    atomic_write_json(out, report)
    xs = [float(r["value"]) for r in rows]
    positive = all(v > 0 for v in xs)
    save_curves(out.with_suffix(".png"),
                {"natural": (xs, [r["natural"] for r in rows]),
                 "adversarial (min over attacks)": (xs, [r["adversarial"] for r in rows])},
                key, rep["metric"], f"sweep over {key}",
                logx=positive and max(xs) / min(xs) >= 20)
    return report


def format_table(report: dict) -> list[tuple[str, str, str, str]]:
    """One row per (model, attack): mean ± std over seeds."""
    rows = []
    for label, r in report["results"].items():
        for name, a in r.get("attacks", {r["attack"]: None}).items():
            if a is None:
                rows.append((label, r["attack"], f"{r['natural']:.3f}", f"{r['adversarial']:.3f}"))
                continue
            rows.append((label, name, f"{a['natural_mean']:.3f} ± {a['natural_std']:.3f}",
                         f"{a['adversarial_mean']:.3f} ± {a['adversarial_std']:.3f}"))
    return rows
