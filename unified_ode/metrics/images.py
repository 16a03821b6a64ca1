"""FID, KID and IS of generated images through torchmetrics, with cached reference features.

:class:`ImageMetrics` owns one torchmetrics object per metric, all sharing one feature
extractor (see :mod:`unified_ode.metrics.features`). The reference set's features are
extracted once and cached in a file named by data set, split, size and extractor (plus a hash
of the reference images, so a changed data set never reuses stale features). Under DDP each
rank feeds its share of the reference features and its own generated images; torchmetrics
sums (FID), gathers (KID) the states over ranks at ``compute()``, so every metric covers all
ranks' samples.

Usage::

    m = ImageMetrics(extractor, kid_subset_size=1000)
    m.set_reference(ref_features)      # (N, F), this rank's share
    m.reset(); m.update(fake_images)    # any number of times, (B, C, H, W) in [-1, 1]
    values = m.compute()               # {"fid": ..., "kid": ..., "kid_std": ..., "is": ...}
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from unified_ode.metrics.features import LogitsOf


def default_cache_dir() -> Path:
    """``$UNIFIED_ODE_CACHE`` or ``~/.cache/unified_ode``: where reference features go."""
    return Path(os.environ.get("UNIFIED_ODE_CACHE", Path.home() / ".cache" / "unified_ode"))


def reference_cache_path(cache_dir: str | Path, dataset: str, split: str, n: int,
                         extractor_name: str, images: Tensor) -> Path:
    """``<cache>/refs/<dataset>-<split>-<n>-<extractor>-<hash>.pt``; the hash is of the
    reference images' bytes (cheap next to feature extraction)."""
    digest = hashlib.sha1(images.detach().cpu().contiguous().float().numpy().tobytes())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in dataset)
    name = f"{safe}-{split}-{n}-{extractor_name}-{digest.hexdigest()[:10]}.pt"
    return Path(cache_dir) / "refs" / name


@torch.no_grad()
def extract_features(extractor: nn.Module, images: Tensor, batch_size: int = 256,
                     device=None, progress: bool = False) -> Tensor:
    """``(N, F)`` float64 features of ``images`` ``(N, C, H, W)``, on the CPU; ``progress``:
    a bar over images (the Inception network on a CPU takes minutes for a few thousand)."""
    from tqdm.auto import tqdm

    device = device or next(iter(extractor.parameters()), torch.empty(0)).device
    out = []
    with tqdm(total=len(images), desc="reference features", unit="img", disable=not progress,
              leave=False) as bar:
        for chunk in images.split(batch_size):
            out.append(extractor(chunk.to(device)).double().cpu())
            bar.update(len(chunk))
    return torch.cat(out)


def cached_reference_features(extractor: nn.Module, images: Tensor, *, dataset: str,
                              split: str, cache_dir: str | Path | None = None,
                              device=None, verbose: bool = True) -> Tensor:
    """Features of the reference ``images``, read from the cache or computed and written to
    it (atomically: a temporary file renamed into place)."""
    path = reference_cache_path(cache_dir or default_cache_dir(), dataset, split,
                                len(images), extractor.name, images)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    if verbose:
        print(f"computing reference features of {len(images)} {dataset}/{split} images with "
              f"{extractor.name} (cached in {path})", flush=True)
    feats = extract_features(extractor, images, batch_size=64, device=device, progress=verbose)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(feats, tmp)
    os.replace(tmp, path)
    return feats


