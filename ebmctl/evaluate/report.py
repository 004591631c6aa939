"""The defended-vs-undefended evaluation behind `ebmctl attack` and `ebmctl quickstart`.

Every requested attack runs on every seed. An image is robust only if it survives every attack,
every restart and every step (AutoAttack semantics): a model's headline adversarial figure is
the mean over images of that per-image worst case (mean over seeds), and each attack keeps its
own row. Every accuracy carries its sample size and a 95% Wilson interval; a curve still falling
over its last 20% of steps is flagged "not converged". Sanity checks that can fail (Athalye et
al. 2018): a large ε breaks the undefended model; an iterative attack beats one FGSM step;
accuracy does not rise with ε; a transfer attack from the bare classifier is not stronger than
the white-box attacks (else "gradient masking suspected"); ε = 0 leaves a deterministic model at
its natural accuracy and, for a stochastic defense, measures how far Alg. 1's repeated
verification alone falls below natural (the protocol's own inflation of attack success).

:func:`run_evaluation` reads in four steps: :func:`plan_evaluation` (what to attack, with what,
on which images; every setting checked before any work), :func:`run_label` per model (each
attack on each seed, resumable per chunk), :func:`complete_report` (sanity checks, the task's
figures, the adversarial export) and :func:`write_report` (JSON, curves, grids, galleries). The
records it builds are in :mod:`ebmctl.evaluate.results`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors.torch import save as st_save

from ebmctl.artifacts import atomic_write_bytes, atomic_write_json
from ebmctl.attacks.base import (
    DEFENDED_ONLY,
    OPTIONAL_SETTINGS,
    Attack,
    AttackConfig,
    build_attack,
)
from ebmctl.console import info, progress_bar
from ebmctl.context import RunConfig, environment, get_task, load_dataset, working_dtype
from ebmctl.defense import Defense, DefenseConfig, LangevinPurifier, Purifier, PurifierContext
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.errors import ConfigError
from ebmctl.evaluate.attack_eval import evaluate_attack
from ebmctl.evaluate.memory import MemoryProbe
from ebmctl.evaluate.resubmit import (
    EvaluateConfig,
    check_resubmission_settings,
    resubmission_report,
    resubmission_rows,
)
from ebmctl.evaluate.plots import curve_axis_label, save_curves, save_grid, write_gallery
from ebmctl.evaluate.results import (
    AttackReport,
    AttackRow,
    Eps0Control,
    Estimate,
    MaskingVerdict,
    ModelResult,
    SanityCheck,
    SanityReport,
    SeedResult,
    SweepReport,
    SweepRow,
    Threat,
    WorstCase,
)
from ebmctl.evaluate.stats import still_falling
from ebmctl.plugins import get_registries
from ebmctl.purifiers import build_purifier, parse_purifier_spec
from ebmctl.config import Config
from ebmctl.sampling.langevin import LangevinConfig
from ebmctl.units import format_radius

#: attacks whose gradients never pass the purifier: if one beats the white-box attacks, the
#: white-box gradients are suspect
NON_WHITE_BOX = ("classifier only", "none")


def attack_radius(cfg: Config) -> float:
    """ε of the profile's norm (:attr:`AttackConfig.radius`)."""
    return cfg.section(AttackConfig).radius


def _user_set(cfg: Config, key: str) -> bool:
    return cfg.provenance.get(key) == "--set"


def check_threat_settings(cfg: Config) -> None:
    """Reject a radius or step size given for the other norm (it would be ignored).

    Raises:
        ConfigError: naming the key and the one to use instead.
    """
    norm = cfg.section(AttackConfig).norm
    other = {"l2": (("attack.eps", "attack.eps_l2"), ("attack.step_size", "attack.step_size_l2")),
             "linf": (("attack.eps_l2", "attack.eps"), ("attack.step_size_l2", "attack.step_size"))}
    same_profile = cfg.provenance.get("attack.norm", "default").startswith("profile")
    for key, instead in other[norm]:
        src = cfg.provenance.get(key, "default")
        if _user_set(cfg, key) or (same_profile and src == cfg.provenance.get("attack.norm")):
            raise ConfigError(f"{key} does not apply under attack.norm = {norm!r} and would be "
                              f"ignored; set {instead} instead")


def attack_step_size(cfg: Config) -> float:
    """α in [0,1] units for the configured norm (:attr:`AttackConfig.step`)."""
    return cfg.section(AttackConfig).step


def make_attack(cfg: Config, method: str, defended: bool, *, eps: float | None = None,
                cls: type | None = None) -> Attack:
    """The attack ``method`` (or class ``cls``) built by :func:`~ebmctl.attacks.base.
    build_attack` from the profile's ``[attack]`` section, H_def = ``defense.eot_reps``, and
    the optional settings the profile or ``--set`` gave.

    Raises:
        ConfigError: an unknown method, or a radius/step of the other norm
            (:func:`check_threat_settings`).
    """
    cls = cls or get_registries().attacks.get(method)
    check_threat_settings(cfg)
    given = {name for name in OPTIONAL_SETTINGS if not cfg.is_default(f"attack.{name}")}
    return build_attack(cls, cfg.section(AttackConfig), defended=defended, eps=eps,
                        verify_reps=cfg.section(DefenseConfig).eot_reps, given=given)


