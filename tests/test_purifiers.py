"""Purifiers are plugins: the built-in input transformations (jpeg, bit-depth, median,
gaussian-noise) keep the [0,1] range and the shape, are as random as they declare, are attacked
with BPDA where they have no backward pass, and are refused exact-gradient attacks there; the
EBM's Langevin purification runs through the same contract; `ebmctl attack/purify --purifier`
and `ebmctl plugins` name them; bad names and settings are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ebmctl
from ebmctl.attacks.gradients import eot_gradient
from ebmctl.attacks.losses import resolve_loss
from ebmctl.defense import Defense, LangevinPurifier
from ebmctl.errors import ConfigError
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.plugins import get_registries
from ebmctl.purifiers import build_purifier, parse_purifier_spec
from ebmctl.testing import run_cli
from html_page import read_page
from tiny_attack import set_args

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread_per_module")

BUILTIN = {
    "jpeg": (False, False),
    "bit-depth": (False, False),
    "median": (False, True),
    "gaussian-noise": (True, True),
}  # name -> (stochastic, differentiable)


def _images(channels: int = 3, n: int = 4, size: int = 16) -> torch.Tensor:
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def _purifier(spec: str):
    return build_purifier(spec, get_registries().purifiers)


@pytest.mark.parametrize("name", sorted(BUILTIN))
@pytest.mark.parametrize("channels", [1, 3])
def test_output_keeps_shape_dtype_and_the_unit_range(name, channels):
    x = _images(channels)
    out = _purifier(name).purify(x, (0, "k"))
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out, x, atol=1e-3), "the purifier should change the images"


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_declared_stochasticity_holds(name):
    stochastic, differentiable = BUILTIN[name]
    p = _purifier(name)
    assert (p.stochastic, p.differentiable) == (stochastic, differentiable)
    x = _images()
    a, b, c = p.purify(x, (0, "a")), p.purify(x, (0, "a")), p.purify(x, (0, "b"))
    assert torch.equal(a, b), "the same key must give the same output"
    if stochastic:
        assert (a - c).abs().mean() > 1e-3, "another key must give other randomness"
    else:
        assert torch.equal(a, c), "a deterministic purifier ignores the key"


def test_settings_change_the_output_as_the_papers_define():
    x = _images()
    q10, q90 = (
        _purifier("jpeg:quality=10").purify(x, ()),
        _purifier("jpeg:quality=90").purify(x, ()),
    )
    assert (q10 - x).abs().mean() > (q90 - x).abs().mean()
    one_bit = _purifier("bit-depth:bits=1").purify(x, ())
    assert set(one_bit.unique().tolist()) <= {0.0, 1.0}
    three = _purifier("bit-depth:bits=3").purify(x, ())
    assert torch.allclose(three * 7, (three * 7).round(), atol=1e-5)
    const = torch.full((1, 1, 5, 5), 0.25)
    const[0, 0, 2, 2] = 1.0  # one outlier: a 3x3 median removes it
    assert torch.allclose(
        _purifier("median:size=3").purify(const, ()), torch.full_like(const, 0.25)
    )
    noisy = _purifier("gaussian-noise:sigma=0.05").purify(torch.full((1, 3, 64, 64), 0.5), (1,))
    assert 0.04 < float((noisy - 0.5).std()) < 0.06


class _Linear(nn.Module):
    """A tiny differentiable classifier of [0,1] images [B,3,16,16]."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # test-only weights
        self.fc = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_bpda_is_the_identity_backward_through_a_purifier_without_one():
    model = _Linear()
    x, y = _images(), torch.tensor([0, 1, 2, 3])
    loss = resolve_loss("margin", None)
    for name in ("jpeg", "bit-depth"):
        d = Defense(model, purifier=_purifier(name))
        g, _, _ = eot_gradient(d, x, y, 4, (0,), loss, "bpda")
        xp = d.purify(x, ()).requires_grad_(True)
        (want,) = torch.autograd.grad(loss(model(xp), y).sum(), xp)
        assert torch.allclose(g, want, atol=1e-6), name
    # the library wrapper: the default backward is BPDA, and it passes the purified point's
    # gradient straight to the input
    wrapped = ebmctl.defend(model, purifier="bit-depth:bits=2")
    assert wrapped.gradient == "bpda"
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(wrapped(xg), y).backward()
    xp = wrapped.defense.purify(x, ()).requires_grad_(True)
    nn.functional.cross_entropy(model(xp), y).backward()
    assert torch.allclose(xg.grad, xp.grad, atol=1e-6)


