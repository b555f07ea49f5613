"""One stream of rows per model input -> aligned, prepared batches.

`open_feed` checks everything that can be checked before any computing: every array's header,
dtype and shape, that images can feed their input, and that every input gets as many rows as
the others. `Feed.batches` then reads, decodes and prepares one batch at a time, so memory
holds a batch, not the data set: per input file only its path and header stay in memory.
"""

import hashlib
from dataclasses import dataclass

import numpy as np

from tensorprobe import errors
from tensorprobe.errors import InputError, UsageError
from tensorprobe.inputs import lines, npy, preprocess
from tensorprobe.inputs.images import BadImage, ImageReader
from tensorprobe.inputs.sources import STDIN
from tensorprobe.inputs.spec import describe_all
from tensorprobe.text import shape_text


@dataclass
class Batch:
    sources: list  # one string per row kept, as /inputs/source records it
    arrays: list  # one array per model input (rows kept), or None when no row was kept
    skipped: list  # (path, reason) for every input passed over (--skip-bad)
    consumed: int  # rows read, kept or skipped


class Feed:
    """The inputs of one dump, checked; `rows` counts them (skipped ones included)."""

    def __init__(self, streams):
        self.streams = streams
        self.rows = streams[0].rows
        self.total_rows = self.rows  # before select()
        self.row_range = (0, self.rows)

    def select(self, start, stop):
        """Keep only rows [start, stop) of the full, ordered input (a shard). Files and array
        rows outside it are never read: array readers seek past them, image runs drop them."""
        for stream in self.streams:
            stream.select(start, stop)
        self.rows = stop - start
        self.row_range = (start, stop)

    def fingerprint(self):
        """SHA-256 of the full ordered list of row sources (as /inputs/source records them,
        one a line), whatever rows select() kept."""
        digest = hashlib.sha256()
        iterators = [stream.all_sources() for stream in self.streams]
        for per_input in zip(*iterators):
            digest.update(self._source(list(per_input)).encode("utf-8", "surrogateescape") + b"\n")
        return digest.hexdigest()

    def batches(self, batch_size):
        """Yield Batch records of up to `batch_size` rows, across file boundaries."""
        generators = [stream.blocks(batch_size) for stream in self.streams]
        try:
            for blocks in zip(*generators):
                yield self._batch(blocks)
        finally:
            for g in generators:
                g.close()

    def _batch(self, blocks):
        count = len(blocks[0][0])
        bad = {}
        for sources, _, stream_bad in blocks:
            for i, reason in stream_bad.items():
                bad.setdefault(i, []).append((sources[i], reason))
        keep = [i for i in range(count) if i not in bad]
        arrays = []
        for stream, (_, pieces, _) in zip(self.streams, blocks):
            values = _kept(pieces, bad)
            arrays.append(None if values is None else stream.prepare(values))
        sources = [self._source([b[0][i] for b in blocks]) for i in keep]
        skipped = [entry for i in sorted(bad) for entry in bad[i]]
        return Batch(sources, arrays if keep else None, skipped, count)

    def _source(self, per_input):
        """A row's source: the one file all inputs come from (an .npz), else `name=source`
        for each input, joined with '; '."""
        if all(s == per_input[0] for s in per_input):
            return per_input[0]
        return "; ".join(f"{stream.spec.name}={s}" for stream, s in zip(self.streams, per_input))


def _kept(pieces, bad):
    """One array of the rows not in `bad`, from `pieces` (arrays, None for a bad image)."""
    kept, row = [], 0
    for piece in pieces:
        n = 1 if piece is None else len(piece)
        if piece is not None:
            if bad:
                local = [i - row for i in range(row, row + n) if i not in bad]
                piece = piece[local] if len(local) < n else piece
            if len(piece):
                kept.append(piece)
        row += n
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else np.concatenate(kept)


