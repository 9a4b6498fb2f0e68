"""WordPiece alone (no [CLS]/[SEP]): vocabulary files, casing settings, the chunk cache.

The reference is the Rust `tokenizers` BertWordPieceTokenizer with add_special_tokens=False,
on the bert-base-uncased vocab shipped with all-MiniLM-L6-v2 and on real SST-2 text.
"""

from __future__ import annotations

import pickle

import pytest

from bertkit import wordpiece
from bertkit.tokenizer import Tokenizer
from bertkit.wordpiece import BasicTokenizer, WordPiece, basic_tokenize, load_vocab
from conftest import data_path

tokenizers = pytest.importorskip("tokenizers")

SPECIALS = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n"
MIXED = ["Héllo, Wörld! CAFÉ café", "naïve FAÇADE résumé", "ΣΟΦΟΣ ὀδυσσεύς", "İstanbul straße",
         "我爱北京 Ångström", "x[CLS]y [MASK] [mask]", "Don't STOP me now!!", "e\u0301 E\u0301\u0302"]


def sst2(n: int) -> list[str]:
    lines = data_path("glue", "SST-2", "dev.tsv").read_text(encoding="utf-8").splitlines()[1:n + 1]
    return [line.split("\t")[0] for line in lines]


@pytest.fixture(scope="module")
def vocab_file(minilm) -> str:
    return str(minilm / "vocab.txt")


# --- WordPiece against the reference ---------------------------------------------------------

@pytest.mark.parametrize("lowercase,strip_accents", [(True, None), (True, False), (False, None), (False, True)])
def test_casing_settings_match_rust(vocab_file, lowercase, strip_accents):
    """Each setting is read from one place (the BasicTokenizer): the Tokenizer reports it, WordPiece obeys it."""
    tok = Tokenizer(load_vocab(vocab_file), do_lower_case=lowercase, strip_accents=strip_accents)
    assert tok.wordpiece.basic == BasicTokenizer(lowercase, strip_accents)
    assert (tok.do_lower_case, tok.strip_accents) == (lowercase, strip_accents)
    ref = tokenizers.BertWordPieceTokenizer(vocab_file, lowercase=lowercase, strip_accents=strip_accents)
    for text in MIXED + sst2(300):
        r = ref.encode(text, add_special_tokens=False)
        ids, spans = tok.wordpiece.encode(text)
        assert (ids, list(zip(spans[::2], spans[1::2]))) == (r.ids, r.offsets), text
        assert tok.tokenize(text) == r.tokens


def test_cache_bounded_and_transparent(vocab_file, monkeypatch):
    """A full cache is cleared, not grown, and results never depend on what it holds."""
    texts = sst2(400)
    fresh = WordPiece(load_vocab(vocab_file))
    want = [fresh.encode(t) for t in texts]
    assert len(fresh._chunk_cache) > 100
    monkeypatch.setattr(wordpiece, "_CACHE_LIMIT", 50)
    small = WordPiece(load_vocab(vocab_file))
    for _ in range(2):  # a cold pass, then one through a cache cleared again and again
        assert [small.encode(t) for t in texts] == want
        assert len(small._chunk_cache) <= 50 and len(small._word_cache) <= 50
    assert [small.encode(t, with_offsets=False) for t in texts] == [(ids, None) for ids, _ in want]


def test_pickled_copy_starts_without_caches(vocab_file):
    wp = WordPiece(load_vocab(vocab_file), BasicTokenizer(do_lower_case=False))
    texts = sst2(50)
    want = [wp.encode(t) for t in texts]
    copy = pickle.loads(pickle.dumps(wp))
    assert not copy._chunk_cache and not copy._word_cache and wp._chunk_cache
    assert copy.basic == wp.basic and [copy.encode(t) for t in texts] == want


def test_basic_tokenize():
    assert basic_tokenize("Don't [MASK] it!") == ["don", "'", "t", "[MASK]", "it", "!"]
    assert basic_tokenize("Héllo World", do_lower_case=False) == ["Héllo", "World"]


# --- vocabulary files -----------------------------------------------------------------------------

def test_duplicate_token_is_refused_naming_file_lines_and_token(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text(SPECIALS + "hello\nworld\n##s\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError) as e:
        load_vocab(path)
    message = str(e.value)
    assert f"{path}: lines 6 and 9 hold the same token 'hello'" in message and "\n" not in message
    path.write_text(SPECIALS + "hello\n\nworld\n \n", encoding="utf-8")  # blank lines: the token '' twice
    with pytest.raises(ValueError, match=r"lines 7 and 9 hold the same blank line"):
        load_vocab(path)
    path.write_text(SPECIALS + "hello\nhello \n", encoding="utf-8")  # trailing space: the same token
    with pytest.raises(ValueError, match=r"lines 6 and 7 hold the same token 'hello'"):
        load_vocab(path)


def test_vocab_lines_read_as_the_reference_reads_them(tmp_path):
    """CRLF line ends, trailing spaces, one blank line, no final newline: every id as Rust's."""
    path = tmp_path / "vocab.txt"
    path.write_bytes(SPECIALS.replace("\n", "\r\n").encode() + b"hello\r\n\r\nworld \n##s\t\nfoo")
    ours = load_vocab(path)
    ref = tokenizers.BertWordPieceTokenizer(str(path))
    assert ours == ref.get_vocab()
    assert ours[""] == 6 and ours["world"] == 7 and ours["foo"] == 9
    tok = Tokenizer(ours)
    for text in ["hello worlds", "Hello foo, world!", ""]:
        assert tok.encode(text).input_ids == ref.encode(text).ids


def test_bad_vocab_files(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes(b"[PAD]\n\xff\n")
    with pytest.raises(ValueError, match="not valid UTF-8"):
        load_vocab(path)
    path.write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_vocab(path)
    with pytest.raises(ValueError, match=r"\[UNK\]"):
        WordPiece({"a": 0})
