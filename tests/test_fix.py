"""The fixer (docs/algorithms.md#fixer): training lowers reconstruction loss, early stopping, exact
resume, artifact round trip, perceptual feature networks, and attack gradients through the fixer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from builders import random_ebm
from profile_runs import train_fixer
from ebmctl.artifacts import load_artifact
from ebmctl.defense import Defense
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.errors import ArtifactError, ConfigError
from ebmctl.models import Fixer, load_fixer
from ebmctl.training.fixer import FixerRun
from ebmctl.training.perceptual import ClassifierFeatures, VGGFeatures, perceptual_loss
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.profiles import resolve
from ebmctl.testing import tiny_bundle

CPU = torch.device("cpu")


def _cfg(*sets):
    return resolve(None, ["data.dataset=digits", "fix.width=8", "fix.blocks=1",
                          "fix.batch_size=16", "fix.purify_steps=3", "fix.purify_batch=64",
                          "fix.lr=3e-3", "langevin.precision=fp32", "run.threads=1", *sets])


def _run(bundle, with_classifier=True):
    torch.manual_seed(0)
    energy = EnergyModel(LightweightEBM(1, 8, 4), 0.01, 5e-5, 8, 1, "tiny-ebm")
    from ebmctl_classification.models import SmallCNN

    clf = TaskModel(SmallCNN(1, 3, 4, 8), "[-1,1]", 8, 1).eval()
    task = None
    if with_classifier:
        from ebmctl.context import get_task

        task = get_task(resolve(None, []))
    return FixerRun(energy, bundle, task, clf)


@pytest.fixture(scope="module")
def bundle():
    return tiny_bundle(n=60, channels=1, size=8, num_classes=3)


def test_stage1_lowers_reconstruction_loss_and_round_trips(tmp_path, bundle):
    cfg = _cfg("fix.stage1_epochs=4", "fix.stage2_epochs=0", "fix.repurify_every=0")
    out = train_fixer(cfg, _run(bundle), tmp_path / "fixer.safetensors", CPU)
    log = json.loads(out.with_suffix(".log.json").read_text())
    hist = log["history"]
    assert [h["stage"] for h in hist] == [0, 1, 1, 1, 1]
    # The validation batch is fixed (purified once): its MSE must fall during training.
    assert hist[-1]["val_mse"] < 0.5 * hist[0]["val_mse"]
    assert hist[-1]["train_loss"] < hist[1]["train_loss"]
    for suffix in (".val-mse.png", ".val-perceptual.png", ".samples.png"):
        assert out.with_suffix(suffix).stat().st_size > 0
    assert not (tmp_path / "fixer.ckpt.safetensors").exists()
    art = load_artifact(out, "fixer")
    assert art.arch == "fixer-resnet" and art.arch_args["channels"] == 1
    assert art.extra["purify_steps"] == 3
    fixer = load_fixer(out, CPU)
    x = torch.rand(5, 1, 8, 8)
    y = fixer(x)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    # Round trip: the reloaded fixer equals the network rebuilt from the saved tensors.
    from ebmctl.architectures import model_args

    arch, args = model_args("fixer", cfg, bundle)
    from ebmctl.plugins import get_registries

    net = get_registries().models.get(arch).build(**args)
    net.load_state_dict({k[6:]: v for k, v in art.tensors.items()})
    assert torch.allclose(Fixer(net.eval(), 1)(x), y)
    # A fixer of another kind of artifact is refused with a clear message.
    ebm = random_ebm(tmp_path / "ebm.safetensors")
    with pytest.raises(ArtifactError, match="expected 'fixer'"):
        load_fixer(ebm, CPU)


def test_stage2_early_stopping_keeps_best(tmp_path, bundle):
    # With a huge fix.min_delta no epoch after the first stage-2 epoch counts as better, so
    # patience 2 stops after three stage-2 epochs and the weights of the first are kept.
    cfg = _cfg("fix.stage1_epochs=1", "fix.stage2_epochs=8", "fix.patience=2",
               "fix.min_delta=1e9", "fix.repurify_every=0")
    out = train_fixer(cfg, _run(bundle), tmp_path / "f.safetensors", CPU)
    extra = load_artifact(out).extra
    assert extra["early_stopped"] is True
    assert [h["stage"] for h in extra["history"]] == [0, 1, 2, 2, 2]
    assert extra["best_epoch"] == 2
    # The saved weights are those of the best epoch: its validation loss is reproduced.
    assert extra["final"]["val_perceptual"] == pytest.approx(extra["history"][2]["val_perceptual"],
                                                             rel=1e-5)


@pytest.mark.slow
def test_resume_reproduces_uninterrupted_run(tmp_path, bundle):
    cfg = _cfg("fix.stage1_epochs=2", "fix.stage2_epochs=1", "fix.repurify_every=1")
    full = train_fixer(cfg, _run(bundle), tmp_path / "full.safetensors", CPU)
    part = tmp_path / "part.safetensors"
    ck = train_fixer(cfg, _run(bundle), part, CPU, stop_after=2)
    assert ck.exists() and not part.exists()
    train_fixer(cfg, _run(bundle), part, CPU, resume=True)
    a, b = load_artifact(full), load_artifact(part)
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k


def test_classifier_features_and_perceptual_loss():
    from ebmctl_classification.models import SmallCNN

    clf = TaskModel(SmallCNN(1, 3, 4, 8), "[-1,1]", 8, 1)
    feats = ClassifierFeatures(clf, [])
    assert feats.layers == ["features.1", "features.3", "features.6", "features.8"]
    x = torch.rand(2, 1, 8, 8)
    f = feats(x)
    assert len(f) == 4 and f[0].shape == (2, 4, 8, 8)
    assert perceptual_loss(feats, x, x).item() == 0.0
    assert perceptual_loss(feats, x.flip(3), x).item() > 0.0
    assert len(ClassifierFeatures(clf, ["output"])(x)) == 1
    with pytest.raises(ConfigError, match="features.3"):
        ClassifierFeatures(clf, ["features.33"])


def test_vgg_features_from_local_safetensors(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models.vgg import cfgs, make_layers

    # torchvision's own layout, truncated after relu2_2 to keep the test small.
    state = make_layers(cfgs["D"])[:9].state_dict()
    path = tmp_path / "vgg16.safetensors"
    save_file({f"features.{k}": v for k, v in state.items()}, str(path))
    feats = VGGFeatures(path, ["relu1_2", "relu2_2"])
    out = feats(torch.rand(2, 1, 16, 16))  # gray input is expanded to RGB
    assert [tuple(o.shape) for o in out] == [(2, 64, 16, 16), (2, 128, 8, 8)]
    with pytest.raises(ConfigError, match="fix.vgg_weights"):
        VGGFeatures("", ["relu2_2"])
    with pytest.raises(ConfigError, match="not found"):
        VGGFeatures(tmp_path / "none.safetensors", ["relu2_2"])
    with pytest.raises(ConfigError, match="unknown VGG-16 layer .relu2_3."):
        VGGFeatures(path, ["relu2_3"])
    pth = tmp_path / "vgg16.pth"
    pth.write_bytes(b"PK\x03\x04 not safetensors")
    with pytest.raises(ArtifactError, match="weights_only=True"):
        VGGFeatures(pth, ["relu2_2"])
    with pytest.raises(ArtifactError, match="lacks VGG-16 tensors"):
        VGGFeatures(path, ["relu3_3"])


def _clf_and_fixer():
    torch.manual_seed(1)
    from ebmctl.nn.fixer import ImageToImageResNet
    from ebmctl_classification.models import SmallCNN

    clf = TaskModel(SmallCNN(1, 3, 4, 8), "[-1,1]", 8, 1).eval()
    fixer = Fixer(ImageToImageResNet(1, 8, 1), 1).eval()
    return clf, fixer


def test_full_gradient_attack_differentiates_through_fixer():
    from ebmctl.attacks.pgd import PGD
    from ebmctl.context import get_task

    task = get_task(resolve(None, []))
    clf, fixer = _clf_and_fixer()
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    attack = PGD(eps=0.1, step_size=0.02, steps=1)
    g_fixed, _, _ = attack.estimate(Defense(clf, fixer=fixer), task, x, y, ("k",))
    xg = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad(F.cross_entropy(clf(fixer(xg)), y, reduction="sum"), xg)
    assert torch.allclose(g_fixed, want, atol=1e-6)
    g_bare, _, _ = attack.estimate(Defense(clf), task, x, y, ("k",))
    assert not torch.allclose(g_fixed, g_bare, atol=1e-4)


def test_bpda_keeps_the_fixers_jacobian_and_replaces_only_the_chain():
    """BPDA treats only the Langevin chain as the identity: the gradient is taken w.r.t. the
    purified replicate *before* the fixer, through the fixer and the classifier."""
    from ebmctl.attacks.gradients import eot_gradient
    from ebmctl.context import get_task

    task = get_task(resolve(None, []))
    clf, fixer = _clf_and_fixer()
    ebm = EnergyModel(LightweightEBM(1, 8, 4), 0.01, 5e-5, 8, 1)
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 1, 2])
    defense = Defense(clf, ebm, steps=2, reps=2, fixer=fixer)
    g, _, _ = eot_gradient(defense, x, y, 2, ("k",), task.attack_loss, "bpda")
    purified = Defense(clf, ebm, steps=2, reps=2).replicates(x, 2, ("k", "eot"))
    r = purified.detach().requires_grad_(True)
    logits = clf(fixer(r.reshape(6, 1, 8, 8))).view(2, 3, -1).mean(0)
    (want,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), r)
    assert torch.allclose(g, want.mean(0), atol=1e-6)
    # treating the fixer as identity too (the old rule) gives another direction
    f = fixer(purified.reshape(6, 1, 8, 8)).detach().requires_grad_(True)
    logits_f = clf(f).view(2, 3, -1).mean(0)
    (ident,) = torch.autograd.grad(F.cross_entropy(logits_f, y, reduction="sum"), f)
    assert not torch.allclose(g, ident.view(2, 3, 1, 8, 8).mean(0), atol=1e-4)
