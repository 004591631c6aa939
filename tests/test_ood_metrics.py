"""AUROC / FPR@95%TPR against hand-computed values, IDX reading, the noise sets, `ebmctl ood`."""

import gzip
import json

import numpy as np
import pytest
import torch

from ebmctl.api import DataRequest, InputError
from ebmctl.ood import auroc, average_ranks, fpr_at_tpr, ood_metrics, parse_set


def test_average_ranks_share_ties():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auroc_matches_hand_computed_value_with_ties():
    # Pairs (pos > neg): 0.9 beats all 3; 0.4 beats 0.1, ties 0.4 (1/2), loses to 0.8;
    # 0.3 beats 0.1 only. (3 + 1.5 + 1) / 9 = 5.5 / 9.
    pos, neg = [0.9, 0.4, 0.3], [0.1, 0.4, 0.8]
    assert auroc(pos, neg) == pytest.approx(5.5 / 9)
    # Brute force over all pairs agrees on random data with many ties.
    g = np.random.default_rng(0)
    p, n = g.integers(0, 5, 40).astype(float), g.integers(0, 5, 30).astype(float)
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in p for b in n])
    assert auroc(p, n) == pytest.approx(brute)


def test_auroc_extremes_and_symmetry():
    assert auroc([2, 3], [0, 1]) == 1.0
    assert auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    p, n = [0.2, 0.7, 0.5], [0.1, 0.6]
    assert auroc(p, n) + auroc(n, p) == pytest.approx(1.0)


def test_fpr_at_95_tpr_hand_computed():
    pos = np.arange(1, 21, dtype=float)  # 20 positives: accept 19 → threshold 2
    neg = np.array([0.0, 1.0, 2.0, 5.0])  # 2 and 5 pass the threshold
    assert fpr_at_tpr(pos, neg, 0.95) == pytest.approx(0.5)
    assert fpr_at_tpr(pos, np.array([0.5]), 0.95) == 0.0


def test_ood_metrics_use_in_distribution_as_positive():
    e_in, e_out = torch.tensor([-3.0, -2.0, -1.0]), torch.tensor([0.0, 1.0, -2.5])
    m = ood_metrics(e_in, e_out)
    # scores -E: in {3,2,1}, out {0,-1,2.5}: pairs won = 3 + 2.0... hand count: 3 beats all (3),
    # 2 beats 0,-1 (2), 1 beats 0,-1 (2) → 7/9.
    assert m["auroc"] == pytest.approx(round(7 / 9, 4))
    assert m["n"] == 3


def test_metrics_reject_empty_and_nan():
    with pytest.raises(InputError):
        auroc([], [1.0])
    with pytest.raises(InputError):
        auroc([float("nan")], [1.0])
    with pytest.raises(InputError):
        parse_set("=root")
    assert parse_set("mnist=/data/m") == ("mnist", "/data/m")


def _write_idx(path, arr, code):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.tobytes())


def test_idx_reader_and_fashion_mnist_bundle(tmp_path):
    from ebmctl_classification.datasets import load_idx_bundle, read_idx

    g = np.random.default_rng(0)
    x = g.integers(0, 256, (30, 6, 6), dtype=np.uint8)
    y = (np.arange(30) % 10).astype(np.uint8)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", x, 0x08)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", y, 0x08)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", x[:10], 0x08)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", y[:10], 0x08)
    assert np.array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), x)
    b = load_idx_bundle(DataRequest(root=str(tmp_path), image_size=8, channels=3,
                                    val_fraction=0.0), "fashion-mnist")
    assert b.test.x.shape == (10, 3, 8, 8) and b.train.x.shape == (30, 3, 8, 8)
    assert b.test.y.tolist() == y[:10].tolist()
    raw = load_idx_bundle(DataRequest(root=str(tmp_path), val_fraction=0.0), "fashion-mnist")
    assert torch.allclose(raw.test.x[:, 0], torch.from_numpy(x[:10]).float() / 255)
    # A truncated file is a one-line InputError, not a crash.
    (tmp_path / "bad").mkdir()
    _write_idx(tmp_path / "bad" / "train-images-idx3-ubyte.gz", x, 0x08)
    data = gzip.open(tmp_path / "bad" / "train-images-idx3-ubyte.gz").read()[:-5]
    with gzip.open(tmp_path / "bad" / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(data)
    with pytest.raises(InputError, match="truncated"):
        read_idx(tmp_path / "bad" / "train-images-idx3-ubyte.gz")


def test_noise_sets_follow_request_and_are_deterministic():
    from ebmctl_classification.datasets import load_noise_bundle

    req = DataRequest(image_size=8, channels=1)
    a, b = load_noise_bundle(req, "uniform", 50), load_noise_bundle(req, "uniform", 50)
    assert a.test.x.shape[1:] == (1, 8, 8) and torch.equal(a.test.x, b.test.x)
    gauss = load_noise_bundle(req, "gaussian", 50)
    assert 0.0 <= float(gauss.test.x.min()) and float(gauss.test.x.max()) <= 1.0
    assert abs(float(gauss.train.x.mean()) - 0.5) < 0.05


def _tiny_ebm(tmp_path):
    """A small random lightweight EBM on 8x8 gray images (T = 0.5)."""
    from builders import DIGITS, random_ebm

    args = {"in_channels": 1, "image_size": 8, "channels": 4, "activation": "leaky_relu",
            "leak": 0.05}
    return random_ebm(tmp_path / "ebm.safetensors", arch_args=args, temperature=0.5,
                      data={**DIGITS, "dataset": "digits"})


def test_ood_cli_writes_report_and_histogram(tmp_path):
    from ebmctl.testing import run_cli

    model = _tiny_ebm(tmp_path)
    out = tmp_path / "ood.json"
    r = run_cli(["ood", "--ebm", model, "--ood", "uniform-noise", "--ood", "gaussian-noise",
                 "--n-images", "40", "--out", out])
    assert r.exit_code == 0, r.output
    rep = json.loads(out.read_text())
    assert rep["in_distribution"]["dataset"] == "digits"
    assert set(rep["out_of_distribution"]) == {"uniform-noise", "gaussian-noise"}
    for row in rep["out_of_distribution"].values():
        assert 0.0 <= row["auroc"] <= 1.0 and row["n"] == 40
    assert out.with_suffix(".png").stat().st_size > 1000
    # A temperature only rescales energies, so the metrics do not change.
    e_in, e_out = torch.randn(30), torch.randn(20) + 0.5
    assert ood_metrics(e_in, e_out)["auroc"] == ood_metrics(e_in / 1e-3, e_out / 1e-3)["auroc"]


def test_ood_cli_bad_input_is_one_line(tmp_path):
    from ebmctl.testing import run_cli

    model = _tiny_ebm(tmp_path)
    r = run_cli(["ood", "--ebm", model, "--ood", "no-such-set", "--out", tmp_path / "o.json"])
    assert r.exit_code != 0 and "Traceback" not in r.output and "no-such-set" in r.stderr
    assert not (tmp_path / "o.json").exists()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not an artifact")
    r = run_cli(["ood", "--ebm", bad, "--out", tmp_path / "o.json"])
    assert r.exit_code != 0 and "Traceback" not in r.output
    r = run_cli(["ood", "--ebm", model, "--ood", "mnist", "--out", tmp_path / "o.json"])
    assert r.exit_code != 0 and "data.root" in r.stderr
