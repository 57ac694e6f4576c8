"""The numbers of image quality: one feature extractor's features of two image sets,
and torch-fidelity's own functions on them (``fid_statistics_to_metric``,
``kid_features_to_metric``, ``isc_features_to_metric``, ``prc_features_to_metric``),
the comparison with held-out real images at matched n, and the copy rate.
``medbench.fidelity`` runs it over a suite's fitted generators."""

from __future__ import annotations

import torch

from .errors import DataError
from .extractors import Extractor, ImageDataset, inception_url, torch_fidelity

__all__ = ["COPY_QUANTILE", "FidelityMeter", "RNG_SEED", "isc_splits", "kid_subset_size"]

COPY_QUANTILE = 0.05       # a synthetic image nearer its nearest training image than this
                           # quantile of held-out real images' nearest-training distances
                           # counts as a copy

KID_SUBSET_MAX = 1000      # torch-fidelity's default subset size
KID_SUBSETS = 100          # torch-fidelity's default number of subsets
ISC_SPLITS = 10            # torch-fidelity's default
ISC_MIN_PER_SPLIT = 10     # fewer splits for a small class, so no split holds under 10 images
PRC_NEIGHBORHOOD = 3       # torch-fidelity's default k of the k-NN balls
RNG_SEED = 2020            # torch-fidelity's default seed of KID subsets and IS shuffling


def kid_subset_size(n1: int, n2: int) -> int:
    """torch-fidelity's 1000, lowered to the smaller set of a small class."""
    return min(KID_SUBSET_MAX, n1, n2)


