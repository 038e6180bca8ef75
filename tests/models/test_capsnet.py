"""CapsNet: squash, routing by agreement, margin loss, the reconstruction term, sizes that follow the data."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from cnnlab.models.capsnet import CapsNet, squash

#: a CapsNet small enough to train a few steps in a second: 16 px digits, few channels, a small decoder
TINY = {"conv_channels": 16, "primary_types": 4, "decoder": [32, 64]}


def tiny(**kwargs: object) -> CapsNet:
    torch.manual_seed(0)
    return CapsNet(10, 1, 16, **{**TINY, **kwargs})


def digit_batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` of scikit-learn's digits at 16 px, as pixels in [0, 1], and their labels."""
    digits = load_digits()
    images = torch.tensor(digits.images[:n], dtype=torch.float32)[:, None] / 16
    return F.interpolate(images, size=16, mode="bilinear"), torch.tensor(digits.target[:n])


def test_squash_keeps_direction_and_maps_lengths_into_the_unit_interval() -> None:
    torch.manual_seed(0)
    s = torch.randn(64, 8) * torch.logspace(-3, 2, 64)[:, None]  # up to 100: float32 rounds longer ones to 1
    v = squash(s)
    lengths, before = v.norm(dim=-1), s.norm(dim=-1)
    assert (lengths >= 0).all() and (lengths < 1).all()
    torch.testing.assert_close(F.cosine_similarity(v, s, dim=-1), torch.ones(64))
    torch.testing.assert_close(lengths, before**2 / (1 + before**2))  # Eq. 1 of the paper


def test_the_papers_model_has_its_8_2_million_parameters_at_28_px() -> None:
    net = CapsNet(10, 1, 28)
    count = sum(p.numel() for p in net.parameters())
    without_decoder = count - sum(p.numel() for p in net.decoder.parameters())
    # 1152 primary capsules (32 types on a 6x6 grid) each with a 16x8 matrix per class
    assert net.head.weight.shape == (10, 1152, 16, 8)
    assert (count, without_decoder) == (8_215_568, 6_804_224)  # the paper: 8.2M, and 6.8M without it


def test_sizes_follow_the_data() -> None:
    small = CapsNet(10, 1, 16, **TINY)  # 5x5 kernels: 16 -> 12 -> 4x4 grid
    assert small.stages[0][0].kernel_size == (5, 5) and small.head.weight.shape == (10, 4 * 16, 16, 8)
    colour = CapsNet(3, 3, 32, **TINY)
    capsules = colour(torch.rand(2, 3, 32, 32))
    assert capsules.shape == (2, 3, 16)
    assert colour.reconstruct(capsules, torch.eye(3)[[0, 2]]).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="at least 17 px.*model.kernel_size"):
        CapsNet(10, 1, 12, kernel_size=9)


def fitted(steps: int = 15) -> tuple[CapsNet, list[float]]:
    """The tiny CapsNet after ``steps`` Adam steps on 16 digits, and the loss before each step."""
    net, (images, labels) = tiny(), digit_batch(16)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(steps):
        loss = net.loss(net(images), labels, images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return net, losses


def test_routing_iterations_change_the_output() -> None:
    # trained a little: at the start (matrices of 0.01) the capsules are too short for agreement to matter
    three, _ = fitted()
    one = tiny(routing_iterations=1)
    one.load_state_dict(three.state_dict())
    images, _ = digit_batch(16)
    with torch.no_grad():
        routed, once = three(images), one(images)
        torch.testing.assert_close(three(images), routed)  # the same input, the same capsules
    # one iteration couples every primary capsule evenly to every class; agreement then moves the couplings
    assert (routed - once).norm(dim=-1).max() > 0.05 * routed.norm(dim=-1).max()
    with pytest.raises(ValueError, match="model.routing_iterations=0"):
        tiny(routing_iterations=0)


def capsules_of_lengths(lengths: list[list[float]]) -> torch.Tensor:
    """Class capsules (N, K, 16) pointing along the first axis, of the given lengths."""
    capsules = torch.zeros(len(lengths), len(lengths[0]), 16)
    capsules[..., 0] = torch.tensor(lengths)
    return capsules


def test_without_reconstruction_the_loss_is_exactly_the_margin_loss() -> None:
    net = CapsNet(3, 1, 16, **{**TINY, "reconstruction_weight": 0})
    assert net.decoder is None
    capsules = capsules_of_lengths([[0.95, 0.3, 0.05], [0.5, 0.2, 0.0]])
    # image 0, class 0: present and long enough (0); class 1 absent but 0.2 too long: 0.5 * 0.2^2
    # image 1, class 2: present, 0.9 short: 0.9^2; classes 0 and 1 absent, 0.4 and 0.1 too long
    expected = ((0.5 * 0.2**2) + (0.9**2 + 0.5 * 0.4**2 + 0.5 * 0.1**2)) / 2
    loss = net.loss(capsules, torch.tensor([0, 2]), torch.rand(2, 1, 16, 16))
    assert float(loss) == pytest.approx(expected)


def test_the_reconstruction_term_masks_the_true_class_in_training_and_the_predicted_one_otherwise() -> None:
    # in double precision: the reconstruction term is 0.0005 of the loss, and the two masks' images differ a
    # little at the start
    net, plain = tiny().double(), CapsNet(10, 1, 16, **{**TINY, "reconstruction_weight": 0})
    capsules = torch.randn(2, 10, 16, dtype=torch.float64) * 0.5
    labels = (capsules.norm(dim=-1).argmax(1) + 1) % 10  # never the predicted class
    predicted = capsules.norm(dim=-1).argmax(1)
    images = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    margin = plain.loss(capsules, labels, images)

    def sse(classes: torch.Tensor) -> torch.Tensor:
        made = net.reconstruct(capsules, F.one_hot(classes, 10).double())
        return (made - images).pow(2).sum((1, 2, 3)).mean()

    with torch.no_grad():
        in_training = (net.train().loss(capsules, labels, images) - margin) / 0.0005
        otherwise = (net.eval().loss(capsules, labels, images) - margin) / 0.0005
        by_label, by_prediction = sse(labels), sse(predicted)
    torch.testing.assert_close(in_training, by_label, rtol=1e-9, atol=0)
    torch.testing.assert_close(otherwise, by_prediction, rtol=1e-9, atol=0)
    assert (by_label - by_prediction).abs() > 1e-4 * by_label  # the two masks make other images


def test_probabilities_are_lengths_over_their_sum() -> None:
    capsules = capsules_of_lengths([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2]])
    probabilities = tiny().probabilities(capsules)
    torch.testing.assert_close(probabilities, torch.tensor([[0.8, 0.1, 0.1], [0.2, 0.6, 0.2]]))
    assert probabilities.argmax(1).tolist() == capsules.norm(dim=-1).argmax(1).tolist()


def test_the_loss_falls_over_a_few_steps_on_a_fixed_batch() -> None:
    _, losses = fitted()
    assert losses[-1] < 0.5 * losses[0] and max(losses[-3:]) < min(losses[:3]), losses
