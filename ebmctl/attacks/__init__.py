"""Attacks on (defended) task models, one method per file.

* :mod:`~ebmctl.attacks.base`: the attack interface (:class:`~ebmctl.attacks.base.Attack`,
  the one class a new attack reads), the ``[attack]`` section and the factory;
* :mod:`~ebmctl.attacks.loop`: the thesis' Alg. 1 evaluation loop every built-in attack runs in;
* :mod:`~ebmctl.attacks.gradients`: the one place a gradient passes the defense
  (``bpda | full | smooth | exact``);
* :mod:`~ebmctl.attacks.losses`: CE, margin, DLR (``attack.loss``);
* :mod:`~ebmctl.attacks.threat`: ℓ∞/ℓ2 random starts, steps and projections;
* methods, registry name → class: ``bpda-eot`` → :class:`~ebmctl.attacks.bpda_eot.BPDAEOT`;
  ``pgd``, ``fgsm`` → :class:`~ebmctl.attacks.pgd.PGD`, :class:`~ebmctl.attacks.pgd.FGSM`;
  ``full-eot``, ``smooth-eot`` → :class:`~ebmctl.attacks.full_eot.FullGradientEOT`,
  :class:`~ebmctl.attacks.full_eot.SmoothedGradientEOT`; ``apgd-ce``, ``apgd-dlr`` →
  :class:`~ebmctl.attacks.apgd.APGD` (any ``attack.loss``, cross-entropy by default, hence the
  name AutoAttack gives that run), :class:`~ebmctl.attacks.apgd.APGDDLR`; ``square`` →
  :class:`~ebmctl.attacks.square.Square`; ``transfer`` →
  :class:`~ebmctl.attacks.transfer.Transfer`. Each class's ``name`` is its registry name.
"""
