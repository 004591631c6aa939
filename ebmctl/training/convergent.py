"""Convergent EBM learning (thesis Alg. 2; docs/algorithms.md#convergent-training):
persistent bank of noise chains never reset, data noise, K Langevin steps per update, Adam then
an SGD switch.

What differs from the other recipes lives in :class:`Convergent`: the bank starts from noise
(``train.bank_init``) and is never rejuvenated, the optimiser switches from Adam to plain SGD at
``train.sgd_switch_step``, and the bank may be split into shards (one per torchrun process).
The loop, resume, checkpoints and numerical stops are :class:`ebmctl.training.trainer.EnergyTrainer`'s.

All randomness of update j is derived from (seed, j), so a resumed run reproduces an
uninterrupted one exactly.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ebmctl import distributed as D
from ebmctl.config import RunRecord
from ebmctl.console import info
from ebmctl.contracts import DatasetBundle
from ebmctl.errors import ConfigError, NumericalError
from ebmctl.sampling.langevin import energy_and_grad, langevin
from ebmctl.seeds import make_generator
from ebmctl.training.checkpoint import restore_optimizer
from ebmctl.training.trainer import (
    EnergyRecipe,
    EnergyTrainer,
    EnergyTrainingSections,
    langevin_settings,
)


def init_bank(kind: str, n: int, shape: tuple, data: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The initial persistent bank [n, *shape]: uniform noise in [-1, 1], N(0, I) noise, or
    training images (``train.bank_init`` = uniform | gaussian | data)."""
    if kind == "uniform":
        return torch.rand((n, *shape), generator=gen) * 2 - 1
    if kind == "gaussian":
        return torch.randn((n, *shape), generator=gen)
    idx = torch.randint(0, len(data), (n,), generator=gen)
    return data[idx].clone()


