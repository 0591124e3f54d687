"""AdaBins training augmentation: order, ranges, exact crops, reproducibility per (seed, epoch, index)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from clipdepth.data import Sample, TrainTransform, TransformedDataset, to_tensor
from clipdepth.data.transforms import AugmentConfig, border_crop, rotate
from clipdepth.run.bench_input import write_frames


def _sample(h: int, w: int, seed: int = 0) -> Sample:
    """A frame as a reader returns it: 8-bit image values k / 255 in float32, depth in metres."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8).astype(np.float32) / np.float32(255.0)
    depth = rng.uniform(0.5, 9.0, (h, w)).astype(np.float32)
    return Sample(image=image, depth=depth, name="x", focal=500.0)


def test_paper_parameters():
    nyu, kitti = AugmentConfig.for_dataset("nyu"), AugmentConfig.for_dataset("kitti")
    assert (nyu.crop, nyu.rotation_deg, nyu.brightness, nyu.nyu_border) == (
        (416, 544),
        2.5,
        (0.75, 1.25),
        True,
    )
    assert (kitti.crop, kitti.rotation_deg, kitti.brightness, kitti.nyu_border) == (
        (352, 704),
        1.0,
        (0.9, 1.1),
        False,
    )
    for cfg in (nyu, kitti):
        assert (cfg.flip_p, cfg.colour_p, cfg.gamma, cfg.gain) == (0.5, 0.5, (0.9, 1.1), (0.9, 1.1))
    assert AugmentConfig.for_dataset("nyu", crop=(64, 96)).crop == (64, 96)


def test_shapes_range_and_reproducibility():
    nyu = _sample(480, 640)
    tf = TrainTransform("nyu", seed=7)
    a, b = tf(nyu, epoch=2, index=5), tf(nyu, epoch=2, index=5)
    assert a.image.shape == (416, 544, 3) and a.depth.shape == (416, 544)
    assert a.image.dtype == np.float32 and a.depth.dtype == np.float32
    assert a.image.min() >= 0 and a.image.max() <= 1
    assert a.image.tobytes() == b.image.tobytes() and a.depth.tobytes() == b.depth.tobytes()
    others = [tf(nyu, epoch=3, index=5), tf(nyu, epoch=2, index=6), TrainTransform("nyu", seed=8)(nyu, 2, 5)]
    assert all(o.image.tobytes() != a.image.tobytes() for o in others)
    kitti = TrainTransform("kitti")(_sample(352, 1216), 0, 0)
    assert kitti.image.shape == (352, 704, 3)


def test_rotate_90_matches_rot90_and_identity():
    img = np.arange(5 * 5 * 3, dtype=np.uint8).reshape(5, 5, 3)
    dep = np.arange(25, dtype=np.uint16).reshape(5, 5)
    ri, rd = rotate(img, dep, 90.0)  # counter-clockwise: PIL's Image.rotate
    np.testing.assert_array_equal(ri, np.rot90(img))
    np.testing.assert_array_equal(rd, np.rot90(dep))
    assert ri.dtype == np.uint8 and rd.dtype == np.int32
    i0, d0 = rotate(img, dep, 0.0)
    np.testing.assert_array_equal(i0, img)
    np.testing.assert_array_equal(d0, dep)
    with pytest.raises(ValueError, match="must be 8-bit"):
        rotate(img.astype(np.float32), dep, 1.0)


def test_rotation_nearest_depth_and_zero_corners():
    s = _sample(60, 80)
    u8 = np.rint(s.image * 255).astype(np.uint8)
    ri, rd = rotate(u8, s.depth, 2.5)
    assert set(np.unique(rd)) <= set(np.unique(s.depth)) | {0.0}  # nearest: no interpolated depths
    assert rd[0, 0] == 0 and rd[-1, -1] == 0  # rotated-in corners carry no ground truth
    assert (ri[0, 0] == 0).all() and (ri[-1, -1] == 0).all()  # and are black in the image (PIL fills with 0)
    assert rd[30, 40] == s.depth[30, 40]  # centre stays