def isc_splits(n: int) -> int:
    return max(1, min(ISC_SPLITS, n // ISC_MIN_PER_SPLIT))


class FidelityMeter:
    """Features from one extractor instance; metrics by torch-fidelity's functions."""

    def __init__(self, extractor: Extractor, device: torch.device | str = "cpu",
                 batch_size: int = 64):
        tf = torch_fidelity()
        from torch_fidelity.utils import create_feature_extractor
        self.ex = extractor
        self.cuda = torch.device(device).type == "cuda"
        self.batch_size = batch_size
        layers = [extractor.layer] + ([extractor.isc_layer] if extractor.isc_layer else [])
        self.torch_fidelity_version = tf.__version__
        try:
            self.net = create_feature_extractor(
                extractor.name, layers, cuda=self.cuda, verbose=False,
                feature_extractor_weights_path=None if extractor.weights is None
                else str(extractor.weights))
        except Exception as exc:  # noqa: BLE001 - whatever a wrong or truncated file raises
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"cannot load the weights of {extractor.label}: {msg[:200]}; "
                            f"torch-fidelity's file is {inception_url()}") from None

    def features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from torch_fidelity.utils import get_featuresdict_from_dataset
        return get_featuresdict_from_dataset(ImageDataset(images), self.net, self.batch_size,
                                             self.cuda, True, False)

    def fid(self, f1: dict, f2: dict) -> float:
        from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
        if min(len(f1[self.ex.layer]), len(f2[self.ex.layer])) < 2:
            return float("nan")
        s1 = fid_featuresdict_to_statistics(f1, self.ex.layer)
        s2 = fid_featuresdict_to_statistics(f2, self.ex.layer)
        return float(fid_statistics_to_metric(s1, s2, False)["frechet_inception_distance"])

    def kid(self, f1: dict, f2: dict) -> tuple[float, float, int]:
        from torch_fidelity.metric_kid import kid_features_to_metric
        a, b = f1[self.ex.layer], f2[self.ex.layer]
        k = kid_subset_size(len(a), len(b))
        if k < 2:
            return float("nan"), float("nan"), k
        out = kid_features_to_metric(a, b, kid_subset_size=k, kid_subsets=KID_SUBSETS,
                                     rng_seed=RNG_SEED, verbose=False)
        return (float(out["kernel_inception_distance_mean"]),
                float(out["kernel_inception_distance_std"]), k)

    def isc(self, f: dict) -> tuple[float, float, int]:
        from torch_fidelity.metric_isc import isc_features_to_metric
        if self.ex.isc_layer is None:
            return float("nan"), float("nan"), 0
        logits = f[self.ex.isc_layer]
        splits = isc_splits(len(logits))
        out = isc_features_to_metric(logits, splits, True, RNG_SEED)
        return float(out["inception_score_mean"]), float(out["inception_score_std"]), splits

    def prc(self, f_synthetic: dict, f_real: dict) -> tuple[float, float]:
        """torch-fidelity's convention: input1 generated, input2 real."""
        from torch_fidelity.metric_prc import prc_features_to_metric
        a, b = f_synthetic[self.ex.layer], f_real[self.ex.layer]
        if min(len(a), len(b)) <= PRC_NEIGHBORHOOD:
            return float("nan"), float("nan")
        out = prc_features_to_metric(a, b, prc_neighborhood=PRC_NEIGHBORHOOD, save_cpu_ram=True,
                                     verbose=False)
        return float(out["precision"]), float(out["recall"])

    def compare(self, synthetic: torch.Tensor, real: torch.Tensor) -> dict[str, float]:
        """All metrics of one synthetic set against one real set (uint8 images)."""
        return self.compare_features(self.features(synthetic), self.features(real))

    def nearest(self, f: dict, f_train: dict) -> torch.Tensor:
        """Distance of each image to its nearest training image, in feature space."""
        a, b = f[self.ex.layer].double(), f_train[self.ex.layer].double()
        return torch.cdist(a, b).min(dim=1).values

    def copy_rate(self, f_synth: dict, f_train: dict, f_heldout: dict) -> float:
        """The share of synthetic images nearer their nearest training image than the
        COPY_QUANTILE quantile of held-out real images' nearest-training distances:
        about COPY_QUANTILE for images as new as real unseen ones, 1 for copies."""
        if min(len(f_synth[self.ex.layer]), len(f_heldout[self.ex.layer])) < 2:
            return float("nan")
        threshold = torch.quantile(self.nearest(f_heldout, f_train), COPY_QUANTILE)
        return float((self.nearest(f_synth, f_train) < threshold).double().mean())

    def heldout(self, f_synth: dict, f_train: dict, f_heldout: dict,
                f_all_train: dict | None = None) -> dict[str, float]:
        """Synthetic images against real images the generator never saw, at matched n
        (n = the fewest of the three sets), beside real training images against the same
        held-out images at the same n, and the copy rate (on all of them; nearest
        neighbours among ``f_all_train``, every image the generator was fitted on, when
        ``f_train`` is a subset of them)."""
        m = min(len(f[self.ex.layer]) for f in (f_synth, f_train, f_heldout))

        def pick(f: dict) -> dict:         # a seeded random m of a set (sets are in index order)
            n = len(f[self.ex.layer])
            idx = torch.randperm(n, generator=torch.Generator().manual_seed(RNG_SEED))[:m]
            return {k: v[idx] for k, v in f.items()}

        fs, ft, fh = pick(f_synth), pick(f_train), pick(f_heldout)
        kid, kid_std, _ = self.kid(fs, fh)
        kid_t, _, _ = self.kid(ft, fh)
        return {"n_heldout": m, "fid_heldout": self.fid(fs, fh), "kid_heldout": kid,
                "kid_heldout_std": kid_std, "fid_train_heldout": self.fid(ft, fh),
                "kid_train_heldout": kid_t,
                "copy_rate": self.copy_rate(f_synth, f_train if f_all_train is None
                                            else f_all_train, f_heldout)}

    def compare_features(self, fs: dict, fr: dict) -> dict[str, float]:
        """All metrics of synthetic features ``fs`` against real features ``fr``."""
        kid_mean, kid_std, k = self.kid(fs, fr)
        isc_mean, isc_std, splits = self.isc(fs)
        precision, recall = self.prc(fs, fr)
        return {"fid": self.fid(fs, fr), "kid_mean": kid_mean, "kid_std": kid_std,
                "kid_subset_size": k, "isc_mean": isc_mean, "isc_std": isc_std,
                "isc_splits": splits, "precision": precision, "recall": recall}
