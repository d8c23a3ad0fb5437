"""The paper's geometry, applied identically to an image and its mask: resize (square), then centre crop."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .images import mask_to_binary, to_rgb

#: The paper's geometry (the official PaDiM/ProtoAD code): resize to 256 x 256, then a 224 centre crop. Every
#: default resize and crop of the library (profiles, command line, benchmark, category loading) is these.
PAPER_RESIZE = 256
PAPER_CROP = 224


class PairedTransform:
    """``Resize((resize, resize))`` + ``CenterCrop(crop)`` applied identically to image and mask.

    The image is resized bilinearly (antialiased) and returned as float ``[3,H,W]`` in 0..1;
    the mask is resized with nearest neighbour and returned as float ``[1,H,W]`` in {0,1}.
    """

    def __init__(self, resize: int = PAPER_RESIZE, crop: int = PAPER_CROP) -> None:
        resize, crop = int(resize), int(crop)
        if resize <= 0 or crop <= 0:
            raise ValueError(f"resize and crop must be positive, got resize={resize}, crop={crop}")
        if crop > resize:
            raise ValueError(f"crop ({crop}) must not be larger than resize ({resize})")
        self.resize = resize
        self.crop = crop

    def __repr__(self) -> str:
        return f"PairedTransform(resize={self.resize}, crop={self.crop})"

    def image(self, im: Image.Image) -> torch.Tensor:
        im = to_rgb(im)
        im = TF.resize(im, [self.resize, self.resize],
                       interpolation=InterpolationMode.BILINEAR, antialias=True)
        im = TF.center_crop(im, [self.crop, self.crop])
        return TF.to_tensor(im)  # float32 [3,H,W] in 0..1

    def mask(self, mask: Image.Image | np.ndarray | None) -> torch.Tensor:
        if mask is None:
            return torch.zeros(1, self.crop, self.crop, dtype=torch.float32)
        binary = mask_to_binary(mask) if isinstance(mask, Image.Image) else np.asarray(mask) != 0
        if binary.ndim == 3:
            binary = binary.any(axis=-1)
        m = Image.fromarray(binary.astype(np.uint8) * 255, mode="L")
        m = TF.resize(m, [self.resize, self.resize], interpolation=InterpolationMode.NEAREST)
        m = TF.center_crop(m, [self.crop, self.crop])
        t = torch.from_numpy(np.asarray(m, dtype=np.uint8).copy())
        return (t > 127).to(torch.float32).unsqueeze(0)

    def __call__(
        self, image: Image.Image, mask: Image.Image | np.ndarray | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(image), self.mask(mask)


def paper_transform(resize: int = PAPER_RESIZE, crop: int = PAPER_CROP) -> PairedTransform:
    """The transform of the official PaDiM/ProtoAD code: Resize((256,256)) + CenterCrop(224)."""
    return PairedTransform(resize=resize, crop=crop)


# --------------------------------------------------------------------------- listing
