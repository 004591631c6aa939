"""The attack interface: :class:`Attack`, the one class a new attack reads and subclasses
(usually through :class:`~ebmctl.attacks.loop.SteppedAttack`, the thesis' Alg. 1 with hooks);
the profile section ``[attack]`` (:class:`AttackConfig`); and :func:`build_attack`, the factory
the evaluation calls (it defers to :meth:`Attack.from_config`). Attacks are registered through
the attack hook (``ebmctl_register_attacks``); docs/writing-an-attack.md."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Self

import torch

from ebmctl.config import Fraction, setting
from ebmctl.defense import Defense
from ebmctl.errors import ConfigError
from ebmctl.contracts import Task


@dataclass
class AttackOutcome:
    """Per-image results of one attack run over a batch of B images (all tensors on CPU).

    Attributes:
        natural_ok: bool [B], the defense classifies the clean image correctly (natural check).
        robust_ok: bool [B], the image survived every evaluation point of every restart.
        clean_score: float [B], the task's score of the clean outputs (the reference of
            :meth:`Task.robust_ok`).
        x_adv: [B,C,H,W] in [0,1], the breaking image (survivors: the last iterate).
        ok_by_step: bool [R, N+1, B], still unbroken after evaluation point n of restart r.
        info: free-form facts about the run (the built-in attacks: ``{"gradient": mode}``).
    """

    natural_ok: torch.Tensor
    robust_ok: torch.Tensor
    clean_score: torch.Tensor
    x_adv: torch.Tensor
    ok_by_step: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)


class Attack:
    """Base class of every attack: what the evaluation reads from an attack, and how it builds
    one from the profile. A subclass sets ``name`` and ``description``, overrides the class
    attributes below where its defaults do not hold, and implements :meth:`run` (or subclasses
    :class:`~ebmctl.attacks.loop.SteppedAttack`, which implements it as Alg. 1).

    An attack receives the defense (task model + optional purifier), the task (losses and
    success rule), a batch of [0,1] images and targets, and a seed key from which it derives
    every random draw. It must honour the threat model ``norm``/``eps`` and report per-image
    outcomes. An instance holds settings only, never the state of a run, so one instance may
    run many batches, from several threads.

    Class attributes (the declarations the evaluation reads; defaults in brackets):
        name: registry name, what ``--method`` and ``attack.methods`` call it [""].
        description: one line for ``ebmctl list`` and the report [""].
        gradient: how the attack's gradient passes the defense, the report's "gradient"
            column and :meth:`gradient_mode`: ``exact`` | ``bpda`` | ``full`` | ``smooth``
            (white-box, :data:`~ebmctl.attacks.gradients.GRADIENT_MODES`), ``classifier only``
            (transfer) or ``none`` (gradient-free). The sanity checks compare white-box rows
            with the other two kinds to detect gradient masking ["exact"].
        per_step_curve: ``ok_by_step[r, n]`` measures the defense after n steps, so the report
            judges convergence from the accuracy curve; False for an attack whose intermediate
            points are not evaluated (transfer, the final-iterate protocol) [True].
        config_fields: :class:`AttackConfig` fields :meth:`from_config` passes to the
            constructor on every build, under the same name, beyond the common ones
            (:func:`common_arguments`) [none].
        options: the optional settings (keys of :data:`OPTIONAL_SETTINGS`) the attack reads.
            :meth:`from_config` passes one to the constructor, as the keyword
            ``OPTIONAL_SETTINGS[field]``, only when the user set it (otherwise the
            constructor's default holds); a setting the user gave that no attack of a run
            reads is refused, naming the key [none].

    Instance attributes besides the arguments:
        options_given: the ``attack.<field>`` keys :meth:`from_config` passed on (empty for
            an instance built directly).
        diagnostic: the attack's figure is not a robustness figure (the defender's
            randomness was fixed), so the report marks its row and keeps it out of the
            headline [False].

    Args:
        norm: ``linf`` | ``l2``.
        eps: radius ε in [0,1] pixel units.
        step_size: α in [0,1] pixel units (ℓ2: the length of one normalised step).
        steps: N attack steps (N+1 evaluation points).
        restarts: R restarts; an image is broken if any restart breaks it.
        eot_reps: H_adv, replicates of the gradient and the screening.
        verify_reps: H_def, fresh replicates of the natural check and of each verification.
        random_start: start each restart at a uniform point of the ε-ball.

    Raises:
        ConfigError: an invalid norm, negative radius/step/steps or < 1 restart/replicate.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    gradient: str = "exact"
    per_step_curve: bool = True
    config_fields: ClassVar[tuple[str, ...]] = ()
    options: ClassVar[frozenset[str]] = frozenset()
    options_given: frozenset[str] = frozenset()

    def __init__(self, *, norm: str = "linf", eps: float = 8 / 255, step_size: float = 2 / 255,
                 steps: int = 50, restarts: int = 1, eot_reps: int = 1, verify_reps: int = 1,
                 random_start: bool = True):
        if norm not in ("linf", "l2"):
            raise ConfigError(f"unknown attack.norm {norm!r}; choose from linf, l2")
        if eps < 0 or step_size < 0 or steps < 0 or restarts < 1 or eot_reps < 1 \
                or verify_reps < 1:
            raise ConfigError(f"attack {self.name!r}: eps, step size and steps must be >= 0, "
                              "restarts and replicates >= 1")
        self.norm, self.eps, self.step_size, self.steps = norm, float(eps), float(step_size), steps
        self.restarts, self.eot_reps, self.verify_reps = restarts, eot_reps, verify_reps
        self.random_start = random_start

    @classmethod
    def from_config(cls, attack: AttackConfig, *, defended: bool, verify_reps: int,
                    eps: float | None = None, given: Collection[str] = ()) -> Self:
        """An instance configured by the profile section ``attack``.

        The constructor receives :func:`common_arguments`, the :attr:`config_fields`, and of
        the :attr:`options` those in ``given`` (the :data:`DEFENDED_ONLY` ones on defended
        runs only); :attr:`options_given` records the latter. Override this classmethod when
        the constructor takes other arguments than these.

        Args:
            attack: the ``[attack]`` section.
            defended: the run attacks a defended model (H_adv and H_def apply; an undefended
                run uses one replicate each way).
            verify_reps: H_def, the replicates of the natural check and each verification
                (``defense.eot_reps``).
            eps: radius in [0,1] pixel units in place of ``attack.radius`` (sweeps, sanity
                checks).
            given: :class:`AttackConfig` field names the user set (profile or ``--set``).

        Raises:
            ConfigError: the constructor rejects a value (see the class's Raises).
        """
        chosen = [name for name in OPTIONAL_SETTINGS if name in cls.options and name in given
                  and (defended or name not in DEFENDED_ONLY)]
        kw = common_arguments(attack, defended=defended, verify_reps=verify_reps, eps=eps)
        kw.update({name: getattr(attack, name) for name in cls.config_fields})
        kw.update({OPTIONAL_SETTINGS[name]: getattr(attack, name) for name in chosen})
        out = cls(**kw)
        out.options_given = frozenset(f"attack.{name}" for name in chosen)
        return out

    @property
    def diagnostic(self) -> bool:
        """True when the figure is not a robustness figure (see the class docstring)."""
        return False

    def gradient_mode(self) -> str:
        """How the gradient passes the defense: :attr:`gradient` (see the class docstring)."""
        return self.gradient

    def check_defense(self, defense: Defense) -> None:
        """Refuse, before any work, settings this defense cannot honour (the default accepts
        every defense). The evaluation calls it once per defense and attack.

        Raises:
            ConfigError: one line naming the setting and the defense's part that rejects it.
        """

    def run(self, defense: Defense, task: Task, x: torch.Tensor, y: torch.Tensor, key: tuple,
            progress: Callable[[int], None] | None = None) -> AttackOutcome:
        """Attack the images ``x`` [B,C,H,W] in [0,1] with targets ``y`` [B,...].

        Args:
            defense: the (defended) model the attack runs against.
            task: the task's losses and success rule (``score``, ``natural_ok``,
                ``robust_ok``, ``attack_loss``).
            x: clean images, on the defense's device.
            y: targets.
            key: seed key; every random draw derives from it (``make_generator(device, *key,
                ...)``), so the same key gives the same outcome.
            progress: called with 1 after each evaluation point of each restart (R·(N+1)
                calls in all), for a progress bar.

        Returns:
            The per-image :class:`AttackOutcome`.

        Raises:
            ConfigError: a setting the defense cannot honour.
        """
        raise NotImplementedError


