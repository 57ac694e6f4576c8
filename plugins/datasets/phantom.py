"""``phantom``: procedural, deterministic, imbalanced chest-X-ray-like images.

The tool runs offline on it and tests get ground truth. Every image has a dark
background, a soft-tissue thorax, two bright elliptical lungs with soft edges, a heart
shadow, faint rib arcs, low-frequency texture and pixel noise; position, size,
brightness and contrast of all of these vary per image. Each class adds its own
finding, at random positions, sizes and contrasts:

    class 0  nothing (normal)
    class 1  diffuse bright patchy opacities in the lower lung zones (one or both lungs)
    class 2  bilateral peripheral ground-glass haze (faint, large blobs at the lateral
             edges of both lungs, any height)
    class 3  one to three small sharp round nodules anywhere in the lungs
    class 4  a pleural effusion: a bright fluid level with a meniscus at the base of one
             lung

Classes are told apart by structure, not by a single pixel: the per-image variation of
the shared anatomy overlaps the intensity range of the findings. Rendering is
vectorised torch on the CPU (1000 images at 64 px take well under a second) and the
same options give byte-identical images.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from medbench.api import DatasetLoader, DatasetSpec, Param
from medbench.data import ImageSet, convert_channels, resize_images
from medbench.errors import DataError
from medbench.hookspecs import hookimpl

from ._decode import check_spec, opt_str_list

DEFAULT_CLASSES = ["normal", "pneumonia", "covid", "nodule", "effusion"]
DEFAULT_COUNTS = [240, 80, 40, 30, 20]
SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
MAX_IMAGES = 2_000_000



# --------------------------------------------------------------------------- rendering


def _u(gen: torch.Generator, shape, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


def _ellipse(lin, cx, cy, rx, ry, edge):
    """Soft elliptical masks, n x S x S, 1 inside and 0 outside; params are (n,)."""
    ax = ((lin[None, :] - cx[:, None]) / rx[:, None]) ** 2
    ay = ((lin[None, :] - cy[:, None]) / ry[:, None]) ** 2
    r = (ay[:, :, None] + ax[:, None, :]).sqrt_()
    return r.neg_().add_(1.0).div_(edge[:, None, None]).sigmoid_()


def _gauss_sum(lin, cx, cy, s, a):
    """sum_k a_k * exp(-|p - c_k|^2 / 2 s_k^2) for (n, K) params, as n x S x S.

    Gaussians are separable, so the sum is one batched matrix product of the row and
    column profiles (no S x S exp per blob)."""
    d = 2.0 * s[..., None] ** 2
    gx = torch.exp(-(lin[None, None, :] - cx[..., None]) ** 2 / d)      # n K S
    gy = torch.exp(-(lin[None, None, :] - cy[..., None]) ** 2 / d) * a[..., None]
    return torch.bmm(gy.transpose(1, 2), gx)


def _smooth_noise(gen: torch.Generator, n: int, cells: int, size: int) -> torch.Tensor:
    """Low-frequency noise in about [-1, 1]: a cells x cells grid, bicubic upsampled."""
    g = torch.randn((n, 1, cells, cells), generator=gen)
    return F.interpolate(g, size=(size, size), mode="bicubic", align_corners=False)[:, 0]


def _pick(t: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """t: (n, 2) per-lung values, side: (n, K) lung index -> (n, K)."""
    return t.gather(1, side)


def render(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Float images in [0, 1], N x size x size, for the given class labels."""
    n = int(labels.shape[0])
    gen = torch.Generator().manual_seed(int(seed))
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2.0 - 1.0
    px = 2.0 / size                                    # one pixel in these units

    def col(t):
        return t[:, None, None]

    # ---- shared anatomy (drawn for every image, in a fixed order)
    shift_x = _u(gen, n, -0.06, 0.06)
    shift_y = _u(gen, n, -0.06, 0.06)
    scale = _u(gen, n, 0.9, 1.08)
    background = _u(gen, n, 0.02, 0.08)
    body_level = _u(gen, n, 0.14, 0.24)
    lung_level = _u(gen, n, 0.42, 0.62)
    lung_tilt = _u(gen, n, -0.25, 0.05)                # brighter apices or bases
    lung_rx = _u(gen, (n, 2), 0.22, 0.29) * scale[:, None]
    lung_ry = _u(gen, (n, 2), 0.50, 0.62) * scale[:, None]
    lung_dx = _u(gen, (n, 2), 0.33, 0.42) * scale[:, None]
    lung_dy = _u(gen, (n, 2), -0.10, 0.02)
    heart_rx = _u(gen, n, 0.17, 0.27) * scale
    heart_ry = _u(gen, n, 0.15, 0.23) * scale
    heart_x = _u(gen, n, 0.02, 0.12)
    heart_depth = _u(gen, n, 0.35, 0.7)
    rib_freq = _u(gen, n, 4.2, 5.6)
    rib_phase = _u(gen, n, 0.0, 2 * math.pi)
    rib_curve = _u(gen, n, 0.25, 0.45)
    rib_amp = _u(gen, n, 0.04, 0.09)
    texture_amp = _u(gen, n, 0.04, 0.09)
    noise_sigma = _u(gen, n, 0.015, 0.035)
    gain = _u(gen, n, 0.85, 1.15)
    offset = _u(gen, n, -0.04, 0.04)
    texture = _smooth_noise(gen, n, 7, size)
    patchiness = _smooth_noise(gen, n, 9, size)
    # vessel-like benign bright specks in every class (confounders for nodules)
    n_specks = 4
    speck_side = torch.randint(0, 2, (n, n_specks), generator=gen)
    speck_u = _u(gen, (n, n_specks), -0.7, 0.7)
    speck_v = _u(gen, (n, n_specks), -0.7, 0.7)
    speck_s = _u(gen, (n, n_specks), 0.012, 0.025).clamp(min=0.6 * px)
    speck_a = _u(gen, (n, n_specks), 0.0, 0.12)

    # ---- class findings: parameters for every image, used only for its class
    k1 = 6                                             # pneumonia blobs
    p_side = torch.randint(0, 2, (n, k1), generator=gen)
    p_both = torch.rand(n, generator=gen) < 0.5
    p_side = torch.where(p_both[:, None], p_side, p_side[:, :1])  # one lung or both
    p_u = _u(gen, (n, k1), -0.6, 0.6)
    p_v = _u(gen, (n, k1), 0.05, 0.75)                 # lower zone
    p_s = _u(gen, (n, k1), 0.07, 0.16)
    p_a = _u(gen, (n, k1), 0.16, 0.36) * (torch.rand((n, k1), generator=gen) < 0.75)
    p_a[:, 0] = p_a[:, 0].clamp(min=0.18)
    k2 = 3                                             # covid blobs per lung
    c_side = torch.arange(2).repeat_interleave(k2).expand(n, -1)
    c_u = _u(gen, (n, 2 * k2), 0.45, 0.9) * (c_side * 2 - 1)   # lateral periphery
    c_v = _u(gen, (n, 2 * k2), -0.55, 0.65)
    c_s = _u(gen, (n, 2 * k2), 0.09, 0.17)
    c_a = _u(gen, (n, 2 * k2), 0.06, 0.15) * (torch.rand((n, 2 * k2), generator=gen) < 0.8)
    c_a[:, [0, k2]] = c_a[:, [0, k2]].clamp(min=0.08)
    k3 = 3                                             # nodules
    n_side = torch.randint(0, 2, (n, k3), generator=gen)
    n_u = _u(gen, (n, k3), -0.6, 0.6)
    n_v = _u(gen, (n, k3), -0.6, 0.6)
    n_r = _u(gen, (n, k3), 0.035, 0.07).clamp(min=1.2 * px)
    n_a = _u(gen, (n, k3), 0.18, 0.35) * (torch.rand((n, k3), generator=gen) < 0.5)
    n_a[:, 0] = n_a[:, 0].clamp(min=0.2)
    e_side = torch.randint(0, 2, (n, 1), generator=gen)
    e_level = _u(gen, n, 0.35, 0.65)                   # fluid level, in lung radii below centre
    e_meniscus = _u(gen, n, 0.2, 0.45)
    e_a = _u(gen, n, 0.15, 0.3)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=gen))

    # ---- anatomy
    lung_cx = torch.stack([shift_x - lung_dx[:, 0], shift_x + lung_dx[:, 1]], 1)
    lung_cy = torch.stack([shift_y + lung_dy[:, 0], shift_y + lung_dy[:, 1]], 1)

    def lung_point(side, u, v):
        """Points given in lung radii from the centre of lung ``side``: (n, K) each."""
        return (_pick(lung_cx, side) + u * _pick(lung_rx, side),
                _pick(lung_cy, side) + v * _pick(lung_ry, side))

    body = _ellipse(lin, shift_x, 0.05 + shift_y, 0.88 * scale, 0.98 * scale,
                    torch.full((n,), 0.04))
    edge = torch.full((n,), 0.10)
    lung = torch.maximum(
        _ellipse(lin, lung_cx[:, 0], lung_cy[:, 0], lung_rx[:, 0], lung_ry[:, 0], edge),
        _ellipse(lin, lung_cx[:, 1], lung_cy[:, 1], lung_rx[:, 1], lung_ry[:, 1], edge))
    heart = _ellipse(lin, shift_x + heart_x, shift_y + 0.3 * scale, heart_rx, heart_ry,
                     torch.full((n,), 0.12))
    lung.mul_(heart.mul_(-col(heart_depth)).add_(1.0))
    vertical = 1.0 + lung_tilt[:, None] * (lin[None, :] - shift_y[:, None])   # n x S rows
    img = body * col(body_level - background) + col(background)
    img.addcmul_(lung, vertical[:, :, None] * col(lung_level - body_level))
    img.addcmul_(texture.mul_(col(texture_amp)), lung)
    rib_rows = (2 * math.pi * rib_freq[:, None] / 2) * lin[None, :]
    rib_cols = (2 * math.pi * rib_freq[:, None] / 2) * rib_curve[:, None] * lin[None, :] ** 2
    ribs = (rib_rows[:, :, None] + rib_cols[:, None, :] + col(rib_phase)).cos_().clamp_(min=0) ** 4
    img.addcmul_(ribs.mul_(col(rib_amp)), body.add_(0.3))
    cx, cy = lung_point(speck_side, speck_u, speck_v)
    img.addcmul_(_gauss_sum(lin, cx, cy, speck_s, speck_a), lung)

    # ---- findings, each only on the images of its class
    find = torch.zeros_like(img)
    idx = torch.nonzero(labels == 1).flatten()         # patchy lower-zone opacities
    if idx.numel():
        cx, cy = lung_point(p_side[idx], p_u[idx], p_v[idx])
        blobs = _gauss_sum(lin, cx, cy, p_s[idx], p_a[idx])
        find[idx] = blobs * (0.55 + 0.45 * patchiness[idx]).clamp_(min=0.0)
    idx = torch.nonzero(labels == 2).flatten()         # bilateral peripheral ground glass
    if idx.numel():
        cx, cy = lung_point(c_side[idx], c_u[idx], c_v[idx])
        find[idx] = _gauss_sum(lin, cx, cy, c_s[idx], c_a[idx]) * (0.8 + 0.2 * patchiness[idx])
    idx = torch.nonzero(labels == 3).flatten()         # small sharp nodules
    if idx.numel():
        cx, cy = lung_point(n_side[idx], n_u[idx], n_v[idx])
        edge = torch.full((idx.numel(),), 0.15)
        acc = torch.zeros((idx.numel(), size, size))
        for k in range(k3):
            r = n_r[idx, k]
            acc.addcmul_(_ellipse(lin, cx[:, k], cy[:, k], r, r, edge), col(n_a[idx, k]))
        find[idx] = acc
    idx = torch.nonzero(labels == 4).flatten()         # effusion at one lung base
    if idx.numel():
        side = e_side[idx]
        zero = torch.zeros((idx.numel(), 1))
        cx, cy = (t[:, 0] for t in lung_point(side, zero, zero))
        rx, ry = _pick(lung_rx[idx], side)[:, 0], _pick(lung_ry[idx], side)[:, 0]
        lateral = torch.where(side[:, 0] == 0, -1.0, 1.0)
        u = (lin[None, :] - cx[:, None]) / rx[:, None] * lateral[:, None]       # n x S cols
        level = (cy + e_level[idx] * ry)[:, None] - (e_meniscus[idx] * ry)[:, None] * u.clamp(min=0) ** 2
        fluid = torch.sigmoid((lin[None, :, None] - level[:, None, :]) / 0.03)
        fluid.mul_(torch.sigmoid(u * 6.0 + 4.0)[:, None, :])
        find[idx] = fluid * col(e_a[idx])
    img.addcmul_(find, lung)

    noise_gen = torch.Generator().manual_seed(noise_seed)
    img.addcmul_(torch.randn(img.shape, generator=noise_gen), col(noise_sigma))
    img.mul_(col(gain)).add_(col(offset))
    return img.clamp_(0.0, 1.0)


