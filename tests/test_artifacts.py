"""Artifacts: a model saved with its metadata loads back bit for bit and as the kind it was
saved as; truncated, corrupt and foreign safetensors files are refused with an ArtifactError."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from builders import random_ebm
from ebmctl.artifacts import load_artifact, read_header, save_artifact
from ebmctl.errors import ArtifactError
from ebmctl.nn.ebm import LightweightEBM


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
    good = random_ebm(tmp_path / "g.safetensors")
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
