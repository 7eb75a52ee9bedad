"""dpnet.data.text: reading, vocabulary, split, and the stream batcher."""
import json

import numpy as np
import pytest

from dpnet.data.text import (StreamBatcher, TextError, Vocabulary, load_corpus, read_text,
                             split)


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


# -- reading -----------------------------------------------------------------------------
def test_read_text_utf8(tmp_path):
    p = write(tmp_path, "a.txt", "\ufeffhéllo, 世界\n".encode("utf-8"))
    assert read_text(p) == "héllo, 世界\n"                # BOM dropped


@pytest.mark.parametrize("name, data, words", [
    ("empty.txt", b"", "is empty"),
    ("bom.txt", b"\xef\xbb\xbf", "is empty"),
    ("latin1.txt", "abc\u00e9".encode("latin-1"), "not valid UTF-8: byte 0xe9 at offset 3"),
])
def test_read_text_bad_files(tmp_path, name, data, words):
    p = write(tmp_path, name, data)
    with pytest.raises(ValueError, match=words) as e:
        read_text(p)
    assert name in str(e.value) and "\n" not in str(e.value)


def test_read_text_missing(tmp_path):
    with pytest.raises(TextError, match="nope.txt.*does not exist"):
        read_text(tmp_path / "nope.txt")
    with pytest.raises(TextError, match="not a regular file"):
        read_text(tmp_path)


# -- vocabulary --------------------------------------------------------------------------
def test_vocabulary_round_trip():
    text = "to be, or not to be: é 世"
    v = Vocabulary(text)
    assert v.chars == sorted(set(text)) and len(v) == len(set(text))
    ids = v.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert v.decode(ids) == text and v.decode(list(ids)) == text and v.decode([]) == ""
    assert [v.chars[i] for i in ids] == list(text)
    again = Vocabulary.from_list(json.loads(json.dumps(v.to_list())))
    assert again == v and np.array_equal(again.encode(text), ids)


def test_vocabulary_errors():
    v = Vocabulary("abc")
    with pytest.raises(TextError, match=r"'z' \(U\+007A\) at position 2"):
        v.encode("abzc")
    with pytest.raises(TextError, match="outside the vocabulary"):
        v.decode([0, 3])
    with pytest.raises(TextError, match="outside the vocabulary"):
        v.decode([-1])
    for bad in (["b", "a"], ["a", "a"], ["ab"], [], "abc", [1]):
        with pytest.raises(TextError):
            Vocabulary.from_list(bad)
    with pytest.raises(TextError, match="empty"):
        Vocabulary("")


# -- split -------------------------------------------------------------------------------
def test_split_last_tenth():
    ids = np.arange(100)
    train, val = split(ids)
    assert np.array_equal(train, ids[:90]) and np.array_equal(val, ids[90:])
    assert np.shares_memory(train, ids)
    train, val = split(ids, 0.0)
    assert len(train) == 100 and len(val) == 0
    for bad in (1.0, -0.1, "0.1", True):
        with pytest.raises(ValueError, match="val_fraction"):
            split(ids, bad)
    with pytest.raises(TextError, match="too short"):
        split(np.arange(10), 0.1)


def test_load_corpus(tmp_path):
    text = "abcdefghij" * 10
    p = write(tmp_path, "c.txt", text.encode())
    vocab, train, val = load_corpus(p, val_fraction=0.2)
    assert len(vocab) == 10 and len(train) == 80 and len(val) == 20
    assert vocab.decode(np.concatenate([train, val])) == text


# -- batching ----------------------------------------------------------------------------
def test_stream_batcher_contiguity():
    ids = np.arange(1000, dtype=np.int32)
    B, T = 4, 7
    sb = StreamBatcher(ids, B, T)
    L = 1000 // B
    assert sb.stream_len == L and len(sb) == (L - 1) // T == 35
    seen = []
    for k, (x, y) in enumerate(sb):
        assert x.shape == y.shape == (B, T)
        for b in range(B):
            start = b * L + k * T                   # stream b is ids[b*L:(b+1)*L]
            assert np.array_equal(x[b], ids[start:start + T])
            assert np.array_equal(y[b], ids[start + 1:start + T + 1])
        assert np.shares_memory(x, ids) and not x.flags.writeable
        seen.append(x)
    # Consecutive batches continue every stream; the last target stays in its stream.
    rows = np.concatenate(seen, axis=1)
    assert np.array_equal(rows, sb.streams[:, :len(sb) * T])
    assert np.all(y[:, -1] < np.arange(1, B + 1) * L)   # ids == positions here
    with pytest.raises(IndexError):
        sb.batch(len(sb))


def test_stream_batcher_exact_minimum_and_too_short():
    B, T = 3, 5
    sb = StreamBatcher(np.arange(B * (T + 1)), B, T)
    assert len(sb) == 1
    x, y = sb.batch(0)
    assert np.array_equal(y, x + 1)
    with pytest.raises(TextError, match=r"17 characters.*3 streams x 5 steps.*at least 18"):
        StreamBatcher(np.arange(17), B, T)
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="batch_size"):
            StreamBatcher(np.arange(100), bad, T)
        with pytest.raises(ValueError, match="seq_len"):
            StreamBatcher(np.arange(100), B, bad)
