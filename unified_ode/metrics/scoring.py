"""Score a generative model by its samples: the one implementation behind the metrics callback
and ``sample.py task=evaluate``.

* **points** (2-D toys): sliced W2 and MMD against held-out data, named ``sw@<n>`` and
  ``mmd@<n>``;
* **images**: FID, KID (and IS when the extractor has logits), named ``fid@<n>``, ``kid@<n>``,
  ``is@<n>``, against the reference split (training images by default, as is standard).

``<n>`` is the number of generated samples written compactly (``500``, ``2k``, ``1.5k``,
``50k``). Every score also reports ``nfe`` (network evaluations per sample), ``eval/n_samples``
(samples actually scored, over all ranks), ``eval/nonfinite`` and ``eval/seconds``.

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


def generate(module, n: int, batch_size: int, seed: int, solver=None):
    """This rank's share of the ``n`` fixed-noise samples: ``(samples on CPU, nfe)``."""
    rank, world = dist_info()
    chunks, nfe = [], 0
    for index in range(rank, -(-n // batch_size), world):
        result = module.sample(x_T=chunk_noise(module, n, batch_size, seed, index),
                               solver=solver)
        chunks.append(result.x.detach().cpu())
        nfe = result.nfe
    if not chunks:
        return torch.zeros((0, *module.data_shape)), nfe
    return torch.cat(chunks), nfe


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
    """

    def __init__(self, n_samples: int = 2000, batch_size: int = 500, seed: int = 1234,
                 reference_split: str = "auto", n_reference: int | None = None,
                 extractor: str = "inception", inception_path: str | None = None,
                 cache_dir: str | None = None, kid_subset_size: int = 1000,
                 inception_score: bool = True):
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
        self.kind = None
        self.reference = None      # points: (M, d) tensor
        self.image_metrics = None  # images: ImageMetrics

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

    def _reference_data(self, datamodule) -> Tensor:
        n = self.n_reference or self.n_samples
        if self._split() == "heldout":
            return datamodule.heldout(n)
        data = datamodule.train_tensor()
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        return data[perm[:n]]

    def prepare(self, datamodule, device=None) -> None:
        """Load or compute the reference (call on every rank, after process groups exist)."""
        self.kind = getattr(datamodule, "kind", "points")
        ref = self._reference_data(datamodule)
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
        if self.image_metrics.is_disabled_reason and rank == 0:
            print(self.image_metrics.is_disabled_reason)

    # --- scoring -------------------------------------------------------------------------
    def score_samples(self, samples: Tensor) -> dict:
        """Metrics of ``samples`` (this rank's share), over all ranks."""
        finite = torch.isfinite(samples.flatten(1)).all(dim=1)
        nonfinite = int(gather_rows(finite.logical_not().long().to(_device_of(self))).sum())
        label = self.label
        if self.kind == "points":
            everything = gather_rows(samples.to(_device_of(self))).cpu()
            ok = everything[torch.isfinite(everything).all(dim=1)]
            return {f"sw@{label}": sliced_wasserstein(ok, self.reference) if len(ok)
                    else float("nan"),
                    f"mmd@{label}": mmd_rbf(ok, self.reference) if len(ok) > 1
                    else float("nan"),
                    "eval/n_samples": float(len(everything)),
                    "eval/nonfinite": float(nonfinite)}
        m = self.image_metrics
        m.reset()
        device = m.fid.fake_features_sum.device
        for chunk in samples[finite].split(self.batch_size):
            m.update(chunk.to(device).clamp(-1, 1))
        values = m.compute()
        out = {f"fid@{label}": values["fid"], f"kid@{label}": values["kid"],
               "eval/n_samples": float(values["n"]), "eval/nonfinite": float(nonfinite)}
        if "is" in values:
            out[f"is@{label}"] = values["is"]
        return out

    def score(self, module, solver=None) -> tuple[dict, Tensor]:
        """Generate this rank's share, score everything; returns ``(metrics, samples)``."""
        start = time.perf_counter()
        samples, nfe = generate(module, self.n_samples, self.batch_size, self.seed, solver)
        metrics = self.score_samples(samples)
        metrics["nfe"] = float(nfe)
        metrics["eval/seconds"] = time.perf_counter() - start
        return metrics, samples


def _device_of(scorer: SampleScorer):
    """The device collectives must use: CUDA under NCCL, CPU otherwise."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
