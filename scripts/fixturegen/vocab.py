"""The tiny tokenizers the fixtures use (byte-level BPE for OPT, Unigram for T5, WordPiece for BERT), trained
on a fixed corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .common import CORPUS


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers (trained here, so no hub access is needed)
# ----------------------------------------------------------------------------------------------------------------


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE in OPT's style: <s>=0 <pad>=1 </s>=2 <unk>=3, BOS `</s>` prepended."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", tok.token_to_id("</s>"))]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=64,
    )


def corpus_words() -> list[tuple[str, int]]:
    """Words of the corpus with their counts, most frequent first (ties by the word): a deterministic order.
    (The tokenizers crate's Unigram and WordPiece trainers iterate hash maps, so their output changes from run to
    run; the vocabularies below are built by hand instead.)"""
    counts: dict[str, int] = {}
    for line in CORPUS:
        for word in line.split():
            counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """Unigram in T5's style: <pad>=0 </s>=1 <unk>=2, `</s>` appended, Metaspace pre-tokenizer.

    Pieces: every character, `▁`, the 60 most frequent words as `▁word`, and frequent word-initial and inner
    fragments; scores are log relative frequencies, so the segmentation mixes whole words and pieces."""
    words = corpus_words()
    total = sum(c for _, c in words)
    pieces: dict[str, float] = {}

    def add(piece: str, count: int) -> None:
        score = float(np.log(count / total)) - 0.5 * len(piece)
        pieces[piece] = max(pieces.get(piece, -1e9), score)

    for word, count in words[:60]:
        add("▁" + word, count)
    fragments: dict[str, int] = {}
    for word, count in words:
        for n in (2, 3):
            fragments["▁" + word[:n]] = fragments.get("▁" + word[:n], 0) + count
            for i in range(1, len(word) - n + 1):
                fragments[word[i:i + n]] = fragments.get(word[i:i + n], 0) + count
    for frag, count in sorted(fragments.items(), key=lambda kv: (-kv[1], kv[0]))[:50]:
        add(frag, count)
    chars = sorted({ch for line in CORPUS for ch in line if not ch.isspace()})
    for ch in chars:
        add(ch, 1)
    add("▁", total)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\n", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=64,
    )


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece in BERT's style (the Q-Former's text tower): [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, plus the
    `[DEC]` BOS token that LAVIS adds (which makes the real Q-Former vocabulary 30523).

    Vocabulary: the specials, every character and its `##` continuation, the 70 most frequent words and a few
    frequent word endings, so that words split into pieces too."""
    words = [(w.lower().strip("?:"), c) for w, c in corpus_words()]
    chars = sorted({ch for line in CORPUS for ch in line.lower() if not ch.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + ["##" + ch for ch in chars if ch.isalnum()]
    for word, _ in words[:70]:
        if word and word not in vocab:
            vocab.append(word)
    for ending in ("##ing", "##ed", "##er", "##s", "##ly", "##en"):
        if ending not in vocab:
            vocab.append(ending)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        padding_side="right",
        model_max_length=24,
    )
    fast.add_special_tokens({"bos_token": "[DEC]"})
    return fast


def check_tokenizer_file(directory: Path, hf_tokenizer, texts: list[str]) -> None:
    """The Rust side reads tokenizer.json with the `tokenizers` crate: it must give what transformers gives."""
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for text in texts:
        want = hf_tokenizer(text)["input_ids"]
        got = raw.encode(text).ids
        if want != got:
            raise AssertionError(f"tokenizer.json disagrees with transformers on {text!r}: {got} vs {want}")
