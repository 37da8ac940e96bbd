"""A small word-level CLIP tokenizer: a real `CLIPTokenizer` (vocab.json + merges.txt) whose vocabulary is tiny.

CLIP's own tokenizer has 49,408 entries; a model trained from scratch on a narrow caption language (the shapes world)
learns faster when each word it knows is one token and the embedding table is small. `write_word_tokenizer` writes a
byte-level BPE vocabulary that holds

* every byte-level symbol (CLIP's byte → character map) except ASCII upper case and white space, which the
  normaliser and pre-tokenizer never pass on, with and without CLIP's end-of-word marker ``</w>``: any prompt
  tokenizes without an unknown token, unknown words splitting into characters (or a known word's ending);
* every given word as ONE token, built by merges that grow the word from its last character leftwards
  (``e</w>`` → ``le</w>`` → ``cle</w>`` …). Every such merge has an end-of-word symbol on its right, so inside any word
  exactly one merge can ever apply (the one at the word's end): no word's merges can block another's, whatever the
  order — which a left-to-right chain cannot promise (``an`` from "and" would split "triangle" early).
* ``<|startoftext|>`` and ``<|endoftext|>`` last, as in CLIP.

Load it with `load_tokenizer`, which checks the vocabulary size (transformers 5 silently builds a 2-entry vocabulary
from `CLIPTokenizer(vocab_file=…, merges_file=…)`; `from_pretrained(dir)` is the portable route).

    python -m sdkit.tokenizer OUT_DIR [WORD ...]     # writes the tokenizer (default words when none are given)
"""

from __future__ import annotations

import json
import re
import string
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdkit.errors import UserError

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
_WORD = re.compile(r"^[a-z]+$")
_LETTER_RUN = re.compile(r"[^\W\d_]+")  # what CLIP's pre-tokenizer calls [\p{L}]+


def _byte_symbols() -> tuple[str, ...]:
    """CLIP/GPT-2's byte-level alphabet (byte → printable character), without the symbols of ASCII upper case
    letters and white space, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    skip = {ord(c) for c in string.ascii_uppercase + string.whitespace}
    return tuple(symbols[b] for b in range(256) if b not in skip)


BASE_CHARACTERS: tuple[str, ...] = _byte_symbols()

# Words that ordinary prompts use often, so a small model's prompts are not mostly characters.
GENERIC_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "at", "with", "and", "or", "to", "by", "for", "from", "is", "its",
    "photo", "picture", "image", "painting", "drawing", "illustration", "render", "style", "art", "portrait",
    "close", "up", "view", "top", "bottom", "left", "right", "center", "middle", "corner", "front", "behind",
    "small", "large", "big", "tiny", "little", "bright", "dark", "light", "simple", "plain", "flat", "high",
    "quality", "detailed", "blurry", "sharp", "beautiful", "ugly", "old", "new",
    "cat", "dog", "man", "woman", "person", "face", "house", "tree", "sky", "sea", "water", "mountain", "city",
    "car", "flower", "forest", "night", "day", "sun", "moon", "cloud", "snow", "grass", "road", "room", "table",
    "black", "white", "gray", "grey", "red", "green", "blue", "yellow", "orange", "purple", "pink", "brown",
    "shape", "object", "thing", "background", "foreground", "pattern", "texture", "color", "colour",
)  # fmt: skip


def default_words() -> tuple[str, ...]:
    """The default vocabulary: `GENERIC_WORDS` plus every word the shapes world can caption (deduplicated, sorted)."""
    from sdkit.data.world import vocabulary_words

    return tuple(sorted(set(GENERIC_WORDS) | {w.lower() for w in vocabulary_words()}))


def words_in(texts: Iterable[str]) -> list[str]:
    """The distinct words (lower case, first-seen order) that CLIP's pre-tokenizer would cut from `texts` and that can
    be single tokens here: runs of letters, ASCII only ("café" and digits are left to the character fallback)."""
    seen: dict[str, None] = {}
    for text in texts:
        for run in _LETTER_RUN.findall(text.lower()):
            if _WORD.match(run):
                seen.setdefault(run, None)
    return list(seen)


def _checked_words(words: Iterable[str]) -> list[str]:
    """Lower-case, validate and deduplicate the words (first occurrence wins)."""
    seen: dict[str, None] = {}
    for word in words:
        lowered = word.strip().lower()
        if not _WORD.match(lowered):
            raise UserError(
                f"word {word!r} cannot be one token: tokenizer words must be ASCII letters only "
                "(CLIP's pre-tokenizer splits digits and punctuation off)"
            )
        seen.setdefault(lowered, None)
    return list(seen)


def word_vocabulary(words: Iterable[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The BPE vocabulary (token → id) and merges (in rank order) that make each word one token."""
    vocab: dict[str, int] = {}

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for c in BASE_CHARACTERS:
        add(c)
    for c in BASE_CHARACTERS:
        add(c + END_OF_WORD)
    merges: dict[tuple[str, str], None] = {}
    for word in _checked_words(words):
        suffix = word[-1] + END_OF_WORD
        for i in range(len(word) - 2, -1, -1):
            merges.setdefault((word[i], suffix), None)
            suffix = word[i] + suffix
            add(suffix)
    add(BOS_TOKEN)
    add(EOS_TOKEN)
    return vocab, list(merges)


