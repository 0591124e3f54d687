"""Training augmentation in the AdaBins order, on the AdaBins dtypes, and conversion to torch tensors.

The paper trains with the AdaBins data loader, so the augmentation follows it operation by operation,
each on the data type it has there:

1. NYU only: border crop (43, 45, 608, 472) of the decoded 8-bit image and 16-bit depth, removing the
   unregistered Kinect border (KITTI frames arrive already KB-cropped from the reader, as AdaBins
   crops them before rotating);
2. rotation by U(-r, r) degrees (NYU r = 2.5, KITTI r = 1.0) with PIL's ``Image.rotate`` of the
   8-bit image (bilinear, result rounded to 8 bits) and of the 16-bit depth values (nearest, as the
   32-bit image the authors' Pillow opened, see :func:`rotate`), zero outside (rotated-in corners are
   black and have no ground truth);
3. conversion to float32: image / 255, depth / the dataset's depth scale;
4. random crop (NYU 416x544, KITTI 352x704);
5. horizontal flip with p = 0.5;
6. with p = 0.5: gamma U(0.9, 1.1) and brightness (NYU U(0.75, 1.25), KITTI U(0.9, 1.1)) in float32,
   per-channel gain U(0.9, 1.1) multiplied in float64 and stored as float32 (AdaBins multiplies in
   place by a float64 colour image), clip to [0, 1].

The transform starts from a reader's :class:`~clipdepth.data.common.RawFrame` (decoded, not yet
converted; the input pipeline uses it) or from a :class:`~clipdepth.data.common.Sample`, whose image
must then hold 8-bit values (k / 255, as every reader returns): it is converted back exactly, and its
float depth is rotated with the same nearest-neighbour sampling, so both starts give identical bytes.

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
from PIL import Image

from clipdepth.data.common import RawFrame, Sample
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
    """PIL's ``Image.rotate`` (counter-clockwise about the frame centre, zero outside) of an 8-bit image
    (bilinear) and a depth map (nearest), as AdaBins rotates them.

    The depth is rotated as a 32-bit image (PIL mode ``I`` for uint16 values, ``F`` for metres): the
    authors' Pillow 9.2 opened a 16-bit PNG as mode ``I``, and recent Pillow's 16-bit (``I;16``) nearest
    rotation picks other pixels along the rotated-in border. Returns uint8 and int32 (or float32) arrays.
    """
    if image.dtype != np.uint8:
        raise ValueError(f"rotate: the image must be 8-bit (uint8), as AdaBins rotates it; got {image.dtype}")
    wide = depth.astype(np.int32) if depth.dtype == np.uint16 else depth
    rotated = Image.fromarray(image).rotate(float(degrees), resample=Image.Resampling.BILINEAR)
    rotated_depth = Image.fromarray(wide).rotate(float(degrees), resample=Image.Resampling.NEAREST)
    return np.asarray(rotated), np.asarray(rotated_depth)


def _as_u8(sample: Sample) -> np.ndarray:
    """A reader sample's image (values k / 255 in float32) back as the uint8 it was decoded from; refuses
    anything else, since rounding a float image to 8 bits would silently change it."""
    image = np.asarray(sample.image)
    u8 = np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)
    if image.dtype != np.float32 or not np.array_equal(u8.astype(np.float32) / np.float32(255.0), image):
        raise ValueError(
            f"{sample.name}: the augmentation rotates 8-bit images (AdaBins); this image is not k/255 in float32 "
            "(pass the reader's decoded frame or an 8-bit image)"
        )
    return u8


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

    def __call__(self, sample: Sample | RawFrame, epoch: int = 0, index: int = 0) -> Sample:
        cfg = self.config
        rng = self.rng(epoch, index)
        angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
        u_top, u_left = rng.random(), rng.random()
        flip = rng.random() < cfg.flip_p
        colour = rng.random() < cfg.colour_p
        gamma = rng.uniform(*cfg.gamma)
        brightness = rng.uniform(*cfg.brightness)
        gains = rng.uniform(cfg.gain[0], cfg.gain[1], size=3)

        if isinstance(sample, RawFrame):
            image, depth, scale = sample.image, sample.depth, np.float32(sample.depth_scale)
        else:
            image, depth, scale = _as_u8(sample), np.asarray(sample.depth, dtype=np.float32), None
        if cfg.nyu_border:
            image, depth = border_crop(image, depth)
        image, depth = rotate(image, depth, angle)
        image = np.asarray(image, dtype=np.float32) / np.float32(255.0)
        depth = np.asarray(depth, dtype=np.float32) if scale is None else np.asarray(depth, np.float32) / scale
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
            image = image ** np.float32(gamma) * np.float32(brightness)  # float32, as AdaBins
            image = (image * gains).astype(np.float32)  # float64 product stored as float32, as AdaBins
            image = np.clip(image, 0, 1)
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
