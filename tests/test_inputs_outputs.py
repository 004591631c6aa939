"""Reading inputs as they are and never losing earlier outputs: 16-bit images scaled by mode,
EXIF orientation, animated files, void mask labels, purify's output size and mode, and outputs
that refuse to overwrite earlier work."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ebmctl.testing import run_cli



def _exif_rotated(path, orientation: int = 6):
    """A 4 wide x 2 tall RGB JPEG stored sideways with an EXIF orientation tag; its left
    column is red."""
    arr = np.zeros((2, 4, 3), np.uint8)
    arr[:, 0] = (255, 0, 0)
    im = Image.fromarray(arr, "RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    im.save(path, format="PNG", exif=exif.tobytes())
    return path


def _animated_gif(path):
    frames = [Image.new("L", (6, 6), v) for v in (30, 220)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    return path


# --- image reading ---------------------------------------------------------------------------


def test_dark_16bit_png_is_scaled_by_its_mode_not_its_content(tmp_path):
    from ebmctl.images import read_image01

    path = tmp_path / "dark16.png"
    Image.fromarray(np.full((5, 7), 200, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    for channels in (1, 3):
        x = read_image01(path, channels)
        assert x.shape == (channels, 5, 7)
        assert torch.allclose(x, torch.full_like(x, 200 / 65535), atol=1e-6), x.max()


def test_exif_orientation_is_applied(tmp_path, capsys):
    from ebmctl.images import read_image01

    x = read_image01(_exif_rotated(tmp_path / "sideways.png"), 3)
    # Orientation 6: the stored image is turned 90 degrees clockwise for display, so the 4x2
    # image stands 4 tall and its red left column becomes the top row.
    assert x.shape == (3, 4, 2)
    assert torch.all(x[0, 0] == 1) and torch.all(x[1:, 0] == 0)
    assert "EXIF orientation 6" in capsys.readouterr().err


def test_animated_image_gives_its_first_frame_and_says_so(tmp_path, capsys):
    from ebmctl.images import read_image01

    x = read_image01(_animated_gif(tmp_path / "anim.gif"), 1)
    assert x.shape == (1, 6, 6)
    assert abs(x.mean().item() - 30 / 255) < 2 / 255
    assert "animated (2 frames); using the first frame" in capsys.readouterr().err


def test_image_folder_reads_like_every_other_reader(tmp_path, capsys):
    """The dataset reader shares the mechanism: a dark 16-bit file stays dark, an EXIF-tagged
    one is turned, and the adjustments are summarised in one line per kind."""
    from ebmctl.api import load_image_folder

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
    Image.fromarray(np.full((4, 2), 200, np.uint16)).save(tmp_path / "a" / "dark16.png")
    Image.fromarray(np.full((4, 2, 3), 255, np.uint8)).save(tmp_path / "a" / "white.png")
    _exif_rotated(tmp_path / "b" / "sideways.png")
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ["a", "b"] and x.shape == (3, 3, 4, 2)
    assert x[0].max().item() < 2 / 255  # 200/65535, not 200/255
    assert torch.all(x[2, 0, 0] == 1)  # the red column is now the top row
    err = capsys.readouterr().err
    assert "EXIF orientation 6 applied (sideways.png)" in err
    assert "I;16 image converted to 8-bit RGB (dark16.png)" in err


# --- purify keeps the input's size and mode --------------------------------------------------


def _shipped_ebm():
    from ebmctl.shipped import DEFAULT_EBM

    if not DEFAULT_EBM.exists():
        pytest.skip("no shipped EBM in this build")
    return DEFAULT_EBM


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "I;16"])
def test_purify_output_has_the_inputs_size_and_mode(tmp_path, mode):
    """A 20x16 image (smaller than the shipped 32x32 EBM, another aspect ratio) comes back
    20x16 in its own mode; an alpha channel comes back unchanged."""
    rng = np.random.default_rng(0)
    if mode == "I;16":
        im = Image.fromarray(rng.integers(0, 65535, (16, 20), dtype=np.uint16))
    else:
        im = Image.fromarray(rng.integers(0, 255, (16, 20, 4), dtype=np.uint8), "RGBA")
        im = im.convert(mode)
    src = tmp_path / "small.png"
    im.save(src)
    r = run_cli(["purify", src, "--ebm", _shipped_ebm(), "-k", "2", "--out-dir",
                 tmp_path / "o"])
    assert r.exit_code == 0, r.output
    out = Image.open(tmp_path / "o" / "small.purified.png")
    assert out.size == (20, 16)
    assert out.mode == im.mode or (mode == "I;16" and out.mode.startswith("I")), out.mode
    if mode == "RGBA":
        assert np.array_equal(np.asarray(out)[..., 3], np.asarray(im)[..., 3])
    assert "resized back to 20x16" in r.stderr


def _drift(path: str, out: str) -> float:
    a = np.asarray(Image.open(path), dtype=np.float64) / 255
    b = np.asarray(Image.open(out), dtype=np.float64) / 255
    return float(np.abs(a - b).mean())


def test_purify_drift_per_pixel_does_not_grow_with_the_image(tmp_path):
    """A 64x64 tiling of a 32x32 image drifts about as much per pixel as the 32x32 image: the
    32x32 EBM is never run convolutionally over a larger image (whose summed energy made the
    per-pixel gradient several times stronger)."""
    yy, xx = np.meshgrid(np.linspace(0, 1, 32), np.linspace(0, 1, 32), indexing="ij")
    img = np.stack([0.5 + 0.3 * np.sin(6 * xx + 1), 0.4 + 0.3 * np.cos(5 * yy),
                    0.3 + 0.4 * xx * yy], -1).clip(0, 1)
    img8 = (img * 255).round().astype(np.uint8)
    Image.fromarray(img8).save(tmp_path / "one.png")
    Image.fromarray(np.tile(img8, (2, 2, 1))).save(tmp_path / "four.png")
    r = run_cli(["purify", tmp_path / "one.png", tmp_path / "four.png", "--ebm", _shipped_ebm(),
                 "-k", "50", "-H", "3", "--out-dir", tmp_path / "o"])
    assert r.exit_code == 0, r.output
    drift = {n: np.mean([_drift(tmp_path / f"{n}.png", tmp_path / "o" / f"{n}.purified-{i:03d}.png")
                         for i in range(3)]) for n in ("one", "four")}
    assert Image.open(tmp_path / "o" / "four.purified-000.png").size == (64, 64)
    assert 0.85 < drift["four"] / drift["one"] < 1.15, drift


# --- outputs never replace earlier work silently ---------------------------------------------


def test_purify_same_stem_inputs_and_existing_outputs(tmp_path, tiny_artifacts):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        Image.fromarray(np.full((8, 8), 100 if d == "a" else 200, np.uint8)).save(
            tmp_path / d / "x.png")
    argv = ["purify", tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", "--ebm",
            tiny_artifacts["ebm"], "-k", "1", "--out-dir", tmp_path / "o"]
    r = run_cli(argv)
    assert r.exit_code == 0, r.output
    outs = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert outs == ["x-2.purified.png", "x.purified.png"]
    assert f"wrote {tmp_path / 'o' / 'x-2.purified.png'} from {tmp_path / 'b' / 'x.png'}" in r.stderr
    # The two outputs come from their own inputs (dark a, bright b), not one twice.
    assert np.asarray(Image.open(tmp_path / "o" / "x.purified.png")).mean() < 150
    assert np.asarray(Image.open(tmp_path / "o" / "x-2.purified.png")).mean() > 150
    before = (tmp_path / "o" / "x.purified.png").read_bytes()
    again = run_cli(argv)
    assert again.exit_code == 8 and "already exists" in again.stderr and "--force" in again.stderr
    assert (tmp_path / "o" / "x.purified.png").read_bytes() == before
    assert run_cli(argv + ["--force"]).exit_code == 0


@pytest.fixture(scope="module")
def tiny_artifacts(tmp_path_factory):
    import importlib.util
    import sys
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "ebmctl_bad_input_corpus", Path(__file__).parent / "corpus" / "make_corpus.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod.save_valid(tmp_path_factory.mktemp("valid"))


TINY = ["run.threads=1", "train.steps=1", "train.mcmc_steps=1", "train.batch_size=4",
        "train.bank_size=8", "model.epochs=1", "defense.steps=1", "defense.eot_reps=1",
        "attack.steps=1", "attack.eot_reps=1", "attack.n_images=2", "attack.sanity=false",
        "ood.n_images=4", "lyapunov.n_images=1", "lyapunov.burn_in=1", "lyapunov.steps=1",
        "synth.n=2", "fix.stage1_epochs=0", "fix.stage2_epochs=0", "autoencoder.steps=1",
        "quality.n_reference=2"]

#: command -> (arguments, the default output it must not replace)
WRITERS = {
    "train ebm": (["train", "ebm"], "runs/digits-ebm.safetensors"),
    "train classifier": (["train", "classifier"], "runs/digits-classifier.safetensors"),
    "train autoencoder": (["train", "autoencoder"], "runs/digits-generator.safetensors"),
    "train hat": (["train", "hat"], "runs/digits-hat-ebm.safetensors"),
    "fix train": (["fix", "train", "--ebm", "{ebm}"], "runs/digits-fixer.safetensors"),
    "attack": (["attack", "--model", "{classifier}", "--ebm", "{ebm}"], "runs/attack-report.json"),
    "ood": (["ood", "--ebm", "{ebm}"], "runs/ood-ok-ebm.json"),
    "synthesize": (["synthesize", "--ebm", "{ebm}", "-k", "1"],
                   "runs/synthesize-ok-ebm/report.json"),
    "lyapunov": (["lyapunov", "--ebm", "{ebm}"], "runs/lyapunov.json"),
}


@pytest.mark.parametrize("command", list(WRITERS))
def test_default_outputs_are_not_replaced_without_force(command, tmp_path, monkeypatch,
                                                        tiny_artifacts):
    monkeypatch.chdir(tmp_path)
    args, existing = WRITERS[command]
    target = tmp_path / existing
    target.parent.mkdir(parents=True)
    target.write_bytes(b"earlier work")
    argv = [str(a).format(**{k: str(v) for k, v in tiny_artifacts.items()}) for a in args]
    r = run_cli(argv + [a for s in TINY for a in ("--set", s)])
    assert r.exit_code == 8, r.output
    assert "already exists" in r.stderr and "--force" in r.stderr, r.stderr
    assert target.read_bytes() == b"earlier work"


# --- void labels in segmentation masks -------------------------------------------------------


def _voc_folder(root):
    """Six 12x12 image/mask pairs, VOC style: classes 0..2 and a 255 (void) border."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(6):
        m = np.full((12, 12), 255, np.uint8)
        m[1:11, 1:11] = 0
        m[2:6, 2:6], m[6:10, 6:10] = 1, 2
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(
            root / "images" / f"im{i}.png")
        Image.fromarray(m).save(root / "masks" / f"im{i}.png")
    return root


