"""Score a generative model by its samples: the one implementation behind the metrics callback
and ``sample.py task=evaluate``.

* **points** (2-D toys): sliced W2 and MMD against held-out data, named ``sw@<n>`` and
  ``mmd@<n>``;
* **images**: FID, KID (and IS when the extractor has logits), named ``fid@<n>``, ``kid@<n>``,
  ``is@<n>``, against the reference split (training images by default, as is standard).

``<n>`` is the number of generated samples written compactly (``500``, ``2k``, ``1.5k``,
``50k``). Every score also reports ``nfe`` (network evaluations per sample), ``eval/n_samples``
(samples actually scored, over all ranks), ``eval/nonfinite`` and ``eval/seconds``.

**Class-conditional data** (``dataset.conditional=true``, issue 16): sample ``i`` is drawn for
class ``i mod num_classes`` (:func:`~unified_ode.metrics.conditional.balanced_labels`), and
besides the overall scores (all samples against all the reference) each class ``c`` gets
``sw_class/<c>@<n>`` (points) or ``fid_class/<c>@<n>`` and ``kid_class/<c>@<n>`` (images: the
class's samples against the class's reference images, in the same features), plus
``label_accuracy@<n>``: the share of samples that a small classifier trained on the training
split (:class:`~unified_ode.metrics.conditional.ClassifierFeatures`) assigns to the class
they were drawn for (non-finite samples count as wrong). Per-class image scores of ``n``
samples use about ``n / num_classes`` samples each, so they are biased up against the overall
score: compare classes and runs at equal ``n``.

Samples come from fixed prior noise: chunk ``i`` (``batch_size`` samples) uses noise from seed
``(seed, i)``, and under DDP rank ``r`` of ``W`` generates chunks ``i ≡ r (mod W)``, so the
scored set is the same for any number of processes; point samples are gathered to every rank,
image metrics are synchronised by torchmetrics.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor

from unified_ode.errors import UserError
from unified_ode.metrics.points import mmd_rbf, sliced_wasserstein


def count_label(n: int) -> str:
    """``500 -> "500"``, ``2000 -> "2k"``, ``1500 -> "1.5k"``, ``50000 -> "50k"``."""
    n = int(n)
    if n >= 1000 and n % 100 == 0:
        return f"{n / 1000:g}k"
    return str(n)


def dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group (``(0, 1)`` without one)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier():
    if dist_info()[1] > 1:
        torch.distributed.barrier()


def gather_rows(x: Tensor) -> Tensor:
    """Concatenate ``x`` ``(n_r, ...)`` of every rank, in rank order (sizes may differ)."""
    rank, world = dist_info()
    if world == 1:
        return x
    dist = torch.distributed
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def chunk_noise(module, n: int, batch_size: int, seed: int, index: int) -> Tensor:
    """Prior noise of chunk ``index`` of a ``n``-sample set (fixed by ``seed`` and ``index``)."""
    lo = index * batch_size
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + index)
    return module.field.sample_prior(min(batch_size, n - lo), module.data_shape, generator=g)


def chunk_labels(n: int, batch_size: int, num_classes: int, index: int) -> Tensor:
    """Classes of chunk ``index`` of a class-balanced ``n``-sample set (see
    :func:`~unified_ode.metrics.conditional.balanced_labels`)."""
    from unified_ode.metrics.conditional import balanced_labels

    lo = index * batch_size
    return balanced_labels(min(batch_size, n - lo), num_classes, start=lo)


def generate(module, n: int, batch_size: int, seed: int, solver=None, num_classes: int = 0,
             guidance: float = 0.0, guidance_interval=None):
    """This rank's share of the ``n`` fixed-noise samples: ``(samples on CPU, nfe, labels)``;
    with ``num_classes`` the samples are class-conditional (:func:`chunk_labels`, guided with
    weight ``guidance``) and ``labels`` ``(m,)`` are their classes, else ``labels`` is None."""
    rank, world = dist_info()
    chunks, labels, nfe = [], [], 0
    for index in range(rank, -(-n // batch_size), world):
        cond = {}
        if num_classes:
            labels.append(chunk_labels(n, batch_size, num_classes, index))
            cond = {"labels": labels[-1], "guidance": guidance,
                    "guidance_interval": guidance_interval}
        result = module.sample(x_T=chunk_noise(module, n, batch_size, seed, index),
                               solver=solver, **cond)
        chunks.append(result.x.detach().cpu())
        nfe = result.nfe
    ys = (torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)) \
        if num_classes else None
    if not chunks:
        return torch.zeros((0, *module.data_shape)), nfe, ys
    return torch.cat(chunks), nfe, ys


class SampleScorer:
    """Scores ``n_samples`` fixed-noise samples of a module against a data module.

    Parameters
    ----------
    n_samples: generated samples per evaluation (all ranks together).
    batch_size: samples per solver call.
    seed: seed of the fixed prior noise.
    reference_split: ``"auto"`` (held-out for points, train for images), ``"train"`` or
        ``"heldout"``.
    n_reference: reference size (null: ``n_samples``, capped by what the split holds).
    extractor: ``"inception"`` or ``"random"`` (images); ``inception_path``: TorchScript file.
    cache_dir: where reference features are cached (null: ``~/.cache/unified_ode``).
    kid_subset_size, inception_score: see :class:`~unified_ode.metrics.images.ImageMetrics`.
    per_class: class-conditional data: also score each class (module docstring).
    label_accuracy: class-conditional data: train a classifier on at most
        ``classifier_max_train`` training samples (seconds for small images, about a minute
        for CIFAR-10 at 5000) and report the label accuracy of the samples.
    guidance, guidance_interval: classifier-free guidance of the conditional samples
        :meth:`score` draws (:func:`unified_ode.guidance.guided_flow`; the metrics callback
        samples the conditional model, ``w = 0``).
    """

    def __init__(self, n_samples: int = 2000, batch_size: int = 500, seed: int = 1234,
                 reference_split: str = "auto", n_reference: int | None = None,
                 extractor: str = "inception", inception_path: str | None = None,
                 cache_dir: str | None = None, kid_subset_size: int = 1000,
                 inception_score: bool = True, per_class: bool = True,
                 label_accuracy: bool = True, classifier_max_train: int = 5000,
                 guidance: float = 0.0, guidance_interval=None):
        if int(n_samples) < 2 or int(batch_size) < 1:
            raise UserError(f"metrics need n_samples >= 2 and batch_size >= 1, got "
                            f"n_samples={n_samples}, batch_size={batch_size}")
        if reference_split not in ("auto", "train", "heldout"):
            raise UserError(f"reference_split must be auto, train or heldout, got "
                            f"{reference_split!r}")
        self.n_samples = int(n_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.reference_split = reference_split
        self.n_reference = None if n_reference is None else int(n_reference)
        self.extractor_kind = extractor
        self.inception_path = inception_path
        self.cache_dir = cache_dir
        self.kid_subset_size = int(kid_subset_size)
        self.inception_score = bool(inception_score)
        self.per_class = bool(per_class)
        self.label_accuracy = bool(label_accuracy)
        self.classifier_max_train = int(classifier_max_train)
        self.guidance = float(guidance)
        self.guidance_interval = guidance_interval
        self.kind = None
        self.reference = None      # points: (M, d) tensor
        self.image_metrics = None  # images: ImageMetrics
        self.num_classes = 0       # class-conditional data: their classes
        self.reference_labels = None    # (M,) long, with num_classes
        self.reference_features = None  # images, per_class: (M, F)
        self.classifier = None          # label_accuracy: ClassifierFeatures

    # --- names ---------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return count_label(self.n_samples)

    def primary(self, kind: str) -> str:
        """The metric that ranks checkpoints and sweeps (lower is better)."""
        return f"{'sw' if kind == 'points' else 'fid'}@{self.label}"

    # --- reference -----------------------------------------------------------------------
    def _split(self) -> str:
        if self.reference_split != "auto":
            return self.reference_split
        return "heldout" if self.kind == "points" else "train"

    def _reference_data(self, datamodule) -> tuple[Tensor, Tensor | None]:
        """The reference ``(M, *shape)`` and, with :attr:`num_classes`, its classes."""
        n = self.n_reference or self.n_samples
        if self._split() == "heldout":
            return (datamodule.heldout(n),
                    datamodule.heldout_labels(n) if self.num_classes else None)
        data = datamodule.train_tensor()
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        labels = datamodule.train_labels()[perm[:n]] if self.num_classes else None
        return data[perm[:n]], labels

    def _train_classifier(self, datamodule) -> None:
        from unified_ode.metrics.conditional import ClassifierFeatures

        data, labels = datamodule.train_tensor(), datamodule.train_labels()
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
        keep = perm[: self.classifier_max_train]
        self.classifier = ClassifierFeatures(data[keep], labels[keep], max_iter=200)

    def prepare(self, datamodule, device=None) -> None:
        """Load or compute the reference (call on every rank, after process groups exist)."""
        self.kind = getattr(datamodule, "kind", "points")
        self.num_classes = int(datamodule.num_classes) \
            if getattr(datamodule, "conditional", False) else 0
        ref, self.reference_labels = self._reference_data(datamodule)
        if self.num_classes and self.label_accuracy:
            self._train_classifier(datamodule)
        if self.kind == "points":
            self.reference = ref.float()
            return
        if self.kind != "images":
            raise UserError(f"no sample metrics for data of kind {self.kind!r}")
        from unified_ode.metrics.features import build_extractor
        from unified_ode.metrics.images import ImageMetrics, cached_reference_features

        channels = int(datamodule.data_shape[0])
        extractor = build_extractor(self.extractor_kind, self.inception_path,
                                    in_channels=channels).to(device or "cpu")
        name = str(getattr(datamodule, "name", None) or type(datamodule).__name__)
        rank, world = dist_info()
        kwargs = dict(dataset=name, split=self._split(), cache_dir=self.cache_dir,
                      device=device)
        if rank == 0:
            feats = cached_reference_features(extractor, ref, **kwargs)
        _barrier()
        if rank != 0:
            feats = cached_reference_features(extractor, ref, verbose=False, **kwargs)
        self.image_metrics = ImageMetrics(extractor, kid_subset_size=self.kid_subset_size,
                                          inception_score=self.inception_score)
        self.image_metrics.to(device or "cpu")
        self.image_metrics.set_reference(feats[rank::world])
        if self.num_classes and self.per_class:
            self.reference_features = feats
        if self.image_metrics.is_disabled_reason and rank == 0:
            print(self.image_metrics.is_disabled_reason)

    # --- scoring -------------------------------------------------------------------------
    def score_samples(self, samples: Tensor, labels: Tensor | None = None) -> dict:
        """Metrics of ``samples`` (this rank's share), over all ranks; ``labels`` ``(m,)``:
        the classes they were drawn for (class-conditional data: per-class scores too)."""
        finite = torch.isfinite(samples.flatten(1)).all(dim=1)
        dev = _device_of(self)
        nonfinite = int(gather_rows(finite.logical_not().long().to(dev)).sum())
        label = self.label
        by_class = labels is not None and self.num_classes > 0
        if by_class and labels.shape[0] != samples.shape[0]:
            raise ValueError(f"{labels.shape[0]} labels for {samples.shape[0]} samples")
        if self.kind == "points":
            everything = gather_rows(samples.to(dev)).cpu()
            ok_rows = torch.isfinite(everything).all(dim=1)
            ok = everything[ok_rows]
            out = {f"sw@{label}": sliced_wasserstein(ok, self.reference) if len(ok)
                   else float("nan"),
                   f"mmd@{label}": mmd_rbf(ok, self.reference) if len(ok) > 1
                   else float("nan"),
                   "eval/n_samples": float(len(everything)),
                   "eval/nonfinite": float(nonfinite)}
            if by_class and self.per_class:
                from unified_ode.metrics.conditional import per_class_sliced_wasserstein

                ys = gather_rows(labels.to(dev)).cpu()[ok_rows]
                per = per_class_sliced_wasserstein(ok, ys, self.reference,
                                                   self.reference_labels)
                out.update({f"sw_class/{c}@{label}": v for c, v in per.items()
                            if c != "overall"})
        else:
            m = self.image_metrics
            m.reset()
            device = m.fid.fake_features_sum.device
            features = []
            for chunk in samples[finite].split(self.batch_size):
                chunk = chunk.to(device).clamp(-1, 1)
                feats = m.extractor(chunk)
                m.update(chunk, features=feats)
                features.append(feats.detach().double())
            values = m.compute()
            out = {f"fid@{label}": values["fid"], f"kid@{label}": values["kid"],
                   "eval/n_samples": float(values["n"]), "eval/nonfinite": float(nonfinite)}
            if "is" in values:
                out[f"is@{label}"] = values["is"]
            if by_class and self.per_class and self.reference_features is not None:
                out.update(self._class_image_scores(features, labels[finite]))
        if by_class and self.classifier is not None:
            right = torch.zeros(len(samples), dtype=torch.long)
            if finite.any():
                right[finite] = (self.classifier.predict(samples[finite].cpu().clamp(-1, 1))
                                 == labels[finite].cpu()).long()
            right = gather_rows(right.to(dev))
            out[f"label_accuracy@{label}"] = float(right.double().mean()) if len(right) \
                else float("nan")
        return out

    def _class_image_scores(self, features: list[Tensor], labels: Tensor) -> dict:
        """``fid_class/<c>``, ``kid_class/<c>`` from this rank's sample features and their
        classes, gathered from every rank and scored locally."""
        from unified_ode.metrics.conditional import per_class_image_scores

        dev = _device_of(self)
        width = self.reference_features.shape[1]
        local = torch.cat(features) if features else torch.zeros(0, width, dtype=torch.float64)
        feats = gather_rows(local.to(dev)).cpu()
        ys = gather_rows(labels.to(dev)).cpu()
        # features in, so the extractor passes them through (on any device)
        per = per_class_image_scores(self.image_metrics.extractor, self.reference_features,
                                     self.reference_labels, feats, ys,
                                     kid_subset_size=self.kid_subset_size, overall=False,
                                     sync=False)
        label = self.label
        out = {}
        for c, v in per.items():
            out[f"fid_class/{c}@{label}"] = v["fid"]
            out[f"kid_class/{c}@{label}"] = v["kid"]
        return out

    def score(self, module, solver=None) -> tuple[dict, Tensor]:
        """Generate this rank's share, score everything; returns ``(metrics, samples)``
        (class-conditional data: sample ``i`` of class ``i mod num_classes``)."""
        start = time.perf_counter()
        samples, nfe, labels = generate(module, self.n_samples, self.batch_size, self.seed,
                                        solver, self.num_classes, self.guidance,
                                        self.guidance_interval)
        metrics = self.score_samples(samples, labels)
        metrics["nfe"] = float(nfe)
        metrics["eval/seconds"] = time.perf_counter() - start
        return metrics, samples


def _device_of(scorer: SampleScorer):
    """The device collectives must use: CUDA under NCCL, CPU otherwise."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
