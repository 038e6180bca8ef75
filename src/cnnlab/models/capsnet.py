"""CapsNet (Sabour, Frosst and Hinton, 2017, "Dynamic Routing Between Capsules").

A ReLU convolution, primary capsules (a strided convolution whose channels group into 8-number vectors,
squashed) and one 16-number capsule per class, fed by every primary capsule through its own transformation
matrix and routing by agreement. A capsule's length, in [0, 1), says how present its class is.

It brings its own loss and prediction, which the classification task uses in place of cross-entropy and
softmax: ``forward`` returns the class capsules (N, K, 16); ``loss`` is the margin loss plus the decoder's
reconstruction error; ``probabilities`` are the capsule lengths divided by their sum (so the top class is the
longest capsule, and the scores sum to 1 like a softmax's, which exports and ``predict`` show).

Stages: the convolution, then the primary capsules; the head is the class capsules (and the decoder, trained
with it). ``finetune.freeze=1`` freezes the convolution, ``freeze=all`` both stages: only the routing's
transformation matrices and the decoder train.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.models.base import Classifier, init_weights
from cnnlab.models.weights import load_run_weights


def squash(s: Tensor, dim: int = -1, eps: float = 1e-8) -> Tensor:
    """Shrink vectors along ``dim`` to lengths in [0, 1), direction kept: |s|² / (1 + |s|²) · s / |s|."""
    squared = s.pow(2).sum(dim, keepdim=True)
    return s * (squared / (1 + squared) / torch.sqrt(squared + eps))


def paper_kernel(image_size: int) -> int:
    """The paper's 9x9 kernels for 28 px images and larger, scaled down for smaller ones (5 at 16 px)."""
    return max(3, min(9, round(9 * image_size / 28)))


