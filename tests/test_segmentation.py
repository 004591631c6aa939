"""Segmentation task plugin: Dice / mIoU by hand, the Dice-ratio rule, datasets, models, and
the CLI end to end (train a tiny segmenter, attack it undefended and defended)."""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmctl.api import DatasetSpec, hookimpl, make_bundle
from ebmctl.testing import plugin_registered, run_cli
from ebmctl_segmentation.datasets import make_shapes, trimap_to_mask
from ebmctl_segmentation.metrics import (
    confusion_matrix,
    dice_binary,
    dice_ratio_ok,
    dice_score,
    mean_iou,
)

TINY = ["--set", "data.synthetic_images=160", "--set", "model.width=8",
        "--set", "segmentation.depth=2", "--set", "model.batch_size=32", "--set", "run.device=cpu",
        "--set", "attack.sanity=false"]


def maps(*rows: str) -> torch.Tensor:
    """One label map from strings of digits, e.g. maps("0110", "0010")."""
    return torch.tensor([[int(c) for c in r] for r in rows])[None]


# --- metrics by hand ---------------------------------------------------------------------------

def test_dice_hand_computed():
    pred = maps("0110", "0010")
    mask = maps("0100", "0011")
    # TP = 2, FP = 1, FN = 1  ->  2*2 / (4 + 1 + 1) = 2/3
    assert dice_binary(pred > 0, mask > 0).item() == pytest.approx(2 / 3)
    assert dice_binary(mask > 0, mask > 0).item() == pytest.approx(1.0)
    # no overlap at all
    assert dice_binary(maps("1000") > 0, maps("0001") > 0).item() == 0.0


def test_dice_empty_masks():
    empty = maps("0000", "0000")
    some = maps("0100", "0000")
    assert dice_binary(empty > 0, empty > 0).item() == 0.0  # 0 / (0 + 1e-9): not NaN
    assert dice_binary(empty > 0, some > 0).item() == 0.0   # missed the object
    assert dice_binary(some > 0, empty > 0).item() == 0.0   # predicted an absent object
    assert not torch.isnan(dice_binary(empty > 0, empty > 0)).any()


def test_dice_modes_multiclass():
    pred = maps("1122", "0000")
    mask = maps("1222", "0000")
    # foreground: every non-zero pixel matches -> 1
    assert dice_score(pred, mask, 3, "foreground").item() == pytest.approx(1.0)
    # mean: class 1 TP=1 FP=1 FN=0 -> 2/3; class 2 TP=2 FP=0 FN=1 -> 4/5
    assert dice_score(pred, mask, 3, "mean").item() == pytest.approx((2 / 3 + 4 / 5) / 2)
    with pytest.raises(ValueError):
        dice_score(pred, mask, 3, "median")


def test_mean_iou_hand_computed():
    pred = maps("0110", "0010")
    mask = maps("0100", "0011")
    conf = confusion_matrix(pred, mask, 2)
    assert conf.tolist() == [[4, 1], [1, 2]]
    # background IoU 4/6, foreground IoU 2/4
    assert mean_iou(conf) == pytest.approx((4 / 6 + 2 / 4) / 2)


def test_dice_ratio_rule():
    clean = torch.tensor([0.8, 0.8, 0.0, 0.5, 1.0])
    adv = torch.tensor([0.4, 0.39, 0.0, 0.6, 0.0])
    # ratio 0.5 is not broken (>=), 0.4875 is broken, clean Dice 0 has no ratio
    assert dice_ratio_ok(adv, clean, 0.5).tolist() == [True, False, False, True, False]
    assert dice_ratio_ok(adv, clean, 0.3).tolist() == [True, True, False, True, False]


def test_task_reads_threshold_and_mode_from_profile():
    from ebmctl.context import get_task
    from ebmctl.profiles import resolve

    task = get_task(resolve(None, ["task.name=segmentation", "task.dice_ratio_threshold=0.9"]))
    assert task.robust_ok(torch.tensor([0.85]), torch.tensor([1.0])).tolist() == [False]
    assert task.natural_ok(torch.tensor([0.0, 0.3])).tolist() == [False, True]
    loose = get_task(resolve(None, ["task.name=segmentation"]))
    assert loose.robust_ok(torch.tensor([0.85]), torch.tensor([1.0])).tolist() == [True]
    from ebmctl.api import ConfigError

    with pytest.raises(ConfigError, match="dice_mode"):
        get_task(resolve(None, ["task.name=segmentation", "task.dice_mode=pixel"]))


