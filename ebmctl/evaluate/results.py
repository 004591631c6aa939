"""Typed records of an attack evaluation: what ``ebmctl attack`` writes and ``ebmctl.evaluate``
returns.

Nesting, from the inside out: :class:`SeedResult` (one attack, one seed, per image),
:class:`AttackRow` (one attack over the seeds), :class:`ModelResult` (one model: the per-image
worst case over its attacks, each attack's row, the ε = 0 control, the gradient-masking
verdict), :class:`SanityReport` and :class:`AttackReport` (the whole run). The sweep of
``ebmctl attack --sweep`` is :class:`SweepReport`.

Every record's ``to_json()`` is exactly the JSON the report file holds, and
``from_json(d)`` reads it back (:meth:`AttackReport.from_json` loads a report file's dict,
older reports with missing fields included), so code reads attributes
(``report.results["defended"].adversarial.mean``) whether the report was just computed or
loaded; a record has no lookup by JSON key (read ``to_json()`` for that). Records compare
equal when their JSON does. Adversarial images travel as typed fields (:attr:`SeedResult.x_adv`,
:attr:`WorstCase.x_adv`) that are never serialised (None in a loaded report).

Fractions of images are floats in [0, 1]; ``*_ci`` are 95% Wilson intervals over the
``n_images`` images (``ebmctl.evaluate.stats.accuracy_interval``); ``*_std`` is the sample
standard deviation over seeds (None for one seed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ebmctl.evaluate.stats import accuracy_interval, mean_std

#: what a report's figures mean (stored in every report)
SEMANTICS = ("adversarial = per-image worst case over every attack, restart and step (mean over "
             "seeds); attacks.<name> = each attack alone; *_ci = 95% Wilson interval over "
             "n_images")


def plain(value: Any) -> Any:
    """``value`` with every record inside replaced by its ``to_json()``."""
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


class JsonRecord:
    """A typed record of a report: its fields are read as attributes and ``to_json()`` is the
    JSON it writes. Records compare equal when their JSON does."""

    def to_json(self) -> dict:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JsonRecord):
            return NotImplemented
        return self.to_json() == other.to_json()

    __hash__ = None  # records hold lists; equality is by value


@dataclass(frozen=True, eq=False)
class Estimate:
    """A fraction of images, mean over seeds: ``std`` over seeds (None for one seed) and a 95%
    Wilson ``ci`` over the n images of the mean."""

    mean: float
    std: float | None
    ci: list[float]

    @classmethod
    def over_seeds(cls, values: list[float], n_images: int) -> "Estimate":
        m, s = mean_std(values)
        return cls(m, s, accuracy_interval(m, n_images))

    def to_json(self, prefix: str, mean_key: str | None = None) -> dict:
        """``{mean_key or prefix: mean, prefix_std: std, prefix_ci: ci}``."""
        return {mean_key or prefix: self.mean, f"{prefix}_std": self.std,
                f"{prefix}_ci": self.ci}

    @classmethod
    def from_json(cls, d: dict, prefix: str, mean_key: str | None = None) -> "Estimate":
        """The estimate :meth:`to_json` wrote into ``d`` (std and ci None where absent)."""
        return cls(d.get(mean_key or prefix), d.get(f"{prefix}_std"), d.get(f"{prefix}_ci"))


@dataclass(frozen=True, eq=False)
class SeedResult(JsonRecord):
    """One attack on one seed over M images (Alg. 1 per image, in chunks).

    ``natural``/``adversarial``: fractions of the M images passing the natural check /
    unbroken at every step of every restart. ``robust_by_step[r][n]``: fraction unbroken by
    restart r after evaluation point n; ``accuracy_curve[n]``: the worst case over restarts
    (``ebmctl.evaluate.attack_eval.worst_case_curve``). ``per_image``: one row per image
    (``index``, ``natural_ok``, ``robust_ok``, ``broken_at`` = [restart, step] or None).
    ``x_adv`` [M,C,H,W] in [0,1]: each image's breaking point, else its last iterate (not
    serialised). ``world_size``: the torchrun processes that shared the chunks (None: one).
    """

    seed: int
    natural: float
    adversarial: float
    robust_by_step: list[list[float]]
    accuracy_curve: list[float]
    natural_ok: list[bool]
    robust_ok: list[bool]
    per_image: list[dict]
    seconds: float
    image_steps: int
    chunks_reused: int
    x_adv: torch.Tensor | None = field(repr=False)
    world_size: int | None = None
    #: the re-verification of the curve's tail losses (a stochastic defense only)
    tail_check: TailCheck | None = None

    @classmethod
    def from_json(cls, d: dict) -> "SeedResult":
        """The record :meth:`to_json` wrote (``x_adv`` None: images are not serialised)."""
        return cls(seed=d.get("seed"), natural=d.get("natural"),
                   adversarial=d.get("adversarial"), robust_by_step=d.get("robust_by_step", []),
                   accuracy_curve=d.get("accuracy_curve", []),
                   natural_ok=d.get("natural_ok", []), robust_ok=d.get("robust_ok", []),
                   per_image=d.get("per_image", []), seconds=d.get("seconds", 0.0),
                   image_steps=d.get("image_steps", 0), chunks_reused=d.get("chunks_reused", 0),
                   x_adv=None, world_size=d.get("world_size"),
                   tail_check=TailCheck.from_json(d.get("tail_check")))

    @property
    def n_images(self) -> int:
        return len(self.natural_ok)

    def to_json(self) -> dict:
        out = {"seed": self.seed, "n_images": self.n_images, "natural": self.natural,
               "adversarial": self.adversarial, "robust_by_step": self.robust_by_step,
               "accuracy_curve": self.accuracy_curve, "natural_ok": self.natural_ok,
               "robust_ok": self.robust_ok, "per_image": self.per_image,
               "seconds": self.seconds, "image_steps": self.image_steps,
               "chunks_reused": self.chunks_reused}
        if self.world_size is not None:
            out["world_size"] = self.world_size
        if self.tail_check is not None:
            out["tail_check"] = self.tail_check.to_json()
        return out


@dataclass(frozen=True)
class TailCheck:
    """The re-verification of one seed's tail losses against a stochastic defense
    (:func:`ebmctl.evaluate.convergence.check_tail`).

    ``steps``: evaluation points in the tail (the last ``ceil(0.2 N)`` of N, at least one);
    ``lost``: images first broken there; ``confirmed``: those misread in a majority of
    ``reverifications`` fresh H_def verifications of their breaking point.
    """

    steps: int
    lost: int
    confirmed: int
    reverifications: int

    def to_json(self) -> dict:
        return {"steps": self.steps, "lost": self.lost, "confirmed": self.confirmed,
                "reverifications": self.reverifications}

    @classmethod
    def from_json(cls, d: dict | None) -> "TailCheck | None":
        return None if d is None else cls(**d)


@dataclass(frozen=True, eq=False)
class AttackRow(JsonRecord):
    """One attack against one model over every seed: means over seeds with intervals, the
    accuracy-vs-step curve (mean over seeds of each seed's worst restart) and whether it
    converged (None when the curve does not measure the defense step by step). ``memory``:
    the peak memory of the run (``ebmctl.evaluate.memory.MemoryProbe.read``). ``diagnostic``:
    the defender's own noise was fixed (``attack.common_noise_defender``)."""

    name: str
    description: str
    gradient: str
    natural: Estimate
    adversarial: Estimate
    n_images: int
    accuracy_curve: list[float]
    converged: bool | None
    seconds: float
    image_steps: int
    per_seed: list[SeedResult]
    memory: dict | None = None
    diagnostic: bool = False

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    @classmethod
    def from_json(cls, d: dict, name: str | None = None) -> "AttackRow":
        """The row :meth:`to_json` wrote (``name``: its key, for reports without ``attack``)."""
        return cls(name=d.get("attack", name), description=d.get("description", ""),
                   gradient=d.get("gradient", "exact"),
                   natural=Estimate.from_json(d, "natural", "natural_mean"),
                   adversarial=Estimate.from_json(d, "adversarial", "adversarial_mean"),
                   n_images=d.get("n_images"), accuracy_curve=d.get("accuracy_curve") or [],
                   converged=d.get("converged"), seconds=d.get("seconds", 0.0),
                   image_steps=d.get("image_steps", 0),
                   per_seed=[SeedResult.from_json(s) for s in d.get("per_seed", [])],
                   memory=d.get("memory"), diagnostic=bool(d.get("diagnostic", False)))

    def to_json(self) -> dict:
        out = {"attack": self.name, "description": self.description, "gradient": self.gradient,
               **self.natural.to_json("natural", "natural_mean"),
               **self.adversarial.to_json("adversarial", "adversarial_mean"),
               "n_images": self.n_images, "n_seeds": self.n_seeds,
               "accuracy_curve": self.accuracy_curve, "converged": self.converged,
               "seconds": self.seconds, "image_steps": self.image_steps,
               "per_seed": [s.to_json() for s in self.per_seed]}
        if self.memory is not None:
            out["memory"] = self.memory
        if self.diagnostic:
            out["diagnostic"] = True
        return out


@dataclass(frozen=True, eq=False)
class WorstCase:
    """The per-image worst case over a model's attacks on one seed: an image is robust iff it
    passed every attack's natural check and no attack broke it. ``x_adv`` [M,C,H,W]: the first
    breaking attack's image (in run order), else the last attack's final iterate."""

    seed: int
    natural: float
    adversarial: float
    natural_ok: list[bool]
    robust_ok: list[bool]
    x_adv: torch.Tensor = field(repr=False)


@dataclass(frozen=True, eq=False)
class MaskingVerdict(JsonRecord):
    """"Gradient masking suspected" (Athalye et al. 2018) when an attack whose gradient never
    passes the purifier leaves fewer images robust (``non_white_box``) than the white-box
    attacks (``white_box``) by more than ``tolerance``. A bare ``{"suspected": false}`` (no
    figures) records a passed transfer sanity check on a model whose attacks had no verdict."""

    suspected: bool
    white_box: float | None = None
    non_white_box: float | None = None
    attack: str | None = None
    tolerance: float | None = None

    @classmethod
    def compare(cls, white_box: float, non_white_box: float, attack: str,
                tolerance: float) -> "MaskingVerdict":
        return cls(non_white_box < white_box - tolerance, white_box, non_white_box, attack,
                   tolerance)

    @classmethod
    def from_json(cls, d: dict) -> "MaskingVerdict":
        return cls(bool(d.get("suspected")), d.get("white_box"), d.get("non_white_box"),
                   d.get("attack"), d.get("tolerance"))

    def to_json(self) -> dict:
        if self.attack is None:
            return {"suspected": self.suspected}
        return {"suspected": self.suspected, "white_box": self.white_box,
                "non_white_box": self.non_white_box, "attack": self.attack,
                "tolerance": self.tolerance}


@dataclass(frozen=True, eq=False)
class Eps0Control(JsonRecord):
    """A model's first attack at ε = 0 on one seed: nothing moves, so every image it "breaks"
    is broken by Alg. 1's repeated stochastic verification alone; ``inflation`` = natural − ε0
    accuracy (0 for a deterministic model); ``adversarial_ci``: the 95% Wilson interval over
    ``n_images``. Both are computed unless given (a loaded report keeps what it stored)."""

    attack: str
    seed: int
    n_images: int | None
    natural: float
    adversarial: float
    per_image_robust: list[int]
    inflation: float | None = None
    adversarial_ci: list[float] | None = None

    def __post_init__(self) -> None:
        if self.inflation is None:
            object.__setattr__(self, "inflation", self.natural - self.adversarial)
        if self.adversarial_ci is None and self.n_images:
            object.__setattr__(self, "adversarial_ci",
                               accuracy_interval(self.adversarial, self.n_images))

    @classmethod
    def from_json(cls, d: dict) -> "Eps0Control":
        """The control :meth:`to_json` wrote; reports written before ``n_images`` was kept
        give None there."""
        return cls(attack=d.get("attack"), seed=d.get("seed"), n_images=d.get("n_images"),
                   natural=d.get("natural"), adversarial=d.get("adversarial"),
                   per_image_robust=d.get("per_image_robust", []),
                   inflation=d.get("inflation"), adversarial_ci=d.get("adversarial_ci"))

    def to_json(self) -> dict:
        return {"attack": self.attack, "seed": self.seed, "n_images": self.n_images,
                "natural": self.natural, "adversarial": self.adversarial,
                "adversarial_ci": self.adversarial_ci,
                "inflation": self.inflation, "per_image_robust": self.per_image_robust}


@dataclass(frozen=True, eq=False)
class ModelResult(JsonRecord):
    """Every attack on every seed against one model (a report's ``results.<label>``).

    ``attack``: the strongest headline attack. ``natural``/``adversarial``: the per-image worst
    case over the headline attacks (diagnostic runs stay out unless they are all there is),
    mean over seeds. ``per_image_robust``: the first seed's worst-case verdict per image.
    ``worst``: the worst case per seed (with its adversarial images; not serialised).
    ``extras``: the task's own figures (``Task.evaluation_extras``), stored at the top level.
    """

    attack: str
    n_images: int
    n_seeds: int
    natural: Estimate
    adversarial: Estimate
    per_image_robust: list[int]
    converged: bool
    seconds: float
    image_steps: int
    attacks: dict[str, AttackRow]
    worst: list[WorstCase] = field(repr=False)
    diagnostic: bool = False
    gradient_masking: MaskingVerdict | None = None
    resubmission: dict | None = None
    eps0_control: Eps0Control | None = None
    extras: dict = field(default_factory=dict)

    @property
    def x_adv(self) -> torch.Tensor:
        """[M,C,H,W] the last seed's worst-case adversarial images."""
        return self.worst[-1].x_adv

    @classmethod
    def from_json(cls, d: dict) -> "ModelResult":
        """The result :meth:`to_json` wrote; keys it does not know are the task's ``extras``
        (``worst`` is empty: its images are not serialised)."""
        masking, control = d.get("gradient_masking"), d.get("eps0_control")
        return cls(
            attack=d.get("attack"), n_images=d.get("n_images"), n_seeds=d.get("n_seeds"),
            natural=Estimate.from_json(d, "natural"),
            adversarial=Estimate.from_json(d, "adversarial"),
            per_image_robust=d.get("per_image_robust", []), converged=d.get("converged", True),
            seconds=d.get("seconds", 0.0), image_steps=d.get("image_steps", 0),
            attacks={n: AttackRow.from_json(a, n) for n, a in d.get("attacks", {}).items()},
            worst=[], diagnostic=bool(d.get("diagnostic", False)),
            gradient_masking=MaskingVerdict.from_json(masking) if masking else None,
            resubmission=d.get("resubmission"),
            eps0_control=Eps0Control.from_json(control) if control else None,
            extras={k: v for k, v in d.items() if k not in _MODEL_KEYS})

    def to_json(self) -> dict:
        out = {"attack": self.attack, "n_images": self.n_images, "n_seeds": self.n_seeds,
               **self.natural.to_json("natural"), **self.adversarial.to_json("adversarial"),
               "per_image_robust": self.per_image_robust, "converged": self.converged,
               "seconds": self.seconds, "image_steps": self.image_steps,
               "attacks": {n: a.to_json() for n, a in self.attacks.items()}}
        if self.diagnostic:
            out["diagnostic"] = True
        if self.gradient_masking is not None:
            out["gradient_masking"] = self.gradient_masking.to_json()
        if self.resubmission is not None:
            out["resubmission"] = self.resubmission
        if self.eps0_control is not None:
            out["eps0_control"] = self.eps0_control.to_json()
        out.update(plain(self.extras))
        return out


#: the keys of a serialised :class:`ModelResult` that are not the task's extras
_MODEL_KEYS = frozenset({
    "attack", "n_images", "n_seeds", "natural", "natural_std", "natural_ci", "adversarial",
    "adversarial_std", "adversarial_ci", "per_image_robust", "converged", "seconds",
    "image_steps", "attacks", "diagnostic", "gradient_masking", "resubmission",
    "eps0_control"})


@dataclass(frozen=True, eq=False)
class SanityCheck(JsonRecord):
    """One check that can fail; ``figures`` are the numbers it compared."""

    check: str
    passed: bool
    figures: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict) -> "SanityCheck":
        return cls(d.get("check", ""), bool(d.get("pass")),
                   {k: v for k, v in d.items() if k not in ("check", "pass")})

    def to_json(self) -> dict:
        return {"check": self.check, **plain(self.figures), "pass": self.passed}


