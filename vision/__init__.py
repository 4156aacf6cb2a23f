"""zaya_vl.vision: vision tower wrapper, image loading, pixel budgets."""

from .images import DEFAULT_MAX_PIXELS, ImageLoadError, load_image, load_images
