"""The purification defense's EOT layout: replicates are [reps, B, C, H, W] with independent
Langevin noise each, and a prediction is the mean of the replicates' outputs under its key."""

from __future__ import annotations

import torch

from ebmctl.defense import Defense
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.nn.ebm import LightweightEBM


def test_eot_predict_and_replicate_layout(tmp_path):
    clf = TaskModel(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)),
                    "[-1,1]", 8, 1)
    ebm = EnergyModel(LightweightEBM(1, 8, 4), 0.01, 5e-5, 8, 1)
    d = Defense(clf, ebm, steps=3, reps=5)
    x = torch.rand(4, 1, 8, 8)
    reps = d.replicates(x, 5, ("k",))
    assert reps.shape == (5, 4, 1, 8, 8)
    assert not torch.equal(reps[0], reps[1])  # independent noise per replicate
    out = d.predict(x, 5, ("k",))
    assert out.shape == (4, 3)
    same = d.replicates(x, 5, ("k", "part", 0))  # predict keys its (single) part like this
    assert torch.allclose(out, d.outputs_of(same).mean(0), atol=1e-5)
