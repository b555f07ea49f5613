"""Image files -> one model input sample each, with TensorFlow's own decoders and resizing.

The steps, in order (the README documents them):
1. decode: JPEG with `tf.io.decode_jpeg(dct_method="INTEGER_ACCURATE")`, the exact inverse DCT
   that libjpeg (and so Pillow and `keras.utils.load_img`) uses by default; PNG, BMP and GIF
   (its first frame) with `tf.io.decode_image(expand_animations=False)`. Values are the raw
   pixel values 0..255 (16-bit PNGs are reduced to 8 bits by TensorFlow's decoder), as float32.
2. channels: an alpha channel the input has no room for is dropped (RGBA -> RGB, gray+alpha ->
   gray); gray -> RGB repeats the value (`tf.image.grayscale_to_rgb`); RGB -> gray is
   `tf.image.rgb_to_grayscale` (0.2989 R + 0.5870 G + 0.1140 B); an alpha channel the input
   wants but the image lacks is opaque (255).
3. size: to the input's height and width with `--resize`:
   stretch  `tf.image.resize` to exactly H x W (aspect ratio not kept);
   crop     scale by max(H/h, W/w) (rounded to whole pixels) so the image covers H x W, then
            cut out the centre (`tf.image.resize_with_crop_or_pad`);
   pad      `tf.image.resize_with_pad`: scale by min(H/h, W/w) to fit inside, then pad the
            border with zeros (black, before any preprocessing) around the centred image;
   none     (--no-resize) an image of another size is an error.
   An image that already has the size is not resampled. The interpolation is any method of
   `tf.image.resize` (--interpolation, default bilinear; no antialiasing).
4. layout: channels-first inputs get (C, H, W); an input of rank 2 takes (H, W).
"""

import math
import re
from pathlib import Path

import numpy as np

from tensorprobe.errors import InputError


class BadImage(InputError):
    """An image that cannot be read, decoded or made to fit; --skip-bad passes over it."""


class ImageReader:
    """Turns image files into samples for one model input."""

    def __init__(self, spec, options, size=None):
        """`size` is the (height, width) to produce; None takes the first image's size (for an
        input that takes any size, when neither --size nor an array says otherwise)."""
        import tensorflow as tf

        self.tf = tf
        self.spec = spec
        self.options = options
        self.size = size
        self.channels = spec.channels
        self.axes = spec.image_axes
        self.dtype = np.dtype(spec.dtype)
        self.size_from = None  # the image that fixed `size`, when the first one did

    def load(self, path):
        """One sample: an array of the input's sample shape, in the input's dtype."""
        tf = self.tf
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise BadImage(f"{path}: cannot read ({e.strerror or e})") from e
        try:
            if data[:3] == b"\xff\xd8\xff":
                image = tf.io.decode_jpeg(data, channels=0, dct_method="INTEGER_ACCURATE")
            else:
                image = tf.io.decode_image(data, channels=0, expand_animations=False)
        except tf.errors.OpError as e:
            raise BadImage(f"{path}: not a readable image ({tf_message(e)})") from e
        image = self._convert_channels(path, tf.cast(image, tf.float32))
        image = self._resize(path, image)
        if self.axes[2] is None:
            image = image[..., 0]
        elif self.axes[2] == 0:
            image = tf.transpose(image, (2, 0, 1))
        return self._cast(image.numpy())

    def _convert_channels(self, path, image):
        tf = self.tf
        have, want = int(image.shape[-1]), self.channels
        if have == want:
            return image
        if have not in (1, 2, 3, 4):
            raise BadImage(f"{path}: an image with {have} channels")
        colour, alpha = (image[..., : have - 1], image[..., have - 1 :]) if have in (2, 4) else (image, None)
        if want in (1, 2) and colour.shape[-1] == 3:
            colour = tf.image.rgb_to_grayscale(colour)
        elif want in (3, 4) and colour.shape[-1] == 1:
            colour = tf.image.grayscale_to_rgb(colour)
        if want in (2, 4):
            if alpha is None:
                alpha = tf.fill(tf.concat([tf.shape(colour)[:-1], [1]], 0), 255.0)
            return tf.concat([colour, alpha], -1)
        return colour

    def _resize(self, path, image):
        tf = self.tf
        h, w = int(image.shape[0]), int(image.shape[1])
        if self.size is None:
            self.size, self.size_from = (h, w), path
        th, tw = self.size
        if (h, w) == (th, tw):
            return image
        mode, method = self.options.resize, self.options.interpolation
        if self.size_from is not None:
            raise BadImage(
                f"{path}: image is {h}x{w} (height x width), but the first image, {self.size_from}, "
                f"is {th}x{tw}; input '{self.spec.name}' takes any size, so give --size HxW to "
                "resize them to one"
            )
        if mode == "none":
            raise BadImage(
                f"{path}: image is {h}x{w} (height x width), input '{self.spec.name}' takes "
                f"{th}x{tw}, and --no-resize was given"
            )
        if mode == "stretch":
            return tf.image.resize(image, (th, tw), method=method)
        if mode == "crop":
            scale = max(th / h, tw / w)
            cover = (max(th, math.floor(h * scale + 0.5)), max(tw, math.floor(w * scale + 0.5)))
            return tf.image.resize_with_crop_or_pad(tf.image.resize(image, cover, method=method), th, tw)
        if mode == "pad":
            return tf.image.resize_with_pad(image, th, tw, method=method)
        raise ValueError(f"unknown resize mode {mode!r}")

    def _cast(self, sample):
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            return np.clip(np.rint(sample), info.min, info.max).astype(self.dtype)
        return sample.astype(self.dtype, copy=False)


def tf_message(exc):
    """TensorFlow's error text without its op and device decorations."""
    text = getattr(exc, "message", None) or str(exc)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text, flags=re.S)
    return " ".join(text.split()) or type(exc).__name__