def test_a_float_image_that_is_not_8_bit_is_refused():
    s = _sample(60, 80)
    s.image[0, 0, 0] = 0.5  # not k / 255
    with pytest.raises(ValueError, match=r"x: the augmentation rotates 8-bit images"):
        TrainTransform("kitti", crop=(32, 32))(s, 0, 0)


def test_border_crop_full_and_scaled():
    s = _sample(480, 640)
    ci, cd = border_crop(s.image, s.depth)
    np.testing.assert_array_equal(cd, s.depth[45:472, 43:608])
    assert ci.shape == (427, 565, 3)
    small = _sample(120, 160)
    _, sd = border_crop(small.image, small.depth)  # (43, 45, 608, 472) / 4 rounded
    np.testing.assert_array_equal(sd, small.depth[11:118, 11:152])


def test_order_with_degenerate_config():
    s = _sample(480, 640)
    base = replace(
        AugmentConfig.for_dataset("nyu"), crop=(427, 565), rotation_deg=0.0, flip_p=0.0, colour_p=0.0
    )
    out = TrainTransform(config=base)(s, 0, 0)
    np.testing.assert_array_equal(out.depth, s.depth[45:472, 43:608])  # border crop only
    np.testing.assert_array_equal(out.image, s.image[45:472, 43:608])
    flipped = TrainTransform(config=replace(base, flip_p=1.0))(s, 0, 0)
    np.testing.assert_array_equal(flipped.depth, s.depth[45:472, 43:608][:, ::-1])
    bright = TrainTransform(
        config=replace(base, colour_p=1.0, gamma=(1.0, 1.0), brightness=(2.0, 2.0), gain=(1.0, 1.0))
    )(s, 0, 0)
    np.testing.assert_allclose(bright.image, np.clip(s.image[45:472, 43:608] * 2, 0, 1), rtol=1e-6)
    gam = TrainTransform(
        config=replace(base, colour_p=1.0, gamma=(2.0, 2.0), brightness=(1.0, 1.0), gain=(0.5, 0.5))
    )(s, 0, 0)
    np.testing.assert_allclose(gam.image, s.image[45:472, 43:608] ** 2 * 0.5, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(gam.depth, s.depth[45:472, 43:608])  # colour never touches depth


def test_flip_and_colour_probabilities_and_ranges():
    s = _sample(8, 8)
    cfg = replace(AugmentConfig.for_dataset("kitti"), crop=(8, 8), rotation_deg=0.0)
    tf = TrainTransform(config=cfg, seed=1)
    flips = colours = 0
    for i in range(300):
        out = tf(s, 0, i)
        flips += bool(np.array_equal(out.depth, s.depth[:, ::-1]))
        if not np.array_equal(
            out.image, s.image[:, ::-1] if np.array_equal(out.depth, s.depth[:, ::-1]) else s.image
        ):
            colours += 1
            ref = s.image[:, ::-1] if np.array_equal(out.depth, s.depth[:, ::-1]) else s.image
            ratio = out.image[..., 0].mean() / ref[..., 0].mean()
            assert 0.9 * 0.9 * 0.85 < ratio < 1.1 * 1.1 * 1.2  # brightness x gain (x gamma effect)
    assert 100 < flips < 200 and 100 < colours < 200


def test_crop_too_large_is_explained():
    with pytest.raises(ValueError, match=r"crop 416x544 is larger than the frame 107x141"):
        TrainTransform("nyu")(_sample(120, 160), 0, 0)
    out = TrainTransform("nyu", crop=(96, 128))(_sample(120, 160), 0, 0)
    assert out.depth.shape == (96, 128)


def test_to_tensor_and_dataset_wrapper():
    s = _sample(6, 8)
    image, depth = to_tensor(s)
    assert image.shape == (3, 6, 8) and depth.shape == (1, 6, 8)
    assert image.dtype == torch.float32 and depth.dtype == torch.float32
    assert torch.equal(image[1], torch.from_numpy(s.image[..., 1])) and torch.equal(
        depth[0], torch.from_numpy(s.depth)
    )
    ds = TransformedDataset([_sample(40, 60, k) for k in range(3)], TrainTransform("kitti", crop=(32, 48)))
    item = ds[1]
    assert item["image"].shape == (3, 32, 48) and item["depth"].shape == (1, 32, 48) and item["name"] == "x"
    first = ds[1]["image"].clone()
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], first)
    batch = torch.utils.data.default_collate([ds[0], ds[2]])
    assert batch["image"].shape == (2, 3, 32, 48)


