"""TFLite's affine quantization: real = (q - zero_point) * scale, with one scale and zero point
for the whole tensor or one per index along `quantized_dimension` (per-channel weights).

Plain NumPy, so that it is tested without TensorFlow.
"""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Quantization:
    dtype: str  # the stored integer dtype: "int8", "uint8", "int16", "int32"...
    scales: tuple  # one float per tensor, or one per channel
    zero_points: tuple  # as many ints as scales
    dimension: int  # the axis the scales run along (0 and meaningless for one scale)

    @classmethod
    def of(cls, dtype, parameters):
        """From the interpreter's `quantization_parameters` of a tensor of `dtype`; None when
        the tensor is not quantized (no scale, or a float tensor)."""
        scales = np.asarray(parameters["scales"], dtype=np.float32)
        if scales.size == 0 or np.dtype(dtype).kind not in "iu":
            return None
        zero_points = np.asarray(parameters["zero_points"], dtype=np.int64)
        if zero_points.size != scales.size:  # an empty or single zero point means 0 or that one for all
            zero_points = np.broadcast_to(zero_points if zero_points.size else np.int64(0), scales.shape)
        return cls(np.dtype(dtype).name, tuple(float(s) for s in scales),
                   tuple(int(z) for z in zero_points), int(parameters["quantized_dimension"]))

    @property
    def per_channel(self):
        return len(self.scales) > 1

    def _broadcast(self, values, ndim):
        """`values` shaped to multiply an array of rank `ndim` along `dimension`."""
        if not self.per_channel:
            return values[0]
        shape = [1] * ndim
        shape[self.dimension] = len(values)
        return values.reshape(shape)

    def dequantize(self, q):
        """The real values of the integers `q`, as float32."""
        q = np.asarray(q)
        scale = self._broadcast(np.asarray(self.scales, dtype=np.float32), q.ndim)
        zero = self._broadcast(np.asarray(self.zero_points, dtype=np.int64), q.ndim)
        # the difference is exact in int64; one rounding, in the product (TFLite's DEQUANTIZE)
        return ((q.astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)

    def quantize(self, x):
        """The integers that stand for the real values `x`: round(x / scale) + zero_point,
        rounded half away from zero and clipped to the dtype, as TFLite's QUANTIZE kernel does."""
        x = np.asarray(x, dtype=np.float32)
        scale = self._broadcast(np.asarray(self.scales, dtype=np.float32), x.ndim)
        zero = self._broadcast(np.asarray(self.zero_points, dtype=np.int64), x.ndim)
        scaled = x / scale
        rounded = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))
        info = np.iinfo(self.dtype)
        return np.clip(rounded.astype(np.int64) + zero, info.min, info.max).astype(self.dtype)

    def attributes(self):
        """The dataset attributes that record it: quantized_dtype, scale, zero_point,
        quantized_dimension (scale and zero_point are arrays for per-channel quantization)."""
        if self.per_channel:
            scale = np.asarray(self.scales, dtype=np.float32)
            zero = np.asarray(self.zero_points, dtype=np.int64)
        else:
            scale, zero = np.float32(self.scales[0]), np.int64(self.zero_points[0])
        return {"quantized_dtype": self.dtype, "scale": scale, "zero_point": zero,
                "quantized_dimension": self.dimension}

    def to_json(self):
        return {"dtype": self.dtype, "scale": list(self.scales) if self.per_channel else self.scales[0],
                "zero_point": list(self.zero_points) if self.per_channel else self.zero_points[0],
                "quantized_dimension": self.dimension}

    def text(self):
        """'scale 0.00521 zero point -128', or for per-channel quantization
        '16 scales 0.00110..0.00114 on axis 0, zero point 0'."""
        if not self.per_channel:
            return f"scale {self.scales[0]:.6g} zero point {self.zero_points[0]}"
        zeros = sorted(set(self.zero_points))
        zero = f"zero point {zeros[0]}" if len(zeros) == 1 else f"zero points {zeros[0]}..{zeros[-1]}"
        return (f"{len(self.scales)} scales {min(self.scales):.6g}..{max(self.scales):.6g} on axis "
                f"{self.dimension}, {zero}")
