"""What the README promises about reproducibility ("Conventions"), tested as stated.

Training: the same seed and settings give bit-identical artifacts for every trainer, whatever
else has drawn from torch's global RNG before (initial weights and every other draw come from
generators keyed by the run seed). Evaluation: Langevin noise is drawn per batch, keyed by
(seed, label, chunk start): the same seed and ``attack.batch_size`` reproduce a run bit for bit,
and one chunk run alone (as a resumed or sharded run does) equals the same chunk inside the
full run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ebmctl.context import evaluation_settings
from ebmctl.artifacts import load_artifact
from ebmctl.profiles import resolve
from ebmctl.testing import tiny_bundle

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
from make_corpus import save_valid  # noqa: E402

CPU = torch.device("cpu")
EBM = ["train.steps=2", "train.checkpoint_every=100", "train.mcmc_steps=2", "train.batch_size=8",
       "train.bank_size=16", "ebm.channels=4", "run.threads=1", "langevin.precision=fp32",
       "train.log_every=1", "output.grid_every=1000", "train.health_chains=0"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(which: str, out: Path, seed: int):
    """Train ``which`` for two updates (or one short epoch) on tiny settings."""
    bundle = tiny_bundle()
    sets = [f"run.seed={seed}"]
    if which == "convergent":
        from profile_runs import train_ebm

        return train_ebm(resolve(None, EBM + sets), bundle, out, CPU)
    if which == "midrun":
        from profile_runs import train_midrun

        cfg = resolve(None, EBM + sets + ["train.recipe=midrun", "train.target_horizon=4"])
        return train_midrun(cfg, bundle, out, CPU)
    if which == "hat":
        from profile_runs import train_hat

        cfg = resolve(None, ["hat.width=8", "hat.generator_width=8", "hat.latent_dim=8",
                             "train.batch_size=8", "train.mcmc_steps=2", "hat.bank_size=16",
                             "train.steps=2", "run.threads=1", "output.grid_every=1000",
                             *sets])
        return train_hat(cfg, bundle, out, CPU)
    if which == "classifier":
        from ebmctl.context import get_task
        from profile_runs import train_task_model

        cfg = resolve(None, ["model.epochs=1", "model.arch=wrn", "model.depth=10",
                             "model.widen_factor=1", "model.batch_size=16", "model.dropout=0.5",
                             "run.threads=1", *sets])  # dropout draws from the global RNG
        return train_task_model(cfg, bundle, get_task(cfg), out, CPU)
    if which == "fixer":
        from ebmctl.models import EnergyModel
        from ebmctl.training.fixer import FixerRun
        from profile_runs import train_fixer

        art = save_valid(out.parent / "art")
        cfg = resolve(None, ["fix.stage1_epochs=1", "fix.stage2_epochs=0", "fix.width=4",
                             "fix.blocks=1", "fix.purify_steps=1", "fix.batch_size=16",
                             "fix.feature_net=vgg16", "run.threads=1", *sets])
        import ebmctl.training.fixer as fixing

        real = fixing.build_feature_net
        fixing.build_feature_net = lambda *a: torch.nn.Identity()  # no VGG weights needed
        try:
            return train_fixer(cfg, FixerRun(EnergyModel.load(art["ebm"], CPU), bundle), out, CPU)
        finally:
            fixing.build_feature_net = real
    from profile_runs import train_autoencoder

    cfg = resolve(None, ["autoencoder.steps=2", "autoencoder.width=8", "autoencoder.batch_size=4",
                         "autoencoder.encoder_width=4", "autoencoder.latent_dim=4",
                         "data.image_size=32", "run.threads=1", *sets])
    return train_autoencoder(cfg, tiny_bundle(size=32), out, CPU)


TRAINERS = ["convergent", "midrun", "hat", "classifier", "fixer", "autoencoder"]


@pytest.mark.parametrize("which", TRAINERS)
def test_same_seed_gives_bit_identical_artifacts_for_every_trainer(which, tmp_path):
    torch.manual_seed(123)  # whatever ran before must not matter
    a = load_artifact(_train(which, tmp_path / "a" / "m.safetensors", seed=5)).tensors
    torch.manual_seed(456)
    torch.rand(1000)
    b = load_artifact(_train(which, tmp_path / "b" / "m.safetensors", seed=5)).tensors
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:3]
    c = load_artifact(_train(which, tmp_path / "c" / "m.safetensors", seed=6)).tensors
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


# ---- evaluation: same seed and batch size; a chunk alone equals the chunk in the run --------

ATTACK = ["attack.steps=2", "attack.eot_reps=2", "attack.restarts=1", "defense.steps=2",
          "defense.eot_reps=2", "run.device=cpu", "langevin.precision=fp32",
          "attack.random_start=true"]


def _setup(tmp_path):
    from ebmctl.context import get_task
    from ebmctl.models import EnergyModel, TaskModel
    from ebmctl.evaluate.report import build_defense, make_attack

    art = save_valid(tmp_path / "art")
    cfg = resolve(None, ATTACK)
    model, ebm = TaskModel.load(art["classifier"], CPU), EnergyModel.load(art["ebm"], CPU)
    settings = evaluation_settings(cfg)
    attack = make_attack(settings, "bpda-eot", True)
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % 10
    return attack, (lambda: build_defense(settings, model, ebm, CPU)), get_task(cfg), x, y


def test_an_attack_with_the_same_seed_and_batch_size_reproduces_bit_identically(tmp_path):
    from ebmctl.evaluate.attack_eval import evaluate_attack

    attack, defense, task, x, y = _setup(tmp_path)
    runs = []
    for noise in (1, 2):
        torch.manual_seed(noise)
        runs.append(evaluate_attack(attack, defense(), task, x, y, seed=3, batch_size=2,
                                    device=CPU, label="defended"))
    a, b = runs
    assert torch.equal(a.x_adv, b.x_adv) and a.per_image == b.per_image


def test_one_chunk_alone_equals_the_same_chunk_inside_the_full_run(tmp_path):
    from ebmctl.evaluate.attack_eval import evaluate_attack

    attack, defense, task, x, y = _setup(tmp_path)
    full = evaluate_attack(attack, defense(), task, x, y, seed=3, batch_size=2, device=CPU,
                           label="defended")
    start = 2  # what a resumed or sharded run computes for this chunk: keyed by its start
    alone = attack.run(defense(), task, x[start:start + 2], y[start:start + 2],
                       (3, "defended", start))
    assert torch.equal(alone.x_adv, full.x_adv[start:start + 2])
    assert alone.robust_ok.tolist() == full.robust_ok[start:start + 2]