def test_attack_losses_rise_when_prediction_worsens():
    from ebmctl.context import get_task
    from ebmctl.profiles import resolve

    mask = maps("0110", "0110")
    good = torch.stack([1 - mask[0].float(), mask[0].float()])[None] * 6 - 3
    bad = -good
    for loss in ("ce", "dice", "ce+dice", "segpgd"):
        task = get_task(resolve(None, ["task.name=segmentation",
                                       f"segmentation.attack_loss={loss}"]))
        lo, hi = task.attack_loss(good, mask), task.attack_loss(bad, mask)
        assert lo.shape == (1,) and hi.item() > lo.item() + 0.1, loss


def test_segpgd_loss_weights_correct_and_wrong_pixels_by_the_wrong_fraction():
    import torch.nn.functional as F
    from ebmctl_segmentation.task import segpgd_loss

    mask = maps("0110")  # 1 x 1 x 4
    logits = torch.tensor([[[[2.0, -1.0, 1.0, 3.0]], [[0.0, 1.0, -2.0, 0.5]]]])  # 1 x 2 x 1 x 4
    ce = F.cross_entropy(logits, mask.long(), reduction="none").flatten()
    # predictions 0 1 0 0 against 0 1 1 0: pixel 2 is wrong, λ = 0.5 * 1/4
    lam = 0.125
    want = ((1 - lam) * (ce[0] + ce[1] + ce[3]) + lam * ce[2]) / 4
    assert torch.allclose(segpgd_loss(logits, mask), want.reshape(1))


def test_flip_augmentation_moves_mask_with_image():
    from ebmctl.context import get_task
    from ebmctl.profiles import resolve

    cfg = resolve("seg-quick", [])
    task = get_task(cfg)
    x, y = make_shapes(32, 16)
    xa, ya = task.augment(x, y, torch.Generator().manual_seed(0), cfg)
    flipped = [i for i in range(32) if not torch.equal(xa[i], x[i])]
    assert flipped and len(flipped) < 32
    for i in range(32):
        same = torch.equal(xa[i], x[i])
        assert torch.equal(ya[i], y[i]) == same or torch.equal(ya[i], y[i].flip(-1))
        if not same:
            assert torch.equal(xa[i], x[i].flip(-1)) and torch.equal(ya[i], y[i].flip(-1))


# --- datasets ----------------------------------------------------------------------------------

def test_shapes_are_deterministic_and_masks_match_images():
    x1, y1 = make_shapes(20, 24)
    x2, y2 = make_shapes(20, 24)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.shape == (20, 3, 24, 24) and y1.shape == (20, 24, 24)
    assert 0 <= x1.min() and x1.max() <= 1
    assert set(y1.unique().tolist()) == {0, 1}
    assert all(y1[i].sum() > 10 for i in range(20))  # every image has an object
    _, ym = make_shapes(20, 24, multiclass=True)
    assert set(ym.unique().tolist()) <= {0, 1, 2, 3} and len(ym.unique()) > 2
    assert torch.equal(ym > 0, y1 > 0)


def test_trimap_modes():
    tri = np.array([[1, 2, 3]])
    assert trimap_to_mask(tri, "pet+border").tolist() == [[1, 0, 1]]
    assert trimap_to_mask(tri, "pet").tolist() == [[1, 0, 0]]
    assert trimap_to_mask(tri, "trimap").tolist() == [[1, 0, 2]]


def _write_pair(folder: Path, stem: str, rgb: np.ndarray, mask: np.ndarray, ext=".png"):
    from PIL import Image

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / "images" / f"{stem}{ext}")
    Image.fromarray(mask.astype(np.uint8)).save(folder / "masks" / f"{stem}.png")


def test_maskfolder_layout_reads_255_masks_as_binary(tmp_path):
    from ebmctl.context import load_dataset
    from ebmctl.profiles import resolve

    rng = np.random.default_rng(0)
    for i in range(10):
        m = np.zeros((12, 12))
        m[2:6, 3:9] = 255
        _write_pair(tmp_path, f"im{i}", rng.integers(0, 255, (12, 12, 3), dtype=np.uint8), m)
    cfg = resolve(None, ["task.name=segmentation", "data.dataset=maskfolder",
                         f"data.root={tmp_path}", "data.image_size=8"])
    b = load_dataset(cfg)
    assert b.num_classes == 2 and b.train.x.shape[1:] == (3, 8, 8)
    assert b.train.y.shape[1:] == (8, 8) and set(b.train.y.unique().tolist()) == {0, 1}
    assert len(b.train) + len(b.val) + len(b.test) == 10