class PrimaryCapsules(nn.Module):
    """A strided convolution whose channels are ``types`` capsules of ``dim`` numbers at every position,
    squashed; kept as a feature map (N, types * dim, h, w), capsule by capsule along the channels."""

    def __init__(self, in_channels: int, types: int, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.types, self.dim = types, dim
        self.conv = nn.Conv2d(in_channels, types * dim, kernel_size, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        n, _, h, w = x.shape
        return squash(x.view(n, self.types, self.dim, h, w), dim=2).view(n, -1, h, w)


class ClassCapsules(nn.Module):
    """One ``dim``-number capsule per class from every primary capsule, coupled by routing by agreement."""

    def __init__(self, inputs: int, in_dim: int, classes: int, dim: int, iterations: int) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"model.routing_iterations={iterations}: give 1 or more (the paper uses 3)")
        self.in_dim, self.iterations = in_dim, iterations
        # W_ij: a matrix for every (class, primary capsule) pair; nothing shared, as in the paper. Small at
        # first: larger matrices (lengths of some tenths at the start) saturate every capsule near length 1
        # within a few Adam steps at the paper's width, where squash has no gradient left
        self.weight = nn.Parameter(0.01 * torch.randn(classes, inputs, dim, in_dim))

    def forward(self, primary: Tensor) -> Tensor:
        n, _, h, w = primary.shape
        # (N, types * dim, h, w) -> (N, types * h * w, dim): one row per primary capsule
        u = primary.view(n, -1, self.in_dim, h, w).permute(0, 1, 3, 4, 2).reshape(n, -1, self.in_dim)
        votes = torch.einsum("kidc,nic->nkid", self.weight, u)  # û_j|i (N, classes, inputs, dim)
        logits = torch.zeros_like(votes[..., 0])  # b_ij
        capsules = votes[:, :, 0]  # replaced in the first iteration; gives TorchScript its type
        for i in range(self.iterations):
            coupling = torch.softmax(logits, dim=1)  # c_ij: each primary capsule shares itself among classes
            capsules = squash(torch.einsum("nki,nkid->nkd", coupling, votes))
            if i < self.iterations - 1:
                logits = logits + torch.einsum("nkid,nkd->nki", votes, capsules)  # agreement
        return capsules


class CapsNet(Classifier):
    """Conv (ReLU), primary capsules, class capsules by routing; a decoder reconstructs the input from them.

    ``kernel_size`` null picks the paper's 9 for 28 px images and a scaled kernel for smaller ones.
    ``reconstruction_weight`` 0 builds no decoder: the loss is then the margin loss alone.
    """

    #: the image size of the paper: the capsule grid, and the class capsules' weights, grow with the image
    native_size: ClassVar[int] = 28

    def __init__(
        self,
        num_classes: int,
        in_channels: int,
        image_size: int,
        conv_channels: int = 256,
        kernel_size: int | None = None,
        primary_types: int = 32,
        primary_dim: int = 8,
        capsule_dim: int = 16,
        routing_iterations: int = 3,
        decoder: tuple[int, ...] | list[int] = (512, 1024),
        reconstruction_weight: float = 0.0005,
        margins: tuple[float, float] | list[float] = (0.9, 0.1),
        absent_weight: float = 0.5,
        init: str = "default",
        weights: str | None = None,
    ) -> None:
        k = kernel_size or paper_kernel(image_size)
        side = (image_size - k + 1 - k) // 2 + 1  # the primary capsules' grid: a valid conv, a strided one
        if image_size - k + 1 < k:
            raise ValueError(
                f"CapsNet with model.kernel_size={k} needs images of at least {2 * k - 1} px, got "
                f"data.image_size={image_size}: resize the data or give a smaller model.kernel_size"
            )
        if reconstruction_weight < 0:
            raise ValueError(f"model.reconstruction_weight={reconstruction_weight}: give 0 (off) or more")
        stages = [
            nn.Sequential(nn.Conv2d(in_channels, conv_channels, k), nn.ReLU(inplace=True)),
            PrimaryCapsules(conv_channels, primary_types, primary_dim, k),
        ]
        inputs = primary_types * side * side
        head = ClassCapsules(inputs, primary_dim, num_classes, capsule_dim, routing_iterations)
        super().__init__(stages, head)
        self.image_shape = (in_channels, image_size, image_size)
        self.margins, self.absent_weight = (float(margins[0]), float(margins[1])), float(absent_weight)
        self.reconstruction_weight = float(reconstruction_weight)
        self.decoder = (
            decoder_layers(num_classes * capsule_dim, list(decoder), in_channels * image_size * image_size)
            if self.reconstruction_weight > 0
            else None
        )
        init_weights(self, init)
        self.weights_report = load_run_weights(self, weights)

    def probabilities(self, capsules: Tensor) -> Tensor:
        """Class scores (N, K) that sum to 1: the capsules' lengths divided by their sum."""
        lengths = torch.linalg.vector_norm(capsules, dim=-1)
        return lengths / lengths.sum(1, keepdim=True).clamp_min(1e-12)

    def reconstruct(self, capsules: Tensor, mask: Tensor) -> Tensor:
        """The image (N, C, H, W) the decoder makes of the capsules weighted by ``mask`` (N, K), one-hot
        for one class (class probabilities after mixup)."""
        if self.decoder is None:
            raise ValueError("this CapsNet has no decoder: model.reconstruction_weight is 0")
        pixels = self.decoder((capsules * mask.unsqueeze(-1)).flatten(1))
        return pixels.view(-1, *self.image_shape)

    def loss(self, capsules: Tensor, labels: Tensor, images: Tensor) -> Tensor:
        """Margin loss, plus ``reconstruction_weight`` times the decoder's sum of squared errors per image.

        ``labels``: class indices or class probabilities; ``images``: the input as pixels in [0, 1]. The
        decoder sees the true class's capsule in training, the predicted class's otherwise.
        """
        lengths = torch.linalg.vector_norm(capsules, dim=-1)
        target = labels if labels.dim() == 2 else F.one_hot(labels, lengths.shape[1]).to(lengths.dtype)
        present, absent = self.margins
        margin = target * F.relu(present - lengths).pow(2)
        margin = margin + self.absent_weight * (1 - target) * F.relu(lengths - absent).pow(2)
        loss = margin.sum(1).mean()
        if self.decoder is None:
            return loss
        mask = target if self.training else F.one_hot(lengths.argmax(1), lengths.shape[1]).to(lengths.dtype)
        error = (self.reconstruct(capsules, mask) - images).pow(2).flatten(1).sum(1).mean()
        return loss + self.reconstruction_weight * error


def decoder_layers(inputs: int, hidden: list[int], pixels: int) -> nn.Sequential:
    """Fully connected layers with ReLU, then one sigmoid unit per pixel."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(inputs, width), nn.ReLU(inplace=True)]
        inputs = width
    return nn.Sequential(*layers, nn.Linear(inputs, pixels), nn.Sigmoid())