def test_void_mask_pixels_are_no_class_and_count_nowhere(tmp_path):
    from ebmctl.context import get_task, load_dataset
    from ebmctl.errors import InputError
    from ebmctl.profiles import resolve

    root = _voc_folder(tmp_path / "voc")
    base = ["task.name=segmentation", "data.dataset=maskfolder", f"data.root={root}"]
    with pytest.raises(InputError, match="data.ignore_index=255"):
        load_dataset(resolve(None, base))  # 255 next to ids 0..2: never a silent 256th class
    cfg = resolve(None, base + ["data.ignore_index=255"])
    bundle = load_dataset(cfg)
    assert bundle.num_classes == 3
    y = torch.cat([bundle.train.y, bundle.val.y, bundle.test.y])
    assert set(y.unique().tolist()) == {0, 1, 2, 255}
    task = get_task(cfg)
    y = y[:2]
    void = y == 255
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 12, 12, requires_grad=True)
    # Whatever is predicted on void pixels changes neither the score nor any loss.
    other = logits.detach().clone()
    other[:, 1:][void.unsqueeze(1).expand(-1, 2, -1, -1)] += 50.0  # "foreground" on void
    assert torch.equal(task.score(logits.detach(), y), task.score(other, y))
    perfect = torch.nn.functional.one_hot(y.masked_fill(void, 0), 3).permute(0, 3, 1, 2) * 9.0
    perfect[:, 1][void] = 99.0  # predicted foreground on every void pixel
    assert torch.allclose(task.score(perfect, y), torch.ones(2))
    losses = {"train": task.train_loss(logits, y)}
    for name in ("ce", "dice", "ce+dice", "segpgd"):
        task.attack_loss_name = name
        losses[name] = task.attack_loss(logits, y).sum()
    for name, loss in losses.items():
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.isfinite(loss), name
        assert grad.abs().sum() > 0, name
        assert torch.all(grad.permute(0, 2, 3, 1)[void] == 0), f"{name} loss sees void pixels"


def test_pickled_data_is_never_read(tmp_path):
    """A root of CIFAR python batches (pickles can run code when read) is refused with the way
    out, before any file is opened; ``data.allow_pickle = true`` is refused too."""
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    # a pickle that would leave a marker file if it were ever unpickled
    marker = tmp_path / "unpickled"
    import pickle

    class _Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (batches / "data_batch_1").write_bytes(pickle.dumps(_Trap()))
    r = run_cli(["train", "classifier", "-p", "cifar10-classifier", "--set",
                 f"data.root={tmp_path}", "--out", tmp_path / "c.safetensors"])
    assert r.exit_code != 0 and "never unpickles data" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not marker.exists()
    r = run_cli(["train", "classifier", "-p", "cifar10-classifier", "--set",
                 f"data.root={tmp_path}", "--set", "data.allow_pickle=true",
                 "--out", tmp_path / "c.safetensors"])
    assert r.exit_code != 0 and "data.allow_pickle = true is not supported" in r.stderr
