"""Images on disk: MVTec AD / BTAD / plain-folder datasets, their files and geometry, downloads, the synthetic benchmark."""

from .datasets import BTAD_CATEGORIES, LAYOUTS, MVTEC_CATEGORIES, AnomalyDataset
from .errors import CorruptImageError, DatasetError, DatasetLayoutError, MissingMaskError, OrphanMaskError
from .folder import ImageFolderDataset
from .images import IMAGE_EXTENSIONS, list_images, load_mask, load_rgb
from .records import SampleRecord, count_samples, example_indices
from .synthetic import (DEFAULT_SYNTHETIC_DIR, SYNTHETIC_CATEGORIES, SYNTHETIC_DEFECTS, ensure_mini_benchmark,
                        generate_mini_benchmark)
from .transforms import PairedTransform, paper_transform

__all__ = ["BTAD_CATEGORIES", "DEFAULT_SYNTHETIC_DIR", "IMAGE_EXTENSIONS", "LAYOUTS", "MVTEC_CATEGORIES",
           "SYNTHETIC_CATEGORIES", "SYNTHETIC_DEFECTS", "AnomalyDataset", "CorruptImageError", "DatasetError",
           "DatasetLayoutError", "ImageFolderDataset", "MissingMaskError", "OrphanMaskError", "PairedTransform",
           "SampleRecord", "count_samples", "example_indices", "ensure_mini_benchmark", "generate_mini_benchmark", "list_images",
           "load_mask", "load_rgb", "paper_transform"]
