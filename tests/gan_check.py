"""The test every GAN plugin must pass: did it learn its data?

A judge (the small CNN) is trained on real phantom images of three classes at 28 px.
A generator is then fitted on a separate set of real phantom images (unconditional
GANs: one model per class; conditional: one for all) and asked for samples of each
class. ``recognition`` is the judge's mean per-class recall on those samples: the
fraction of class-c samples it calls class c, averaged over classes. A constant or
noise generator scores about 1/3 (whatever it draws is called the same class whatever
class was asked for); a generator that learned each class scores far higher.

Recognition alone would pass a generator that draws the class-mean image every time
(the judge calls that image correctly), so ``diversity`` is checked too: the mean
pairwise distance of the samples of a class over that of real images of the class.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from medbench.api import DatasetSpec
from medbench.plugins.classifiers.smallcnn import SmallCNN
from medbench.plugins.datasets.phantom import Phantom

SIZE = 28
CLASSES = ["normal", "pneumonia", "covid"]
N_SAMPLES = 150


def phantom(counts, seed: int):
    spec = DatasetSpec(loader="phantom", path=None, image_size=SIZE, channels=1,
                       options={"counts": list(counts), "seed": seed})
    ds = Phantom().load(spec)
    return ds.images, ds.labels


@functools.lru_cache(maxsize=1)
def judge() -> tuple[torch.nn.Module, float]:
    """The small CNN trained on 300 real images per class; returns it and its accuracy
    on 300 held-out real images (the ceiling a perfect generator could reach)."""
    torch.manual_seed(0)
    return _train_judge()


@torch.enable_grad()
def _train_judge():
    x, y = phantom([300, 300, 300], seed=101)
    xt, yt = phantom([100, 100, 100], seed=202)
    model = SmallCNN().build(3, 1, SIZE, dropout=0.2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    xf = x.float() / 255.0
    for _ in range(12):
        model.train()
        for idx in torch.randperm(len(y), generator=gen).split(32):
            opt.zero_grad()
            F.cross_entropy(model(xf[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt.float() / 255.0).argmax(1) == yt).float().mean())
    return model, acc


def training_set(per_class: int = 200, seed: int = 7):
    """Real images the generators learn from (disjoint from the judge's)."""
    return phantom([per_class] * len(CLASSES), seed=seed)


@torch.no_grad()
def recognition(sample) -> float:
    """``sample(class_index, n)`` -> uint8 images; mean per-class recall of the judge."""
    model, _ = judge()
    recalls = []
    for c in range(len(CLASSES)):
        imgs = sample(c, N_SAMPLES)
        assert imgs.dtype == torch.uint8 and tuple(imgs.shape) == (N_SAMPLES, 1, SIZE, SIZE)
        pred = model(imgs.float() / 255.0).argmax(1)
        recalls.append(float((pred == c).float().mean()))
    return sum(recalls) / len(recalls)


def diversity(sample) -> float:
    """Smallest over classes of (mean pairwise distance of samples) / (same for real
    training images); about 1 for a generator as varied as the data, 0 for collapse."""
    from medbench.generative import mean_pairwise_distance
    x, y = training_set()
    ratios = []
    for c in range(len(CLASSES)):
        fake = sample(c, 100)
        ratios.append(mean_pairwise_distance(fake) / mean_pairwise_distance(x[y == c][:100]))
    return min(ratios)


def fit_per_class(cls, params: dict, seed: int = 0, train: bool = True) -> dict:
    """One unconditional generator per class (as the engine does); untrained when
    train is False (networks built, never updated)."""
    x, y = training_set()
    gens = {}
    for c in range(len(CLASSES)):
        g = cls(**params)
        xc, yc = x[y == c], y[y == c]
        if train:
            g.fit(xc, yc, classes=CLASSES, seed=seed)
        else:
            g.prepare(xc, yc, classes=CLASSES, seed=seed)
        gens[c] = g
    return gens


def fit_conditional(cls, params: dict, seed: int = 0, train: bool = True):
    x, y = training_set()
    g = cls(**params)
    if train:
        return g.fit(x, y, classes=CLASSES, seed=seed)
    return g.prepare(x, y, classes=CLASSES, seed=seed)
