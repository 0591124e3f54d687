"""Training augmentation in the AdaBins order, and conversion to torch tensors.

The paper trains with the AdaBins data loader, so the augmentation follows it step by step:

1. NYU only: border crop (43, 45, 608, 472) removing the unregistered Kinect border (KITTI frames
   arrive already KB-cropped from the reader);
2. rotation by U(-r, r) degrees (NYU r = 2.5, KITTI r = 1.0), bilinear for the image, nearest for
   depth, zero outside (so rotated-in corners have no ground truth);
3. random crop (NYU 416x544, KITTI 352x704);
4. horizontal flip with p = 0.5;
5. with p = 0.5: gamma U(0.9, 1.1), brightness (NYU U(0.75, 1.25), KITTI U(0.9, 1.1)), per-channel
   gain U(0.9, 1.1), clip to [0, 1].

The output stays in [0, 1]; ImageNet/CLIP normalisation is the backbone's job. Randomness comes from
a numpy Generator seeded with (seed, epoch, index), so a given sample of a given epoch is augmented
identically in any process, worker count or order, and feature caches of augmented views can be keyed
by those three numbers. All random numbers are drawn every time, whichever branches are taken, so
changing one probability does not shift the others.

For reduced-size frames (the demo profile) the NYU border crop is scaled with the frame and the crop
size is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from clipdepth.data.common import Sample
from clipdepth.data.specs import NYU_BORDER_CROP, DatasetSpec, get_spec

__all__ = ["AugmentConfig", "TrainTransform", "rotate", "to_tensor", "TransformedDataset", "border_crop"]


@dataclass(frozen=True)
class AugmentConfig:
    """Parameters of :class:`TrainTransform`; :meth:`for_dataset` gives the paper's values."""

    crop: tuple[int, int]
    rotation_deg: float
    brightness: tuple[float, float]
    nyu_border: bool
    flip_p: float = 0.5
    colour_p: float = 0.5
    gamma: tuple[float, float] = (0.9, 1.1)
    gain: tuple[float, float] = (0.9, 1.1)

    @classmethod
    def for_dataset(cls, dataset: str | DatasetSpec, crop: tuple[int, int] | None = None) -> AugmentConfig:
        spec = get_spec(dataset) if isinstance(dataset, str) else dataset
        return cls(
            crop=tuple(crop) if crop is not None else spec.train_crop,
            rotation_deg=spec.rotation_deg,
            brightness=spec.brightness,
            nyu_border=spec.name == "nyu",
        )