def write_word_tokenizer(words: Iterable[str], out_dir: Path, model_max_length: int = 77) -> Path:
    """Write a CLIP BPE tokenizer (vocab.json, merges.txt, tokenizer_config.json) to `out_dir`; return `out_dir`."""
    if model_max_length < 3:
        raise UserError(f"model_max_length {model_max_length} is too small: use at least 3 (start, word, end)")
    vocab, merges = word_vocabulary(words)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "unk_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "do_lower_case": True,
        "clean_up_tokenization_spaces": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return out_dir


def expected_vocab_size(tokenizer_dir: Path) -> int:
    """The number of tokens the files in `tokenizer_dir` define: tokenizer.json's vocabulary and added tokens when it
    exists, else vocab.json plus the added tokens that tokenizer_config.json / added_tokens.json declare."""
    tokenizer_dir = Path(tokenizer_dir)
    tokenizer_json = tokenizer_dir / "tokenizer.json"
    vocab_json = tokenizer_dir / "vocab.json"
    if tokenizer_json.is_file():
        data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
        return len(set(data["model"]["vocab"]) | {t["content"] for t in data.get("added_tokens", [])})
    if not vocab_json.is_file():
        raise UserError(f"no tokenizer in {tokenizer_dir}: expected tokenizer.json or vocab.json + merges.txt there")
    tokens = set(json.loads(vocab_json.read_text(encoding="utf-8")))
    config_json = tokenizer_dir / "tokenizer_config.json"
    if config_json.is_file():
        decoder = json.loads(config_json.read_text(encoding="utf-8")).get("added_tokens_decoder", {})
        tokens |= {t["content"] for t in decoder.values()}
    added_json = tokenizer_dir / "added_tokens.json"
    if added_json.is_file():
        tokens |= set(json.loads(added_json.read_text(encoding="utf-8")))
    return len(tokens)


def check_vocab_size(tokenizer: CLIPTokenizer, tokenizer_dir: Path) -> None:
    """Raise UserError unless `tokenizer` holds exactly the tokens the files in `tokenizer_dir` define."""
    expected = expected_vocab_size(tokenizer_dir)
    if len(tokenizer) != expected:
        raise UserError(
            f"tokenizer from {tokenizer_dir} has {len(tokenizer)} tokens but its files define {expected}: load it "
            "with CLIPTokenizer.from_pretrained(dir) (transformers 5 ignores vocab_file=/merges_file= keywords)"
        )


def load_tokenizer(tokenizer_dir: Path) -> CLIPTokenizer:
    """Load a CLIPTokenizer from a folder and check that its vocabulary is the one written there."""
    from transformers import CLIPTokenizer

    expected_vocab_size(tokenizer_dir)  # a folder without tokenizer files is a UserError, before transformers' OSError
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    check_vocab_size(tokenizer, tokenizer_dir)
    return tokenizer


def add_words(tokenizer: CLIPTokenizer, text_encoder: Any, words: Iterable[str]) -> list[int]:
    """Add `words` to a loaded tokenizer as one token each and grow the text encoder's embedding table to match (the
    new rows drawn around the old rows' mean: transformers' mean resizing). Words that already are one token keep
    their trained rows (as `tokenizer.add_tokens` skips them), so a recipe runs the same on a tokenizer that has
    them. Returns the new token ids."""
    words = list(words)
    known = [w for w in words if len(tokenizer.encode(w, add_special_tokens=False)) == 1]
    if known:
        print(f"add_words: {', '.join(known)} already one token each: kept as trained", file=sys.stderr)
    words = [w for w in words if w not in known]
    if not words:
        return []
    tokenizer.add_tokens(words)
    ids = tokenizer.convert_tokens_to_ids(words)
    if [tokenizer.encode(w, add_special_tokens=False) for w in words] != [[i] for i in ids]:
        raise UserError(f"add_words: the tokenizer does not read {words} back as single tokens: choose plain words")
    text_encoder.resize_token_embeddings(len(tokenizer))
    return ids


def save_vocab_files(tokenizer: CLIPTokenizer, out_dir: Path) -> list[Path]:
    """Write vocab.json + merges.txt beside a saved tokenizer (transformers 5 writes only tokenizer.json), and
    added_tokens.json for words added to it (`add_words`, textual-inversion tokens), so the folder also loads with
    transformers 4's slow CLIPTokenizer, which reads only these files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [Path(p) for p in tokenizer.backend_tokenizer.model.save(str(out_dir))]
    vocab = json.loads((out_dir / "vocab.json").read_text(encoding="utf-8"))
    added = {t.content: i for i, t in sorted(tokenizer.added_tokens_decoder.items()) if t.content not in vocab}
    if added:
        written.append(out_dir / "added_tokens.json")
        written[-1].write_text(json.dumps(added, indent=2) + "\n", encoding="utf-8")
    return written


def main(argv: list[str] | None = None) -> int:
    """`python -m sdkit.tokenizer OUT_DIR [WORD ...]`: write a word-level tokenizer and print its size."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sdkit.tokenizer", description=main.__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to write vocab.json, merges.txt, tokenizer_config.json")
    parser.add_argument("words", nargs="*", help="words to make single tokens (default: sdkit's default list)")
    parser.add_argument("--model-max-length", type=int, default=77, help="token limit, start/end tokens included")
    args = parser.parse_args(argv)
    words = args.words or default_words()
    out = write_word_tokenizer(words, args.out_dir, args.model_max_length)
    print(f"{out}: {len(load_tokenizer(out))} tokens, {len(set(words))} words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
