"""`ebmctl fix` on the command line, `purify --fixer` and `attack --fixer`."""

from __future__ import annotations

import json

import pytest
import torch

from builders import random_classifier, random_ebm
from ebmctl.testing import run_cli

TINY = ["--set", "fix.width=8", "--set", "fix.blocks=1", "--set", "fix.purify_steps=2",
        "--set", "fix.max_images=48", "--set", "fix.val_images=24", "--set", "run.threads=1",
        "--set", "fix.repurify_every=0", "--set", "langevin.precision=fp32"]


def _artifacts(tmp_path):
    return (random_ebm(tmp_path / "ebm.safetensors"),
            random_classifier(tmp_path / "clf.safetensors"))


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