# --------------------------------------------------------------------------- loader


def stratified_splits(labels: torch.Tensor, seed: int) -> list[str]:
    """0.7 / 0.1 / 0.2 train/val/test within each class (at least one val and test
    image once a class has three images)."""
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    out = ["train"] * int(labels.shape[0])
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)].tolist()
        m = len(idx)
        n_test = int(m * SPLIT_FRACTIONS["test"] + 0.5)
        n_val = int(m * SPLIT_FRACTIONS["val"] + 0.5)
        if m >= 3:
            n_test, n_val = max(n_test, 1), max(n_val, 1)
        for i in idx[:n_test]:
            out[i] = "test"
        for i in idx[n_test:n_test + n_val]:
            out[i] = "val"
    return out


@contextmanager
def _one_thread():
    """Render on one intra-op thread: the many small element-wise ops gain little from
    a second thread and, on a busy machine, lose up to 30x waiting for it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class Phantom(DatasetLoader):
    """Procedural chest-X-ray-like images with known classes; see the module docstring.

    Options: counts (images per class, default [240, 80, 40]), classes (names, default
    normal, pneumonia, covid; at most 5 classes), seed (0), splits (false; true gives a
    stratified 0.7/0.1/0.2 train/val/test split), native_size (64: rendered at this size
    and then resized to the suite's image_size with bilinear antialiasing).
    """

    description = "procedural imbalanced chest-X-ray-like images (offline, deterministic)"
    defaults = {"counts": None, "classes": None, "seed": 0, "splits": False, "native_size": 64}
    declared = {
        "counts": Param("list", "images per class (default [240, 80, 40])"),
        "classes": Param("list", "class names (default normal, pneumonia, covid)"),
        "seed": Param("int", "seed of the rendering", low=0, high=2**31 - 1),
        "splits": Param(help="true: stratified 0.7/0.1/0.2 train/val/test splits"),
        "native_size": Param("int", "rendered at this size, px, then resized", low=16, high=512),
    }

    def load(self, spec: DatasetSpec) -> ImageSet:
        opts = self.check("dataset", "phantom", spec.options)
        check_spec("phantom", spec.image_size, spec.channels)
        counts, classes = self._classes(opts)
        seed, want_splits, native = opts["seed"], opts["splits"], opts["native_size"]

        gen = torch.Generator().manual_seed(seed)
        labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        labels = labels[torch.randperm(labels.numel(), generator=gen)]
        chunks = []
        step = max(1, (1 << 22) // (native * native))   # about 16 MB of floats per chunk
        with _one_thread():
            for start in range(0, labels.numel(), step):
                part = render(labels[start:start + step], native, seed * 1_000_003 + start)
                chunks.append((part * 255.0).round_().to(torch.uint8)[:, None])
        images = torch.cat(chunks) if chunks else torch.zeros((0, 1, native, native), dtype=torch.uint8)
        images = convert_channels(resize_images(images, spec.image_size), spec.channels)
        return ImageSet(
            images=images.contiguous(), labels=labels, classes=classes,
            splits=stratified_splits(labels, seed) if want_splits else None,
            sources=[f"phantom:{seed}:{i}" for i in range(labels.numel())],
            name="phantom",
            notes=[f"phantom: procedural images (seed {seed}, rendered at {native} px), "
                   "not real patients"],
        )

    @staticmethod
    def _classes(opts: dict) -> tuple[list[int], list[str]]:
        classes = opts.get("classes")
        counts = opts.get("counts")
        if classes is not None:
            classes = opt_str_list("phantom", "classes", classes)
        if counts is not None:
            if (not isinstance(counts, (list, tuple)) or not counts
                    or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1
                               for c in counts)):
                raise DataError(f"phantom: option counts must be a list of positive integers "
                                f"(images per class), got {counts!r}")
            counts = list(counts)
        k = len(classes) if classes is not None else len(counts) if counts is not None else 3
        if not 2 <= k <= len(DEFAULT_CLASSES):
            raise DataError(f"phantom: {k} classes asked for; counts and classes allow "
                            f"2 to {len(DEFAULT_CLASSES)} classes")
        if classes is not None and counts is not None and len(classes) != len(counts):
            raise DataError(f"phantom: option classes names {len(classes)} classes but counts "
                            f"has {len(counts)} entries; give one count per class")
        counts = counts if counts is not None else DEFAULT_COUNTS[:k]
        classes = classes if classes is not None else DEFAULT_CLASSES[:k]
        if sum(counts) > MAX_IMAGES:
            raise DataError(f"phantom: option counts asks for {sum(counts)} images; "
                            f"at most {MAX_IMAGES} are allowed")
        return counts, classes


@hookimpl
def register_datasets(register):
    register("phantom", Phantom)