#: settings that only some attacks take (profile key -> constructor argument)
OPTIONAL_KEYS = {f"attack.{name}": param for name, param in OPTIONAL_SETTINGS.items()}
#: settings about the defending EBM's chain or energy: given to the defended runs only
DEFENDED_ONLY_KEYS = tuple(f"attack.{name}" for name in DEFENDED_ONLY)


def check_options_used(cfg: Config, attacks: list[Attack]) -> None:
    """A setting the user gave that none of the attacks takes would be silently ignored.

    Raises:
        ConfigError: naming the key and the attacks run.
    """
    for key in OPTIONAL_KEYS:
        if cfg.is_default(key):
            continue
        if not any(key in a.options_given for a in attacks):
            names = ", ".join(a.name for a in attacks)
            raise ConfigError(f"{key} does not apply to the attacks run ({names})")


def build_defense(cfg: Config, model: TaskModel, ebm: EnergyModel | None, device,
                  fixer: torch.nn.Module | None = None,
                  purifier: Purifier | None = None) -> Defense:
    """:meth:`Defense.from_config` with the profile's ``[defense]`` and ``[langevin]``, its
    chains in ``run.dtype``; ``purifier`` in place of the EBM's when given."""
    return Defense.from_config(model, None if purifier is not None else ebm,
                               cfg.section(DefenseConfig), cfg.section(LangevinConfig), device,
                               fixer, dtype=working_dtype(cfg), purifier=purifier)


def resolve_purifier(cfg: Config, ebm: EnergyModel | None, device) -> Purifier | None:
    """The purifier ``defense.purifier`` (``--purifier NAME[:key=value,...]``) names, built
    from the registered purifiers; None when it is empty (the EBM's Langevin purification with
    ``defense.steps`` and ``defense.clamp`` when there is an EBM, else no purifier).

    Raises:
        ConfigError: an unknown purifier or setting; an EBM given with a purifier other than
            ``ebm``; the ``ebm`` purifier without an EBM.
    """
    spec = cfg.section(DefenseConfig).purifier.strip()
    if not spec:
        return None
    name = parse_purifier_spec(spec)[0]
    if ebm is not None and name != LangevinPurifier.name:
        raise ConfigError(f"--ebm and --purifier {name} exclude each other: the EBM is the "
                          f"'{LangevinPurifier.name}' purifier (--purifier "
                          f"{LangevinPurifier.name}:steps=K)")
    context = PurifierContext(device=torch.device(device), dtype=working_dtype(cfg), ebm=ebm,
                              defense=cfg.section(DefenseConfig),
                              langevin=cfg.section(LangevinConfig), steps_chosen=True)
    return build_purifier(spec, get_registries().purifiers, context)


def evaluation_images(cfg: Config, model: TaskModel, split: str = "test"):
    bundle = load_dataset(cfg)
    data = bundle.split(split)
    n = min(cfg.section(AttackConfig).n_images, len(data))
    if n == 0:
        raise ConfigError(f"the {split} split of {bundle.name!r} is empty")
    from ebmctl.data_utils import pick_subset

    held = pick_subset(data, n)
    return bundle, held.x.to(working_dtype(cfg)), held.y


def method_list(cfg: Config, method: str | None, defended: bool) -> list[str]:
    """Attacks to run: ``method`` may be a comma list; else attack.methods / attack.method."""
    attack = cfg.section(AttackConfig)
    if not defended:
        return [m.strip() for m in attack.undefended_method.split(",") if m.strip()]
    if method:
        names = [m.strip() for m in method.split(",") if m.strip()]
    else:
        names = list(attack.methods) or [attack.method]
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


def summarise_attack(attack: Attack, per_seed: list[SeedResult], n: int,
                     memory: dict | None = None) -> AttackRow:
    """One attack's row: means over seeds with intervals, the worst-restart curve (mean over
    seeds) and whether it converged (None when its curve does not measure the defense step by
    step)."""
    curve = [sum(r.accuracy_curve[i] for r in per_seed) / len(per_seed)
             for i in range(len(per_seed[0].accuracy_curve))]
    converged = (not still_falling(curve)) if getattr(attack, "per_step_curve", True) else None
    return AttackRow(
        name=attack.name, description=attack.description,
        gradient=getattr(attack, "gradient_mode", lambda: "exact")(),
        natural=Estimate.over_seeds([r.natural for r in per_seed], n),
        adversarial=Estimate.over_seeds([r.adversarial for r in per_seed], n), n_images=n,
        accuracy_curve=curve, converged=converged,
        seconds=round(sum(r.seconds for r in per_seed), 2),
        image_steps=sum(r.image_steps for r in per_seed), per_seed=list(per_seed),
        memory=memory, diagnostic=bool(getattr(attack, "diagnostic", False)))