class Convergent(EnergyRecipe):
    """The convergent recipe. With ``train.shards`` = S > 1 the bank is split into S contiguous
    blocks and every update's batch into S parts of batch/S; part s draws its data, noise, bank
    rows and Langevin noise from a generator keyed (seed, update, s) and the loss is the mean of
    the S part losses. Under torchrun (see :mod:`ebmctl.distributed`) rank r holds shard r of
    the bank and DistributedDataParallel averages the gradients; one process runs the S parts in
    turn and reaches the same weights."""

    target, label, title = "ebm", "train ebm", "EBM training"
    data_parallel = True

    def __init__(self, sections: EnergyTrainingSections, record: RunRecord,
                 bundle: DatasetBundle, device):
        ctx = D.current()
        super().__init__(sections, record, bundle, D.rank_device(ctx, torch.device(device)))
        # the shard count this launch runs (train.shards = 1 under torchrun: one per process);
        # the command records it in the profile before the run (see ebmctl train ebm)
        self.ctx, self.shards = ctx, D.train_shards(self.train.shards, ctx)

    def setup(self) -> None:
        train, shards = self.train, self.shards
        net, self.arch, self.arch_args = self.build_model("ebm-init")
        self.net = net.to(self.device)
        self.load_data()
        self.bank_size = train.bank_size or len(self.data)
        batch = train.batch_size
        self.part = batch // shards
        if shards > 1 and (batch % shards or self.bank_size // shards < self.part):
            raise ConfigError(f"train.shards = {shards} needs train.batch_size divisible by it and "
                              f"at least batch_size/shards = {self.part} bank rows per shard "
                              f"(batch_size {batch}, bank {self.bank_size})")
        self.mine = [self.ctx.rank] if self.ctx.active else list(range(shards))  # shards run here
        self.settings = langevin_settings(self.langevin, self.device)
        self.bank = init_bank(train.bank_init, self.bank_size, self.shape, self.data.cpu(),
                              make_generator("cpu", self.seed, "bank-init"))
        self.opt = self._optimizer(0)

    def _optimizer(self, step: int) -> torch.optim.Optimizer:
        """Adam before ``train.sgd_switch_step`` (0: never switch), plain SGD from it on."""
        train, switch = self.train, self.train.sgd_switch_step
        if switch and step >= switch:
            return torch.optim.SGD(self.net.parameters(), lr=train.lr_sgd)
        return torch.optim.Adam(self.net.parameters(), lr=train.lr_adam,
                                betas=(train.adam_beta1, train.adam_beta2))

    def restore(self, ck: dict) -> None:
        self.opt = self._optimizer(ck["step"])
        if type(self.opt).__name__ == (ck["opt_meta"] or {}).get("class"):
            restore_optimizer(self.opt, ck)
        self.bank = ck["tensors"]["bank"]
        if ck["state"].get("shards", 1) != self.shards:
            info(f"the checkpoint was written with train.shards = {ck['state'].get('shards', 1)}"
                 f"; continuing with {self.shards} (a different random stream from here on)")

    def begin(self) -> None:
        if self.shards == 1:
            self.banks = {0: self.bank.to(self.device)}
        else:  # each process keeps only its own shards
            self.banks = {s: self.bank[slice(*D.shard_bounds(self.bank_size, self.shards, s))]
                          .clone().to(self.device) for s in self.mine}
        del self.bank
        self.model = D.data_parallel(self.net, self.ctx, self.device)  # the loss runs through it

    def schedule(self, step: int) -> None:
        switch = self.train.sgd_switch_step
        if switch and step == switch:
            self.opt = self._optimizer(step)

    def gradients(self, step: int) -> dict[str, float]:
        self.opt.zero_grad(set_to_none=True)
        totals, self.negs = [0.0, 0.0, 0.0], []
        for s in self.mine:
            loss, e_pos, e_neg = self._part(step, s)
            # one process: mean over the shards by accumulation; torchrun: DDP averages
            (loss / len(self.mine) if len(self.mine) > 1 else loss).backward()
            totals = [t + v.item() for t, v in zip(totals, (loss, e_pos, e_neg))]
        gap, pos, neg = (t / self.shards for t in D.sum_over_ranks(totals, self.ctx, self.device))
        return {"energy_gap": gap, "energy_pos": pos, "energy_neg": neg}

    def _part(self, step: int, s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shard ``s`` of update ``step``: K Langevin steps from its bank rows (written back)
        and the loss mean U(x⁺) − mean U(x⁻) with its two terms."""
        key = ("ebm-train", step) if self.shards == 1 else ("ebm-train", step, s)
        gen = make_generator(self.device, self.seed, *key)
        pos = self.positives(self.part, gen)
        bank = self.banks[s]
        bank_idx = torch.randperm(len(bank), generator=gen, device=self.device)[:self.part]
        try:
            neg, failed = langevin(self.net, bank[bank_idx], self.train.mcmc_steps,
                                   self.settings, gen), ""
        except NumericalError as exc:
            neg, failed = None, exc.message
        if self.ctx.active and D.sum_over_ranks([float(bool(failed))], self.ctx, self.device)[0]:
            failed = failed or "a Langevin chain of another process produced NaN/Inf"
        if failed:
            raise NumericalError(failed)
        bank[bank_idx] = neg
        self.negs.append(neg)
        self.model.train()
        e_pos, e_neg = self.model(pos).mean(), self.model(neg).mean()
        return e_pos - e_neg, e_pos, e_neg

    def apply(self, step: int, terms: dict) -> None:
        self.opt.step()

    def record(self, terms: dict) -> dict:
        norms = [energy_and_grad(self.net, neg, "fp32")[1].flatten(1).norm(dim=1).mean().item()
                 for neg in self.negs]
        grad_norm = D.sum_over_ranks([sum(norms)], self.ctx, self.device)[0] / self.shards
        return {**super().record(terms), "langevin_grad_norm": grad_norm,
                "optimizer": type(self.opt).__name__}

    def checkpoint_state(self) -> tuple[torch.optim.Optimizer, dict, dict]:
        return self.opt, {"bank": self._whole_bank()}, {"shards": self.shards}

    def _whole_bank(self) -> torch.Tensor:
        """All shards, in bank order (collective under torchrun)."""
        if self.shards == 1:
            return self.banks[0]
        parts = D.gather_objects({s: b.cpu() for s, b in self.banks.items()}, self.ctx)
        merged = {s: b for p in parts for s, b in p.items()}
        return torch.cat([merged[s] for s in range(self.shards)])

    def samples(self) -> torch.Tensor:
        return self.banks[0]

    def training_extra(self, history: list[dict]) -> dict:
        return {"shards": self.shards, "world_size": self.ctx.world_size} if self.shards > 1 else {}


def train_ebm(sections: EnergyTrainingSections, record: RunRecord, bundle: DatasetBundle,
              out: Path, device: torch.device, resume: bool = False,
              force_resume: bool = False) -> Path:
    """Convergent EBM training (:class:`Convergent`) with the typed ``sections`` (built with
    the bundle, so they name the ``ebm`` model) to the artifact ``out``, writing ``record``
    beside it; ``resume`` continues from ``out``'s checkpoint (a ConfigError if its settings
    differ; ``force_resume`` allows the safe ones). Raises NumericalError on NaN/Inf, keeping
    the last checkpoint."""
    return EnergyTrainer(Convergent(sections, record, bundle, device), out).run(resume,
                                                                             force_resume)
