"""Word statistics: the SDK's other features — parameters, counters,
logging and a combiner.

Parameters (`--param NAME=VALUE`):
- `min-length` (default 1): words shorter than this are skipped;
- `fold` (`yes`/`no`, default `no`): count words lower-cased;
- `min-count` (default 1): `reduce` keeps only words seen at least this often.

Each output line is `word count`. `map` emits `(word, 1)` for every word
(no in-mapper combining) so that the combiner does the summing on the map
side; `combine` sums without filtering, `reduce` sums and filters.
Counters: `words` (kept), `skipped` (too short), `distinct` (output lines).
The JavaScript example `examples/js/wordstats` is the same job.
"""

import wmr_guest
from wmr_guest import Level


def int_param(name: str, default: int) -> int:
    value = wmr_guest.param(name)
    return default if value is None else int(value)


class WordStats(wmr_guest.Job):
    def map(self, file, text, out):
        min_length = int_param("min-length", 1)
        fold = wmr_guest.param("fold") == "yes"
        kept = skipped = 0
        for word in wmr_guest.words(text.decode("utf-8", "replace")):
            if len(word) < min_length:
                skipped += 1
                continue
            kept += 1
            out.emit(word.lower() if fold else word, "1")
        wmr_guest.incr_counter("words", kept)
        wmr_guest.incr_counter("skipped", skipped)
        wmr_guest.log(Level.INFO, f"{file.decode()}: {kept} words, {skipped} skipped")

    def combine(self, key, values, out):
        out.emit(key, str(sum(map(wmr_guest.parse_int, values))))

    def reduce(self, key, values, out):
        total = sum(map(wmr_guest.parse_int, values))
        if total >= int_param("min-count", 1):
            wmr_guest.incr_counter("distinct")
            out.emit(key, str(total))


Mapper, Reducer, Combiner = wmr_guest.export(WordStats)
