// wmr-guest for JavaScript: write wmr map/reduce jobs as a plain class.
//
//   import { Job, exportJob, decode, parseCount } from "wmr-guest";
//
//   class LineLengths extends Job {
//     map(file, text, out) {
//       for (const line of decode(text).split("\n")) out.emit(String(line.length), "1");
//     }
//     reduce(key, values, out) {
//       let n = 0;
//       for (const v of values) n += parseCount(v);
//       out.emit(key, String(n));
//     }
//   }
//
//   export const { mapper, reducer, combiner } = exportJob(LineLengths);
//
// Build with `node guest-sdk/js/build.mjs job.js -o job.wasm` (bundles the
// job with this SDK, then componentize-js against wit/, world `job`).
//
// Keys, values, file names and split text are Uint8Arrays; `emit` also takes
// strings (encoded as UTF-8). `reduce`'s `values` is an iterator, read once:
// the values are pulled from the host in batches as it reaches them, so a
// key's values need not fit in memory (`[...values]` holds them all); values
// not read are skipped. `combine`'s `values` is an array. An exception thrown by `map`, `reduce` or
// `combine` fails the attempt cleanly: its message is `Name: message (at
// frame)` with the innermost stack frame; the whole stack goes to the
// attempt's log.
import * as host from "wmr:mapreduce/host@0.2.0";
import { STARTS, ENDS } from "./alphabetic.js";

// Pairs are handed to the host once this many key+value bytes are buffered
// (as the Rust SDK does): each crossing into the host has a fixed cost.
const EMIT_BATCH_BYTES = 64 * 1024;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8");

function asBytes(data) {
  if (typeof data === "string") return encoder.encode(data);
  if (data instanceof Uint8Array) return data;
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (data instanceof ArrayBuffer || Array.isArray(data)) return new Uint8Array(data);
  throw new TypeError(`emit takes a string or bytes, not ${Object.prototype.toString.call(data)}`);
}

/**
 * Collects emitted pairs and passes them to the host in batches, framed in
 * one buffer (`emit-framed`: `varint key-len | key | varint value-len |
 * value`), so a batch crosses into the host as one byte array rather than
 * an object per pair.
 */
export class Emitter {
  constructor() {
    this.buffer = new Uint8Array(EMIT_BATCH_BYTES + 1024);
    this.length = 0;
  }

  reserve(n) {
    if (this.length + n <= this.buffer.length) return;
    const grown = new Uint8Array(Math.max(2 * this.buffer.length, this.length + n));
    grown.set(this.buffer.subarray(0, this.length));
    this.buffer = grown;
  }

  putVarint(n) {
    while (n >= 0x80) {
      this.buffer[this.length++] = (n & 0x7f) | 0x80;
      n = Math.floor(n / 128);
    }
    this.buffer[this.length++] = n;
  }

  putBytes(bytes) {
    this.putVarint(bytes.length);
    this.buffer.set(bytes, this.length);
    this.length += bytes.length;
  }

  /** Emit one pair; strings are encoded as UTF-8. */
  emit(key, value = "") {
    const k = asBytes(key);
    const v = asBytes(value);
    this.reserve(k.length + v.length + 20);
    this.putBytes(k);
    this.putBytes(v);
    if (this.length >= EMIT_BATCH_BYTES) this.flush();
  }

  /** Hand everything buffered to the host now. */
  flush() {
    if (this.length > 0) {
      host.emitFramed(this.buffer.subarray(0, this.length));
      this.length = 0;
    }
  }
}

// The tags of `next-batch-framed`'s entries (see wit/).
const TAG_KEY = 0;
const TAG_VALUE = 1;
const TAG_CONTINUES = 2;

// Where `reduce` is in its input: the framed batch pulled last (one byte
// array: `next-batch-framed`) and the next entry in it. Keys and values are
// views into the batch, not copies.
class Cursor {
  constructor(input) {
    this.input = input;
    this.batch = new Uint8Array(0);
    this.at = 0;
  }

  pull() {
    this.batch = this.input.nextBatchFramed();
    this.at = 0;
  }

  // The length-prefixed bytes at the cursor, skipped.
  field() {
    let len = 0;
    let scale = 1;
    let byte;
    do {
      byte = this.batch[this.at++];
      len += (byte & 0x7f) * scale;
      scale *= 128;
    } while (byte & 0x80);
    const start = this.at;
    this.at += len;
    return this.batch.subarray(start, this.at);
  }

  // The current key's next value, or undefined; a key that continues goes
  // on past the next batch's first key entry (the same key).
  nextValue() {
    for (;;) {
      const tag = this.batch[this.at];
      if (tag === TAG_VALUE) {
        this.at++;
        return this.field();
      }
      if (tag !== TAG_CONTINUES) return undefined;
      this.pull();
      if (this.batch[0] !== TAG_KEY) return undefined;
      this.at = 1;
      this.field();
    }
  }

