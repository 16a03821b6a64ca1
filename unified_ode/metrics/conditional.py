"""Metrics of class-conditional samples (issue 16): per-class and overall FID/KID of images,
per-class sliced Wasserstein distance of points, and "does the label hold": the accuracy of a
classifier trained on the real training split, applied to generated samples.

:class:`ClassifierFeatures` is a small scikit-learn MLP classifier trained on flattened images;
its hidden layer is a cheap feature space for FID/KID of small images (the role LeNet features
play for MNIST FIDs). Such FIDs are comparable within one study, not with published
Inception FIDs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from unified_ode.metrics.points import sliced_wasserstein


class ClassifierFeatures(nn.Module):
    """A scikit-learn ``MLPClassifier`` (one ReLU hidden layer of ``hidden`` units) trained on
    ``images`` ``(N, *shape)`` in ``[-1, 1]`` with ``labels`` ``(N,)``.

    ``forward(images)`` -> hidden features ``(B, hidden)`` float32 (what FID/KID compare);
    :meth:`predict` -> predicted classes ``(B,)`` long.
    """

    has_logits = False

    def __init__(self, images: Tensor, labels: Tensor, hidden: int = 64, seed: int = 0,
                 max_iter: int = 500):
        super().__init__()
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier

        self.clf = MLPClassifier(hidden_layer_sizes=(int(hidden),), max_iter=int(max_iter),
                                 random_state=int(seed), alpha=1e-3)
        with warnings.catch_warnings():  # max_iter bounds the cost; the accuracy is reported
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(images.flatten(1).double().cpu().numpy(), labels.cpu().numpy())
        self.num_features = int(hidden)
        self.name = f"sklearn-mlp{hidden}-seed{seed}"
        self.register_buffer("w", torch.from_numpy(self.clf.coefs_[0]).float())
        self.register_buffer("b", torch.from_numpy(self.clf.intercepts_[0]).float())

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.ndim == 2 and images.shape[1] == self.num_features:
            return images  # already features (torchmetrics passes them through)
        return torch.relu(images.flatten(1).float() @ self.w + self.b)

    def predict(self, images: Tensor) -> Tensor:
        return torch.from_numpy(self.clf.predict(images.flatten(1).double().cpu().numpy()))

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        """Fraction of ``images`` classified as their ``labels``."""
        return float((self.predict(images) == labels.cpu()).double().mean())


def balanced_labels(n: int, num_classes: int, start: int = 0) -> Tensor:
    """Classes ``(n,)`` long of samples ``start .. start + n − 1`` of a class-balanced set:
    sample ``i`` is of class ``i mod num_classes`` (so any chunking gives the same labels)."""
    return torch.arange(int(start), int(start) + int(n)) % int(num_classes)


def image_scores(extractor: nn.Module, reference: Tensor, samples: Tensor,
                 kid_subset_size: int = 100, sync: bool = True) -> dict:
    """``{"fid", "kid", "kid_std", "n"}`` of ``samples`` against ``reference`` (both
    ``(N, C, H, W)`` in ``[-1, 1]``, or both already features ``(N, F)``, which the extractors
    pass through) in ``extractor``'s feature space. ``sync=False``: no DDP combination (the
    inputs are already everything)."""
    from unified_ode.metrics.images import ImageMetrics

    metrics = ImageMetrics(extractor, kid_subset_size=kid_subset_size, kid_subsets=50,
                           inception_score=False, sync=sync)
    metrics.set_reference(extractor(reference))
    metrics.update(samples)
    return metrics.compute()


def per_class_image_scores(extractor: nn.Module, reference: Tensor, reference_labels: Tensor,
                           samples: Tensor, labels: Tensor, kid_subset_size: int = 100,
                           overall: bool = True, sync: bool = True) -> dict:
    """``{"overall": scores, 0: scores, 1: ...}``: FID/KID of all samples against all the
    reference (``overall=False``: left out), and of each class's samples against that class's
    reference images (classes with fewer than 2 of either are left out). Images or features,
    and ``sync``: see :func:`image_scores`."""
    out = {"overall": image_scores(extractor, reference, samples, kid_subset_size, sync)} \
        if overall else {}
    for c in sorted(set(labels.tolist())):
        ref = reference[reference_labels.cpu() == c]
        fake = samples[labels.cpu() == c]
        if len(ref) >= 2 and len(fake) >= 2:
            out[c] = image_scores(extractor, ref, fake, kid_subset_size, sync)
    return out


def per_class_sliced_wasserstein(samples: Tensor, labels: Tensor, reference: Tensor,
                                 reference_labels: Tensor, n_projections: int = 256,
                                 seed: int = 0) -> dict:
    """``{"overall": sw, 0: sw, ...}``: sliced Wasserstein distance of points ``(N, d)``,
    overall and per class (each class's samples against its reference points)."""
    out = {"overall": sliced_wasserstein(samples, reference, n_projections, seed)}
    for c in sorted(set(labels.tolist())):
        fake, ref = samples[labels == c], reference[reference_labels == c]
        if len(fake) and len(ref):
            out[c] = sliced_wasserstein(fake, ref, n_projections, seed)
    return out


def class_balance(labels: Tensor, num_classes: int) -> np.ndarray:
    """Counts per class ``(num_classes,)``."""
    return torch.bincount(labels.cpu(), minlength=num_classes).numpy()


__all__ = ["ClassifierFeatures", "balanced_labels", "class_balance", "image_scores",
           "per_class_image_scores", "per_class_sliced_wasserstein"]