def open_feed(specs, positional, named, options, stdin=None, preprocess_function=None):
    """Check the inputs against the model's and return a Feed.

    `positional`: [Source] from the arguments; `named`: [(input name, [Source])] from
    --input NAME=PATH; `stdin`: the binary stream `-` reads.
    """
    if positional and named:
        raise UsageError("give inputs either as arguments or with "
                         f"{errors.words('--input NAME=PATH', 'a dict x={input name: array or path}')}, not both",
                         argument="x")
    if not positional and not named:
        raise UsageError(f"no input given: give {errors.words('INPUT... or --input NAME=PATH', 'x')}", argument="x")
    preprocess.check(specs, options)
    streams = [_Stream(spec, options, preprocess.Preparation(spec, options, preprocess_function, active))
               for spec, active in zip(specs, preprocess.applies_to(specs))]
    if named:
        by_name = {stream.spec.name: stream for stream in streams}
        for name, sources in named:
            name = _input_key(name, by_name)
            if name not in by_name:
                given = errors.words(f"--input '{name}=...'", f"x['{name}']")
                raise UsageError(f"{given}: the model has no input '{name}'; its inputs are {describe_all(specs)}",
                                 argument="x")
            for source in sources:
                _add(by_name[name], source, stdin)
        missing = [stream.spec.name for stream in streams if not stream.parts]
        if missing:
            raise UsageError(f"{errors.name('x')}: nothing given for {', '.join(repr(m) for m in missing)}; "
                             f"the model's inputs are {describe_all(specs)}", argument="x")
    elif len(streams) == 1:
        for source in positional:
            _add(streams[0], source, stdin)
    else:
        for source in positional:
            _add_npz_row_set(streams, source)
    for stream in streams:
        stream.finish()
    counts = {stream.spec.name: stream.rows for stream in streams}
    if len(set(counts.values())) > 1:
        raise InputError("the inputs hold different numbers of samples: "
                         + ", ".join(f"{name} {n}" for name, n in counts.items()))
    return Feed(streams)


def _add(stream, source, stdin):
    if source.kind == "memory":
        stream.add_array(npy.in_memory(source.array, source.path))
    elif source.kind == "image":
        stream.add_image(source.path)
    elif source.kind == "text":
        stream.add_array(_open_text(source.path, stream.spec))
    elif source.kind == "npz":
        arrays = npy.open_npz(source.path)
        name = stream.spec.name
        arrays = {_input_key(key, (name,)): array for key, array in arrays.items()}
        if name in arrays:
            stream.add_array(arrays[name])
        elif len(arrays) == 1:
            stream.add_array(next(iter(arrays.values())))
        else:
            raise InputError(f"{source.path}: holds arrays {', '.join(repr(k) for k in arrays)}, "
                             f"none named '{name}', the model's input {stream.spec.describe()}")
    elif source.path == STDIN:
        stream.add_array(npy.open_stdin(stdin))
    else:
        stream.add_array(npy.open_npy(source.path))


def _open_text(path, spec):
    """A .txt file feeds a string input that takes one string a sample."""
    if not spec.text:
        raise InputError(f"{path}: a text file feeds only a string input; input {spec.describe()} is not one")
    if spec.shape not in ((), (1,)):
        raise InputError(f"{path}: a text file gives one string a sample (one a line); input "
                         f"{spec.describe()} takes {shape_text(spec.shape, '?')} strings a sample")
    return lines.open_text(path, spec.shape)


def _input_key(key, names):
    """The input name an --input NAME or .npz key means: itself, or, for a key that is no
    input's name, the name without a tensor's `:0` (`x:0` names a graph's placeholder `x`)."""
    if key not in names and key.endswith(":0") and key[:-2] in names:
        return key[:-2]
    return key


def _add_npz_row_set(streams, source):
    """An .npz feeding a multi-input model: one array per input, keys = input names."""
    specs = [stream.spec for stream in streams]
    if source.kind != "npz":
        raise UsageError(
            f"input '{source.path}': the model has {len(specs)} inputs ({describe_all(specs)}); "
            "give .npz files whose keys are the input names, "
            + errors.words("or --input NAME=PATH for each input", "a list of arrays in the model's input order, "
                           "or a dict {input name: array or path}"), argument="x"
        )
    names = [spec.name for spec in specs]
    arrays = {_input_key(key, names): array for key, array in npy.open_npz(source.path).items()}
    if set(arrays) != set(names):
        missing = [n for n in names if n not in arrays]
        extra = [k for k in arrays if k not in names]
        detail = "; ".join(part for part in (
            f"missing {', '.join(repr(n) for n in missing)}" if missing else "",
            f"unexpected {', '.join(repr(k) for k in extra)}" if extra else "") if part)
        raise InputError(f"{source.path}: keys {', '.join(repr(k) for k in arrays)} do not match "
                         f"the model's inputs {describe_all(specs)} ({detail})")
    parts = [stream.add_array(arrays[stream.spec.name]) for stream in streams]
    if len({part.rows for part in parts}) > 1:
        raise InputError(f"{source.path}: its arrays hold different numbers of samples: "
                         + ", ".join(f"{s.spec.name} {p.rows}" for s, p in zip(streams, parts)))


