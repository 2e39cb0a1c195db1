"""wmr-guest for Python: write wmr map/reduce jobs as a plain Python class.

Subclass `Job`, implement `map` and `reduce` (and optionally `combine`),
and export the class from your app module::

    import wmr_guest

    class LineLengths(wmr_guest.Job):
        def map(self, file: bytes, text: bytes, out: wmr_guest.Emitter) -> None:
            for line in text.split(b"\\n"):
                out.emit(str(len(line)), "1")

        def reduce(self, key: bytes, values: Iterator[bytes], out: wmr_guest.Emitter) -> None:
            out.emit(key, str(sum(wmr_guest.parse_int(v) for v in values)))

    Mapper, Reducer, Combiner = wmr_guest.export(LineLengths)

Build the module into a component with componentize-py against `wit/`
(world `job`); see the README's author's guide or `just guests-py`.

An exception raised by `map`, `reduce` or `combine` fails the attempt
cleanly: its message is the last line of the Python traceback
(`ValueError: bad record`), followed by where it was raised; the whole
traceback goes to the attempt's log.
"""

import re
import traceback
from bisect import bisect_right
from typing import Callable, Iterator, List, Optional, Union

from componentize_py_types import Err
from wit_world.imports import host
from wit_world.imports.host import Level, Pair

import wmr_alphabetic

__all__ = [
    "Job",
    "Emitter",
    "Level",
    "param",
    "incr_counter",
    "log",
    "parse_int",
    "words",
    "export",
]

# Pairs are handed to the host once this many key+value bytes are buffered
# (as the Rust SDK does): each crossing into the host has a fixed cost.
EMIT_BATCH_BYTES = 64 * 1024

Bytes = Union[bytes, bytearray, memoryview, str]


def _as_bytes(data: Bytes) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"emit takes str or bytes, not {type(data).__name__}")


class Emitter:
    """Collects emitted pairs and passes them to the host in batches."""

    __slots__ = ("_pending", "_pending_bytes")

    def __init__(self) -> None:
        self._pending: List[Pair] = []
        self._pending_bytes = 0

    def emit(self, key: Bytes, value: Bytes = b"") -> None:
        """Emit one pair; `str` is encoded as UTF-8."""
        key, value = _as_bytes(key), _as_bytes(value)
        self._pending.append(Pair(key, value))
        self._pending_bytes += len(key) + len(value)
        if self._pending_bytes >= EMIT_BATCH_BYTES:
            self.flush()

    def emit_all(self, pairs) -> None:
        """Emit every `(key, value)` of an iterable (e.g. `counts.items()`)."""
        for key, value in pairs:
            self.emit(key, value)

    def flush(self) -> None:
        """Hand everything buffered to the host now."""
        if self._pending:
            host.emit(self._pending)
            self._pending = []
            self._pending_bytes = 0


class Job:
    """A map/reduce job. Raise any exception to fail the attempt."""

    def map(self, file: bytes, text: bytes, out: Emitter) -> None:
        """Map one split: `file` is the input file's name, `text` whole lines of it."""
        raise NotImplementedError("map")

    def reduce(self, key: bytes, values: Iterator[bytes], out: Emitter) -> None:
        """Reduce one key and all of its values (called in key order).
        `values` is an iterator, read once: the values are pulled from the
        host in batches as it reaches them, so a key's values need not fit
        in memory (`list(values)` holds them all). Values not read are
        skipped."""
        raise NotImplementedError("reduce")

    # `combine(self, key, values, out)`: define it to combine one key's
    # values on the map side. Without it the host keeps the values as they are.
    combine: Optional[Callable[["Job", bytes, List[bytes], Emitter], None]] = None


def param(name: str) -> Optional[str]:
    """A job parameter given with `--param name=value`, or None."""
    return host.param(name)


def incr_counter(name: str, delta: int = 1) -> None:
    """Add `delta` to the job counter `name`."""
    host.incr_counter(name, delta)


def log(level: Level, message: str) -> None:
    """Write a line to the attempt's log, e.g. `log(Level.INFO, "...")`."""
    host.log(level, message)


def parse_int(data: Bytes) -> int:
    """A decimal number emitted as text; anything else counts as 0."""
    try:
        return int(_as_bytes(data))
    except ValueError:
        return 0


