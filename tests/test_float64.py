"""``run.dtype = float64``: models, images, Langevin chains and attacks in float64, so a report
comes out the same on every CPU (float64 kernels agree to ~1e-12, far inside the margins of
argmax, gradient signs and broken/robust decisions). Used as given or refused with an error
naming it; float32 stays the default."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ebmctl
from ebmctl.context import working_dtype
from ebmctl.errors import ConfigError
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.profiles import resolve
from ebmctl.sampling.langevin import LangevinConfig, chain_dtype, langevin
from ebmctl.testing import run_cli

DATA = Path(__file__).parent / "data"
#: the golden report test's stored models and frozen profile (tests/test_report_golden.py)
CLF, EBM = DATA / "golden-classifier.safetensors", DATA / "golden-ebm.safetensors"
PROFILE = DATA / "golden-profile.toml"
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_float32_is_the_default_and_float64_is_refused_with_reduced_precision_chains():
    assert working_dtype(resolve(None)) == torch.float32
    assert working_dtype(resolve(None, ["run.dtype=float64"])) == torch.float64
    for precision in ("bf16", "fp16"):
        cfg = resolve(None, ["run.dtype=float64", f"langevin.precision={precision}"])
        with pytest.raises(ConfigError, match="run.dtype.*langevin.precision"):
            working_dtype(cfg)
        with pytest.raises(ConfigError, match="langevin.precision.*run.dtype"):
            cfg.section(LangevinConfig).precision_on(CPU, torch.float64)
    # auto may pick bf16 on a CPU that has it; under float64 it means no autocast anywhere
    auto = resolve(None, ["run.dtype=float64", "langevin.precision=auto"])
    assert auto.section(LangevinConfig).precision_on(CPU, working_dtype(auto)) == "fp64"
    with pytest.raises(ConfigError, match="run.dtype"):
        resolve(None, ["run.dtype=float16"])


def test_commands_that_run_in_float32_refuse_float64_rather_than_ignore_it(tmp_path):
    r = run_cli(["purify", str(tmp_path / "photo.png"), "--set", "run.dtype=float64"])
    assert r.exit_code == 2 and "run.dtype" in r.output and "ebmctl attack" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1


def test_loaders_convert_to_the_working_dtype_and_chains_follow_the_network():
    model, ebm = TaskModel.load(CLF, CPU, torch.float64), EnergyModel.load(EBM, CPU, torch.float64)
    assert {p.dtype for p in [*model.parameters(), *ebm.net.parameters()]} == {torch.float64}
    assert next(TaskModel.load(CLF, CPU).parameters()).dtype == torch.float32  # as stored
    assert chain_dtype(ebm.net) == torch.float64
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    s = ebm.settings()
    got = langevin(ebm.net, x, 2, s, torch.Generator().manual_seed(0))  # float32 in: converted
    # the update written out in float64, its noise drawn in float64 (never float32 draws cast
    # up: those differ between CPU kernels)
    want, gen = x.double(), torch.Generator().manual_seed(0)
    for _ in range(2):
        xg = want.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(ebm.net(xg).sum(), xg)
        want = want - s.drift * g + s.tau * torch.randn(x.shape, generator=gen,
                                                        dtype=torch.float64)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)


#: a float64 library evaluation, printed as JSON: run here and in a subprocess with other CPU
#: kernels (ATEN_CPU_CAPABILITY=default: no vectorisation)
EVALUATE = """
import json, sys, torch
torch.set_num_threads(1)
import ebmctl
from ebmctl.context import load_dataset
from ebmctl.models import TaskModel
from ebmctl.profiles import resolve
data = load_dataset(resolve(sys.argv[3], ["run.device=cpu"])).split("test")
x, y = data.x[:6], data.y[:6]
model = TaskModel.load(sys.argv[1], torch.device("cpu")).double()
d = ebmctl.defend(model, ebmctl.load_ebm(sys.argv[2]), steps=3, reps=2)
rep = ebmctl.evaluate(d, x, y, attacks=["bpda-eot", "apgd-ce", "square"], eps=0.06, steps=3,
                      step_size=0.02, eot_reps=2, batch_size=3, sanity=False)
rows = rep.results["defended"].attacks
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "decisions": {n: r.per_seed[0].robust_ok for n, r in rows.items()},
                  "x_adv": {n: r.per_seed[0].x_adv.flatten().tolist() for n, r in rows.items()},
                  "dtype": str(rows["bpda-eot"].per_seed[0].x_adv.dtype)}))
"""


def _evaluate(env: dict[str, str] | None = None) -> dict:
    run = subprocess.run([sys.executable, "-c", EVALUATE, str(CLF), str(EBM), str(PROFILE)],
                         check=True,
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_float64_results_agree_across_cpu_kernel_sets():
    """The same float64 evaluation (BPDA+EOT, APGD, Square through a Langevin defense) with this
    CPU's kernels and with unvectorised ones: the same decisions, and adversarial images equal
    to 1e-9 (float32 chains drift apart by ~1e-7 and can flip a decision)."""
    own = _evaluate({k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"})
    plain = _evaluate({"ATEN_CPU_CAPABILITY": "default"})
    assert plain["capability"] == "DEFAULT"
    assert own["dtype"] == plain["dtype"] == "torch.float64"
    assert own["decisions"] == plain["decisions"]
    for name, values in own["x_adv"].items():
        torch.testing.assert_close(torch.tensor(values, dtype=torch.float64),
                                   torch.tensor(plain["x_adv"][name], dtype=torch.float64),
                                   rtol=1e-9, atol=1e-9)


def test_an_evaluation_resumed_from_float64_parts_keeps_their_values(tmp_path):
    from ebmctl.attacks.base import AttackOutcome
    from ebmctl.evaluate.attack_eval import _load_part, _save_part

    x_adv = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    outcome = AttackOutcome(torch.tensor([True, False]), torch.tensor([True, False]),
                            torch.ones(2), x_adv, torch.ones(1, 2, 2, dtype=torch.bool))
    _save_part(tmp_path / "p.safetensors", outcome, {"fingerprint": "f"})
    back, _ = _load_part(tmp_path / "p.safetensors", "f")
    assert back.x_adv.dtype == torch.float64 and torch.equal(back.x_adv, x_adv)


def test_defend_converts_the_ebm_to_a_double_models_dtype():
    model = TaskModel.load(CLF, CPU).double()
    d = ebmctl.defend(model, str(EBM), steps=1, reps=1)
    assert next(d.ebm.net.parameters()).dtype == torch.float64
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    assert d(x).dtype == torch.float64 and d.purify(x).dtype == torch.float64
    plain = ebmctl.defend(TaskModel.load(CLF, CPU), str(EBM), steps=1, reps=1)
    assert next(plain.ebm.net.parameters()).dtype == torch.float32