class _Stream:
    """The rows of one model input: array parts and runs of images, in order."""

    def __init__(self, spec, options, prepare):
        self.spec, self.options, self.prepare = spec, options, prepare
        self.parts = []
        self.rows = 0
        self.images = None  # the ImageReader, once finish() knows the images' size
        self.samples = None  # its iterator over all of this input's images, once reading starts

    def add_array(self, array):
        part = _ArrayPart(array, self.spec)
        self.parts.append(part)
        return part

    def select(self, start, stop):
        """Keep rows [start, stop): parts outside go, parts across an edge are cut."""
        kept, row = [], 0
        for part in self.parts:
            low, high = max(start, row), min(stop, row + part.rows)
            if low < high:
                kept.append(part.cut(low - row, high - row))
            row += part.rows
        self.parts = kept
        self.rows = stop - start

    def all_sources(self):
        """Every row's source, in order (for the input fingerprint; before select())."""
        for part in self.parts:
            yield from part.sources()

    def add_image(self, path):
        if not self.parts or not isinstance(self.parts[-1], _ImagePart):
            self.parts.append(_ImagePart())
        self.parts[-1].paths.append(path)

    def finish(self):
        """Check that the parts agree with each other and decide the images' size."""
        arrays = [p for p in self.parts if isinstance(p, _ArrayPart)]
        for part in arrays[1:]:
            if part.sample_shape != arrays[0].sample_shape:
                raise InputError(
                    f"{part.array.name}: samples of shape {part.sample_shape} differ from those of "
                    f"{arrays[0].array.name}, {arrays[0].sample_shape}; input '{self.spec.name}' "
                    "takes one sample shape per dump"
                )
        self.rows = sum(p.rows for p in self.parts)
        images = [p for p in self.parts if isinstance(p, _ImagePart)]
        if images:
            self.images = ImageReader(self.spec, self.options, self._image_size(images[0].paths[0], arrays))

    def _image_size(self, first_image, arrays):
        spec = self.spec
        channels = spec.channels
        if spec.image_axes is None or channels not in (1, 2, 3, 4):
            raise InputError(f"{first_image}: images cannot feed input {spec.describe()}; they feed "
                             "inputs of shape (height, width, channels) with 1 to 4 channels")
        fixed = spec.height_width
        from_arrays = None
        if arrays:
            h, w, _ = spec.image_axes
            from_arrays = (arrays[0].sample_shape[h], arrays[0].sample_shape[w])
        size = self.options.size
        if size is not None:
            if any(f is not None and f != s for f, s in zip(fixed, size)):
                raise UsageError(f"{errors.name('size')} {size[0]}x{size[1]}: input {spec.describe()} takes "
                                 f"{fixed[0]}x{fixed[1]} (height x width)", argument="size")
            if from_arrays is not None and from_arrays != tuple(size):
                raise InputError(f"{arrays[0].array.name}: samples are {from_arrays[0]}x{from_arrays[1]} "
                                 f"(height x width), images are resized to {errors.name('size')} "
                                 f"{size[0]}x{size[1]}")
            return tuple(size)
        if None not in fixed:
            return fixed
        return from_arrays  # None: the first image's size

    def blocks(self, batch_size):
        """Yield (sources, pieces, bad) with `batch_size` rows (the last may have fewer):
        pieces are arrays of rows, None for a bad image; bad maps row -> reason."""
        sources, pieces, bad, have = [], [], {}, 0
        try:
            for part in self.parts:
                reader = part.open(self)
                try:
                    left = part.rows
                    while left:
                        take = min(batch_size - have, left)
                        s, p, b = reader.read(take)
                        bad.update({have + i: reason for i, reason in b.items()})
                        sources += s
                        pieces += p
                        have += take
                        left -= take
                        if have == batch_size:
                            yield sources, pieces, bad
                            sources, pieces, bad, have = [], [], {}, 0
                finally:
                    reader.close()
            if have:
                yield sources, pieces, bad
        finally:
            if self.samples is not None:
                self.samples.close()

    def image_samples(self):
        """One decoding pipeline for all of this input's images, however arrays interleave
        with them (its function is traced once, and it reads ahead across runs)."""
        if self.samples is None:
            paths = [path for part in self.parts if isinstance(part, _ImagePart) for path in part.paths]
            self.samples = self.images.samples(paths)
        return self.samples


