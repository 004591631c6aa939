"""`ebmctl import-model`: torchvision / module.py:factory / the thesis authors' checkpoints as
ebmctl artifacts, pickles refused, and the authors' Langevin update reproduced exactly."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from ebmctl.artifacts import file_digest, read_header
from ebmctl.models import EnergyModel, TaskModel
from ebmctl.nn.ebm_defense_wrn import EbmDefenseWRN
from ebmctl.sampling.langevin import langevin
from ebmctl.testing import run_cli

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread_per_module")


def _meta(path):
    meta, _ = read_header(path)
    return {k: json.loads(v) if k in ("ebmctl.extra", "ebmctl.data", "ebmctl.arch_args") else v
            for k, v in meta.items()}


@pytest.fixture(scope="module")
def resnet_pt(tmp_path_factory):
    d = tmp_path_factory.mktemp("rn")
    torch.manual_seed(0)  # test-only weight init
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    path = d / "resnet18.pt"
    torch.save(net.state_dict(), path)
    return net, path


def test_torchvision_state_dict_imports_and_records_its_origin(resnet_pt, tmp_path):
    net, pt = resnet_pt
    out = tmp_path / "rn.safetensors"
    r = run_cli(["import-model", "torchvision:resnet18", "--weights", str(pt), "--out", str(out),
                 "--mean", "0.4914,0.4822,0.4465", "--std", "0.247,0.243,0.261",
                 "--image-size", "32"])
    assert r.exit_code == 0, r.output
    meta = _meta(out)
    assert meta["ebmctl.kind"] == "classifier" and meta["ebmctl.arch"] == "torchvision"
    assert meta["ebmctl.arch_args"]["num_classes"] == 10  # inferred from the head
    imported = meta["ebmctl.extra"]["imported"]
    assert imported["source"] == "torchvision:resnet18"
    assert imported["weights_sha256"] == file_digest(pt)
    assert meta["ebmctl.data"]["normalisation"]["mean"] == [0.4914, 0.4822, 0.4465]
    model = TaskModel.load(out, CPU)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(1, 3, 1, 1)
    std = torch.tensor([0.247, 0.243, 0.261]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), net((x - mean) / std), atol=1e-5)


def test_imported_resnet_runs_undefended_attack_on_cifar_shaped_data(resnet_pt, tmp_path):
    _, pt = resnet_pt
    out = tmp_path / "rn.safetensors"
    assert run_cli(["import-model", "torchvision:resnet18", "--weights", str(pt),
                    "--out", str(out)]).exit_code == 0
    rep = tmp_path / "attack.json"
    r = run_cli(["attack", "--profile", "quick", "--model", str(out), "--undefended-only",
                 "--set", "data.dataset=uniform-noise",  # CIFAR-shaped: 32x32 RGB
                 "--set", "data.image_size=32", "--set", "data.channels=3",
                 "--set", "attack.n_images=4", "--set", "attack.steps=2",
                 "--set", "attack.sanity=false", "--eps", "8/255", "--out", str(rep)])
    assert r.exit_code == 0, r.output
    res = json.loads(rep.read_text())["results"]["undefended"]
    assert res["n_images"] == 4 and 0 <= res["adversarial"] <= res["natural"]
    from html_page import read_page

    assert read_page(rep.with_suffix(".html").read_text()).tables  # the page beside every report


def test_a_pickled_module_is_refused_with_one_line(tmp_path):
    bad = tmp_path / "whole-model.pt"
    torch.save(nn.Linear(2, 2), bad)  # a pickled module, not a state dict
    r = run_cli(["import-model", "torchvision:resnet18", "--weights", str(bad),
                 "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0
    assert r.output.strip().startswith("Error:") and "state dict" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("args,needle", [
    (["nonsense"], "unknown model source"),
    (["torchvision:resnet_nope"], "unknown torchvision model"),
    (["ebm-defense:ebm"], "--weights"),
    (["torchvision:resnet18", "--weights", "missing.pt"], "not found"),
    (["torchvision:resnet18", "--mean", "a,b"], "--mean"),
])
def test_bad_sources_and_options_are_one_line_errors(tmp_path, args, needle):
    r = run_cli(["import-model", *args, "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0 and r.output.strip().startswith("Error:"), r.output
    assert needle in r.output and "Traceback" not in r.output


def test_wrong_num_classes_names_the_mismatch(resnet_pt, tmp_path):
    _, pt = resnet_pt
    r = run_cli(["import-model", "torchvision:resnet18", "--weights", str(pt),
                 "--num-classes", "100", "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0 and "--num-classes" in r.output


def test_module_factory_source(tmp_path):
    src = tmp_path / "mynet.py"
    src.write_text("import torch.nn as nn\n\ndef build(num_classes=10):\n"
                   "    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, num_classes))\n")
    torch.manual_seed(0)  # test-only weight init
    ref = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 10))
    w = tmp_path / "w.safetensors"
    save_file(ref.state_dict(), str(w))
    out = tmp_path / "mine.safetensors"
    r = run_cli(["import-model", f"{src}:build", "--weights", str(w), "--out", str(out)])
    assert r.exit_code == 0, r.output
    x = torch.rand(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(TaskModel.load(out, CPU)(x), ref(x))


# --- the thesis authors' checkpoints (point0bar1/ebm-defense, nets.py) --------------------

def authors_ebm(n_c=3, n_f=8, leak=0.05):
    """A network in the key layout of the authors' nets.EBM (``f.0`` ... ``f.8``)."""
    class EBM(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(
                nn.Conv2d(n_c, n_f, 3, 1, 1), nn.LeakyReLU(leak),
                nn.Conv2d(n_f, n_f * 2, 4, 2, 1), nn.LeakyReLU(leak),
                nn.Conv2d(n_f * 2, n_f * 4, 4, 2, 1), nn.LeakyReLU(leak),
                nn.Conv2d(n_f * 4, n_f * 8, 4, 2, 1), nn.LeakyReLU(leak),
                nn.Conv2d(n_f * 8, 1, 4, 1, 0))

        def forward(self, x):
            return self.f(x).squeeze()

    return EBM()


def test_authors_ebm_converts_and_one_step_is_their_update(tmp_path):
    torch.manual_seed(0)  # test-only weight init
    theirs = authors_ebm().eval()
    pth = tmp_path / "ebm.pth"
    torch.save(theirs.state_dict(), pth)
    out = tmp_path / "ebm.safetensors"
    r = run_cli(["import-model", "ebm-defense:ebm", "--weights", str(pth), "--out", str(out)])
    assert r.exit_code == 0, r.output
    ebm = EnergyModel.load(out, CPU)
    assert ebm.tau == pytest.approx(0.01) and ebm.temperature == pytest.approx(5e-5)
    assert _meta(out)["ebmctl.extra"]["imported"]["weights_sha256"] == file_digest(pth)
    x = torch.rand(4, 3, 32, 32) * 2 - 1  # their pixels are in [-1,1]
    z = torch.randn(4, 3, 32, 32)
    # their purify(): X.data += -∇E(X) + ε·Z with E = ebm(X).sum(), ε = 0.01
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(theirs(xr).sum(), xr)
    expected = x - g + 0.01 * z
    ours = langevin(ebm.net, x, 1, ebm.settings(), noise=lambda k: z)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert not torch.allclose(ours, x + 0.01 * z, atol=1e-4)  # the drift is really there


def test_authors_wrn_converts_and_classifies_like_their_layout(tmp_path):
    torch.manual_seed(0)  # test-only weight init
    ref = EbmDefenseWRN(depth=10, widen_factor=1, num_classes=10)
    for m in ref.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    state = ref.state_dict()
    assert {"conv1.bias", "layer1.0.bn1.weight", "layer2.0.shortcut.0.weight", "bn1.weight",
            "linear.weight"} <= set(state)  # the authors' key layout
    pth = tmp_path / "clf.pth"
    torch.save(state, pth)
    out = tmp_path / "wrn.safetensors"
    r = run_cli(["import-model", "ebm-defense:wrn", "--weights", str(pth), "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = _meta(out)
    assert meta["ebmctl.arch_args"] == {"depth": 10, "widen_factor": 1, "num_classes": 10}
    model = TaskModel.load(out, CPU)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():  # ebmctl feeds [0,1] images; their net sees (x − 0.5)/0.5
        assert torch.allclose(model(x), ref.eval()(x * 2 - 1), atol=1e-5)


# --- robustbench:NAME from a local RobustBench model directory -------------------------------

class _TinyZooNet(nn.Module):
    """Stands in for a model-zoo architecture: normalises inside with constructor-set buffers
    (mu, sigma) that RobustBench checkpoints lack, as its AugMix models do."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mu", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("sigma", torch.full((1, 3, 1, 1), 0.25))
        self.fc = nn.Linear(3 * 32 * 32, 10)

    def forward(self, x):
        return self.fc(((x - self.mu) / self.sigma).flatten(1))


@pytest.fixture
def fake_robustbench(monkeypatch):
    """An importable ``robustbench.model_zoo.models`` whose zoo holds cifar10/Linf/Tiny (the
    real package's enums compared by value, as here) and an ensemble."""
    import enum
    import sys
    import types

    class Dataset(enum.Enum):
        cifar_10 = "cifar10"

    class Threat(enum.Enum):
        Linf = "Linf"

    zoo = {Dataset.cifar_10: {Threat.Linf: {"Tiny": {"model": _TinyZooNet, "gdrive_id": "x"},
                                            "Pair": {"model": _TinyZooNet,
                                                     "gdrive_id": ["a", "b"]}}}}
    for name in ("robustbench", "robustbench.model_zoo"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    models = types.ModuleType("robustbench.model_zoo.models")
    models.model_dicts = zoo
    monkeypatch.setitem(sys.modules, "robustbench.model_zoo.models", models)
    monkeypatch.delenv("ROBUSTBENCH_DIR", raising=False)


def _zoo_dir(tmp_path, name="Tiny"):
    torch.manual_seed(0)  # test-only weight init
    ref = _TinyZooNet().eval()
    d = tmp_path / "models" / "cifar10" / "Linf"
    d.mkdir(parents=True)
    # RobustBench's checkpoint shape: {"state_dict": ...} with DataParallel's "module." prefix,
    # and without the constant mu/sigma buffers
    state = {f"module.{k}": v for k, v in ref.state_dict().items() if k not in ("mu", "sigma")}
    torch.save({"state_dict": state, "epoch": 100}, d / f"{name}.pt")
    return ref, tmp_path / "models"


def test_robustbench_model_imports_from_a_local_directory(fake_robustbench, tmp_path):
    ref, models = _zoo_dir(tmp_path)
    out = tmp_path / "rb.safetensors"
    r = run_cli(["import-model", "robustbench:Tiny", "--robustbench-dir", str(models),
                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    meta = _meta(out)
    assert meta["ebmctl.arch"] == "robustbench"
    assert meta["ebmctl.arch_args"] == {"name": "Tiny", "dataset": "cifar10", "threat": "Linf"}
    imported = meta["ebmctl.extra"]["imported"]
    assert imported["source"] == "robustbench:cifar10/Linf/Tiny"
    assert imported["weights_sha256"] == file_digest(models / "cifar10" / "Linf" / "Tiny.pt")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # [0,1] images straight in: the zoo model normalises itself
        assert torch.allclose(TaskModel.load(out, CPU)(x), ref(x), atol=1e-6)


def test_robustbench_source_works_as_model_argument_via_the_env(fake_robustbench, tmp_path,
                                                                 monkeypatch):
    from ebmctl.commands.model_argument import resolve_model_argument

    _, models = _zoo_dir(tmp_path)
    monkeypatch.setenv("ROBUSTBENCH_DIR", str(models))
    path = resolve_model_argument("robustbench:cifar10/Linf/Tiny", tmp_path / "cache")
    assert path.parent == tmp_path / "cache" / "imported" and path.is_file()
    assert resolve_model_argument("robustbench:Tiny", tmp_path / "cache") == path  # reused


@pytest.mark.parametrize("setup,args,needle", [
    ("none", ["robustbench:Tiny"], "ROBUSTBENCH_DIR"),
    ("dir", ["robustbench:Missing"], "Missing.pt"),
    ("dir", ["robustbench:cifar10/Linf/Missing"], "never downloads"),
    ("dir", ["robustbench:svhn/Linf/Tiny"], "robustbench dataset 'svhn'"),
    ("dir", ["robustbench:Tiny", "--num-classes", "10"], "--num-classes does not apply"),
    ("dir", ["robustbench:Pair"], "ensemble"),
    ("dir", ["torchvision:resnet18"], "--robustbench-dir applies to robustbench"),
])
def test_robustbench_error_paths_are_one_line(fake_robustbench, tmp_path, setup, args, needle):
    _, models = _zoo_dir(tmp_path)
    _zoo_dir(tmp_path / "pair", "Pair")
    (models / "cifar10" / "Linf" / "Pair.pt").write_bytes(
        (tmp_path / "pair" / "models" / "cifar10" / "Linf" / "Pair.pt").read_bytes())
    extra = ["--robustbench-dir", str(models)] if setup == "dir" else []
    r = run_cli(["import-model", *args, *extra, "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0 and r.output.strip().startswith("Error:"), r.output
    assert needle in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "x.safetensors").exists()


def test_robustbench_missing_package_names_the_extra(tmp_path, monkeypatch):
    import sys

    _zoo_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "robustbench", None)  # import robustbench -> ImportError
    r = run_cli(["import-model", "robustbench:Tiny", "--robustbench-dir",
                 str(tmp_path / "models"), "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code != 0 and r.output.strip().startswith("Error:")
    assert "pip install 'ebmctl[robustbench]'" in r.output
    assert len(r.output.strip().splitlines()) == 1


# --- the README's "Import your model" section, as written ---------------------------------

#: test-only overrides appended to the README's attack commands: CIFAR-shaped noise images, a
#: few steps (the README's commands are full-size runs)
TINY = ["--set", "data.dataset=uniform-noise", "--set", "data.image_size=32",
        "--set", "data.channels=3", "--set", "attack.n_images=2", "--set", "attack.steps=1",
        "--set", "attack.restarts=1", "--set", "attack.eot_reps=1", "--set", "defense.steps=1",
        "--set", "defense.eot_reps=1", "--set", "attack.sanity=false", "--set", "run.device=cpu",
        "--set", "attack.seeds=0", "--set", "attack.batch_size=2", "--force"]


def _readme_commands() -> list[list[str]]:
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = text.split("## Import your model", 1)[1].split("\n## ", 1)[0]
    cmds = []
    for block in section.split("```bash\n")[1:]:
        body = block.split("```", 1)[0].replace("\\\n", " ")
        cmds += [shlex.split(line) for line in body.splitlines() if line.startswith("ebmctl ")]
    return cmds


def test_readme_import_section_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)  # test-only weight init
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(),
               "resnet18.pt")
    (tmp_path / "net_weights").mkdir()
    torch.save(authors_ebm(n_f=8).state_dict(), "net_weights/ebm.pth")
    torch.save(EbmDefenseWRN(depth=10, widen_factor=1).state_dict(), "net_weights/clf.pth")
    cmds = _readme_commands()
    assert [c[1] for c in cmds] == ["import-model", "attack", "import-model", "import-model",
                                    "attack"]
    assert "--profile" in cmds[-1] and "thesis-cifar10" in cmds[-1]
    for cmd in cmds:
        args = cmd[1:] + (TINY if cmd[1] == "attack" else [])
        r = run_cli(args)
        assert r.exit_code == 0, (cmd, r.output)
    assert EnergyModel.load("ebm.safetensors", CPU).temperature == pytest.approx(5e-5)


def test_attack_takes_a_source_at_weights_directly(resnet_pt, tmp_path, monkeypatch):
    _, pt = resnet_pt
    monkeypatch.chdir(tmp_path)
    r = run_cli(["attack", "--profile", "quick", "--model", f"torchvision:resnet18@{pt}",
                 "--undefended-only", *TINY])
    assert r.exit_code == 0, r.output
    imported = list((tmp_path / "runs").rglob("imported/*.safetensors"))
    assert len(imported) == 1 and _meta(imported[0])["ebmctl.extra"]["imported"]["weights"] == str(pt)
    r = run_cli(["attack", "--profile", "quick", "--model", "torchvision:resnet18@missing.pt",
                 "--undefended-only", *TINY])
    assert r.exit_code != 0 and "weights file not found" in r.output


def test_other_commands_take_a_source_at_weights(tmp_path, monkeypatch):
    """--ebm / --model of purify and ood resolve SOURCE@WEIGHTS like attack's, importing once."""
    from pathlib import Path

    from PIL import Image

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)  # test-only weight init
    torch.save(authors_ebm().state_dict(), "ebm.pth")
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save("img.png")
    r = run_cli(["purify", "img.png", "--ebm", "ebm-defense:ebm@ebm.pth", "-k", "2"])
    assert r.exit_code == 0, r.output
    assert Path("img.purified.png").is_file()
    r = run_cli(["ood", "--ebm", "ebm-defense:ebm@ebm.pth", "--ood", "uniform-noise",
                 "--n-images", "8", "--out", "ood.json"])
    assert r.exit_code == 0, r.output
    imported = list(Path("runs").rglob("imported/*.safetensors"))
    assert len(imported) == 1  # the second command reused the first one's import
    assert json.loads(Path("ood.json").read_text())["model"] == str(imported[0])
    r = run_cli(["purify", "img.png", "--ebm", "ebm-defense:ebm@nope.pth", "--force"])
    assert r.exit_code != 0 and "weights file not found" in r.output
