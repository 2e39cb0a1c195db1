// Word count: each output line is `word count`.
//
// The word rule is the Rust example's (examples/wordcount), exactly:
// `words` splits at the characters for which Rust's `char::is_alphabetic()`
// is false (a table generated from Rust: this engine's regular expressions
// have no `\p{Alphabetic}`), case is kept, and bytes that are not UTF-8
// separate words.
import { Job, decode, exportJob, parseCount, words } from "wmr-guest";

function sum(values) {
  let total = 0;
  for (const v of values) total += parseCount(v);
  return String(total);
}

class WordCount extends Job {
  map(_file, text, out) {
    // In-mapper combining: one pair per distinct word in the split.
    const counts = new Map();
    for (const word of words(decode(text))) {
      counts.set(word, (counts.get(word) || 0) + 1);
    }
    for (const [word, n] of counts) out.emit(word, String(n));
  }

  reduce(key, values, out) {
    out.emit(key, sum(values));
  }

  combine(key, values, out) {
    out.emit(key, sum(values));
  }
}

export const { mapper, reducer, combiner } = exportJob(WordCount);
