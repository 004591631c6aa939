"""The airbench recipe's parts: the whitening layer whitens, the network's shapes and size, the
smoothed loss, flip TTA and TTA level 2, the whitening-bias freeze, alternating flips, the
schedule, normalisation-layer learning rates, lookahead, chunked
training with resume, and one-line refusals of bad settings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from ebmctl_classification.airbench import AirbenchNet, WhiteningConv

from ebmctl.artifacts import load_artifact
from ebmctl.profiles import resolve
from ebmctl.testing import run_cli
from ebmctl.training.task_model import Lookahead, ModelConfig, param_groups, task_lr

pytestmark = pytest.mark.usefixtures("one_thread")

#: a tiny airbench run on the digits resized to 16x16 RGB (whitening 15x15, groups 7, 3, 1)
TINY = [
    "model.arch=airbench",
    "model.airbench_widths=4,8,8",
    "data.image_size=16",
    "data.channels=3",
    "data.max_train=256",
    "model.batch_size=64",
    "model.epochs=2",
    "model.optimizer=sgd",
    "model.lr=0.2",
    "model.norm_lr_scale=8",
    "model.lookahead_every=2",
    "model.label_smoothing=0.2",
    "model.augment=true",
    "model.translate=2",
    "model.whiten_images=100",
    "run.threads=1",
]


def _sets(pairs):
    return [a for p in pairs for a in ("--set", p)]


def _patch_cov(out: torch.Tensor) -> torch.Tensor:
    """Covariance [C, C] over all positions of feature maps [N, C, H, W]."""
    flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1]).double()
    flat = flat - flat.mean(0)
    return flat.T @ flat / len(flat)


def test_whitening_layer_whitens_correlated_patches():
    g = torch.Generator().manual_seed(0)
    # smooth, channel-correlated images: neighbouring pixels and channels far from independent
    base = F.avg_pool2d(torch.randn(64, 1, 20, 20, generator=g), 3, 1)
    x = (
        torch.cat(
            [
                base,
                0.8 * base + 0.2 * torch.randn(base.shape, generator=g),
                -base + 0.1 * torch.randn(base.shape, generator=g),
            ],
            1,
        )
        * 0.4
        + 0.1
    )
    layer = WhiteningConv(3, 2, eps=1e-8)
    before = _patch_cov(F.unfold(x, 2).view(64, 12, 17, 17))
    sd = before.diag().sqrt()
    corr = before / torch.outer(sd, sd)
    assert (corr - torch.eye(12, dtype=torch.float64)).abs().max() > 0.5  # correlated input
    layer.init_from_data(x)
    with torch.no_grad():
        out = layer(x)
    assert out.shape == (64, 24, 17, 17)
    cov = _patch_cov(out[:, :12])
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=1e-3)
    assert out[:, :12].mean().abs() < 1e-3  # the bias centres the outputs
    assert torch.allclose(out[:, 12:], -out[:, :12])  # the negated copy
    assert not layer.weight.requires_grad and layer.bias.requires_grad


def test_whitening_rejects_images_of_other_channels():
    with pytest.raises(ValueError, match="whitening needs images"):
        WhiteningConv(3).init_from_data(torch.zeros(2, 1, 8, 8))


def test_airbench_output_shape_and_parameter_count():
    net = AirbenchNet(3, 10, (64, 256, 256))
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    w = 2 * 3 * 4  # whitening channels
    convs = 9 * (w * 64 + 64 * 64 + 64 * 256 + 256 * 256 + 256 * 256 + 256 * 256)
    bn = 2 * 2 * (64 + 256 + 256)  # weight and bias of two BatchNorms per group
    expected = (w * 12 + w) + convs + bn + 256 * 10
    assert sum(p.numel() for p in net.parameters()) == expected == 1_972_792
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    assert trainable == expected - w * 12 - 2 * (64 + 256 + 256)  # whitening, BN weights frozen


def test_flip_tta_averages_the_two_views_logits():
    torch.manual_seed(0)  # test-only weight init
    net = AirbenchNet(3, 10, (4, 8, 8)).eval()
    x = torch.rand(5, 3, 16, 16)
    with torch.no_grad():
        one, mirror = net.single_view(x), net.single_view(x.flip(3))
        assert torch.allclose(net(x), 0.5 * (one + mirror), atol=1e-6)
        assert not torch.allclose(one, mirror, atol=1e-4)  # the views differ
        net.flip_tta = False
        assert torch.allclose(net(x), one, atol=1e-6)
        net.flip_tta = True
        net.train()  # training sees one view
        assert net(x).shape == (5, 10)


def test_label_smoothing_loss_equals_a_hand_computation():
    from ebmctl_classification.task import ClassificationTask

    task = ClassificationTask().configured(resolve(None, ["model.label_smoothing=0.2"]))
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    y = torch.tensor([0, 1])
    hand = 0.0
    for row, label in zip(logits.tolist(), y.tolist()):
        lse = math.log(sum(math.exp(v) for v in row))
        logp = [v - lse for v in row]
        target = [0.2 / 3 + (0.8 if k == label else 0.0) for k in range(3)]
        hand += -sum(t * lp for t, lp in zip(target, logp)) / 2
    assert task.train_loss(logits, y).item() == pytest.approx(hand, rel=1e-6)
    # the attacker's per-example loss stays the plain cross-entropy
    assert torch.allclose(task.attack_loss(logits, y), F.cross_entropy(logits, y, reduction="none"))


def test_triangular_schedule_starts_peaks_and_ends_at_its_factors():
    cfg = resolve(
        None,
        [
            "model.lr_schedule=onecycle",
            "model.lr=1.5",
            "model.warmup_fraction=0.23",
            "model.lr_start_factor=0.2",
            "model.lr_end_factor=0.07",
        ],
    )
    total = 100
    lrs = [task_lr(cfg.section(ModelConfig), it, total, []) for it in range(total + 1)]
    warm = 23
    assert lrs[0] == pytest.approx(1.5 * (0.2 + 0.8 / warm))
    assert lrs[warm - 1] == pytest.approx(1.5) and max(lrs) == pytest.approx(1.5)
    assert lrs[total] == pytest.approx(1.5 * 0.07)  # the end of the last iteration
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))


def test_normalisation_parameters_get_scaled_lr_and_the_same_decay_per_step():
    net = AirbenchNet(3, 10, (4, 8, 8))
    groups = param_groups(net, lr=0.1, weight_decay=0.01, norm_scale=64)
    other, norm = groups
    assert norm["lr"] == pytest.approx(6.4) and norm["lr"] * norm["weight_decay"] == pytest.approx(
        other["lr"] * other["weight_decay"]
    )
    bn_biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in norm["params"]} == {id(p) for p in bn_biases}
    assert all(p.requires_grad for g in groups for p in g["params"])  # frozen ones left out
    assert len(param_groups(net, 0.1, 0.01, 1.0)) == 1


def test_lookahead_pulls_towards_the_average_and_ends_on_it():
    net = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    la = Lookahead(net, every=2, decay=0.5)
    with torch.no_grad():
        net.weight.fill_(3.0)
    la.step(1, 2)  # not a multiple of every: nothing happens
    assert torch.allclose(net.weight, torch.full((1, 2), 3.0))
    la.step(2, 2)  # d = 0.5 · (2/2)³: average 0.5·1 + 0.5·3 = 2, and the net continues from it
    assert torch.allclose(net.weight, torch.full((1, 2), 2.0))
    with torch.no_grad():
        net.weight.fill_(5.0)
    la.finish()
    assert torch.allclose(net.weight, torch.full((1, 2), 2.0))


def test_tta_level_two_weights_the_mirror_pairs_of_three_positions():
    torch.manual_seed(0)  # test-only weight init
    net = AirbenchNet(3, 10, (4, 8, 8), tta_translate=True).eval()
    x = torch.rand(3, 3, 16, 16)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    down_right, up_left = padded[..., :16, :16], padded[..., 2:, 2:]
    # the image content moves one pixel: row 1 of the down-right view is row 0 of the image
    assert torch.equal(down_right[..., 1:, 1:], x[..., :-1, :-1])
    assert torch.equal(up_left[..., :-1, :-1], x[..., 1:, 1:])
    with torch.no_grad():

        def pair(v):
            return 0.5 * (net.single_view(v) + net.single_view(v.flip(3)))

        hand = 0.5 * pair(x) + 0.25 * pair(down_right) + 0.25 * pair(up_left)
        # untrained logits are ~1e-4: compare relative to their size
        assert torch.allclose(net(x), hand, rtol=1e-4, atol=1e-9)
        assert not torch.allclose(hand, pair(x), rtol=1e-2, atol=0)  # the translations count
        net.tta_translate = False  # level 1: the mirror pair alone
        assert torch.allclose(net(x), pair(x), rtol=1e-4, atol=1e-9)
        net.flip_tta = False  # no TTA, whatever tta_translate says
        net.tta_translate = True
        assert torch.allclose(net(x), net.single_view(x), rtol=1e-4, atol=1e-9)


def test_whitening_bias_trains_for_its_epochs_then_stays_put():
    net = AirbenchNet(3, 10, (4, 8, 8), whiten_bias_epochs=2)
    opt = torch.optim.SGD(param_groups(net, 0.1, 0.01, 1.0), lr=0.1, momentum=0.9,
                          nesterov=True)
    x = torch.rand(8, 3, 16, 16)
    for epoch in range(4):
        net.begin_epoch(epoch)
        before = net.whiten.bias.detach().clone()
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()
        moved = not torch.equal(before, net.whiten.bias)
        # epochs 0 and 1 train it; from epoch 2 on not even momentum or decay move it
        assert moved == (epoch < 2) == net.whiten.bias.requires_grad, epoch
    always = AirbenchNet(3, 10, (4, 8, 8))  # the default: it trains throughout
    always.begin_epoch(50)
    assert always.whiten.bias.requires_grad and not always.whiten.weight.requires_grad


def test_lookahead_starts_late_from_a_copy_and_syncs_every_epoch():
    net = torch.nn.Linear(2, 1, bias=False)
    la = Lookahead(net, every=2, decay=1.0, start_epoch=1, epoch_sync=True)
    assert la.average is None

    def set_to(v):
        with torch.no_grad():
            net.weight.fill_(v)

    set_to(3.0)
    la.step(2, 4, epoch=0)  # before the start epoch: nothing, and nothing to sync to
    la.end_epoch()
    assert la.average is None and torch.allclose(net.weight, torch.full((1, 2), 3.0))
    set_to(5.0)
    la.step(3, 4, epoch=1)  # not a lookahead iteration
    assert la.average is None
    la.step(4, 4, epoch=1)  # the first one of the start epoch: the average is a copy
    assert torch.allclose(la.average["weight"], torch.full((1, 2), 5.0))
    set_to(9.0)
    la.end_epoch()  # the epoch ends on the average
    assert torch.allclose(net.weight, torch.full((1, 2), 5.0))
    set_to(7.0)
    la.step(4, 4, epoch=2)  # d = 1 · (4/4)³: the average holds, the net returns to it
    assert torch.allclose(net.weight, torch.full((1, 2), 5.0))
    # without epoch_sync, end_epoch leaves the network where it is
    plain = Lookahead(net, every=2, decay=0.5)
    set_to(1.0)
    plain.end_epoch()
    assert torch.allclose(net.weight, torch.full((1, 2), 1.0))


def test_alternating_flip_reverses_every_images_flip_each_epoch(monkeypatch, tmp_path):
    from ebmctl_classification.task import ClassificationTask

    seen: list[dict[bytes, bool]] = [{}, {}, {}]  # per epoch: image bytes → flipped
    count = [0]
    original = ClassificationTask.augment

    def spy(self, x, y, generator, config, flip=None):
        assert flip is not None and flip.dtype == torch.bool and flip.shape == (len(x),)
        for img, f in zip(x, flip.tolist()):
            seen[count[0] // 256][img.numpy().tobytes()] = f  # 256 training images an epoch
            count[0] += 1
        return original(self, x, y, generator, config, flip)

    monkeypatch.setattr(ClassificationTask, "augment", spy)
    settings = TINY + ["model.flip_mode=alternating", "model.epochs=3"]
    r = run_cli(["train", "classifier", *_sets(settings), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert count[0] == 3 * 256 and len(seen[0]) > 250  # (identical digits share a key)
    assert all(d.keys() == seen[0].keys() for d in seen)
    first = seen[0]
    assert 0.35 < sum(first.values()) / len(first) < 0.65  # a random half in the first epoch
    for epoch, flips in enumerate(seen):
        assert all(flips[k] == (first[k] ^ bool(epoch % 2)) for k in first), epoch


def test_chunked_run_equals_one_run_and_resume_refuses_changed_settings(tmp_path):
    one, chunked = tmp_path / "one.safetensors", tmp_path / "chunked.safetensors"
    r = run_cli(["train", "classifier", *_sets(TINY), "--out", str(one)])
    assert r.exit_code == 0, r.output
    r = run_cli(["train", "classifier", *_sets(TINY), "--out", str(chunked), "--stop-after", "1"])
    assert r.exit_code == 0, r.output
    assert not chunked.exists() and "--resume" in r.output
    bad = run_cli(
        [
            "train",
            "classifier",
            *_sets(TINY + ["model.label_smoothing=0.1"]),
            "--out",
            str(chunked),
            "--resume",
        ]
    )
    assert bad.exit_code != 0 and "model.label_smoothing" in bad.stderr
    assert "Traceback" not in bad.output + bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    r = run_cli(["train", "classifier", *_sets(TINY), "--out", str(chunked), "--resume"])
    assert r.exit_code == 0, r.output
    a, b = load_artifact(one, "classifier"), load_artifact(chunked, "classifier")
    assert a.arch == "airbench" and set(a.tensors) == set(b.tensors)
    assert 0 <= a.json("extra")["test_accuracy_single_view"] <= 1  # flip TTA's effect is reported
    for k in a.tensors:
        assert torch.allclose(a.tensors[k].float(), b.tensors[k].float(), atol=1e-5), k


def test_chunked_run_with_airbench_schedules_equals_one_run(tmp_path):
    # the lookahead average does not exist yet at the checkpoint (it starts in epoch 2), the
    # whitening bias freezes after the first epoch and the flips alternate
    settings = TINY + [
        "model.flip_mode=alternating",
        "model.lookahead_start_epoch=1",
        "model.lookahead_epoch_sync=true",
        "model.whiten_bias_epochs=1",
        "model.tta_translate=true",
    ]
    one, chunked = tmp_path / "one.safetensors", tmp_path / "chunked.safetensors"
    assert run_cli(["train", "classifier", *_sets(settings), "--out", str(one)]).exit_code == 0
    r = run_cli(["train", "classifier", *_sets(settings), "--out", str(chunked),
                 "--stop-after", "1"])
    assert r.exit_code == 0 and not chunked.exists(), r.output
    r = run_cli(["train", "classifier", *_sets(settings), "--out", str(chunked), "--resume"])
    assert r.exit_code == 0, r.output
    a, b = load_artifact(one, "classifier"), load_artifact(chunked, "classifier")
    assert a.arch_args["tta_translate"] is True
    for k in a.tensors:
        assert torch.allclose(a.tensors[k].float(), b.tensors[k].float(), atol=1e-5), k


@pytest.mark.parametrize(
    "setting, key",
    [
        ("model.label_smoothing=1.5", "model.label_smoothing"),
        ("model.translate=-1", "model.translate"),
        ("model.norm_lr_scale=0", "model.norm_lr_scale"),
        ("model.lookahead_decay=2", "model.lookahead_decay"),
        ("model.whiten_kernel=0", "model.whiten_kernel"),
        ("model.lr_end_factor=abc", "model.lr_end_factor"),
        ("model.flip_mode=sometimes", "model.flip_mode"),
        ("model.whiten_bias_epochs=-1", "model.whiten_bias_epochs"),
        ("model.lookahead_start_epoch=-2", "model.lookahead_start_epoch"),
        ("model.whiten_epss=1", "model.whiten_eps"),  # unknown: the closest key is named
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_key(setting, key):
    r = run_cli(["train", "classifier", *_sets(TINY + [setting]), "--out", "/nonexistent/x"])
    assert r.exit_code != 0
    assert key in r.stderr and "Traceback" not in r.output + r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_architecture_arguments_are_one_line_errors():
    r = run_cli(["train", "classifier", *_sets(TINY + ["model.airbench_widths=4,8"])])
    assert r.exit_code != 0 and "three positive integers" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli(["train", "classifier", *_sets(TINY + ["model.translate=16"])])
    assert r.exit_code != 0 and "model.translate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
