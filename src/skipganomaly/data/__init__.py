"""Data sets and protocols, separate from models: everything becomes a uint8 tensor [N, C, H, W]."""

from .digits import AnomalySplit, digits_leave_one_out, load_digits_images
from .folders import label_folders, labelled_files, load_labelled_folder, train_folder, training_files
from .images import (
    IMAGE_EXTENSIONS,
    as_image_tensor,
    list_image_files,
    load_image,
    load_image_files,
    read_image_files,
    read_images,
    to_unit_range,
)

__all__ = [
    "AnomalySplit", "IMAGE_EXTENSIONS", "as_image_tensor", "digits_leave_one_out", "labelled_files",
    "list_image_files", "load_digits_images", "load_image", "load_image_files", "load_labelled_folder",
    "read_image_files", "read_images", "to_unit_range", "train_folder", "training_files", "label_folders",
]
