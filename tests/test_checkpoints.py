"""Checkpoints as PyTorch loads them: `ebmctl import-model` recognises a weights file by its
content (safetensors, zip archive, legacy pickle), not its extension; it opens the usual
containers and prefixes and loads through ``load_state_dict(strict=True)``, so an old-style
checkpoint (a ``.th`` file holding ``{"best_prec1": ..., "state_dict": {"module.…": ...}}``
without BatchNorm's ``num_batches_tracked``) imports with the source's logits, and what PyTorch
refuses is refused with its message on one line."""

from __future__ import annotations

import textwrap

import pytest
import torch
from safetensors.torch import save_file

from ebmctl.importers import load_state_dict_file, weights_format
from ebmctl.models import TaskModel
from ebmctl.testing import run_cli

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread_per_module")

#: a small CIFAR-style ResNet block net with BatchNorm, as the user's own module file
MODULE = textwrap.dedent("""
    import torch.nn as nn

    class Net(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(8)
            self.linear = nn.Linear(8, num_classes)

        def forward(self, x):
            h = self.bn1(self.conv1(x)).relu()
            h = (self.bn2(self.conv2(h)) + h).relu()
            return self.linear(h.mean((2, 3)))

    def tiny(num_classes=10):
        return Net(num_classes)
""")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """The module file, a trained-looking source net (random weights and BatchNorm statistics)
    and its old-style state dict (``module.`` keys, no ``num_batches_tracked``)."""
    d = tmp_path_factory.mktemp("ckpt")
    (d / "resnet.py").write_text(MODULE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("ckpt_resnet", d / "resnet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)  # test-only weights
    net = mod.tiny()
    for bn in (net.bn1, net.bn2):  # statistics far from the defaults, so a lost buffer shows
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
    net.eval()
    old = {
        f"module.{k}": v.clone()
        for k, v in net.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    return d, net, old


def _import(d, weights, out, *extra):
    return run_cli(
        [
            "import-model",
            f"{d / 'resnet.py'}:tiny",
            "--weights",
            str(weights),
            "--out",
            str(out),
            *extra,
        ]
    )


def _logits_match(net, artifact):
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    imported = TaskModel.load(artifact, CPU)
    with torch.no_grad():
        assert torch.allclose(imported(x), net(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("zipfile", [False, True], ids=["legacy-pickle", "zip"])
def test_old_style_checkpoint_imports_with_the_source_logits(source, tmp_path, zipfile):
    d, net, old = source
    path = tmp_path / "resnet56.th"  # the extension tells nothing
    torch.save(
        {"best_prec1": 93.39, "state_dict": old}, path, _use_new_zipfile_serialization=zipfile
    )
    assert weights_format(path) == ("zip" if zipfile else "pickle")
    r = _import(d, path, tmp_path / "clf.safetensors")
    assert r.exit_code == 0, r.output
    _logits_match(net, tmp_path / "clf.safetensors")


def test_compiled_and_nested_wrappers_and_safetensors_by_content(source, tmp_path):
    d, net, old = source
    compiled = {f"_orig_mod.{k[len('module.') :]}": v for k, v in old.items()}
    nested = tmp_path / "last.ckpt"
    torch.save({"epoch": 3, "model": {"net": compiled}}, nested)
    assert set(load_state_dict_file(nested)) == {k[len("module.") :] for k in old}
    st = tmp_path / "weights.bin"  # a safetensors file under another name
    save_file({k[len("module.") :]: v.contiguous() for k, v in old.items()}, str(st))
    assert weights_format(st) == "safetensors"
    r = _import(d, st, tmp_path / "clf.safetensors")
    assert r.exit_code == 0, r.output
    _logits_match(net, tmp_path / "clf.safetensors")


def test_what_pytorch_refuses_is_refused_with_its_message(source, tmp_path):
    d, _, old = source
    broken = dict(old)
    del broken["module.conv2.weight"]
    path = tmp_path / "broken.pth"
    torch.save({"state_dict": broken}, path)
    out = tmp_path / "clf.safetensors"
    r = _import(d, path, out)
    assert r.exit_code != 0 and r.output.strip().startswith("Error:"), r.output
    assert "conv2.weight" in r.output and "Missing key" in r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not out.exists()


def test_a_file_that_is_no_weights_is_a_one_line_error(source, tmp_path):
    d, _, _ = source
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"not a checkpoint at all")
    r = _import(d, junk, tmp_path / "clf.safetensors")
    assert r.exit_code != 0 and "not a weights file" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output


def test_torch_load_is_only_called_with_weights_only_in_the_state_dict_reader():
    """The one pickle path: every ``torch.load`` call in ebmctl/ sits in
    ``importers/state_dict.py`` and passes ``weights_only=True``, so no pickled code runs."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "ebmctl"
    calls = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                           and k.value.value is True for k in node.keywords)
                calls.append((path.relative_to(root).as_posix(), safe))
    assert calls == [("importers/state_dict.py", True)]
