"""A closed-vocabulary tokenizer for the toy tasks, on HF `tokenizers` (saved as a standard tokenizer.json).

    "User: _1663+_5242\\nAssistant:<think>3+2+0=5 ..."
      -> User | : | ␣ | _ | 1 | 6 | 6 | 3 | + | _ | 5 | 2 | 4 | 2 | \\n | Assistant | : | <think> | 3 | + | 2 | ...

Pieces, in the order the pre-tokenizer tries them at each position (one regex, `Split`, "isolated"):
  (a) a word of ASCII letters with at most one leading space: "User", " thinks", " wait" are one token each;
  (b) a single digit: "6905" is four tokens, so place value stays visible and every number is spelled
      the same way wherever it appears (a BPE would merge digits unevenly);
  (c) any other single character: space, newline, "_", "+", "=", "/", "(", ...
The four tags are added tokens, one id each (as characters they would cost 7-9 tokens each), registered
with special=False so that decoding keeps them: the reward reads them (docs/traps.md).
<pad> <unk> <bos> <eos> are special tokens; decode() drops <pad> <bos> <eos>.

Why a word-level model over a closed vocabulary rather than BPE: the texts are machine-generated from a
handful of fixed formats, so the whole vocabulary can be listed (117 tokens for the four tasks); every token then means
one thing, sequences stay short where it matters (template words are one token each) and digits are
never merged. The vocabulary is: the specials, the tags, the 95 printable ASCII characters and newline
(each a token), and every letter word seen in the corpus given to `build`. A word not in it is not
split into letters: encode() raises ValueError naming it, as it does for a character outside printable
ASCII (tab, "é"). An unknown piece is a bug in whoever wrote the text, better caught than trained on.

    tok = default_tokenizer()
    ids = tok.encode(prompt(problem) + completion(problem), bos=True, eos=True)
    tok.decode(ids) == prompt(problem) + completion(problem)
"""

import functools
import re
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from data.corpus import build_corpus
from data.tasks import DIFFICULTIES

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)                              # ids 0..3
TAGS = ("<think>", "</think>", "<answer>", "</answer>")      # ids 4..7
CHARACTERS = tuple("\n" + "".join(chr(c) for c in range(32, 127)))  # newline + printable ASCII, ids 8..103
PIECE = r" ?[A-Za-z]+|[0-9]|[\s\S]"                           # (a) word, (b) digit, (c) any other character
_TAG = re.compile("(" + "|".join(re.escape(tag) for tag in TAGS) + ")")


class Tokenizer:
    """Closed-vocabulary word/digit/character tokenizer (see the module docstring)."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf                                         # the underlying `tokenizers.Tokenizer`
        self.vocab_size = hf.get_vocab_size()
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = (hf.token_to_id(t) for t in SPECIALS)
        self._dropped = {self.pad_id, self.bos_id, self.eos_id}

    @classmethod
    def build(cls, texts: Iterable[str]) -> "Tokenizer":
        """The specials, tags and characters, plus every letter word that the texts contain."""
        splitter = _pre_tokenizer()
        words = set()
        for text in texts:
            for part in _TAG.split(text):                    # tags are added tokens: never split them
                if part in TAGS:
                    continue
                for piece, _ in splitter.pre_tokenize_str(part):
                    if piece not in CHARACTERS:
                        if not re.fullmatch(r" ?[A-Za-z]+", piece):
                            raise ValueError(f"{piece!r} in {text[:60]!r} is not printable ASCII")
                        words.add(piece)
        tokens = [*SPECIALS, *TAGS, *CHARACTERS, *sorted(words)]
        hf = HFTokenizer(models.WordLevel({token: i for i, token in enumerate(tokens)}, unk_token=UNK))
        hf.pre_tokenizer = splitter
        hf.decoder = decoders.Fuse()                         # concatenate tokens; the default joins with spaces
        hf.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])  # already in the vocab: ids kept
        hf.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
        return cls(hf)

    @classmethod
    def load(cls, path) -> "Tokenizer":
        """Read a tokenizer.json (or the one inside a directory) written by `save`."""
        return cls(HFTokenizer.from_file(str(_json_path(path))))

    def save(self, path) -> None:
        """Write tokenizer.json in the HF format (to `path`, or inside it when it is a directory)."""
        self.hf.save(str(_json_path(path)))

    def encode(self, text: str, *, bos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of `text`, with <bos> / <eos> added on request. ValueError for anything not in the vocab."""
        return self._checked(text, self.hf.encode(text), bos, eos)

    def encode_batch(self, texts: list[str], *, bos: bool = False, eos: bool = False) -> list[list[int]]:
        """encode() for many texts at once (the Rust side runs them in parallel)."""
        return [self._checked(t, e, bos, eos) for t, e in zip(texts, self.hf.encode_batch(texts))]

    def decode(self, ids) -> str:
        """The text of `ids`, dropping <pad> <bos> <eos> and keeping the tags; inverse of encode()."""
        return self.hf.decode([int(i) for i in ids if int(i) not in self._dropped], skip_special_tokens=False)

    def unknown(self, text: str) -> str | None:
        """The first piece of `text` that encode() refuses (say "é" or " plus"), or None if it all encodes."""
        encoding = self.hf.encode(text)
        i = self._first_refused(encoding)
        return None if i is None else text[slice(*encoding.offsets[i])]

    def _checked(self, text: str, encoding, bos: bool, eos: bool) -> list[int]:
        i = self._first_refused(encoding)
        if i is not None:
            start, end = encoding.offsets[i]
            why = ("it is not in the closed vocabulary (build the tokenizer from texts that contain it)"
                   if encoding.ids[i] == self.unk_id else "it is a special token (use bos=/eos= instead)")
            raise ValueError(f"cannot encode {text[start:end]!r} at character {start} of {text[:60]!r}: {why}")
        return ([self.bos_id] if bos else []) + encoding.ids + ([self.eos_id] if eos else [])

    def _first_refused(self, encoding) -> int | None:
        """Index of the first token that is unknown or a special token written as text, or None."""
        return next((i for i, token_id in enumerate(encoding.ids) if token_id in (self.unk_id, *self._dropped)), None)


def _pre_tokenizer() -> pre_tokenizers.Split:
    return pre_tokenizers.Split(Regex(PIECE), behavior="isolated")


def _json_path(path) -> Path:
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> Tokenizer:
    """The tokenizer of all four tasks: built from a fixed corpus of every task and difficulty, in every
    mode and with mistakes, so that every text the generators write encodes. Built once (~0.3 s)."""
    texts = []
    for task, difficulties in DIFFICULTIES.items():
        for d in difficulties:
            pairs = build_corpus(100, tasks=(task,), seed=0, long_frac=0.4, short_frac=0.2, reflect_rate=0.5,
                                 difficulty=d)
            texts += [p + c for p, c in pairs]
    return Tokenizer.build(texts)