@dataclass(frozen=True)
class AttackConfig:
    """The profile section ``[attack]``: the threat model (norm, radius, step), the Alg. 1 loop
    (N steps, R restarts, H_adv), which attacks run on which images and seeds, the settings
    only some attacks take (see :data:`OPTIONAL_SETTINGS`) and the report's sanity checks
    (docs/algorithms.md#attacks). Radii and steps are in [0,1] pixel units."""

    section: ClassVar[str] = "attack"

    method: str = setting("bpda-eot", "attack for the defended model")
    undefended_method: str = setting("pgd", "attack for the undefended model")
    norm: str = setting("linf", "linf | l2", choices=("linf", "l2"))
    eps: Fraction = setting(8 / 255, "radius in [0,1] pixel units", minimum=0, maximum=1)
    eps_l2: Fraction = setting(0.5, "l2 radius used when attack.norm = l2", minimum=0)
    step_size: Fraction = setting(2 / 255, "α in [0,1] pixel units", minimum=0, maximum=1)
    steps: int = setting(50, "PGD steps N (a report flags a curve still falling over its last "
                         "20% of steps as not converged)", minimum=0)
    eot_reps: int = setting(15, "H_adv replicates", minimum=1)
    restarts: int = setting(5, "random restarts", minimum=1)
    n_images: int = setting(100, "test images to attack", minimum=1)
    batch_size: int = setting(50, "images attacked together", minimum=1)
    seeds: tuple[int, ...] = setting((0,), "attack seeds (each a full evaluation)")
    random_start: bool = setting(True, "random start in the ε-ball")
    methods: tuple[str, ...] = setting((), "attacks on the defended model, each reported; the "
                                       "headline is the per-image worst case over them (empty "
                                       "= attack.method)")
    step_size_l2: Fraction = setting(0.0, "α of the l2 attacks, in [0,1] pixel units "
                                     "(attack.step_size is the linf step); 0 = eps_l2/4",
                                     minimum=0)
    loss: str = setting("ce", "loss of the gradient attacks: ce (the task's) | margin | dlr",
                        choices=("ce", "margin", "dlr"))
    sanity_tolerance: float = setting(0.02, "tolerance of the sanity checks that compare two "
                                      "accuracies (fraction of images)", minimum=0, maximum=1)
    gradient: str = setting("bpda", "how APGD's gradient passes the purifier",
                            choices=("bpda", "full", "smooth"))
    smooth_temperature: float = setting(0.1, "softplus temperature of the smoothed backward "
                                        "pass (pre-activation units)", minimum=1e-6)
    checkpoint_segment: int = setting(0, "Langevin steps per checkpoint segment of the "
                                      "full-gradient attacks (0 = sqrt(K))", minimum=0)
    square_p_init: float = setting(0.8, "Square attack: initial window share of pixels",
                                   minimum=0, maximum=1)
    # the attacks the field now uses against purification (all off by default)
    final_iterate_only: bool = setting(
        False, "MEFA protocol: no per-step screening or verification; each restart's last "
        "iterate is verified once with H_def (default: broken at any step, the thesis' Alg. 1)")
    gradient_steps: int = setting(
        0, "K' of the surrogate chain the full/smooth gradient differentiates through while the "
        "defense still runs defense.steps (0 = defense.steps; must be <= defense.steps)",
        minimum=0)
    common_noise: bool = setting(False, "fix the Langevin noise of the attacker's H_adv "
                                 "replicates for a whole restart (the same at every attack step)")
    common_noise_defender: bool = setting(False, "DIAGNOSTIC: also fix the H_def verification "
                                          "noise; such rows are marked diagnostic and never "
                                          "the headline")
    energy_weight: float = setting(0.0, "λ of the defense-aware loss: the attacker maximises "
                                   "loss - λ·U(x_adv), U the defending EBM's energy (U_net/T)",
                                   minimum=0)
    sanity: bool = setting(True, "run the sanity checks in every attack report")
    sanity_eps: float = setting(0.5, "large radius of the sanity check (linf; l2 uses it times "
                                "sqrt(D))", minimum=0)
    sanity_images: int = setting(50, "images of the large-radius and half-radius sanity checks",
                                 minimum=1)
    control_images: int = setting(0, "images of the eps = 0 control, the first of the attacked "
                                  "ones (0 = all); it reruns the whole attack at eps = 0, so "
                                  "its cost scales with this number", minimum=0)

    @property
    def radius(self) -> float:
        """ε of the configured norm: ``eps`` (ℓ∞) or ``eps_l2`` (ℓ2), [0,1] pixel units."""
        return self.eps if self.norm == "linf" else self.eps_l2

    @property
    def step(self) -> float:
        """α of the configured norm: ``step_size`` (ℓ∞) or ``step_size_l2`` (ℓ2; 0 means
        ε_l2/4), [0,1] pixel units."""
        if self.norm == "linf":
            return self.step_size
        return self.step_size_l2 or self.eps_l2 / 4