def test_maskfolder_missing_mask_is_one_line_error(tmp_path):
    _write_pair(tmp_path, "a", np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8)))
    (tmp_path / "masks" / "a.png").unlink()
    r = run_cli(["train", "segmenter", "--set", "data.dataset=maskfolder",
                 "--set", f"data.root={tmp_path}", "--out", str(tmp_path / "m.safetensors")])
    assert r.exit_code != 0 and "has no mask" in r.stderr and "Traceback" not in r.output
    assert not (tmp_path / "m.safetensors").exists()


def test_pets_layout(tmp_path):
    from PIL import Image

    from ebmctl.context import load_dataset
    from ebmctl.profiles import resolve

    root = tmp_path / "oxford-iiit-pet"
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    names = [f"cat_{i}" for i in range(6)]
    for n in names:
        Image.fromarray(np.full((20, 30, 3), 120, np.uint8)).save(root / "images" / f"{n}.jpg")
        tri = np.full((20, 30), 2, np.uint8)
        tri[5:15, 5:20] = 1
        tri[5, 5:20] = 3
        Image.fromarray(tri).save(root / "annotations" / "trimaps" / f"{n}.png")
    (root / "annotations" / "trainval.txt").write_text(
        "".join(f"{n} 1 1 1\n" for n in names[:4]))
    (root / "annotations" / "test.txt").write_text("".join(f"{n} 1 1 1\n" for n in names[4:]))
    cfg = resolve(None, ["task.name=segmentation", "data.dataset=pets", f"data.root={tmp_path}",
                         "data.image_size=16", "data.trimap=trimap"])
    b = load_dataset(cfg)
    assert len(b.test) == 2 and b.num_classes == 3
    assert b.test.x.shape == (2, 3, 16, 16) and set(b.test.y.unique().tolist()) == {0, 1, 2}


# --- models ------------------------------------------------------------------------------------

def test_unet_lite_handles_odd_sizes():
    from ebmctl_segmentation.models import unet_lite

    net = unet_lite(in_channels=3, num_classes=4, width=4, depth=2)
    assert net(torch.rand(2, 3, 18, 18)).shape == (2, 4, 18, 18)


@pytest.mark.slow  # importing segmentation-models-pytorch (timm) takes a while
def test_smp_model_handles_odd_sizes():
    from ebmctl_segmentation.models import smp_builder

    smp_net = smp_builder("unet")(in_channels=3, num_classes=2, encoder="resnet18",
                                  encoder_depth=3, decoder_channels=[32, 16, 8])
    assert smp_net(torch.rand(1, 3, 20, 20)).shape == (1, 2, 20, 20)


@pytest.mark.slow  # imports segmentation-models-pytorch
def test_encoder_weights_must_be_safetensors(tmp_path):
    from ebmctl.api import InputError
    from ebmctl_segmentation.models import load_encoder_weights, smp_builder

    net = smp_builder("unet")(encoder="resnet18", encoder_depth=3, decoder_channels=[8, 8, 8])
    pth = tmp_path / "enc.pth"
    pth.write_bytes(b"x")
    with pytest.raises(InputError, match="safetensors"):
        load_encoder_weights(net, str(pth))
    from safetensors.torch import save_file

    state = {f"encoder.{k}": v + 1 for k, v in net.net.encoder.state_dict().items()
             if v.dtype.is_floating_point}
    f = tmp_path / "enc.safetensors"
    save_file(state, str(f))
    load_encoder_weights(net, str(f))
    k = next(iter(state))[len("encoder."):]
    assert torch.equal(net.net.encoder.state_dict()[k], state["encoder." + k])


# --- end to end --------------------------------------------------------------------------------

