"""The detokenizer on a fake byte-level tokenizer: streamed text never shows a broken character or
text that a stop string later trims, the pieces add up to the final text, stop strings are found
across token boundaries (multi-byte ones too), and logprob token texts keep special tokens."""

from __future__ import annotations

from typing import Sequence

import pytest
from hypothesis import given, settings, strategies as st

from radixlm.engine.detokenizer import INCOMPLETE, Detokenizer, TextStream, held_back
from radixlm.engine.request import FinishReason, Request, SamplingParams

SPECIAL = 0  # decodes to "<s>", skipped unless asked for


class ByteTokenizer:
    """Token i > 0 is the byte string `pieces[i - 1]`; decoding joins them and decodes UTF-8 with
    U+FFFD for cut-off sequences, as byte-level BPE tokenizers do."""

    def __init__(self, pieces: Sequence[bytes]) -> None:
        self.pieces = list(pieces)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        out = b"".join(b"" if i == SPECIAL and skip_special_tokens else b"<s>" if i == SPECIAL else self.pieces[i - 1]
                       for i in ids)
        return out.decode("utf-8", errors="replace")


def split_bytes(text: str, cuts: list[int]) -> list[bytes]:
    data = text.encode()
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def generate(text: str, cuts: list[int], groups: list[int], stops: tuple[str, ...]) -> tuple[Request, list[str], Detokenizer]:
    """Feed `text` token by token (in groups, as jump-forward appends several) the way the engine
    does, streaming after every step; returns the finished request, the streamed pieces and the
    detokenizer."""
    pieces = split_bytes(text, cuts)
    detok = Detokenizer(ByteTokenizer(pieces))
    req = Request([1], SamplingParams(stop=stops, max_new_tokens=max(len(pieces), 1)))
    stream, sent = TextStream(), []
    ids = list(range(1, len(pieces) + 1))
    step = 0
    while req.finish_reason is None:
        n = max(1, groups[step % len(groups)]) if groups else 1
        step += 1
        new, ids = ids[:n], ids[n:]
        req.output_ids.extend(new)
        hit = detok.find_stop(req.output_ids, stops, len(new)) if stops else None
        if hit is not None:
            req.stop_text_end, req.matched_stop = hit
            req.finish_reason = FinishReason.STOP
        elif not ids:
            req.finish_reason = FinishReason.LENGTH
        delta = detok.next_delta(stream, req)
        if delta is not None:
            sent.append(delta.text)
            assert stream.sent_text == "".join(sent), "every piece extends what was sent before"
    return req, sent, detok


texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters=INCOMPLETE), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(text=texts, cuts=st.lists(st.integers(0, 200), max_size=40), groups=st.lists(st.integers(1, 4), max_size=5))
def test_streamed_pieces_add_up_to_the_text_without_broken_characters(text, cuts, groups):
    req, sent, detok = generate(text, cuts, groups, ())
    assert "".join(sent) == detok.final_text(req) == text
    assert not any(INCOMPLETE in piece for piece in sent)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), text=texts, cuts=st.lists(st.integers(0, 200), max_size=40),
       groups=st.lists(st.integers(1, 4), max_size=5))
def test_a_stream_stops_before_its_first_stop_string_and_never_shows_what_it_trims(data, text, cuts, groups):
    start = data.draw(st.integers(0, len(text) - 1))
    inside = text[start : start + data.draw(st.integers(1, 4))]  # a stop that occurs in the text
    other = data.draw(st.text(st.sampled_from("ab😀é\n"), min_size=1, max_size=3))
    stops = (inside, other)
    req, sent, detok = generate(text, cuts, groups, stops)
    final = detok.final_text(req)
    assert "".join(sent) == final and text.startswith(final)
    assert not any(s in final for s in stops)
    assert any(text[len(final) :].startswith(s) for s in stops), "cut exactly where a stop string starts"
    assert req.finish_reason is FinishReason.STOP and req.matched_stop in stops


def test_a_multi_byte_stop_string_is_found_across_single_byte_tokens():
    text = "ok " + "😀" * 3 + " tail"
    req, sent, detok = generate(text, list(range(len(text.encode()))), [1], ("😀😀😀",))
    assert req.finish_reason is FinishReason.STOP and detok.final_text(req) == "".join(sent) == "ok "


def test_a_stop_string_inside_many_tokens_appended_at_once_is_found():
    text = "x" * 30 + "STOP" + "y" * 30
    req, _, detok = generate(text, list(range(len(text))), [len(text)], ("STOP",))
    assert (req.matched_stop, detok.final_text(req)) == ("STOP", "x" * 30)


@pytest.mark.parametrize("text, stops, held", [
    ("hello wor", ("world",), 3), ("hello", ("world",), 0), ("abab", ("abc", "bx"), 2), ("a", ("ab",), 1),
    ("xa", ("aab", "ab"), 1), ("", ("ab",), 0),
])
def test_held_back_is_the_longest_end_that_may_grow_into_a_stop(text, stops, held):
    assert held_back(text, stops) == held


def test_logprob_texts_keep_special_tokens_and_missing_positions():
    detok = Detokenizer(ByteTokenizer([b"hi", b" there"]))
    assert detok.logprob_texts([None, (-0.5, SPECIAL), (-1.0, 2)]) == [None, (-0.5, SPECIAL, "<s>"), (-1.0, 2, " there")]
    assert detok.top_logprob_texts([[(-0.1, 1)], []]) == [[(-0.1, 1, "hi")], []]
    assert detok.logprob_texts(None) is None and detok.top_logprob_texts(None) is None


def test_final_text_skips_special_tokens_and_trims_at_the_stop():
    detok = Detokenizer(ByteTokenizer([b"one", b" two"]))
    req = Request([1], SamplingParams(), output_ids=[1, SPECIAL, 2])
    assert detok.final_text(req) == "one two"
    req.stop_text_end = 3
    assert detok.final_text(req) == "one"


def test_without_a_tokenizer_there_is_no_text_and_no_stop_strings():
    detok = Detokenizer(None)
    req = Request([1], SamplingParams(), output_ids=[5, 6])
    assert detok.final_text(req) is None and detok.decode([5]) == ""
    assert detok.logprob_texts([(-1.0, 5)]) == [(-1.0, 5, "")]
    with pytest.raises(ValueError, match="need a tokenizer"):
        detok.find_stop([5, 6], ("x",), 1)