# -- must-show 1 of issue 20: the AdaBins loader's operations, in its order and on its dtypes -----------------


def _adabins(rgb_path, depth_path, dataset: str, tf: TrainTransform, epoch: int, index: int):
    """The AdaBins training path on the files, written from its loader's order and dtypes, fed our draws."""
    from PIL import Image

    cfg = tf.config
    rng = tf.rng(epoch, index)  # our draws, in our order
    angle = rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)
    u_top, u_left = rng.random(), rng.random()
    flip, colour = rng.random() < cfg.flip_p, rng.random() < cfg.colour_p
    gamma, brightness = float(rng.uniform(*cfg.gamma)), float(rng.uniform(*cfg.brightness))
    colours = rng.uniform(cfg.gain[0], cfg.gain[1], size=3)

    image, depth_gt = Image.open(rgb_path), Image.open(depth_path)
    depth_gt = depth_gt.convert("I")  # what the authors' Pillow 9.2 returned for a 16-bit PNG (mode I, 32-bit)
    if dataset == "kitti":  # do_kb_crop
        top, left = image.height - 352, (image.width - 1216) // 2
        image = image.crop((left, top, left + 1216, top + 352))
        depth_gt = depth_gt.crop((left, top, left + 1216, top + 352))
    else:  # the unregistered Kinect border
        image, depth_gt = image.crop((43, 45, 608, 472)), depth_gt.crop((43, 45, 608, 472))
    image = image.rotate(angle, resample=Image.BILINEAR)
    depth_gt = depth_gt.rotate(angle, resample=Image.NEAREST)
    image = np.asarray(image, dtype=np.float32) / 255.0
    depth_gt = np.asarray(depth_gt, dtype=np.float32)[..., None] / (1000.0 if dataset == "nyu" else 256.0)
    height, width = cfg.crop
    y, x = int(u_top * (image.shape[0] - height + 1)), int(u_left * (image.shape[1] - width + 1))
    image, depth_gt = image[y : y + height, x : x + width, :], depth_gt[y : y + height, x : x + width, :]
    if flip:
        image, depth_gt = image[:, ::-1, :].copy(), depth_gt[:, ::-1, :].copy()
    if colour:
        image = image**gamma
        image = image * brightness
        image *= np.stack([np.ones(image.shape[:2]) * colours[i] for i in range(3)], axis=2)
        image = np.clip(image, 0, 1)
    return image, depth_gt[..., 0], (flip, colour)


@pytest.mark.parametrize("dataset", ["nyu", "kitti"])
def test_augmentation_equals_the_adabins_pil_operations_bit_for_bit(tmp_path, dataset):
    reader = write_frames(tmp_path, dataset, n=2)  # full-size frames in the dataset's layout, read by our reader
    tf = TrainTransform(dataset, seed=42)
    branches = set()
    for epoch in range(4):
        for index in range(len(reader)):
            item = reader.items[index]
            ref_image, ref_depth, taken = _adabins(item.rgb, item.depth, dataset, tf, epoch, index)
            branches.add(taken)
            for start in (reader.raw(index), reader[index]):  # the pipeline's start and a reader sample
                out = tf(start, epoch, index)
                assert out.image.dtype == ref_image.dtype == np.float32 and out.image.shape == ref_image.shape
                assert out.image.tobytes() == ref_image.tobytes(), (epoch, index)
                assert out.depth.dtype == ref_depth.dtype and out.depth.tobytes() == ref_depth.tobytes()
    assert {flip for flip, _ in branches} == {False, True} and {c for _, c in branches} == {False, True}
