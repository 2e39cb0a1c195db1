"""Word count: each output line is `word count`.

The word rule is the Rust example's (`examples/wordcount`), exactly:
`wmr_guest.words` splits at the characters for which Rust's
`char::is_alphabetic()` is false (a table generated from Rust), case is
kept, and bytes that are not UTF-8 separate words. Python's own
`str.isalpha()` would differ: it is true for the Unicode categories L*
only, while Rust's rule is the Alphabetic property (L*, Nl and
Other_Alphabetic: Roman numerals such as U+2163, circled letters such as
U+24B6, vowel signs such as U+093E).
"""

from collections import Counter

import wmr_guest


class WordCount(wmr_guest.Job):
    def map(self, file, text, out):
        # In-mapper combining: one pair per distinct word in the split.
        counts = Counter(wmr_guest.words(text.decode("utf-8", "replace")))
        for word, n in counts.items():
            out.emit(word, str(n))

    def reduce(self, key, values, out):
        out.emit(key, str(sum(map(wmr_guest.parse_int, values))))

    def combine(self, key, values, out):
        out.emit(key, str(sum(map(wmr_guest.parse_int, values))))


Mapper, Reducer, Combiner = wmr_guest.export(WordCount)