class _ArrayPart:
    """One stored array: a single sample (shape = the input's), or a batch (first axis)."""

    __slots__ = ("array", "single", "rows", "sample_shape", "first", "narrow")

    def __init__(self, array, spec):
        self.array = array
        self.first = 0  # the first row to read (a shard's part may start inside the array)
        self.narrow = _check_dtype(array, spec)
        shape, expected = array.shape, spec.shape
        if _fits(shape, expected):
            self.single, self.rows, self.sample_shape = True, 1, tuple(shape)
        elif len(shape) == len(expected) + 1 and _fits(shape[1:], expected):
            if shape[0] == 0:
                raise InputError(f"{array.name}: holds no samples (shape {tuple(shape)})")
            self.single, self.rows, self.sample_shape = False, shape[0], tuple(shape[1:])
        else:
            raise InputError(
                f"{array.name}: array of shape {tuple(shape)} does not fit input '{spec.name}': "
                f"expected {shape_text(expected, '?')} for one sample or "
                f"{shape_text(('N',) + tuple(expected), '?')} for a batch"
            )

    def open(self, stream):
        return _ArrayRows(self)

    def cut(self, start, stop):
        """This part's rows [start, stop), relative to its first row."""
        if (start, stop) == (0, self.rows):
            return self
        part = object.__new__(_ArrayPart)
        part.array, part.single, part.sample_shape = self.array, self.single, self.sample_shape
        part.narrow = self.narrow
        part.first, part.rows = self.first + start, stop - start
        return part

    def sources(self):
        if self.single:
            yield self.array.label
        else:
            label = self.array.label
            for i in range(self.first, self.first + self.rows):
                yield f"{label}[{i}]"


class _ArrayRows:
    def __init__(self, part):
        self.part = part
        self.reader = part.array.reader()
        self.row = part.first
        if part.first:
            self.reader.skip(part.first, part.sample_shape)

    def read(self, count):
        part = self.part
        values = self.reader.read(count, part.sample_shape)
        if part.narrow is not None:
            _check_range(values, part, self.row)
        if part.single:
            sources = [part.array.label]
        else:
            sources = [f"{part.array.label}[{i}]" for i in range(self.row, self.row + count)]
        self.row += count
        return sources, [values], {}

    def close(self):
        self.reader.close()


class _ImagePart:
    """A run of image files, one sample each."""

    __slots__ = ("paths",)

    def __init__(self):
        self.paths = []

    @property
    def rows(self):
        return len(self.paths)

    def cut(self, start, stop):
        part = _ImagePart()
        part.paths = self.paths[start:stop]
        return part

    def sources(self):
        return iter(self.paths)

    def open(self, stream):
        return _ImageRows(self, stream.image_samples(), stream.options.skip_bad)


class _ImageRows:
    """This run's images, taken in order from the input's one decoding pipeline."""

    def __init__(self, part, samples, skip_bad):
        self.paths, self.samples, self.skip_bad = part.paths, samples, skip_bad
        self.row = 0

    def read(self, count):
        paths = self.paths[self.row : self.row + count]
        self.row += count
        pieces, bad = [], {}
        for i, (path, sample) in enumerate(zip(paths, self.samples)):
            if isinstance(sample, BadImage):
                if not self.skip_bad:
                    raise sample
                message = str(sample)
                bad[i] = message[len(path) + 2 :] if message.startswith(f"{path}: ") else message
                pieces.append(None)
            else:
                pieces.append(sample[np.newaxis])
        return list(paths), pieces, bad

    def close(self):
        pass  # the pipeline belongs to the input's stream, which closes it


def _check_dtype(array, spec):
    dtype = array.dtype
    if spec.text:
        if dtype.kind not in "USO":
            raise InputError(f"{array.name}: dtype {dtype} cannot be fed to input '{spec.name}', which "
                             "takes strings: give a .txt file (one sample a line) or a .npy of strings")
        return
    target = np.dtype(spec.dtype)
    if dtype.kind in "USO":
        raise InputError(f"{array.name}: holds strings ({dtype}), which cannot be fed to input "
                         f"'{spec.name}' ({target}); expected a numeric array")
    if dtype.kind not in "biuf":
        raise InputError(f"{array.name}: dtype {dtype} cannot be fed to input '{spec.name}' ({target}); "
                         "expected a numeric array")
    if target.kind == "f" or np.can_cast(dtype, target, casting="safe"):
        return None
    if dtype.kind in "iu" and target.kind in "iu":  # int64 token ids (NumPy's default) for int32
        return (spec.name, target)  # cast where each batch's values fit: _check_range
    raise InputError(f"{array.name}: dtype {dtype} cannot be cast safely to input "
                     f"'{spec.name}' ({target})")


def _check_range(values, part, row):
    """Refuse rows of an integer array whose values the narrower integer input cannot hold
    (a cast would wrap them around), naming the file, the row and the value."""
    name, target = part.narrow
    info = np.iinfo(target)
    outside = (values < info.min) | (values > info.max)
    if outside.any():
        at = np.unravel_index(int(np.argmax(outside.reshape(-1))), outside.shape)
        where = "" if part.single else f" row {row + int(at[0])}"
        raise InputError(f"{part.array.name}:{where} holds {values[at]}, outside the range of input "
                         f"'{name}' ({target}: {info.min} to {info.max})")


def _fits(shape, expected):
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


