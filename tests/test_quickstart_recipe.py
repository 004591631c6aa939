"""The quickstart's EBM recipe (profiles/quick.toml) is healthy where it is used.

The main job defends with K_def Langevin steps of this EBM; its own health check must pass at
K_def and at 5·K_def, in fp32 and in bf16 (``langevin.precision = "auto"`` picks bf16 on CPUs
with native bf16 and on GPUs), or the product's first run teaches its user to ignore warnings.
Chains start from held-out digits, as purification's do; the verdict is
:func:`ebmctl.training.health.assess_convergence`'s, unchanged.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_per_module")]


@pytest.fixture(scope="module")
def quick_ebm(tmp_path_factory):
    """The quickstart EBM trained exactly as `ebmctl quickstart` trains it (fp32 here)."""
    from ebmctl.context import load_dataset
    from ebmctl.profiles import resolve
    from profile_runs import train_ebm

    cfg = resolve("quick", ["run.device=cpu", "langevin.precision=fp32"])
    bundle = load_dataset(cfg)
    out = tmp_path_factory.mktemp("quick") / "ebm.safetensors"
    train_ebm(cfg, bundle, out, torch.device("cpu"))
    return cfg, bundle, out


def test_the_profile_checks_health_at_k_def_and_five_times_it():
    from ebmctl.profiles import resolve
    from ebmctl.training.health import health_horizon
    from ebmctl.training.trainer import TrainConfig

    cfg = resolve("quick", [])
    assert health_horizon(cfg.section(TrainConfig), cfg["defense.steps"]) == 5 * cfg["defense.steps"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_quickstart_ebm_is_healthy_at_k_def_and_five_times_it(quick_ebm, precision):
    from ebmctl.data_utils import pick_subset
    from ebmctl.models import EnergyModel
    from ebmctl.seeds import make_generator
    from ebmctl.training.health import longrun_health
    from ebmctl.units import to_internal

    cfg, bundle, path = quick_ebm
    ebm = EnergyModel.load(path, torch.device("cpu"))
    held = pick_subset(bundle.val, cfg["train.health_chains"])
    k_def = cfg["defense.steps"]
    report = longrun_health(ebm.net, to_internal(held.x), cfg["train.mcmc_steps"], 5 * k_def,
                            ebm.settings(precision), make_generator("cpu", 0, "health"), None,
                            defense_steps=k_def)
    assert report["decided_at"] == 5 * k_def
    assert report["convergent"], report["verdict"]
    for horizon in ("defense", "long"):  # with margin: well under the 5% limit
        assert report[horizon]["fraction_outside_range"] < 0.025, report[horizon]