@dataclass(frozen=True, eq=False)
class SanityReport(JsonRecord):
    """The sanity checks of a run (Athalye et al. 2018); a failed one flags an attack or
    evaluation bug, or (the transfer check) gradient masking."""

    checks: list[SanityCheck]

    @property
    def all_pass(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> list[str]:
        return [c.check for c in self.checks if not c.passed]

    def to_json(self) -> dict:
        return {"checks": [c.to_json() for c in self.checks], "all_pass": self.all_pass}

    @classmethod
    def from_json(cls, d: dict) -> "SanityReport":
        return cls([SanityCheck.from_json(c) for c in d.get("checks", [])])


@dataclass(frozen=True, eq=False)
class Threat(JsonRecord):
    """The threat model: ``norm`` (linf | l2), radius ``eps`` and ``step_size`` in [0,1] pixel
    units, attack ``steps`` and ``restarts``."""

    norm: str
    eps: float
    step_size: float
    steps: int
    restarts: int

    def to_json(self) -> dict:
        return {"norm": self.norm, "eps": self.eps, "step_size": self.step_size,
                "steps": self.steps, "restarts": self.restarts, "units": "[0,1] pixels"}

    @classmethod
    def from_json(cls, d: dict) -> "Threat":
        return cls(d.get("norm"), d.get("eps"), d.get("step_size"), d.get("steps"),
                   d.get("restarts"))


@dataclass(frozen=True, eq=False)
class AttackReport(JsonRecord):
    """A whole evaluation: ``ebmctl attack``'s JSON, ``ebmctl.evaluate``'s return value.

    ``results`` maps a model label (undefended, defended, defended+fixer) to its
    :class:`ModelResult`. ``defense`` records the defense's settings (the CLI and the library
    record different ones); ``task_report``: the task's extra figures; ``adversarials_file``:
    the ``--save-adversarials`` export.
    """

    command: str
    task: str
    metric: str
    dataset: str
    split: str | None
    n_images: int
    seeds: list[int]
    threat: Threat
    defense: dict
    model: str
    results: dict[str, ModelResult]
    environment: dict
    config: dict
    sanity: SanityReport | None = None
    task_report: dict | None = None
    adversarials_file: str | None = None

    def to_json(self) -> dict:
        out = {"command": self.command, "task": self.task, "metric": self.metric,
               "dataset": self.dataset, "split": self.split, "n_images": self.n_images,
               "seeds": list(self.seeds), "threat": self.threat.to_json(),
               "defense": self.defense, "semantics": SEMANTICS, "model": self.model,
               "results": {k: r.to_json() for k, r in self.results.items()},
               "environment": self.environment, "config": self.config}
        if self.sanity is not None:
            out["sanity"] = self.sanity.to_json()
        if self.task_report:
            out["task_report"] = self.task_report
        if self.adversarials_file is not None:
            out["adversarials_file"] = self.adversarials_file
        return out

    @classmethod
    def from_json(cls, d: dict) -> "AttackReport":
        """The report a file holds (the dict ``json.load`` gives), read back into records;
        fields an older report lacks are None or empty. ``to_json()`` of the result equals
        ``d`` for a report this version wrote (less ``semantics``, which it restores)."""
        sanity = d.get("sanity")
        return cls(
            command=d.get("command", "attack"), task=d.get("task", ""),
            metric=d.get("metric", "accuracy"), dataset=d.get("dataset", ""),
            split=d.get("split"), n_images=d.get("n_images"), seeds=list(d.get("seeds") or []),
            threat=Threat.from_json(d.get("threat") or {}), defense=d.get("defense") or {},
            model=d.get("model", ""),
            results={k: ModelResult.from_json(r) for k, r in d.get("results", {}).items()},
            environment=d.get("environment") or {}, config=d.get("config") or {},
            sanity=SanityReport.from_json(sanity) if sanity else None,
            task_report=d.get("task_report"), adversarials_file=d.get("adversarials_file"))


@dataclass(frozen=True, eq=False)
class SweepRow(JsonRecord):
    """One value of a swept profile key: the defended model's :class:`ModelResult` there."""

    value: Any
    result: ModelResult

    def to_json(self) -> dict:
        r = self.result
        return {"value": self.value, **r.natural.to_json("natural"),
                **r.adversarial.to_json("adversarial"), "converged": r.converged,
                "seconds": r.seconds, "image_steps": r.image_steps, "attack": r.attack,
                "attacks": {n: {"natural": a.natural.mean, "adversarial": a.adversarial.mean,
                                "adversarial_std": a.adversarial.std,
                                "converged": a.converged} for n, a in r.attacks.items()}}


@dataclass(frozen=True, eq=False)
class SweepReport(JsonRecord):
    """``ebmctl attack --sweep KEY=V1,V2,...``: one evaluation per value of the ``label``
    model (``defended``, or ``undefended`` with ``--undefended-only``). ``task``, ``model``
    (the task model's path) and ``defense`` (the defended runs' settings, None undefended)
    let ``ebmctl compare`` name its lines; sweeps written before they were kept lack them."""

    key: str
    metric: str
    n_images: int
    seeds: list[int]
    threat: Threat
    rows: list[SweepRow]
    config: dict
    environment: dict
    label: str = "defended"
    task: str | None = None
    model: str | None = None
    defense: dict | None = None

    def to_json(self) -> dict:
        return {"command": "attack --sweep", "key": self.key,
                "values": [r.value for r in self.rows], "metric": self.metric,
                "n_images": self.n_images, "seeds": list(self.seeds),
                "threat": self.threat.to_json(), "rows": [r.to_json() for r in self.rows],
                "label": self.label, "task": self.task, "model": self.model,
                "defense": self.defense, "config": self.config,
                "environment": self.environment}
