"""Generate the bad-input corpus: broken images, broken artifacts and broken profiles.

The repository holds this script, not the files: tests build the corpus in a temporary folder
(``build_corpus(folder)``), and ``python tests/corpus/make_corpus.py OUT_DIR`` writes it for a
look by hand. Every entry is tiny (the "huge" image is a 48-byte PNG header claiming
20000x20000 pixels), so building it takes well under a second.

Each entry is a :class:`Entry`: its path, the category it belongs to (``image``, ``artifact``,
``profile``), and what a command must do with it: ``fail`` (one-line error naming ``needle``,
non-zero exit, nothing written), ``convert`` (accepted with a notice containing ``needle``) or
``adjust`` (read as meant to be seen: turned upright, first frame; a notice names it).
"""

from __future__ import annotations

import json
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as st_save


@dataclass(frozen=True)
class Entry:
    name: str
    category: str  # image | artifact | profile
    path: Path
    expect: str  # fail | convert | adjust
    needle: str  # what the error (or notice) must contain; "a|b" accepts either


# --- images ------------------------------------------------------------------------------------

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def huge_png_bytes(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG signature and header for a huge grayscale image, with one empty data chunk:
    readers must refuse it from the header alone, before allocating width*height bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00")) + _png_chunk(b"IEND", b""))


def _good_png(path: Path, mode: str, size: int = 8) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    if mode == "I;16":
        arr = rng.integers(0, 65535, (size, size), dtype=np.uint16)
        Image.fromarray(arr).save(path)  # uint16 -> mode I;16
        return
    base = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), "RGB")
    if mode == "P":
        base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    elif mode == "P-transparent":
        im = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        im.info["transparency"] = 0
        im.save(path, transparency=0)
    elif mode == "CMYK":
        base.convert("CMYK").save(path, format="JPEG")
    else:
        base.convert(mode).save(path)


