"""Datasets, transforms and dataset preparation for ProtoAD."""

from .datasets import (  # noqa: E402,F401
    BTAD_CATEGORIES,
    IMAGE_EXTENSIONS,
    MVTEC_CATEGORIES,
    AnomalyDataset,
    CorruptImageError,
    DatasetError,
    DatasetLayoutError,
    ImageFolderDataset,
    MissingMaskError,
    OrphanMaskError,
    PairedTransform,
    Sample,
    SampleRecord,
    count_samples,
    list_images,
    load_mask,
    load_rgb,
    paper_transform,
)
from .synthetic import (  # noqa: E402,F401
    DEFAULT_SYNTHETIC_DIR,
    SYNTHETIC_CATEGORIES,
    SYNTHETIC_DEFECTS,
    ensure_mini_benchmark,
    generate_mini_benchmark,
)
