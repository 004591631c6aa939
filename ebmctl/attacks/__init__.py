"""Attacks on (defended) task models, one method per file.

* :mod:`~ebmctl.attacks.loop`: the thesis' Alg. 1 evaluation loop every attack runs in;
* :mod:`~ebmctl.attacks.gradients`: the one place a gradient passes the defense
  (``bpda | full | smooth | exact``);
* :mod:`~ebmctl.attacks.losses`: CE, margin, DLR (``attack.loss``);
* :mod:`~ebmctl.attacks.threat`: ℓ∞/ℓ2 random starts, steps and projections;
* methods (class name = registry name): :mod:`~ebmctl.attacks.bpda_eot` (``bpda-eot``),
  :mod:`~ebmctl.attacks.pgd` (``pgd``, ``fgsm``), :mod:`~ebmctl.attacks.full_eot`
  (``full-eot``, ``smooth-eot``), :mod:`~ebmctl.attacks.apgd` (``apgd-ce``, ``apgd-dlr``),
  :mod:`~ebmctl.attacks.square` (``square``), :mod:`~ebmctl.attacks.transfer` (``transfer``).
"""