@pytest.mark.parametrize("name", ["median", "gaussian-noise"])
def test_a_differentiable_purifier_gives_an_exact_gradient(name):
    model = _Linear()
    x, y = _images(), torch.tensor([0, 1, 2, 3])
    wrapped = ebmctl.defend(model, purifier=name, reps=3, gradient="full")
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(wrapped(xg), y).backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["jpeg", "bit-depth"])
def test_a_full_gradient_is_refused_where_no_backward_exists(name):
    with pytest.raises(ConfigError, match="no backward pass"):
        ebmctl.defend(_Linear(), purifier=name, gradient="full")
    d = Defense(_Linear(), purifier=_purifier(name))
    attack = get_registries().attacks.get("full-eot")(eps=0.03, steps=1)
    with pytest.raises(ConfigError, match=f"purifier '{name}' has no backward pass"):
        attack.check_defense(d)
    with pytest.raises(ConfigError, match="smooth"):
        ebmctl.defend(_Linear(), purifier="median", gradient="smooth")


def test_a_callable_is_a_purifier_and_a_stochastic_one_gets_the_generator():
    seen = []

    def noisy(x, generator):
        seen.append(generator)
        return (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)

    noisy.stochastic = True
    wrapped = ebmctl.defend(_Linear(), purifier=noisy, reps=2)
    assert wrapped.stochastic and wrapped.purifier.name == "noisy"
    with torch.no_grad():
        a, b = wrapped(_images()), wrapped(_images())
    assert isinstance(seen[0], torch.Generator) and not torch.allclose(a, b)


def test_the_ebm_through_the_purifier_contract_equals_the_ebm_defense(digits_artifacts):
    clf, ebm_path = digits_artifacts
    model, ebm = TaskModel.load(clf, CPU), EnergyModel.load(ebm_path, CPU)
    x = _images(1, 4, 8)
    old = Defense(model, ebm, steps=4, reps=3)
    new = Defense(model, purifier=LangevinPurifier(ebm, 4), reps=3)
    assert new.stochastic and new.steps == 4 and new.ebm is ebm
    assert torch.equal(old.replicates(x, 3, (7,)), new.replicates(x, 3, (7,)))
    assert torch.allclose(old.predict(x, 3, (1,)), new.predict(x, 3, (1,)))
    y = torch.tensor([0, 1, 2, 3])
    loss = resolve_loss("margin", None)
    for mode in ("bpda", "full"):
        g_old, out_old, _ = eot_gradient(old, x, y, 2, (3,), loss, mode)
        g_new, out_new, _ = eot_gradient(new, x, y, 2, (3,), loss, mode)
        assert torch.allclose(g_old, g_new) and torch.allclose(out_old, out_new)
    assert new.image_steps > 0


def test_plugins_lists_the_purifiers_with_their_declarations():
    r = run_cli(["plugins", "--json"])
    assert r.exit_code == 0, r.output
    listed = {p["name"]: p for p in json.loads(r.stdout)["purifiers"]}
    for name, (stochastic, differentiable) in BUILTIN.items():
        assert (listed[name]["stochastic"], listed[name]["differentiable"]) == (
            stochastic,
            differentiable,
        )
    assert listed["jpeg"]["settings"] == {"quality": "int"}
    assert listed["ebm"]["plugin"] == "core" and listed["ebm"]["stochastic"] == "depends"
    text = run_cli(["plugins"]).stdout
    assert "gaussian-noise" in text and "purifiers" in text


