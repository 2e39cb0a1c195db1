// A test guest whose `map` throws: the attempt fails with the exception.
import { Job, decode, exportJob } from "wmr-guest";

function parse(record) {
  throw new RangeError(`bad record: ${record}`);
}

class Throws extends Job {
  map(_file, text, out) {
    out.emit("seen", "1");
    parse(decode(text).split("\n")[0]);
  }

  reduce(key, values, out) {
    let n = 0;
    for (const _ of values) n += 1;
    out.emit(key, String(n));
  }
}

export const { mapper, reducer, combiner } = exportJob(Throws);
