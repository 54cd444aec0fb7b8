"""Text corpora, tokenizers and fixed-length chunks for the discrete (text) models.

Corpus: a text file, a folder of files (each file a document), or the default: the English text of
CPython's `pydoc_data.topics` (one document per help topic, present on every Python install).
Split rule: documents in sorted order, document i goes to val if i % 10 == 8, test if i % 10 == 9,
else train; with fewer than 10 documents the concatenated bytes are cut 80 / 10 / 10.

Tokenizers: bytes (default; any input, UTF-8 or not), characters (the training alphabet; strict UTF-8),
or a BPE vocabulary trained locally with the optional `tokenizers` package (extra `text`).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from diffspace.types import UserError

SEPARATOR = b"\n\n"  # between packed documents


def load_corpus(source: str = "pydoc") -> list[bytes]:
    """Documents as raw bytes, in a fixed order."""
    if source == "pydoc":
        from pydoc_data.topics import topics

        docs = [topics[k].encode("utf-8") for k in sorted(topics)]
    else:
        p = Path(source)
        if not p.exists():
            raise UserError(f"text corpus not found: {p}")
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        docs = [f.read_bytes() for f in files]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise UserError(f"text corpus {source!r} is empty (no non-blank document)")
    return docs


def split_corpus(docs: list[bytes]) -> dict[str, list[bytes]]:
    """The fixed train/val/test rule of the module docstring."""
    if len(docs) < 10:
        data = SEPARATOR.join(docs)
        a, b = int(0.8 * len(data)), int(0.9 * len(data))
        return {"train": [data[:a]], "val": [data[a:b]], "test": [data[b:]]}
    out = {"train": [], "val": [], "test": []}
    for i, d in enumerate(docs):
        out["val" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].append(d)
    return out


def _utf8(doc: bytes) -> str:
    try:
        return doc.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"text is not valid UTF-8 at byte {e.start} ({doc[e.start:e.start + 4]!r}); "
                        "use the byte tokenizer for arbitrary bytes") from None


class ByteTokenizer:
    """One token per byte: never fails, any input."""

    name = "byte"
    size = 256

    def encode(self, text: str | bytes) -> list[int]:
        return list(text.encode("utf-8") if isinstance(text, str) else text)

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class CharTokenizer:
    """One token per Unicode character of the training alphabet (sorted, so it is reproducible)."""

    name = "char"

    def __init__(self, train_docs: list[bytes]):
        self.chars = sorted(set("".join(_utf8(d) for d in train_docs)) | set(SEPARATOR.decode()))
        self.index = {c: i for i, c in enumerate(self.chars)}
        self.size = len(self.chars)

    def encode(self, text: str | bytes) -> list[int]:
        text = _utf8(text) if isinstance(text, bytes) else text
        bad = [c for c in set(text) if c not in self.index]
        if bad:
            raise UserError(f"character {bad[0]!r} is not in the training alphabet of {self.size} characters")
        return [self.index[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(self.chars[i] for i in ids if i < self.size)


class BPETokenizer:
    """Byte-pair encoding trained locally on the training split (no download); unknown characters
    are an error rather than being silently dropped."""

    name = "bpe"

    def __init__(self, train_docs: list[bytes], vocab_size: int = 512):
        try:
            from tokenizers import Tokenizer, models, trainers
        except ImportError:
            msg = "the BPE tokenizer needs the optional extra: pip install 'diffspace[text]'"
            raise UserError(msg) from None
        texts = [_utf8(d) for d in train_docs]
        self.alphabet = set("".join(texts)) | set(SEPARATOR.decode())
        self.tok = Tokenizer(models.BPE())
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=sorted(self.alphabet),
                                      show_progress=False)
        self.tok.train_from_iterator(texts, trainer=trainer)
        self.size = self.tok.get_vocab_size()

    def encode(self, text: str | bytes) -> list[int]:
        text = _utf8(text) if isinstance(text, bytes) else text
        bad = [c for c in set(text) if c not in self.alphabet]
        if bad:
            raise UserError(f"character {bad[0]!r} is not in the BPE vocabulary (unknown token)")
        return self.tok.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return "".join(self.tok.id_to_token(i) for i in ids if i < self.size)


def make_tokenizer(kind: str, train_docs: list[bytes], bpe_vocab: int = 512):
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(train_docs)
    if kind == "bpe":
        return BPETokenizer(train_docs, bpe_vocab)
    raise UserError(f"unknown tokenizer {kind!r} (expected byte, char or bpe)")


@dataclass
class TokenStream:
    """One split as a token stream with the chunk starts that are allowed (within documents unless
    packed) and the number of characters it encodes (for bits per character)."""

    ids: Tensor  # (N,) long
    starts: Tensor  # (S,) long: valid chunk starts
    n_chars: int

    @property
    def chars_per_token(self) -> float:
        return self.n_chars / len(self.ids)


def tokenize_split(tok, docs: list[bytes], seq_len: int, pack: bool = True) -> TokenStream:
    """Concatenate documents (with SEPARATOR when packing) and list where length-seq_len chunks may start."""
    pieces, spans, n = [], [], 0
    sep = tok.encode(SEPARATOR) if pack else []
    for d in docs:
        ids = tok.encode(d) + sep
        pieces.append(ids)
        spans.append((n, n + len(ids)))
        n += len(ids)
    ids = torch.tensor([i for p in pieces for i in p], dtype=torch.long)
    if pack:
        starts = torch.arange(max(len(ids) - seq_len + 1, 0))
    else:
        starts = torch.cat([torch.arange(a, b - seq_len + 1) for a, b in spans if b - a >= seq_len]
                           + [torch.zeros(0, dtype=torch.long)])
    if len(starts) == 0:
        raise UserError(f"text split of {len(ids)} tokens holds no chunk of seq_len={seq_len}")
    n_chars = sum(len(d.decode("utf-8", errors="replace")) for d in docs) + pack * len(docs) * len(SEPARATOR)
    return TokenStream(ids, starts, n_chars)


@dataclass
class TextSplits:
    tok: object  # the tokenizer, trained on the train split
    train: TokenStream
    val: TokenStream
    test: TokenStream


def load_splits(corpus: str, tokenizer: str, bpe_vocab: int, seq_len: int, pack: bool = True) -> TextSplits:
    """A corpus split by the rule above, with a tokenizer trained on its train split."""
    splits = split_corpus(load_corpus(corpus))
    tok = make_tokenizer(tokenizer, splits["train"], bpe_vocab)
    return TextSplits(tok, *(tokenize_split(tok, splits[k], seq_len, pack) for k in ("train", "val", "test")))


def encode_prompt(tok, prompt: str, seq_len: int) -> Tensor:
    """The ids (P,) of a prompt that leaves room for at least one token in a context of seq_len."""
    ids = tok.encode(prompt) if prompt else []
    if len(ids) >= seq_len:
        raise UserError(f"prompt of {len(ids)} tokens leaves no room in the context of {seq_len} tokens")
    return torch.tensor(ids, dtype=torch.long)


def random_chunks(stream: TokenStream, batch: int, seq_len: int, g: torch.Generator) -> Tensor:
    """(batch, seq_len) chunks at uniformly drawn valid starts."""
    j = torch.randint(len(stream.starts), (batch,), generator=g)
    return stream.ids[stream.starts[j][:, None] + torch.arange(seq_len)]


def eval_chunks(stream: TokenStream, seq_len: int, max_chunks: int = 0) -> Tensor:
    """Non-overlapping chunks in order (the first `max_chunks` when > 0), shape (N, seq_len)."""
    keep, last = [], -seq_len
    for s in stream.starts.tolist():
        if s >= last + seq_len:
            keep.append(s)
            last = s
        if max_chunks and len(keep) == max_chunks:
            break
    return stream.ids[torch.tensor(keep)[:, None] + torch.arange(seq_len)]
