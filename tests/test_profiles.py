"""Foundation: profiles, registries, artifacts, models, sampler, defense, training resume."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from ebmctl.artifacts import load_artifact, read_header, save_artifact
from ebmctl.errors import ArtifactError, ConfigError
from ebmctl.nn.ebm import LightweightEBM
from ebmctl.profiles import resolve
from ebmctl.registry import Registry
from ebmctl.sampling.langevin import LangevinSettings, langevin


def test_unknown_profile_key_names_closest():
    with pytest.raises(ConfigError, match="did you mean 'train.steps'"):
        resolve("quick", ["train.stepz=3"])


def test_bad_value_names_key():
    with pytest.raises(ConfigError, match="train.steps"):
        resolve("quick", ["train.steps=-1"])
    with pytest.raises(ConfigError, match="attack.eps"):
        resolve("quick", ["attack.eps=2"])
    with pytest.raises(ConfigError, match="attack.norm"):
        resolve(None, ["attack.norm=l7"])


def test_profile_layers_and_fraction():
    cfg = resolve("quick", ["attack.eps=8/255", "attack.seeds=1,2,3"])
    assert cfg["attack.eps"] == pytest.approx(8 / 255)
    assert cfg["attack.seeds"] == [1, 2, 3]
    assert cfg["train.steps"] == 600  # from the profile file
    assert cfg.provenance["attack.eps"] == "--set"
    assert cfg.provenance["train.steps"].startswith("profile")
    assert cfg.provenance["model.depth"] == "default"


def test_thesis_profile_matches_spec():
    cfg = resolve("thesis-cifar10")
    assert cfg["train.steps"] == 150000 and cfg["train.sgd_switch_step"] == 50000
    assert cfg["train.lr_adam"] == 1e-4 and cfg["train.lr_sgd"] == 5e-5
    assert cfg["langevin.tau"] == 0.01 and cfg["train.mcmc_steps"] == 100
    assert cfg["defense.steps"] == 1500 and cfg["defense.eot_reps"] == 150
    assert cfg["attack.eps"] == pytest.approx(8 / 255)
    assert cfg["attack.eot_reps"] == 15 and cfg["attack.restarts"] == 5


def test_malformed_profile_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[train\nsteps = 3")
    with pytest.raises(ConfigError, match="malformed TOML"):
        resolve(str(p))
    p.write_text('[train]\nsteps = "many"\n')
    with pytest.raises(ConfigError, match="train.steps"):
        resolve(str(p))


def test_registry_did_you_mean():
    reg = Registry("task")
    reg.register("classification", object(), "core")
    with pytest.raises(ConfigError, match="did you mean 'classification'"):
        reg.get("clasification")


def test_lightweight_ebm_parameter_count():
    net = LightweightEBM(3, 32, 32)
    assert sum(p.numel() for p in net.parameters()) == 693_569
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2,)
    # Larger inputs: energy is the sum over the output map.
    assert net(torch.zeros(2, 3, 48, 40)).shape == (2,)


def test_artifact_roundtrip_bit_identical(tmp_path):
    net = LightweightEBM(1, 8, 8)
    path = tmp_path / "e.safetensors"
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    save_artifact(path, tensors, kind="ebm", arch="lightweight",
                  arch_args={"in_channels": 1, "image_size": 8, "channels": 8},
                  data={"image_size": 8, "channels": 1}, extra={"tau": 0.01, "temperature": 5e-5})
    art = load_artifact(path, "ebm")
    for k, v in tensors.items():
        assert torch.equal(art.tensors[k], v)
    assert art.arch_args["channels"] == 8
    meta, _ = read_header(path)
    assert meta["ebmctl.kind"] == "ebm"
    with pytest.raises(ArtifactError, match="expected 'classifier'"):
        load_artifact(path, "classifier")


def test_corrupt_and_truncated_artifacts(tmp_path):
    net = LightweightEBM(1, 8, 8)
    good = tmp_path / "g.safetensors"
    save_artifact(good, {f"model.{k}": v for k, v in net.state_dict().items()}, kind="ebm")
    data = good.read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated"):
        load_artifact(tmp_path / "t.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"\x00" * 5 + b"garbage" * 10)
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "c.safetensors")
    header = json.dumps({"__metadata__": {"format": "pt"}}).encode()
    (tmp_path / "n.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ArtifactError, match="not an ebmctl artifact"):
        load_artifact(tmp_path / "n.safetensors")


def test_langevin_step_matches_formula():
    class Quadratic(torch.nn.Module):
        def forward(self, x):
            return 0.5 * (x ** 2).flatten(1).sum(1)

    x0 = torch.randn(4, 1, 3, 3)
    s = LangevinSettings(tau=0.1, temperature=0.02)
    gen = torch.Generator().manual_seed(0)
    out = langevin(Quadratic(), x0, 1, s, gen)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    expected = x0 - (0.1 ** 2 / (2 * 0.02)) * x0 + 0.1 * z
    assert torch.allclose(out, expected, atol=1e-6)


def test_langevin_does_not_touch_parameter_grads():
    net = LightweightEBM(1, 8, 4)
    langevin(net, torch.rand(3, 1, 8, 8), 3, LangevinSettings(0.01, 5e-5),
             torch.Generator().manual_seed(1))
    assert all(p.grad is None for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())


def test_eot_predict_and_replicate_layout(tmp_path):
    from ebmctl.defense import Defense
    from ebmctl.models import EnergyModel, TaskModel

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


def test_ebm_training_resume_is_exact(tmp_path, crash_on_call):
    import ebmctl.training.convergent as tr
    from ebmctl.testing import tiny_bundle

    bundle = tiny_bundle(n=48)
    cfg = resolve("quick", ["train.steps=4", "train.checkpoint_every=2", "train.mcmc_steps=3",
                            "train.batch_size=8", "train.bank_size=16", "ebm.channels=4",
                            "langevin.precision=fp32", "train.log_every=1"])
    full = tr.train_ebm(cfg, bundle, tmp_path / "full.safetensors", torch.device("cpu"))
    restore = crash_on_call(tr, "langevin", 4)
    out = tmp_path / "resumed.safetensors"
    with pytest.raises(KeyboardInterrupt):
        tr.train_ebm(cfg, bundle, out, torch.device("cpu"))
    assert not out.exists() and (tmp_path / "resumed.ckpt.safetensors").exists()
    restore()
    tr.train_ebm(cfg, bundle, out, torch.device("cpu"), resume=True)
    a, b = load_artifact(full), load_artifact(out)
    assert a.tensors.keys() == b.tensors.keys()
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
