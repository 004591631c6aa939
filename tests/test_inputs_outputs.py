"""Reading inputs as they are and never losing earlier outputs: 16-bit images scaled by mode,
EXIF orientation, animated files, void mask labels, purify's output size and mode, and outputs
that refuse to overwrite earlier work."""

from __future__ import annotations


import numpy as np
import torch
from PIL import Image



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


# --- item 3: image reading ------------------------------------------------------------------


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