def test_attack_with_a_purifier_uses_bpda_and_the_report_names_it(digits_artifacts, tmp_path):
    clf, _ = digits_artifacts
    out = tmp_path / "r.json"
    r = run_cli(
        [
            "attack",
            "--profile",
            "quick",
            "-m",
            clf,
            "--purifier",
            "bit-depth:bits=2",
            "--defended-only",
            "-o",
            out,
            *set_args(),
        ]
    )
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["defense"]["purifier"] == {
        "name": "bit-depth",
        "settings": {"bits": 2},
        "stochastic": False,
        "differentiable": False,
    }
    assert rep["config"]["defense"]["purifier"] == "bit-depth:bits=2"
    assert rep["results"]["defended"]["attacks"]["bpda-eot"]["gradient"] == "bpda"
    assert "purifier: bit-depth (bits=2)" in r.output
    assert "bit-depth" in read_page(out.with_suffix(".html").read_text()).text


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--purifier", "jepg"], "unknown purifier 'jepg'; did you mean 'jpeg'?"),
        (
            ["--purifier", "jpeg:qualty=5"],
            "purifier 'jpeg' has no setting 'qualty' (its settings: quality)",
        ),
        (["--purifier", "jpeg:quality=high"], "quality must be int"),
        (["--purifier", "jpeg:quality=500"], "quality must be in 1..95"),
        (["--purifier", "median:size"], "'size' is not key=value"),
        (["--purifier", "bit-depth", "--method", "full-eot"], "has no backward pass"),
        (["--purifier", "jpeg", "--method", "pgd"], "has no backward pass"),
        (["--purifier", "gaussian-noise", "--method", "pgd"], "is stochastic"),
        (["--purifier", "gaussian-noise", "--set", "attack.common_noise=true"], "common_noise"),
        (["--purifier", "bit-depth", "--set", "attack.common_noise=true"], "is deterministic"),
        (["--purifier", "jpeg", "--ebm", "EBM"], "exclude each other"),
        (["--purifier", "ebm"], "needs an EBM"),
    ],
)
def test_bad_purifier_input_is_a_one_line_error(digits_artifacts, tmp_path, args, needle):
    clf, ebm = digits_artifacts
    args = [str(ebm) if a == "EBM" else a for a in args]
    out = tmp_path / "r.json"
    r = run_cli(
        ["attack", "--profile", "quick", "-m", clf, "--defended-only", "-o", out, *args, *set_args()]
    )
    assert r.exit_code != 0 and r.output.strip().startswith("Error:"), r.output
    assert needle in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists()


def test_spec_parsing():
    assert parse_purifier_spec("jpeg") == ("jpeg", {})
    assert parse_purifier_spec(" gaussian-noise:sigma=8/255 ") == (
        "gaussian-noise",
        {"sigma": "8/255"},
    )
    assert _purifier("gaussian-noise:sigma=8/255").sigma == pytest.approx(8 / 255)
    with pytest.raises(ConfigError, match="given twice"):
        parse_purifier_spec("jpeg:quality=1,quality=2")


def test_purify_command_takes_a_purifier(tmp_path):
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray((_images(3, 1)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(img)
    r = run_cli(["purify", img, "--purifier", "bit-depth:bits=1", "--out-dir", tmp_path / "o"])
    assert r.exit_code == 0, r.output
    out = torch.tensor(list(Image.open(tmp_path / "o" / "a.purified.png").getdata()))
    assert set(out.unique().tolist()) <= {0, 255}
    bad = run_cli(
        [
            "purify",
            img,
            "--purifier",
            "bit-depth",
            "--langevin-steps",
            "3",
            "--out-dir",
            tmp_path / "p",
        ]
    )
    assert bad.exit_code != 0 and "--langevin-steps" in bad.output
    assert len(bad.output.strip().splitlines()) == 1


def test_the_shipped_ebm_by_name(tmp_path):
    from ebmctl.shipped import DEFAULT_EBM, ebm_path

    if not DEFAULT_EBM.exists():
        pytest.skip("this build ships no EBM")
    assert ebm_path("cifar10") == DEFAULT_EBM
    from PIL import Image

    img = tmp_path / "a.png"
    Image.fromarray((_images(3, 1, 32)[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(img)
    r = run_cli(["purify", img, "--ebm", "cifar10", "-k", "1", "--out-dir", tmp_path / "o"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "o" / "a.purified.png").is_file()


def test_the_report_records_the_k_def_the_purifier_runs(digits_artifacts, tmp_path):
    """``--purifier ebm:steps=K`` overrides the profile's defense.steps: the report's defense
    record and its purifier settings both say K, never the profile's value."""
    clf, ebm = digits_artifacts
    out = tmp_path / "r.json"
    r = run_cli(["attack", "--profile", "quick", "-m", clf, "--ebm", ebm, "--purifier",
                 "ebm:steps=2", "--defended-only", "-o", out, *set_args(),
                 "--set", "defense.steps=3"])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["defense"]["purifier"]["settings"]["steps"] == 2
    assert rep["defense"]["steps"] == 2
