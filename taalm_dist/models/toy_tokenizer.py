"""A deterministic word-level tokenizer for tiny test models and the toy task (no download).

Vocabulary: 4 special tokens, the words of the toy task (:mod:`taalm_dist.data.toy`), and nothing else;
any other word maps to ``[UNK]``. Pre-tokenisation splits on whitespace and punctuation, so offsets
(``return_offsets_mapping``) work as with any fast tokenizer.
"""

from __future__ import annotations

from functools import lru_cache

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _pseudo_words(count: int, offset: int, capitalise: bool) -> list[str]:
    """``count`` distinct pronounceable pseudo-words (consonant-vowel-consonant-vowel), deterministic."""
    words = []
    i = offset
    while len(words) < count:
        c1, v1, c2, v2 = (
            _CONSONANTS[i % 14],
            _VOWELS[(i // 14) % 5],
            _CONSONANTS[(i // 70) % 14],
            _VOWELS[(i // 980) % 5],
        )
        word = c1 + v1 + c2 + v2
        words.append(word.capitalize() if capitalise else word)
        i += 1
    return words


TEMPLATE_WORDS = ("the", "code", "of", "is", "and", "a", ".", ",")
FILLERS = tuple(_pseudo_words(120, 0, capitalise=False))
ENTITIES = tuple(_pseudo_words(200, 200, capitalise=True))
ANSWERS = tuple(w.upper() for w in _pseudo_words(60, 500, capitalise=False))


def toy_vocabulary() -> list[str]:
    """All tokens of the toy tokenizer, in id order."""
    return list(SPECIAL_TOKENS) + list(TEMPLATE_WORDS) + list(FILLERS) + list(ENTITIES) + list(ANSWERS)


@lru_cache(maxsize=1)
def _build_fast():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate(toy_vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def toy_tokenizer():
    """A ``PreTrainedTokenizerFast`` over :func:`toy_vocabulary` (pad/unk/bos/eos set, no BOS added)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_build_fast(),
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )
