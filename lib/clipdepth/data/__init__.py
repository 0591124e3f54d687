"""Datasets: NYU Depth v2 and KITTI Eigen in their standard layouts, procedural scenes, augmentation.

Both profiles go through the same readers: the demo profile renders synthetic scenes *into* the NYU
and KITTI layouts (:mod:`clipdepth.data.synthetic`) and reads them back with :class:`NYUDepthV2` and
:class:`KITTIEigen`, so the paper profile's code path is exercised offline.
"""

from clipdepth.data.common import DataError, Sample
from clipdepth.data.kitti import KITTIEigen, kb_crop
from clipdepth.data.nyu import NYU_BORDER_CROP, NYUDepthV2, NYULabeledMat, export_official_test
from clipdepth.data.specs import KITTI, NYU, SPECS, DatasetSpec, get_spec
from clipdepth.data.synthetic import ensure_synthetic_dataset, render, write_synthetic_dataset
from clipdepth.data.transforms import TrainTransform, TransformedDataset, to_tensor

__all__ = [
    "DataError",
    "DatasetSpec",
    "KITTI",
    "KITTIEigen",
    "NYU",
    "NYUDepthV2",
    "NYULabeledMat",
    "NYU_BORDER_CROP",
    "SPECS",
    "Sample",
    "TrainTransform",
    "TransformedDataset",
    "ensure_synthetic_dataset",
    "export_official_test",
    "get_spec",
    "kb_crop",
    "render",
    "to_tensor",
    "write_synthetic_dataset",
]