  // The current key's values, read once.
  *groupValues() {
    for (let value = this.nextValue(); value !== undefined; value = this.nextValue()) {
      yield value;
    }
  }

  // The next key, past whatever is left of the current one's values;
  // undefined at the end of the input.
  nextKey() {
    while (this.nextValue() !== undefined);
    if (this.at >= this.batch.length) {
      this.pull();
      if (this.batch.length === 0) return undefined;
    }
    this.at++; // TAG_KEY
    return this.field();
  }
}

/**
 * A map/reduce job: `map(file, text, out)`, `reduce(key, values, out)` and,
 * optionally, `combine(key, values, out)` (without it the host keeps the
 * values as they are). Throw to fail the attempt.
 */
export class Job {
  map(_file, _text, _out) {
    throw new Error("map is not implemented");
  }

  reduce(_key, _values, _out) {
    throw new Error("reduce is not implemented");
  }
}

/** A job parameter given with `--param name=value`, or undefined. */
export function param(name) {
  return host.param(name) ?? undefined;
}

/** Add `delta` to the job counter `name`. */
export function incrCounter(name, delta = 1) {
  host.incrCounter(name, BigInt(delta));
}

/** Write a line to the attempt's log; `level` is trace, debug, info, warn or error. */
export function log(level, message) {
  host.log(level, String(message));
}

/** UTF-8 bytes as a string; bytes that are not UTF-8 become U+FFFD. */
export function decode(bytes) {
  return decoder.decode(asBytes(bytes));
}

/** A decimal number emitted as text; anything else counts as 0. */
export function parseCount(bytes) {
  const digits = asBytes(bytes);
  let n = 0;
  for (let i = 0; i < digits.length; i++) {
    const d = digits[i] - 48;
    if (d < 0 || d > 9) return 0;
    n = n * 10 + d;
  }
  return digits.length > 0 ? n : 0;
}

function isAlphabetic(codePoint) {
  let lo = 0;
  let hi = STARTS.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (STARTS[mid] <= codePoint) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 && codePoint <= ENDS[lo - 1];
}

// Runs of ASCII letters and non-ASCII UTF-16 units: every word lies
// inside one, and without non-ASCII characters each run is a word. One
// native `match` is the fastest way found (the engine interprets loops).
const RUNS = /[A-Za-z\u0080-\uffff]+/g;
const NON_ASCII = /[\u0080-\uffff]/;

/**
 * The words of `text` by the rule of the Rust example `wordcount`: maximal
 * runs of characters for which Rust's `char::is_alphabetic()` is true (the
 * Unicode Alphabetic property, tabled in alphabetic.js; this JavaScript
 * engine has no `\p{Alphabetic}`). Decode bytes with `decode`: bytes that
 * are not UTF-8 then separate words, as they do in Rust. Returns an array.
 */
export function words(text) {
  const runs = text.match(RUNS) || [];
  if (!NON_ASCII.test(text)) return runs;
  const found = [];
  for (const run of runs) {
    if (!NON_ASCII.test(run)) {
      found.push(run);
      continue;
    }
    let word = "";
    for (const c of run) {
      const cp = c.codePointAt(0);
      if (cp < 0x80 || isAlphabetic(cp)) {
        word += c;
      } else if (word) {
        found.push(word);
        word = "";
      }
    }
    if (word) found.push(word);
  }
  return found;
}

// The attempt's error for an exception (a string: componentize-js turns a
// thrown string into the `err` of the call's result, anything else into a
// trap). The whole stack goes to the attempt's log.
function failure(error) {
  if (!(error instanceof Error)) return String(error);
  const first = `${error.name}: ${error.message}`;
  const frame = String(error.stack || "").split("\n").find((line) => line.trim() !== "");
  try {
    log("error", `${first}\n${error.stack || ""}`.trimEnd());
  } catch (_) {
    // The log is best effort.
  }
  return frame ? `${first} (at ${frame})` : first;
}

/**
 * The `mapper`, `reducer` and `combiner` exports of the component:
 * `export const { mapper, reducer, combiner } = exportJob(MyJob);`
 */
export function exportJob(JobClass) {
  const job = new JobClass();
  const hasCombine = typeof job.combine === "function";
  return {
    mapper: {
      map(key, value) {
        try {
          const out = new Emitter();
          job.map(key, value, out);
          out.flush();
        } catch (error) {
          throw failure(error);
        }
      },
    },
    reducer: {
      reduce(input) {
        try {
          const out = new Emitter();
          const cursor = new Cursor(input);
          for (let key = cursor.nextKey(); key !== undefined; key = cursor.nextKey()) {
            job.reduce(key, cursor.groupValues(), out);
          }
          out.flush();
        } catch (error) {
          throw failure(error);
        }
      },
    },
    combiner: {
      combine(groups) {
        if (!hasCombine) return false;
        try {
          const out = new Emitter();
          for (const group of groups) job.combine(group.key, group.values, out);
          out.flush();
        } catch (error) {
          throw failure(error);
        }
        return true;
      },
    },
  };
}