def worst_case(per_attack: dict[str, list[SeedResult]]) -> list[WorstCase]:
    """Per seed, the per-image worst case over attacks: an image is robust iff it passed the
    natural check and every attack left it unbroken. Its adversarial image is the first
    breaking attack's (in run order), else the last attack's final iterate.

    Args:
        per_attack: attack name → its results, one per seed (same seeds, same order), in run
            order.
    """
    names = list(per_attack)
    out = []
    for s in range(len(per_attack[names[0]])):
        nat = torch.tensor(per_attack[names[0]][s].natural_ok, dtype=torch.bool)
        rob = torch.ones_like(nat)  # unbroken by the attacks so far
        x_adv = per_attack[names[-1]][s].x_adv.clone()
        for name in names:
            r = per_attack[name][s]
            ok = torch.tensor(r.robust_ok, dtype=torch.bool)
            nat &= torch.tensor(r.natural_ok, dtype=torch.bool)
            broke = rob & ~ok  # first broken by this attack
            x_adv[broke] = r.x_adv[broke]
            rob &= ok
        rob &= nat
        out.append(WorstCase(seed=per_attack[names[0]][s].seed,
                             natural=nat.float().mean().item(),
                             adversarial=rob.float().mean().item(), natural_ok=nat.tolist(),
                             robust_ok=rob.tolist(), x_adv=x_adv))
    return out


def white_box_accuracy(attacks: dict[str, AttackRow], seeds: int | None = None) -> float | None:
    """Mean over seeds (the first ``seeds``; default all) of the per-image worst case over the
    white-box attacks in ``attacks``, the figure every masking verdict compares against; None
    if no white-box attack ran."""
    white = {n: a.per_seed[:seeds] for n, a in attacks.items()
             if a.gradient not in NON_WHITE_BOX}
    if not white:
        return None
    per_seed = worst_case(white)
    return sum(w.adversarial for w in per_seed) / len(per_seed)


def masking_verdict(attacks: dict[str, AttackRow], tolerance: float) -> MaskingVerdict | None:
    """The row's verdict: the strongest attack whose gradient never passes the purifier
    (transfer, gradient-free) against the per-image worst case over the white-box ones, means
    over seeds; None unless both kinds ran."""
    other = {n: a.adversarial.mean for n, a in attacks.items()
             if a.gradient in NON_WHITE_BOX}
    white = white_box_accuracy(attacks)
    if white is None or not other:
        return None
    name = min(other, key=other.get)
    return MaskingVerdict.compare(white, other[name], name, tolerance)


def attack_seeds(cfg: Config, attack: Attack, defense: Defense, task, x, y, device,
                 seeds: list[int], label: str, parts: dict) -> AttackRow:
    """One attack on every seed against one model (chunks resumable through ``parts``: the
    keywords ``parts_dir``, ``fingerprint``, ``resume`` of :func:`evaluate_attack`)."""
    batch = cfg.section(AttackConfig).batch_size
    total = len(seeds) * _progress_units(attack, len(x), batch)
    probe = MemoryProbe(device).start()
    with progress_bar(total, f"attack {label} ({attack.name})") as bar:
        per_seed = [evaluate_attack(attack, defense, task, x, y, seed=s, batch_size=batch,
                                    device=device, label=label, progress=bar.advance, **parts)
                    for s in seeds]
    return summarise_attack(attack, per_seed, len(x), memory=probe.read())


def run_label(cfg: Config, label: str, defense: Defense, attacks: list[Attack], task, x, y,
              device, seeds: list[int], parts: dict) -> ModelResult:
    """Every attack on every seed against one model: each attack's row and the per-image worst
    case over the headline attacks (a diagnostic run, the defender's noise fixed, never enters
    the headline unless it is all there is, and then the whole row says so)."""
    rows = {a.name: attack_seeds(cfg, a, defense, task, x, y, device, seeds, label, parts)
            for a in attacks}
    headline = [n for n, r in rows.items() if not r.diagnostic] or list(rows)
    worst = worst_case({n: rows[n].per_seed for n in headline})
    return ModelResult(
        attack=min(headline, key=lambda n: rows[n].adversarial.mean), n_images=len(x),
        n_seeds=len(seeds), natural=Estimate.over_seeds([w.natural for w in worst], len(x)),
        adversarial=Estimate.over_seeds([w.adversarial for w in worst], len(x)),
        per_image_robust=[int(v) for v in worst[0].robust_ok],
        converged=all(r.converged is not False for r in rows.values()),
        seconds=round(sum(r.seconds for r in rows.values()), 1),
        image_steps=sum(r.image_steps for r in rows.values()), attacks=rows, worst=worst,
        diagnostic=all(rows[n].diagnostic for n in headline),
        gradient_masking=masking_verdict({n: rows[n] for n in headline},
                                         cfg.section(AttackConfig).sanity_tolerance))