def _tiny_ebm(path: Path, size: int = 32, channels: int = 3):
    from builders import random_ebm

    return random_ebm(path, data={"range": "[-1,1]", "image_size": size, "channels": channels})


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "seg.safetensors"
    r = run_cli(["train", "segmenter", *TINY, "--set", "data.image_size=16", "--epochs", "12",
                 "--set", "model.lr=0.01", "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_train_segmenter_writes_artifact(tiny_segmenter):
    r = run_cli(["inspect", str(tiny_segmenter)])
    assert r.exit_code == 0 and "segmenter" in r.output
    log = json.loads(tiny_segmenter.with_suffix(".log.json").read_text())
    # mean test Dice of a 12-epoch tiny U-Net on 16x16 shapes; predicting every pixel as
    # foreground would score about 0.26, all background 0
    assert log["test"] > 0.35, log["test"]


def test_attack_lowers_dice_of_undefended_model(tiny_segmenter, tmp_path):
    out = tmp_path / "rep.json"
    r = run_cli(["attack", "--task", "segmentation", "--model", str(tiny_segmenter),
                 "--undefended-only", *TINY, "--set", "data.image_size=16",
                 "--set", "attack.steps=6", "--set", "attack.eps=16/255",
                 "--set", "attack.step_size=4/255",
                 "--set", "attack.n_images=12", "--set", "segmentation.panels=2",
                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    und = rep["results"]["undefended"]
    assert und["mean_dice_attacked"] < und["mean_dice_clean"] - 0.15
    assert und["miou_attacked"] < und["miou_clean"]
    assert und["fraction_not_broken"] < 1.0
    assert und["n_evaluated"] + und["n_excluded_zero_clean_dice"] == 12
    assert len(rep["task_report"]["files"]) == 2
    assert all(Path(f).exists() for f in rep["task_report"]["files"])
    assert "Dice ratio >= 0.5" in r.stdout  # the segmentation table is printed


def test_defended_attack_reports_both_models(tiny_segmenter, tmp_path):
    ebm = _tiny_ebm(tmp_path / "ebm.safetensors", size=32)  # another resolution: adapter
    out = tmp_path / "rep.json"
    r = run_cli(["attack", "--task", "segmentation", "--model", str(tiny_segmenter),
                 *TINY, "--set", "data.image_size=16", "--set", f"defense.ebm={ebm}",
                 "--set", "attack.steps=2", "--set", "attack.n_images=6",
                 "--set", "defense.steps=3", "--set", "defense.eot_reps=2",
                 "--set", "attack.eot_reps=2", "--set", "segmentation.panels=1",
                 "--set", "segmentation.attack_loss=ce+dice", "--out", str(out)])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert set(rep["results"]) == {"undefended", "defended"}
    d = rep["results"]["defended"]
    assert d["attack"] == "bpda-eot" and d["n_seeds"] == 1
    # the Dice-ratio rule's fraction is over the images with a usable clean prediction
    assert d["fraction_not_broken"] == pytest.approx(sum(d["per_image_robust"]) / d["n_evaluated"])
    assert len(d["per_image_dice_clean"]) == 6
    assert rep["defense"]["ebm"] == str(ebm)
    assert len(rep["task_report"]["panel_columns"]) == 8  # with the purified adversarial


def test_attack_rejects_classifier_for_segmentation(tmp_path):
    from ebmctl.testing import tiny_bundle  # noqa: F401

    r = run_cli(["attack", "--task", "segmentation", "--model", str(tmp_path / "none.st"),
                 "--undefended-only"])
    assert r.exit_code != 0 and "Traceback" not in r.output and r.stderr.startswith("Error:")


def _stripes_bundle(req):
    """A third segmentation dataset: bright vertical stripe on a dark background."""
    g = torch.Generator().manual_seed(1)
    n, s = 60, 12
    x = 0.2 * torch.rand(n, 1, s, s, generator=g)
    y = torch.zeros(n, s, s, dtype=torch.long)
    for i in range(n):
        c = i % (s - 3)
        x[i, :, :, c:c + 3] += 0.7
        y[i, :, c:c + 3] = 1
    return make_bundle("stripes", x, y, req, 2, ["background", "stripe"])


def test_runtime_plugin_adds_a_segmentation_dataset(tmp_path):
    plugin = types.SimpleNamespace()

    @hookimpl
    def ebmctl_register_datasets(register):
        register(DatasetSpec("stripes", _stripes_bundle, "segmentation", "test stripes"))

    plugin.ebmctl_register_datasets = ebmctl_register_datasets
    out = tmp_path / "stripes.safetensors"
    with plugin_registered(plugin, "stripes-plugin"):
        r = run_cli(["plugins"])
        assert "stripes" in r.stdout
        r = run_cli(["train", "segmenter", "--set", "data.dataset=stripes", "--set",
                     "model.width=4", "--set", "segmentation.depth=1", "--epochs", "8",
                     "--set", "model.lr=0.01", "--out", str(out)])
        assert r.exit_code == 0, r.output
        log = json.loads(out.with_suffix(".log.json").read_text())
        assert log["test"] > 0.6  # a 1-level U-Net of width 4 after 8 epochs
        r = run_cli(["attack", "--task", "segmentation", "--model", str(out),
                     "--undefended-only", "--set", "data.dataset=stripes",
                     "--set", "attack.steps=3", "--set", "attack.n_images=6",
                     "--set", "segmentation.panels=0", "--set", "attack.sanity=false",
                     "--out", str(tmp_path / "r.json")])
        assert r.exit_code == 0, r.output
    r = run_cli(["train", "segmenter", "--set", "data.dataset=stripes"])
    assert r.exit_code != 0 and "unknown dataset 'stripes'" in r.stderr
