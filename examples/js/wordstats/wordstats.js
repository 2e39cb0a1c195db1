// Word statistics: the SDK's other features — parameters, counters,
// logging and a combiner. The same job as examples/python/wordstats.
//
// Parameters (`--param NAME=VALUE`):
// - `min-length` (default 1): words shorter than this are skipped;
// - `fold` (`yes`/`no`, default `no`): count words lower-cased;
// - `min-count` (default 1): `reduce` keeps only words seen at least this often.
//
// Each output line is `word count`. `map` emits `(word, 1)` for every word
// (no in-mapper combining) so that the combiner does the summing on the map
// side; `combine` sums without filtering, `reduce` sums and filters.
// Counters: `words` (kept), `skipped` (too short), `distinct` (output lines).
import { Job, decode, exportJob, incrCounter, log, param, parseCount, words } from "wmr-guest";

function intParam(name, fallback) {
  const value = param(name);
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!Number.isInteger(n)) throw new RangeError(`--param ${name}=${value}: not an integer`);
  return n;
}

function sum(values) {
  let total = 0;
  for (const v of values) total += parseCount(v);
  return total;
}

class WordStats extends Job {
  map(file, text, out) {
    const minLength = intParam("min-length", 1);
    const fold = param("fold") === "yes";
    let kept = 0;
    let skipped = 0;
    for (const word of words(decode(text))) {
      // Length in characters (code points), as Python's len().
      if ([...word].length < minLength) {
        skipped += 1;
        continue;
      }
      kept += 1;
      out.emit(fold ? word.toLowerCase() : word, "1");
    }
    incrCounter("words", kept);
    incrCounter("skipped", skipped);
    log("info", `${decode(file)}: ${kept} words, ${skipped} skipped`);
  }

  combine(key, values, out) {
    out.emit(key, String(sum(values)));
  }

  reduce(key, values, out) {
    const total = sum(values);
    if (total >= intParam("min-count", 1)) {
      incrCounter("distinct");
      out.emit(key, String(total));
    }
  }
}

export const { mapper, reducer, combiner } = exportJob(WordStats);
