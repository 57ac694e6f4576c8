"""Non-adversarial generators: ``smote`` and ``augment``.

smote    SMOTE through imbalanced-learn: each synthetic image is a random point on the
         segment between a real training image of the class and one of its k nearest
         neighbours of the same class. ``space: pixels`` (default) interpolates raw
         pixels, so the result is an image by construction. ``space: pca`` interpolates
         in a PCA embedding of the class (``components``) and decodes back with the
         inverse transform; the decoded image is the PCA reconstruction, which loses the
         detail outside the kept components (the generator's notes say how much
         variance was kept). k_neighbors is reduced, with a note, when a class has too
         few images; a class with fewer than two images cannot be SMOTEd.
augment  classical augmentation only: copies of random real training images of the class,
         each flipped, rotated, shifted, zoomed and jittered in brightness and contrast
         (the same transforms the trainer offers, applied once, offline).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from medbench.api import Generator, Param
from medbench.errors import DataError, ParameterError
from medbench.hookspecs import hookimpl
from medbench.suite import AugmentConfig

from medbench.generative import seed_for


class RealPool(Generator):
    """Generators that work from the real training images of each class: ``fit`` keeps
    them, ``pool`` hands them out, and every draw is seeded by (seed, class, n) so the
    same request gives the same images whatever was drawn before."""

    conditional = True
    name = "pool"

    def fit(self, images, labels, *, classes, device="cpu", seed=0, progress=None):
        self._by_class = {c: images[labels == c] for c in range(len(classes))}
        self.classes = list(classes)
        self.seed = int(seed)
        return self

    def pool(self, class_index: int, at_least: int = 1) -> torch.Tensor:
        pool = getattr(self, "_by_class", {}).get(class_index)
        have = 0 if pool is None else len(pool)
        if have < at_least:
            classes = getattr(self, "classes", [])
            name = classes[class_index] if 0 <= class_index < len(classes) else class_index
            raise DataError(f"{self.name}: class {name!r} has {have} training image(s); "
                            f"{self.name} needs at least {at_least}")
        return pool

    def rng(self, class_index: int, n: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed_for(self.name, self.seed, class_index, n))


class Smote(RealPool):
    name = "smote"
    description = "SMOTE (imbalanced-learn) on pixels, or in a PCA embedding decoded back"
    conditional = True
    min_class_images = 2          # one neighbour to interpolate with
    defaults = {"k_neighbors": 5, "space": "pixels", "components": 64}
    choices = {"space": ("pixels", "pca")}
    declared = {"k_neighbors": Param("int", "neighbours to interpolate towards (fewer for a "
                                            "tiny class)", low=1),
                "space": Param(help="interpolate pixels, or in a PCA embedding decoded back"),
                "components": Param("int", "PCA components (space: pca)", low=1)}

    def __init__(self, **params):
        super().__init__(**params)
        k = self.cfg["k_neighbors"]
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ParameterError("generator 'smote': k_neighbors must be a positive integer")

    def sample(self, class_index: int, n: int) -> torch.Tensor:
        from imblearn.over_sampling import SMOTE

        pool = self.pool(class_index, at_least=self.min_class_images)
        name = self.classes[class_index]
        shape = pool.shape[1:]
        x = pool.reshape(len(pool), -1).numpy().astype(np.float32)
        k = self.cfg["k_neighbors"]
        if k > len(pool) - 1:
            k = len(pool) - 1
            self.note(f"smote: k_neighbors reduced from {self.cfg['k_neighbors']} to {k} "
                       f"for class {name!r} ({len(pool)} training images)")
        pca = None
        if self.cfg["space"] == "pca":
            from sklearn.decomposition import PCA
            m = min(self.cfg["components"], len(pool) - 1, x.shape[1])
            pca = PCA(n_components=m, random_state=0).fit(x)
            self.note(f"smote: class {name!r} interpolated in a {m}-component PCA embedding "
                       f"keeping {pca.explained_variance_ratio_.sum():.1%} of the pixel variance; "
                       "synthetic images are PCA reconstructions")
            x = pca.transform(x).astype(np.float32)
        # Neighbours are taken within the class, so the other class of this two-class call
        # (imbalanced-learn refuses a single class) takes no part in the interpolation.
        other = np.zeros((1, x.shape[1]), dtype=np.float32)
        xx = np.concatenate([x, other])
        yy = np.array([1] * len(x) + [0])
        sm = SMOTE(sampling_strategy={1: len(x) + n}, k_neighbors=k,
                   random_state=int(self.rng(class_index, n).initial_seed() % (2 ** 32)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xr, yr = sm.fit_resample(xx, yy)
        new = xr[len(xx):]
        assert len(new) == n and (yr[len(xx):] == 1).all()
        if pca is not None:
            new = pca.inverse_transform(new)
        out = np.clip(np.rint(new), 0, 255).astype(np.uint8)
        return torch.from_numpy(out).reshape(n, *shape)


class Augment(RealPool):
    name = "augment"
    description = "classical augmentation of real images (flips, rotations, shifts, jitter)"
    conditional = True
    defaults = {"hflip": True, "vflip": False, "rotate": 15.0, "translate": 0.05,
                "scale": 0.1, "brightness": 0.05, "contrast": 0.1}
    declared = {"hflip": Param(help="random horizontal flips"),
                "vflip": Param(help="random vertical flips"),
                # the ranges are the training block's (AugmentConfig checks them)
                "rotate": Param("number", "most degrees of rotation"),
                "translate": Param("number", "largest shift, a fraction of the size"),
                "scale": Param("number", "largest zoom, a fraction"),
                "brightness": Param("number", "brightness jitter"),
                "contrast": Param("number", "contrast jitter")}

    def __init__(self, **params):
        super().__init__(**params)
        try:
            self.aug = AugmentConfig(**self.cfg)
        except ValueError as exc:
            msg = str(exc).splitlines()
            raise ParameterError(f"generator 'augment': {msg[1] if len(msg) > 1 else msg[0]} "
                                 f"({msg[2].strip() if len(msg) > 2 else ''})") from None

    def sample(self, class_index: int, n: int) -> torch.Tensor:
        from medbench.trainer import augment_batch

        pool = self.pool(class_index)
        gen = self.rng(class_index, n)
        pick = torch.randint(len(pool), (n,), generator=gen)
        out = []
        for i in range(0, n, 512):
            x = pool[pick[i:i + 512]].float().div(255.0)
            x = augment_batch(x, self.aug, gen)
            out.append(x.mul(255.0).round().clamp(0, 255).to(torch.uint8))
        return torch.cat(out) if out else pool[:0].clone()


@hookimpl
def register_generators(register):
    register("smote", Smote)
    register("augment", Augment)
