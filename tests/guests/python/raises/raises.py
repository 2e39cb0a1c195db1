"""A test guest whose `map` raises: the attempt fails with the exception."""

import wmr_guest


def parse(record: str) -> int:
    raise ValueError(f"bad record: {record!r}")


class Raises(wmr_guest.Job):
    def map(self, file, text, out):
        out.emit("seen", "1")
        parse(text.decode().split("\n")[0])

    def reduce(self, key, values, out):
        out.emit(key, str(sum(1 for _ in values)))


Mapper, Reducer, Combiner = wmr_guest.export(Raises)