class ImageMetrics(nn.Module):
    """FID and KID (and IS when the extractor has logits) via torchmetrics.

    Parameters
    ----------
    extractor: see :mod:`unified_ode.metrics.features`.
    kid_subset_size: KID subset size (clipped to the number of samples at compute time).
    kid_subsets: number of KID subsets.
    kid_seed: seed of the KID subsets' draws (torchmetrics draws them from torch's global RNG;
        here from this seed, with the global RNG saved and restored around it), so a KID depends
        only on the two feature sets, not on what ran before it in the process; every rank
        under DDP draws the same subsets.
    inception_score: compute IS (only possible when ``extractor.has_logits``).
    sync: under DDP, ``compute()`` combines every rank's states (torchmetrics' sync); false:
        this process's states only (for features already gathered from every rank).
    """

    def __init__(self, extractor: nn.Module, kid_subset_size: int = 1000,
                 kid_subsets: int = 100, inception_score: bool = True, sync: bool = True,
                 kid_seed: int = 0):
        super().__init__()
        from torchmetrics.image.fid import FrechetInceptionDistance
        from torchmetrics.image.inception import InceptionScore
        from torchmetrics.image.kid import KernelInceptionDistance

        self.extractor = extractor
        self.kid_subset_size = int(kid_subset_size)
        self.kid_seed = int(kid_seed)
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        self.sync = bool(sync)
        self.fid = FrechetInceptionDistance(feature=extractor, reset_real_features=False,
                                            sync_on_compute=self.sync)
        self.kid = KernelInceptionDistance(feature=extractor, reset_real_features=False,
                                           subsets=int(kid_subsets),
                                           subset_size=self.kid_subset_size,
                                           sync_on_compute=self.sync)
        self.is_disabled_reason = None
        self.inception = None
        if inception_score and getattr(extractor, "has_logits", False):
            self.inception = InceptionScore(feature=LogitsOf(extractor), splits=10)
        elif inception_score:
            self.is_disabled_reason = (f"Inception Score disabled: the feature extractor "
                                       f"{getattr(extractor, 'name', '?')} has no class logits "
                                       "(the FID Inception network exports pool features only)")
        self.n_real = 0

    def set_reference(self, features: Tensor) -> None:
        """Reference features ``(N, F)`` (this rank's share under DDP); kept across resets."""
        self.fid.reset_real_features = True
        self.kid.reset_real_features = True
        self.fid.reset()
        self.kid.reset()
        self.fid.reset_real_features = False
        self.kid.reset_real_features = False
        feats = features.to(self.fid.real_features_sum.device, dtype=torch.float32)
        self.fid.update(feats, real=True)
        self.kid.update(feats, real=True)
        self.n_real = int(features.shape[0])

    def reset(self) -> None:
        """Forget the generated samples (the reference stays)."""
        self.fid.reset()
        self.kid.reset()
        if self.inception is not None:
            self.inception.reset()

    def update(self, images: Tensor, features: Tensor | None = None) -> None:
        """Add generated images ``(B, C, H, W)`` in ``[-1, 1]`` (``features``: their features
        ``(B, F)`` when the caller already has them; the images still feed IS)."""
        feats = (self.extractor(images) if features is None else features).float()
        self.fid.update(feats, real=False)
        self.kid.update(feats, real=False)
        if self.inception is not None:
            self.inception.update(images)

    def num_generated(self) -> int:
        """Generated samples in the metric, summed over ranks (torchmetrics' own sync)."""
        with self.fid.sync_context(should_sync=self.sync, should_unsync=self.sync):
            return int(self.fid.fake_features_num_samples.item())

    def compute(self) -> dict:
        """``fid``, ``kid``, ``kid_std`` (and ``is``, ``is_std``) over all ranks' samples."""
        n_fake = self.num_generated()
        if n_fake < 2:
            raise ValueError(f"FID needs at least 2 generated samples, got {n_fake}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = {"fid": float(self.fid.compute())}
            n_real = int(self.kid.real_features[0].shape[0]) if self.kid.real_features else 0
            world = _world_size() if self.sync else 1
            self.kid.subset_size = max(2, min(self.kid_subset_size, n_fake, n_real * world))
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.kid_seed)
                kid_mean, kid_std = self.kid.compute()
            out.update(kid=float(kid_mean), kid_std=float(kid_std))
            if self.inception is not None:
                is_mean, is_std = self.inception.compute()
                out.update({"is": float(is_mean), "is_std": float(is_std)})
        out["n"] = n_fake
        return out


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