#: settings that only some attacks take: :class:`AttackConfig` field -> constructor keyword;
#: an attack lists those it reads in :attr:`Attack.options`
OPTIONAL_SETTINGS = {"gradient": "gradient", "loss": "loss", "square_p_init": "p_init",
                     "final_iterate_only": "final_iterate_only",
                     "gradient_steps": "gradient_steps", "common_noise": "common_noise",
                     "common_noise_defender": "common_noise_defender",
                     "energy_weight": "energy_weight"}
#: optional settings about the defending EBM's chain or energy: given to defended runs only
DEFENDED_ONLY = ("gradient_steps", "common_noise", "common_noise_defender", "energy_weight")


def common_arguments(attack: AttackConfig, *, defended: bool, verify_reps: int,
                     eps: float | None = None) -> dict[str, Any]:
    """The constructor arguments every attack takes (:class:`Attack`'s), from ``attack``: the
    threat model (``eps`` overrides ``attack.radius``; α is ``attack.step``), N, R and
    ``random_start``; H_adv = ``attack.eot_reps`` and H_def = ``verify_reps`` on a defended
    run, 1 and 1 on an undefended one."""
    return {"norm": attack.norm, "eps": attack.radius if eps is None else eps,
            "step_size": attack.step, "steps": attack.steps, "restarts": attack.restarts,
            "eot_reps": attack.eot_reps if defended else 1,
            "verify_reps": verify_reps if defended else 1, "random_start": attack.random_start}


def build_attack(cls: type[Attack], attack: AttackConfig, *, defended: bool, verify_reps: int,
                 eps: float | None = None, given: Collection[str] = ()) -> Attack:
    """An instance of the attack class ``cls`` configured by ``attack``:
    ``cls.from_config(attack, ...)`` (:meth:`Attack.from_config`, which documents the
    arguments).

    Raises:
        ConfigError: the constructor rejects a setting (see :class:`Attack`).
    """
    return cls.from_config(attack, defended=defended, verify_reps=verify_reps, eps=eps,
                           given=given)
