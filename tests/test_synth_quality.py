"""Fréchet distances against hand-computed values, classifier proxy features, plain-EBM synthesis."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from ebmctl.evaluate.quality import (
    classifier_features,
    fd_between,
    feature_stats,
    frechet_distance,
    inception_features,
)
from ebmctl.testing import run_cli


def test_frechet_distance_hand_computed():
    # 1-D: (μ1−μ2)² + (σ1−σ2)² = 4 + 1.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(5.0)
    # Diagonal: sum over dimensions: (1 + (2−1)²) + (0 + (3−2)²) = 3.
    mu1, mu2 = np.array([0.0, 0.0]), np.array([1.0, 0.0])
    s1, s2 = np.diag([4.0, 9.0]), np.diag([1.0, 4.0])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(3.0)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_fd_between_samples_grows_with_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 3, generator=g)
    b = torch.randn(400, 3, generator=g)
    near, far = fd_between(a, b), fd_between(a, b + 2.0)
    assert near < 0.2 and far == pytest.approx(near + 12.0, abs=0.5)
    mu, cov = feature_stats(a)
    assert mu.shape == (3,) and cov.shape == (3, 3)


def test_classifier_features_are_penultimate():
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.ReLU(), nn.Linear(5, 2))
    feats = classifier_features(net)(torch.rand(4, 1, 4, 4))
    assert feats.shape == (4, 5) and (feats >= 0).all()  # after the ReLU, before the head


@pytest.mark.slow
def test_inception_loader_rejects_bad_files(tmp_path):
    from ebmctl.api import ArtifactError, InputError
    from safetensors.torch import save_file

    with pytest.raises(InputError):
        inception_features(tmp_path / "none.safetensors", "cpu")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ArtifactError, match="Inception"):
        inception_features(tmp_path / "wrong.safetensors", "cpu")


@pytest.mark.slow
def test_inception_features_from_local_state_dict(tmp_path):
    from safetensors.torch import save_file
    from torchvision.models import inception_v3

    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(tmp_path / "inc.safetensors"))
    f = inception_features(tmp_path / "inc.safetensors", "cpu")(torch.rand(2, 1, 8, 8))
    assert f.shape == (2, 2048)


def _plain_ebm(tmp_path):
    from builders import DIGITS, random_ebm

    args = {"in_channels": 1, "image_size": 8, "channels": 4, "activation": "leaky_relu",
            "leak": 0.05}
    return random_ebm(tmp_path / "ebm.safetensors", arch_args=args,
                      data={**DIGITS, "dataset": "digits"})


def _classifier(tmp_path):
    from builders import random_classifier

    return random_classifier(tmp_path / "clf.safetensors")


def test_synthesize_plain_ebm_from_noise_and_data_with_proxy_score(tmp_path):
    ebm, clf = _plain_ebm(tmp_path), _classifier(tmp_path)
    r = run_cli(["synthesize", "--ebm", ebm, "--n-images", "8", "-k", "4", "--init", "data",
                 "--classifier", clf, "--out-dir", tmp_path / "a", "--set",
                 "quality.n_reference=40"])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "a" / "report.json").read_text())
    assert rep["kind"] == "ebm" and rep["init"] == "data" and rep["steps"] == 4
    q = rep["quality"]["proxy_classifier_fd"]
    assert set(q) == {"ebm", "real_images_floor"} and all(v >= 0 for v in q.values())
    assert len(list((tmp_path / "a" / "images").glob("*.png"))) == 8
    r = run_cli(["synthesize", "--ebm", ebm, "--n-images", "4", "-k", "2", "--out-dir",
                 tmp_path / "b", "--seed", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "b" / "report.json").read_text())["init"] == "noise"


def test_synthesize_bad_input(tmp_path):
    ebm, clf = _plain_ebm(tmp_path), _classifier(tmp_path)
    r = run_cli(["synthesize", "--ebm", ebm, "--mode", "joint", "--out-dir", tmp_path / "c"])
    assert r.exit_code != 0 and "Hat EBM" in r.stderr and not (tmp_path / "c").exists()
    r = run_cli(["synthesize", "--ebm", clf, "--out-dir", tmp_path / "c"])
    assert r.exit_code != 0 and "'classifier'" in r.stderr and "Traceback" not in r.output
    r = run_cli(["synthesize", "--ebm", ebm, "--langevin-steps", "0", "--out-dir", tmp_path / "c"])
    assert r.exit_code != 0 and not (tmp_path / "c").exists()