# Runs of ASCII letters and non-ASCII characters: every word lies inside
# one. Runs of ASCII letters alone (most, in English text) are words.
_RUNS = re.compile("[A-Za-z\x80-\U0010ffff]+")
_ALPHA_CACHE: dict = {}


def _is_alphabetic(c: str) -> bool:
    """Rust's `char::is_alphabetic`, for a non-ASCII character."""
    known = _ALPHA_CACHE.get(c)
    if known is None:
        cp = ord(c)
        i = bisect_right(wmr_alphabetic.STARTS, cp) - 1
        known = i >= 0 and cp <= wmr_alphabetic.ENDS[i]
        _ALPHA_CACHE[c] = known
    return known


def words(text: str) -> Iterator[str]:
    """The words of `text` by the rule of the Rust example `wordcount`: maximal
    runs of characters for which Rust's `char::is_alphabetic()` is true (the
    Unicode Alphabetic property, tabled in `wmr_alphabetic`). Decode bytes with
    `text.decode("utf-8", "replace")`: bytes that are not UTF-8 then
    separate words, as they do in Rust."""
    for run in _RUNS.findall(text):
        if run.isascii():
            yield run
            continue
        start = None
        for i, c in enumerate(run):
            if c < "\x80" or _is_alphabetic(c):
                if start is None:
                    start = i
            elif start is not None:
                yield run[start:i]
                start = None
        if start is not None:
            yield run[start:]


class _Cursor:
    """Where `reduce` is in its input: the batch pulled last and the values
    left of the current key's part of it."""

    __slots__ = ("_input", "_parts", "_values", "_continues")

    def __init__(self, input) -> None:
        self._input = input
        self._parts: Iterator = iter(())
        self._values: Iterator[bytes] = iter(())
        self._continues = False

    def _next_part(self) -> Optional[bytes]:
        """Move to the next part and return its key; None at the end."""
        part = next(self._parts, None)
        if part is None:
            self._parts = iter(self._input.next_batch())
            part = next(self._parts, None)
            if part is None:
                return None
        self._values = iter(part.values)
        self._continues = part.continues
        return part.key

    def values(self) -> Iterator[bytes]:
        """The current key's values; a part that continues is followed by
        the next batch's first part, of the same key."""
        while True:
            yield from self._values
            if not self._continues or self._next_part() is None:
                return

    def next_key(self) -> Optional[bytes]:
        """The next key, past whatever is left of the current one's values."""
        for _ in self.values():
            pass
        return self._next_part()


def _failure(error: BaseException) -> Err:
    """The attempt's error for an exception: the traceback's last line and
    where it was raised. The whole traceback goes to the attempt's log."""
    text = traceback.format_exception(error)
    last = text[-1].strip()
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        where = frames[-1]
        # componentize-py mounts each `-p` directory as /0, /1, ...: the
        # file's name alone says more.
        file = where.filename.rsplit("/", 1)[-1]
        last = f"{last} (at {file}:{where.lineno} in {where.name})"
    try:
        host.log(Level.ERROR, "".join(text).rstrip())
    except Exception:
        pass
    return Err(last)


def export(job_class: type):
    """The `Mapper`, `Reducer` and `Combiner` classes componentize-py looks
    for in the app module: `Mapper, Reducer, Combiner = export(MyJob)`."""
    job = job_class()
    has_combine = getattr(job, "combine", None) is not None

    class Mapper:
        def map(self, key: bytes, value: bytes) -> None:
            try:
                out = Emitter()
                job.map(key, value, out)
                out.flush()
            except Exception as error:
                raise _failure(error) from None

    class Reducer:
        def reduce(self, input) -> None:
            try:
                out = Emitter()
                cursor = _Cursor(input)
                key = cursor.next_key()
                while key is not None:
                    job.reduce(key, cursor.values(), out)
                    key = cursor.next_key()
                out.flush()
            except Exception as error:
                raise _failure(error) from None

    class Combiner:
        def combine(self, groups) -> bool:
            if not has_combine:
                return False
            try:
                out = Emitter()
                for group in groups:
                    job.combine(group.key, group.values, out)
                out.flush()
            except Exception as error:
                raise _failure(error) from None
            return True

    return Mapper, Reducer, Combiner