def _progress_units(attack: Attack, n_images: int, batch: int) -> int:
    """Evaluation points of one seed of ``attack`` over ``n_images`` in chunks of ``batch``
    (what :func:`evaluate_attack` advances a progress bar by)."""
    return attack.restarts * (attack.steps + 1) * ((n_images + batch - 1) // batch)


def _quick(cfg: Config, attack: Attack, defense: Defense, task, x, y, device, label: str,
           seed: int) -> SeedResult:
    """One seed of one attack, no parts on disk (the sanity checks and the ε = 0 control)."""
    batch = cfg.section(AttackConfig).batch_size
    total = _progress_units(attack, len(x), batch)
    with progress_bar(total, f"check {label} ({attack.name})") as bar:
        return evaluate_attack(attack, defense, task, x, y, seed=seed, batch_size=batch,
                               device=device, label=label, progress=bar.advance)


def eps_zero_control(cfg: Config, label: str, defense: Defense, attacks: list[Attack], task,
                     x, y, device, seed: int) -> Eps0Control:
    """The first attack at ε = 0: nothing moves, so any image it "breaks" is broken by Alg. 1's
    repeated stochastic verification alone. ``inflation`` = natural − ε0 accuracy, both on the
    first ``attack.control_images`` images (0 = all of ``x``), with the attack's full schedule
    (every step screens and verifies, so the control can still fail)."""
    n = cfg.section(AttackConfig).control_images or len(x)
    x, y = x[:n], y[:n]
    att = make_attack(cfg, attacks[0].name, defense.stochastic, eps=0.0, cls=type(attacks[0]))
    res = _quick(cfg, att, defense, task, x, y, device, f"{label}-eps0", seed)
    return Eps0Control(attack=att.name, seed=seed, n_images=len(x), natural=res.natural,
                       adversarial=res.adversarial,
                       per_image_robust=[int(v) for v in res.robust_ok])


def sanity_checks(cfg: Config, task, model: TaskModel, x: torch.Tensor, y: torch.Tensor,
                  device, results: dict[str, ModelResult], runs: list
                  ) -> tuple[SanityReport, dict[str, ModelResult]]:
    """Checks that can fail; a failed check flags an attack or evaluation bug (or, for the
    transfer check, gradient masking). Returns the checks and ``results`` with each checked
    model's ε = 0 control and the transfer check's masking verdict filled in."""
    checks = _undefended_checks(cfg, task, model, x, y, device, results)
    results = dict(results)
    for label, defense, attacks in runs:
        more, results[label] = _model_checks(cfg, label, defense, attacks, task, x, y, device,
                                             results[label])
        checks += more
    return SanityReport(checks), results


def _undefended_checks(cfg: Config, task, model, x, y, device,
                       results: dict[str, ModelResult]) -> list[SanityCheck]:
    bare = build_defense(cfg, model, None, device)
    attack = cfg.section(AttackConfig)
    n = min(attack.sanity_images, len(x))
    norm, tol = attack.norm, attack.sanity_tolerance
    big = attack.sanity_eps * (1.0 if norm == "linf" else (x[0].numel() ** 0.5))
    pgd_cls, fgsm_cls = get_registries().attacks.get("pgd"), get_registries().attacks.get("fgsm")
    large = pgd_cls(norm=norm, eps=big, step_size=big / 8, steps=max(20, attack.steps),
                    restarts=1, random_start=True)
    res = _quick(cfg, large, bare, task, x[:n], y[:n], device, "sanity-large-eps", 0)
    checks = [SanityCheck("a large radius drives the undefended model to ~0",
                          res.adversarial <= 0.05,
                          {"radius": big, "images": n, "adversarial": res.adversarial})]
    eps = attack_radius(cfg)
    single = _quick(cfg, fgsm_cls(norm=norm, eps=eps), bare, task, x, y, device,
                    "sanity-fgsm", 0).adversarial
    und = results.get("undefended")
    iterative = und.adversarial.mean if und else _quick(
        cfg, make_attack(cfg, "pgd", False), bare, task, x, y, device, "sanity-pgd",
        0).adversarial
    checks.append(SanityCheck(f"iterative attack at least as strong as one FGSM step "
                              f"(undefended, tolerance {tol})", iterative <= single + tol,
                              {"fgsm": single, "iterative": iterative}))
    return checks


def _model_checks(cfg: Config, label: str, defense: Defense, attacks: list[Attack], task, x, y,
                  device, row: ModelResult) -> tuple[list[SanityCheck], ModelResult]:
    """Per model: the ε = 0 control, accuracy non-increasing in ε, and (defended) transfer not
    stronger than the white-box attacks. Returns the checks and ``row`` with its control and
    masking verdict."""
    tol = cfg.section(AttackConfig).sanity_tolerance
    first = row.attacks[attacks[0].name].per_seed[0]
    control = eps_zero_control(cfg, label, defense, attacks, task, x, y, device, first.seed)
    row = replace(row, eps0_control=control)
    checks = []
    if not defense.stochastic:
        checks.append(SanityCheck(f"{label}: eps = 0 leaves the deterministic model at its "
                                  "natural accuracy", abs(control.inflation) < 1e-9,
                                  control.to_json()))
    n = min(cfg.section(AttackConfig).sanity_images, len(x))
    eps = attack_radius(cfg)
    half = make_attack(cfg, attacks[0].name, defense.stochastic, eps=eps / 2,
                       cls=type(attacks[0]))
    at_half = _quick(cfg, half, defense, task, x[:n], y[:n], device, f"{label}-half-eps",
                     first.seed)
    m = min(n, control.n_images)  # the control may hold fewer images than the check
    curve = [sum(control.per_image_robust[:m]) / m, at_half.adversarial,
             sum(first.robust_ok[:n]) / n]
    checks.append(SanityCheck(f"{label}: accuracy does not rise with eps ({attacks[0].name}, "
                              f"first {n} images, tolerance {tol})",
                              all(b <= a + tol for a, b in zip(curve, curve[1:])),
                              {"eps": [0.0, eps / 2, eps], "adversarial": curve}))
    if defense.purifies:  # masking is a risk of every purifier, random or not
        check, masking = _transfer_check(cfg, label, defense, task, x, y, device, row,
                                         first.seed)
        checks.append(check)
        row = replace(row, gradient_masking=masking)
    return checks, row


def _transfer_check(cfg: Config, label: str, defense: Defense, task, x, y, device,
                    row: ModelResult, seed: int) -> tuple[SanityCheck, MaskingVerdict | None]:
    """A transfer attack from the bare classifier against the per-image worst case over the
    white-box attacks, by :func:`white_box_accuracy` as in :func:`masking_verdict`: over every
    seed when the transfer attack is among the row's attacks (then the check and the row's
    verdict compare the same two figures), else on the first seed, where the check runs its
    own transfer attack. A failed check replaces the row's verdict; a passed one leaves it (or
    records "not suspected" where the row had none)."""
    tol = cfg.section(AttackConfig).sanity_tolerance
    if "transfer" in row.attacks:
        transfer, seeds = row.attacks["transfer"].adversarial.mean, None
    else:
        att = make_attack(cfg, "transfer", True)
        transfer = _quick(cfg, att, defense, task, x, y, device, f"{label}-transfer",
                          seed).adversarial
        seeds = 1
    white_acc = white_box_accuracy(row.attacks, seeds)
    if white_acc is None:
        return SanityCheck(f"{label}: transfer not stronger than white-box", True,
                           {"note": "no white-box attack was run"}), row.gradient_masking
    verdict = MaskingVerdict.compare(white_acc, transfer, "transfer", tol)
    check = SanityCheck(f"{label}: a transfer attack from the bare classifier is not stronger "
                        f"than the white-box attacks (tolerance {tol}); if it is, gradient "
                        "masking is suspected", not verdict.suspected,
                        {"transfer": transfer, "white_box": white_acc})
    if verdict.suspected:
        return check, verdict
    return check, row.gradient_masking or MaskingVerdict(False)


class PlannedRun(NamedTuple):
    """One model to attack: its report label, its defense and its attacks (built before any
    work is done)."""

    label: str
    defense: Defense
    attacks: list[Attack]


@dataclass(frozen=True)
class EvaluationPlan:
    """What :func:`run_evaluation` attacks, with what, on which images: the task, the task
    model, the evaluation images ``x`` [M,C,H,W] in [0,1] and targets ``y``, the attack seeds,
    one :class:`PlannedRun` per model, where finished chunks are kept (``parts``: the
    keywords of :func:`evaluate_attack`) and the report's header fields."""

    task: Any
    model: TaskModel
    dataset: str
    x: torch.Tensor
    y: torch.Tensor
    seeds: list[int]
    runs: list[PlannedRun]
    parts: dict
    header: dict


def run_evaluation(cfg: Config, model_path: Path, ebm_path: Path | None, device: torch.device,
                   out: Path, *, undefended: bool = True, defended: bool = True,
                   method: str | None = None, resume: bool = False,
                   save_adversarials: bool = False, sanity: bool | None = None,
                   fixer_path: Path | None = None) -> AttackReport:
    """Attack the undefended and/or defended model and write the report (JSON, curves PNG,
    adversarial grids and galleries). ``fixer_path`` adds a "defended+fixer" run
    (purification then the fixer, thesis Ch. 6) next to "defended", with the same attacks and
    seeds. Planning (:func:`plan_evaluation`), running (:func:`run_label` per model, resumable
    per chunk), then checks and extras (:func:`complete_report`) and writing
    (:func:`write_report`).

    Raises:
        ConfigError: a model for another task, no EBM for a defended run, settings that would
            be ignored, or parts of another evaluation under ``resume``.
    """
    plan = plan_evaluation(cfg, model_path, ebm_path, device, Path(out), undefended=undefended,
                           defended=defended, method=method, resume=resume,
                           fixer_path=fixer_path)
    attack, resubmit = cfg.section(AttackConfig), cfg.section(EvaluateConfig)
    results = {}
    for label, defense, attacks in plan.runs:
        row = run_label(cfg, label, defense, attacks, plan.task, plan.x, plan.y, device,
                        plan.seeds, plan.parts)
        if resubmit.resubmissions > 0 and defense.stochastic:
            row = replace(row, resubmission=resubmission_report(
                resubmit, label, defense, plan.task, plan.x, plan.y, device, row,
                batch_size=attack.batch_size))
        results[label] = row
    report = complete_report(cfg, plan, results, device, Path(out),
                             sanity=attack.sanity if sanity is None else sanity,
                             save_adversarials=save_adversarials)
    write_report(cfg, plan, report, Path(out))
    return report


def plan_evaluation(cfg: Config, model_path: Path, ebm_path: Path | None, device: torch.device,
                    out: Path, *, undefended: bool, defended: bool, method: str | None,
                    resume: bool, fixer_path: Path | None) -> EvaluationPlan:
    """Load the models, build every defense and attack, pick the images: every setting is
    checked before any work is done."""
    task = get_task(cfg)
    dtype = working_dtype(cfg)
    model = TaskModel.load(model_path, device, dtype)
    model.check_task(task.name)
    ebm = EnergyModel.load(ebm_path, device, dtype) if (defended and ebm_path) else None
    purifier = resolve_purifier(cfg, ebm, device) if defended else None
    if defended and ebm is None and purifier is None:
        raise ConfigError("a defended evaluation needs a purifier: --ebm FILE (the EBM's "
                          "Langevin purification) or --purifier NAME")
    runs = plan_runs(cfg, model, ebm, device, undefended, defended, method, fixer_path,
                     purifier)
    bundle, x, y = evaluation_images(cfg, model)
    parts_dir = out.with_name(out.stem + ".parts")
    fingerprint = _fingerprint(cfg, model_path, ebm_path if defended else None,
                               fixer_path if defended else None)
    if resume and not parts_dir.exists():
        info(f"--resume: no partial results in {parts_dir}; starting from scratch")
    header = {"command": "attack", "task": task.name, "metric": task.metric_name,
              "dataset": bundle.name, "split": "test", "n_images": len(x),
              "threat": threat_of(cfg), "defense": _defense_settings(
                  cfg, device, ebm_path if defended else None, fixer_path if defended else None,
                  next((r.defense.purifier for r in runs if r.defense.purifier is not None),
                       None)),
              "model": str(model_path), "environment": environment(cfg, device),
              "config": cfg.to_dict()}
    seeds = list(cfg.section(AttackConfig).seeds or [cfg.section(RunConfig).seed])
    return EvaluationPlan(task=task, model=model, dataset=bundle.name, x=x, y=y, seeds=seeds,
                          runs=runs,
                          parts={"parts_dir": parts_dir, "fingerprint": fingerprint,
                                 "resume": resume}, header=header)


def plan_runs(cfg: Config, model: TaskModel, ebm: EnergyModel | None, device, undefended: bool,
              defended: bool, method: str | None, fixer_path: Path | None,
              purifier: Purifier | None = None) -> list[PlannedRun]:
    """One :class:`PlannedRun` per model evaluated (the defended ones through ``purifier``,
    else the EBM's); every attack built before any work."""
    runs = []
    if undefended:
        runs.append(PlannedRun("undefended", build_defense(cfg, model, None, device),
                               [make_attack(cfg, m, False) for m in method_list(cfg, None, False)]))
    if defended:
        runs.append(PlannedRun("defended", build_defense(cfg, model, ebm, device,
                                                         purifier=purifier),
                               [make_attack(cfg, m, True) for m in method_list(cfg, method, True)]))
    if defended and fixer_path is not None:
        from ebmctl.models import load_fixer

        runs.append(PlannedRun(
            "defended+fixer",
            build_defense(cfg, model, ebm, device,
                          fixer=load_fixer(fixer_path, device, working_dtype(cfg)),
                          purifier=purifier),
            [make_attack(cfg, m, True) for m in method_list(cfg, method, True)]))
    check_options_used(cfg, [a for _, _, attacks in runs for a in attacks])
    for _, defense, attacks in runs:  # e.g. attack.gradient_steps > defense.steps, before work
        for a in attacks:
            getattr(a, "check_defense", lambda d: None)(defense)
    check_resubmission_settings(cfg.section(EvaluateConfig), runs,
                                eot_reps_given=not cfg.is_default("evaluate.eot_reps"))
    return runs


def threat_of(cfg: Config) -> Threat:
    """The profile's threat model (radius and step of the norm in force)."""
    attack = cfg.section(AttackConfig)
    return Threat(norm=attack.norm, eps=attack.radius, step_size=attack.step,
                  steps=attack.steps, restarts=attack.restarts)


def _defense_settings(cfg: Config, device, ebm_path: Path | None,
                      fixer_path: Path | None, purifier: Purifier | None = None) -> dict:
    """The report's ``defense`` record: the purifier by name with its settings (None for an
    undefended-only run), H_def, H_adv, the averaging and the EBM/fixer files."""
    defense = cfg.section(DefenseConfig)
    named = None if purifier is None else {"name": purifier.name,
                                           "settings": purifier.settings(),
                                           "stochastic": bool(purifier.stochastic),
                                           "differentiable": bool(purifier.differentiable)}
    # K_def as the purifier runs it (--purifier ebm:steps=K, or the EBM's recorded K_def), not
    # the profile's value; 0 for a purifier without a chain
    steps = defense.steps if purifier is None else int(getattr(purifier, "steps", 0))
    return {"purifier": named, "steps": steps, "eot_reps": defense.eot_reps,
            # "auto" is bf16 on a CPU with native bf16 (and on CUDA): figures can move
            "precision": cfg.section(LangevinConfig).precision_on(device, working_dtype(cfg)),
            "attack_eot_reps": cfg.section(AttackConfig).eot_reps, "average": defense.average,
            "ebm": str(ebm_path) if ebm_path else None,
            "fixer": str(fixer_path) if fixer_path else None}


def _hook_runs(plan: EvaluationPlan, results: dict[str, ModelResult]) -> dict[str, dict]:
    """What ``Task.evaluation_extras`` receives per label (docs/hook-reference.md)."""
    runs = {}
    for label, defense, attacks in plan.runs:
        r = results[label]
        runs[label] = {"defense": defense, "x_adv": r.x_adv,
                       "x_advs": {n: [s.x_adv for s in a.per_seed] for n, a in r.attacks.items()},
                       "threat": {"norm": attacks[0].norm, "eps": attacks[0].eps},
                       "result": {"natural_ok": r.worst[-1].natural_ok,
                                  "robust_ok": r.worst[-1].robust_ok}}
    return runs


def complete_report(cfg: Config, plan: EvaluationPlan, results: dict[str, ModelResult], device,
                    out: Path, *, sanity: bool, save_adversarials: bool) -> AttackReport:
    """The report of a finished run: sanity checks (which add each model's ε = 0 control and
    the transfer verdict), the task's extra figures and the adversarial export."""
    checks = None
    if sanity and plan.runs:
        checks, results = sanity_checks(cfg, plan.task, plan.model, plan.x, plan.y, device,
                                        results, plan.runs)
        if checks.failed:
            info("sanity check failed: " + "; ".join(checks.failed))
    extras_fn = getattr(plan.task, "evaluation_extras", None)
    extras = extras_fn(plan.x, plan.y, _hook_runs(plan, results), out,
                       (plan.seeds[-1], "report")) if extras_fn else None
    for label, values in ((extras or {}).pop("results", None) or {}).items():
        results[label] = replace(results[label], extras={**results[label].extras, **values})
    from ebmctl.sampling.autotune import ran

    # how the Langevin steps ran in this process (``auto`` sampler settings are measured)
    plan.header["environment"]["langevin_variants"] = ran()
    report = AttackReport(**plan.header, seeds=plan.seeds, results=results, sanity=checks,
                          task_report=extras or None)
    if save_adversarials:
        report = replace(report, adversarials_file=_save_adversarials(cfg, out, report,
                                                                       plan.x, plan.y))
    return report


def write_report(cfg: Config, plan: EvaluationPlan, report: AttackReport, out: Path) -> None:
    """The JSON, the accuracy-vs-step curves, each model's adversarial grid and gallery; then
    the parts folder goes (the JSON holds every per-image result)."""
    atomic_write_json(out, report.to_json())
    curves = {f"{label} ({name})": (list(range(len(a.accuracy_curve))), a.accuracy_curve)
              for label, r in report.results.items() for name, a in r.attacks.items()}
    save_curves(out.with_suffix(".png"), curves, "attack step",
                curve_axis_label(plan.task.metric_name) + "\n(worst restart, mean over seeds)",
                f"{plan.dataset}: {cfg.section(AttackConfig).norm} "
                f"eps={format_radius(attack_radius(cfg))}")
    for label, defense, attacks in plan.runs:
        x_adv = report.results[label].x_adv
        save_grid(x_adv[:64], out.with_name(out.stem + f".{label}-adv.png"))
        write_gallery(out.with_name(out.stem + f".{label}-gallery.png"), label, plan.x, x_adv,
                      defense, {"norm": attacks[0].norm, "eps": attacks[0].eps},
                      (plan.seeds[-1], "gallery", label))
    shutil.rmtree(plan.parts["parts_dir"], ignore_errors=True)


def _save_adversarials(cfg, out: Path, report: AttackReport, x, y) -> str:
    adv_path = out.with_suffix(".adv.safetensors")
    tensors = {}
    for label, r in report.results.items():
        for name, a in r.attacks.items():
            for s in a.per_seed:
                tensors[f"{label}.{name}.seed{s.seed}"] = s.x_adv.contiguous()
        tensors[f"{label}.worst-case"] = r.x_adv.contiguous()
    # in run.dtype (float32, or float64 for a reference run), as evaluated
    tensors["x_natural"], tensors["y"] = x.contiguous(), y.contiguous()
    atomic_write_bytes(adv_path, st_save(tensors, metadata={
        "ebmctl.kind": "adversarials", "ebmctl.config": cfg.to_json()}))
    return str(adv_path)


def run_sweep(cfg: Config, model_path: Path, ebm_path: Path | None, device: torch.device,
              out: Path, key: str, values: list, *, method: str | None = None,
              resume: bool = False, undefended: bool = False) -> SweepReport:
    """Defended (``undefended``: undefended) evaluation for each value of one profile key
    (e.g. defense.steps for the thesis' K study, attack.eot_reps for H_adv, attack.eps for a
    robust-accuracy-against-ε curve that ``ebmctl compare`` overlays); writes per-value
    reports, a sweep JSON and a plot of natural and adversarial figures against the value.

    Raises:
        ConfigError: no values, or a radius/step key of the other norm (it would be ignored).
    """
    if not values:
        raise ConfigError("--sweep needs KEY=V1,V2,...")
    norm = cfg.section(AttackConfig).norm
    instead = {"linf": {"attack.eps_l2": "attack.eps", "attack.step_size_l2": "attack.step_size"},
               "l2": {"attack.eps": "attack.eps_l2", "attack.step_size": "attack.step_size_l2"}}
    if key in instead[norm]:
        raise ConfigError(f"--sweep {key} does not apply under attack.norm = {norm!r} and "
                          f"would be ignored; sweep {instead[norm][key]}")
    label = "undefended" if undefended else "defended"
    rows, out = [], Path(out)
    for v in values:
        sub = cfg.with_overrides({key: v}, "--sweep")
        rep = run_evaluation(sub, model_path, ebm_path, device,
                             out.with_name(f"{out.stem}.{key}={v}.json"),
                             undefended=undefended, defended=not undefended, method=method,
                             resume=resume, sanity=False)
        rows.append(SweepRow(sub[key], rep.results[label]))
    report = SweepReport(key=key, metric=rep.metric, n_images=rep.n_images, seeds=rep.seeds,
                         threat=rep.threat, rows=rows, config=cfg.to_dict(),
                         environment=environment(cfg, device), label=label, task=rep.task,
                         model=rep.model, defense=rep.defense if not undefended else None)
    atomic_write_json(out, report.to_json())
    xs = [float(r.value) for r in rows]
    positive = all(v > 0 for v in xs)
    save_curves(out.with_suffix(".png"),
                {"natural": (xs, [r.result.natural.mean for r in rows]),
                 "adversarial (per-image worst case)": (
                     xs, [r.result.adversarial.mean for r in rows])},
                key, rep.metric, f"sweep over {key}",
                logx=positive and max(xs) / min(xs) >= 20)
    return report


def format_accuracy(mean: float, std: float | None, ci: list[float] | None) -> str:
    """"0.740 [0.675, 0.796]" (one seed) or "0.647 ± 0.015 [0.58, 0.71]" (several)."""
    text = f"{mean:.3f}" if std is None else f"{mean:.3f} ± {std:.3f}"
    return text if ci is None else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"


def format_table(report: dict) -> list[tuple[str, str, str, str, str]]:
    """Rows (model, attack, natural, adversarial, converged): each attack, then the per-image
    worst case over them and the eps = 0 control where measured."""
    rows = []
    for label, r in report["results"].items():
        for name, a in r["attacks"].items():
            conv = {True: "yes", False: "NOT converged", None: "n/a"}[a["converged"]]
            if a.get("diagnostic"):
                name = f"{name} (DIAGNOSTIC: defender noise fixed)"
            rows.append((label, name,
                         format_accuracy(a["natural_mean"], a["natural_std"], a["natural_ci"]),
                         format_accuracy(a["adversarial_mean"], a["adversarial_std"],
                                         a["adversarial_ci"]), conv))
        if len(r["attacks"]) > 1:
            rows.append((label, "worst case per image (all attacks)",
                         format_accuracy(r["natural"], r["natural_std"], r["natural_ci"]),
                         format_accuracy(r["adversarial"], r["adversarial_std"],
                                         r["adversarial_ci"]),
                         "yes" if r["converged"] else "NOT converged"))
        c = r.get("eps0_control")
        if c is not None:
            n_control = c.get("n_images")  # absent from reports written before it was kept
            subset = (f", first {n_control} images"
                      if n_control and n_control < report.get("n_images", n_control) else "")
            rows.append((label, f"eps = 0 control ({c['attack']}, seed {c['seed']}{subset})",
                         f"{c['natural']:.3f}",
                         format_accuracy(c["adversarial"], None, c["adversarial_ci"]),
                         f"inflation {c['inflation']:+.3f}"))
        if r.get("resubmission"):
            rows += resubmission_rows(label, r["resubmission"])
    return rows


def report_notes(report: dict) -> list[str]:
    """Warnings a reader must see beside the table."""
    notes = []
    for label, r in report["results"].items():
        if not r.get("converged", True):
            bad = [n for n, a in r["attacks"].items() if a["converged"] is False]
            notes.append(f"{label}: not converged ({', '.join(bad)}): the accuracy curve still "
                         "fell over the last 20% of steps; raise attack.steps")
        gm = r.get("gradient_masking")
        if gm and gm.get("suspected"):
            notes.append(f"{label}: gradient masking suspected: {gm['attack']} "
                         f"({gm['non_white_box']:.3f}) beats the white-box attacks "
                         f"({gm['white_box']:.3f})")
        diag = [n for n, a in r["attacks"].items() if a.get("diagnostic")]
        if diag:
            notes.append(f"{label}: {', '.join(diag)} fixed the defender's own noise "
                         "(attack.common_noise_defender): a diagnostic, not a robustness figure"
                         + ("; every attack run was one, so this row's headline is too"
                            if r.get("diagnostic") else "; left out of the headline"))
        if r.get("n_seeds") == 1:
            notes.append(f"{label}: one attack seed (n = 1): no spread over seeds; intervals "
                         f"are 95% Wilson over {r['n_images']} images")
    return notes
