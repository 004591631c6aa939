"""`ebmctl fix` on the command line, `purify --fixer` and `attack --fixer`."""

from __future__ import annotations

import json

import pytest
import torch

from ebmctl.artifacts import model_tensors, save_artifact
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.testing import run_cli

TINY = ["--set", "fix.width=8", "--set", "fix.blocks=1", "--set", "fix.purify_steps=2",
        "--set", "fix.max_images=48", "--set", "fix.val_images=24", "--set", "run.threads=1",
        "--set", "fix.repurify_every=0", "--set", "langevin.precision=fp32"]


def _artifacts(tmp_path):
    torch.manual_seed(0)
    ebm = tmp_path / "ebm.safetensors"
    save_artifact(ebm, model_tensors(LightweightEBM(1, 8, 4)), kind="ebm", arch="lightweight",
                  arch_args={"in_channels": 1, "image_size": 8, "channels": 4},
                  data={"image_size": 8, "channels": 1, "range": "[-1,1]"},
                  extra={"tau": 0.01, "temperature": 5e-5})
    from ebmctl_classification.models import SmallCNN

    clf = tmp_path / "clf.safetensors"
    save_artifact(clf, model_tensors(SmallCNN(1, 10, 4, 8)), kind="classifier", arch="small-cnn",
                  arch_args={"in_channels": 1, "num_classes": 10, "width": 4, "image_size": 8},
                  task="classification",
                  data={"range": "[-1,1]", "image_size": 8, "channels": 1, "num_classes": 10})
    return ebm, clf


def test_fix_bad_input_is_one_line(tmp_path):
    ebm, clf = _artifacts(tmp_path)
    r = run_cli(["fix", "train", "--ebm", str(tmp_path / "missing.safetensors")])
    assert r.exit_code != 0 and "Traceback" not in r.output and "artifact not found" in r.stderr
    r = run_cli(["fix", "train", "--ebm", str(ebm), "--set", "fix.feature_net=vgg16",
                 "--out", str(tmp_path / "f.safetensors")])
    assert r.exit_code == 2 and "fix.vgg_weights" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "f.safetensors").exists()
    r = run_cli(["fix", "train", "--ebm", str(ebm), "--out", str(tmp_path / "f.safetensors")])
    assert r.exit_code == 2 and "--model" in r.stderr
    r = run_cli(["fix", "apply", "--fixer", str(clf), str(tmp_path / "x.png")])
    assert r.exit_code == 4 and "expected 'fixer'" in r.stderr


@pytest.mark.slow
def test_fix_train_apply_purify_and_attack(tmp_path):
    ebm, clf = _artifacts(tmp_path)
    fixer = tmp_path / "fixer.safetensors"
    r = run_cli(["fix", "train", "--ebm", ebm, "-m", clf, "--stage1-epochs", "1",
                 "--stage2-epochs", "1", "--out", fixer, *TINY])
    assert r.exit_code == 0, r.output
    assert fixer.exists() and fixer.with_suffix(".val-mse.png").exists()
    from ebmctl.evaluate.plots import save_image01

    img = tmp_path / "digit.png"
    save_image01(torch.rand(1, 8, 8), img)
    r = run_cli(["fix", "apply", "--fixer", fixer, img])
    assert r.exit_code == 0 and (tmp_path / "digit.fixed.png").exists()
    r = run_cli(["purify", "--ebm", ebm, "--fixer", fixer, "-k", "2", "--out-dir",
                 tmp_path / "out", img])
    assert r.exit_code == 0 and (tmp_path / "out" / "digit.fixed.png").exists()
    out = tmp_path / "report.json"
    r = run_cli(["attack", "-m", clf, "--ebm", ebm, "--fixer", fixer, "--defended-only",
                 "--n-images", "6", "--out", out, "--set", "defense.steps=2",
                 "--set", "defense.eot_reps=2", "--set", "attack.eot_reps=1",
                 "--set", "attack.steps=1", "--set", "attack.restarts=1",
                 "--set", "attack.sanity=false", "--set", "langevin.precision=fp32"])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert set(rep["results"]) == {"defended", "defended+fixer"}
    assert rep["defense"]["fixer"] == str(fixer)