def build_images(root: Path) -> list[Entry]:
    root.mkdir(parents=True, exist_ok=True)
    good = root / "good.png"
    _good_png(good, "L")
    png = good.read_bytes()
    out: list[Entry] = []

    def add(name, expect, needle, data: bytes | None = None):
        p = root / name
        if data is not None:
            p.write_bytes(data)
        out.append(Entry(name, "image", p, expect, needle))

    add("missing.png", "fail", "not found")
    add("empty.png", "fail", "empty", b"")
    add("truncated.png", "fail", "truncated.png", png[:40])
    big = root / "good-64.png"  # big enough that cutting it loses pixel data, not just IEND
    _good_png(big, "L", size=64)
    add("truncated-data.png", "fail", "truncated-data.png", big.read_bytes()[:big.stat().st_size // 2])
    add("corrupt.png", "fail", "corrupt.png", png[:16] + bytes(range(256)) * 2)
    add("text.png", "fail", "not a readable image", b"hello, I am not a PNG\n" * 4)
    add("html.jpg", "fail", "not a readable image", b"<html><body>404 not found</body></html>")
    add("huge.png", "fail", "limit", huge_png_bytes())
    (root / "folder.png").mkdir(exist_ok=True)
    add("folder.png", "fail", "folder")
    for name, mode, needle in (("palette.png", "P", "converted"),
                               ("palette-transparent.png", "P-transparent", "converted"),
                               ("gray16.png", "I;16", "converted"),
                               ("rgba.png", "RGBA", "converted"),
                               ("gray-alpha.png", "LA", "converted"),
                               ("cmyk.jpg", "CMYK", "converted"),
                               ("bilevel.png", "1", "converted")):
        _good_png(root / name, mode)
        add(name, "convert", needle)
    # Read as they are meant to be seen, with a notice: a 16-bit image darker than 256/65535
    # (scaled by its mode, not its content), a sideways-stored photo with an EXIF orientation,
    # and an animated GIF (its first frame).
    from PIL import Image

    Image.fromarray(np.full((8, 8), 200, np.uint16)).save(root / "gray16-dark.png")
    add("gray16-dark.png", "convert", "converted")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "exif-rotated.jpg",
                                                        exif=exif.tobytes())
    add("exif-rotated.jpg", "adjust", "EXIF orientation 6")
    frames = [Image.new("L", (8, 8), v) for v in (40, 200)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    add("animated.gif", "adjust", "using the first frame")
    return out


# --- artifacts ---------------------------------------------------------------------------------

EBM_ARGS = {"in_channels": 1, "image_size": 8, "channels": 4}
CLF_ARGS = {"in_channels": 1, "num_classes": 10, "width": 4, "image_size": 8}
FIXER_ARGS = {"channels": 3, "width": 4, "n_blocks": 1}  # RGB: gray inputs get converted
DATA = {"range": "[-1,1]", "image_size": 8, "channels": 1, "dataset": "digits"}


def save_valid(root: Path) -> dict[str, Path]:
    """Valid tiny artifacts (EBM, classifier, fixer) that the bad ones are derived from and that
    commands taking several inputs get for their other inputs."""
    from builders import random_classifier, random_ebm, random_fixer

    root.mkdir(parents=True, exist_ok=True)
    return {
        "ebm": random_ebm(root / "ok-ebm.safetensors", arch_args=EBM_ARGS, data=DATA,
                          task="classification"),
        "classifier": random_classifier(
            root / "ok-classifier.safetensors", arch_args=CLF_ARGS,
            data={**DATA, "num_classes": 10, "class_names": [str(i) for i in range(10)]}),
        "fixer": random_fixer(root / "ok-fixer.safetensors", width=FIXER_ARGS["width"],
                              n_blocks=FIXER_ARGS["n_blocks"], data={**DATA, "channels": 3}),
    }


def _rewrite(src: Path, dst: Path, meta_patch: dict | None = None,
             tensor_patch=None) -> None:
    """Copy an artifact with its metadata and/or tensors changed (tampering by hand)."""
    from ebmctl.artifacts import load_artifact

    art = load_artifact(src)
    meta = dict(art.meta)
    meta.update(meta_patch or {})
    tensors = dict(art.tensors)
    if tensor_patch is not None:
        tensors = tensor_patch(tensors)
    dst.write_bytes(st_save(tensors, metadata=meta))


def build_artifacts(root: Path, valid: dict[str, Path]) -> list[Entry]:
    """Bad variants of an EBM artifact (the needle is checked against the error line)."""
    root.mkdir(parents=True, exist_ok=True)
    ebm = valid["ebm"]
    raw = ebm.read_bytes()
    out: list[Entry] = []

    def add(name, needle, data: bytes | None = None):
        p = root / name
        if data is not None:
            p.write_bytes(data)
        out.append(Entry(name, "artifact", p, "fail", needle))

    add("missing.safetensors", "not found")
    add("empty.safetensors", "too short", b"")
    add("text.safetensors", "not a valid safetensors", b"this is a text file, not weights\n")
    add("bad-header-length.safetensors", "bad header length",
        struct.pack("<Q", 1 << 40) + b"{}")
    add("corrupt-header.safetensors", "corrupt header",
        struct.pack("<Q", 16) + b"{not json at all")
    add("truncated.safetensors", "truncated", raw[:len(raw) // 2])
    # Flip bytes inside the tensor data: the file still parses, the weights are garbage (NaN).
    add("nan-weights.safetensors", "nan")
    _rewrite(ebm, root / "nan-weights.safetensors",
             tensor_patch=lambda t: {k: (v.fill_(float("nan")) if k.endswith("weight") else v)
                                     for k, v in t.items()})
    add("no-metadata.safetensors", "not an ebmctl artifact|non-ebmctl",
        st_save({"w": torch.zeros(2)}))
    add("future-schema.safetensors", "schema")
    _rewrite(ebm, root / "future-schema.safetensors", {"ebmctl.schema": "99"})
    add("bad-json-metadata.safetensors", "not valid json")
    _rewrite(ebm, root / "bad-json-metadata.safetensors", {"ebmctl.arch_args": "{not json"})
    add("unknown-arch.safetensors", "not registered")
    _rewrite(ebm, root / "unknown-arch.safetensors", {"ebmctl.arch": "no-such-arch"})
    add("bad-arch-args.safetensors", "cannot build")
    _rewrite(ebm, root / "bad-arch-args.safetensors",
             {"ebmctl.arch_args": json.dumps({**EBM_ARGS, "bogus_argument": 3})})
    add("shape-mismatch.safetensors", "shape")
    _rewrite(ebm, root / "shape-mismatch.safetensors",
             {"ebmctl.arch_args": json.dumps({**EBM_ARGS, "channels": 6})})
    add("missing-tensors.safetensors", "missing")
    _rewrite(ebm, root / "missing-tensors.safetensors",
             tensor_patch=lambda t: dict(list(t.items())[1:]))
    add("no-sampler-metadata.safetensors", "tau")
    _rewrite(ebm, root / "no-sampler-metadata.safetensors", {"ebmctl.extra": "{}"})
    (root / "folder.safetensors").mkdir(exist_ok=True)
    add("folder.safetensors", "folder")
    return out


# --- profiles ----------------------------------------------------------------------------------

def build_profiles(root: Path) -> list[Entry]:
    """Bad profile files. ``--set`` variants of the same faults live in the test matrix."""
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "malformed.toml": ("[train\nsteps = 3\n", "malformed"),
        "unknown-key.toml": ("[defense]\nstepz = 3\n", "defense.steps"),
        "unknown-section.toml": ("[trian]\nsteps = 3\n", "trian"),
        "wrong-type.toml": ('[train]\nsteps = "many"\n', "train.steps"),
        "negative-steps.toml": ("[defense]\nsteps = -5\n", "defense.steps"),
        "eps-above-one.toml": ("[attack]\neps = 1.5\n", "attack.eps"),
        "nan-value.toml": ("[langevin]\ntau = nan\n", "langevin.tau"),
        "binary.toml": ("\x00\x01\x02\xff", "profile"),
    }
    out = []
    for name, (text, needle) in files.items():
        p = root / name
        p.write_bytes(text.encode("latin-1"))
        out.append(Entry(name, "profile", p, "fail", needle))
    out.append(Entry("missing.toml", "profile", root / "missing.toml", "fail", "missing.toml"))
    return out


def build_corpus(root: str | Path) -> dict:
    """Build everything under ``root``; returns {"valid": {...}, "image": [...], ...}."""
    root = Path(root)
    valid = save_valid(root / "valid")
    return {"valid": valid, "image": build_images(root / "images"),
            "artifact": build_artifacts(root / "artifacts", valid),
            "profile": build_profiles(root / "profiles")}


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests/, for builders
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/corpus/make_corpus.py OUT_DIR")
    corpus = build_corpus(sys.argv[1])
    for cat in ("image", "artifact", "profile"):
        for e in corpus[cat]:
            print(f"{cat:9s} {e.expect:8s} {e.path}")