def border_crop(image: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the NYU border crop, scaled to the frame size when it is not 480x640."""
    h, w = depth.shape
    left, top, right, bottom = NYU_BORDER_CROP
    if (h, w) != (480, 640):
        sx, sy = w / 640.0, h / 480.0
        left, right = round(left * sx), round(right * sx)
        top, bottom = round(top * sy), round(bottom * sy)
    return image[top:bottom, left:right], depth[top:bottom, left:right]


def rotate(image: np.ndarray, depth: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate counter-clockwise about the frame centre; bilinear image, nearest depth, zeros outside."""
    h, w = depth.shape
    if degrees == 0:
        return image.copy(), depth.copy()
    a = np.deg2rad(degrees)
    ca, sa = np.cos(a), np.sin(a)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    yy, xx = np.mgrid[0:h, 0:w]
    xr, yr = xx - cx, yy - cy
    sx = ca * xr - sa * yr + cx  # source coordinates of each output pixel
    sy = sa * xr + ca * yr + cy

    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = (sx - x0).astype(np.float32), (sy - y0).astype(np.float32)
    out = np.zeros_like(image, dtype=np.float32)
    for dy_, dx_, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi, yi = x0 + dx_, y0 + dy_
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        vals = image[np.clip(yi, 0, h - 1), np.clip(xi, 0, w - 1)]
        out += np.where(ok[..., None], vals, 0) * wgt[..., None]

    xn, yn = np.floor(sx + 0.5).astype(np.int64), np.floor(sy + 0.5).astype(np.int64)
    ok = (xn >= 0) & (xn < w) & (yn >= 0) & (yn < h)
    dep = np.where(ok, depth[np.clip(yn, 0, h - 1), np.clip(xn, 0, w - 1)], 0).astype(np.float32)
    return out, dep


class TrainTransform:
    """AdaBins training augmentation for one dataset (see module docstring).

    ``dataset`` is ``"nyu"``, ``"kitti"`` or a :class:`DatasetSpec`; ``crop`` overrides the crop size
    (height, width) for reduced-size frames; ``config`` overrides everything.
    """

    def __init__(
        self,
        dataset: str | DatasetSpec = "nyu",
        crop: tuple[int, int] | None = None,
        seed: int = 0,
        config: AugmentConfig | None = None,
    ) -> None:
        self.config = config if config is not None else AugmentConfig.for_dataset(dataset, crop)
        if config is not None and crop is not None:
            self.config = replace(config, crop=tuple(crop))
        self.seed = int(seed)

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator used for sample ``index`` in ``epoch``."""
        return np.random.default_rng([self.seed, int(epoch), int(index)])

    def __call__(self, sample: Sample, epoch: int = 0, index: int = 0) -> Sample:
        cfg = self.config
        rng = self.rng(epoch, index)
        angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
        u_top, u_left = rng.random(), rng.random()
        flip = rng.random() < cfg.flip_p
        colour = rng.random() < cfg.colour_p
        gamma = rng.uniform(*cfg.gamma)
        brightness = rng.uniform(*cfg.brightness)
        gains = rng.uniform(cfg.gain[0], cfg.gain[1], size=3)

        image, depth = sample.image, sample.depth
        if cfg.nyu_border:
            image, depth = border_crop(image, depth)
        image, depth = rotate(image, depth, angle)
        h, w = depth.shape
        ch, cw = cfg.crop
        if ch > h or cw > w:
            raise ValueError(
                f"{sample.name}: crop {ch}x{cw} is larger than the frame {h}x{w} after the border crop; "
                "pass a smaller crop for reduced-size frames"
            )
        top = int(u_top * (h - ch + 1))
        left = int(u_left * (w - cw + 1))
        image = image[top : top + ch, left : left + cw]
        depth = depth[top : top + ch, left : left + cw]
        if flip:
            image, depth = image[:, ::-1], depth[:, ::-1]
        if colour:
            image = np.power(np.clip(image, 0, None), np.float32(gamma)) * np.float32(brightness)
            image = image * gains.astype(np.float32)
        image = np.clip(image, 0, 1).astype(np.float32)
        return Sample(
            image=np.ascontiguousarray(image),
            depth=np.ascontiguousarray(depth, dtype=np.float32),
            name=sample.name,
            focal=sample.focal,
        )


def to_tensor(sample: Sample):
    """(image, depth) as torch float32 tensors shaped 3xHxW and 1xHxW."""
    import torch

    image = torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1), dtype=np.float32))
    depth = torch.from_numpy(np.ascontiguousarray(sample.depth, dtype=np.float32))[None]
    return image, depth


class TransformedDataset:
    """Wrap a reader for torch's DataLoader: optional train transform, tensors out.

    Items are dicts ``{"image", "depth", "focal", "name"}`` (tensors for the first two), which the
    default collate function batches. Call :meth:`set_epoch` at the start of every epoch so the
    augmentation follows the (seed, epoch, index) rule.
    """

    def __init__(self, base, transform: TrainTransform | None = None, epoch: int = 0) -> None:
        self.base = base
        self.transform = transform
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        sample = self.base[index]
        if self.transform is not None:
            sample = self.transform(sample, self.epoch, index)
        image, depth = to_tensor(sample)
        return {"image": image, "depth": depth, "focal": float(sample.focal), "name": sample.name}
