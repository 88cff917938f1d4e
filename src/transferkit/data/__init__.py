"""Reading images robustly, finding labelled data on disk, splitting it."""

from transferkit.data.dataset import (
    DatasetSplits,
    as_paths,
    LabelledImages,
    collect_images,
    load_dataset,
    read_csv,
    read_image_folder,
    stratified_split,
)
from transferkit.data.images import load_image, to_rgb

__all__ = [
    "DatasetSplits", "as_paths", "LabelledImages", "collect_images", "load_dataset", "read_csv",
    "read_image_folder", "stratified_split", "load_image", "to_rgb",
]
