"""Unit tests of ``transcribe.streaming.policy``: LocalAgreement-2 and the hallucination guards."""

from __future__ import annotations

import pytest

from transcribe.engines.base import Segment, Transcription, Word
from transcribe.streaming.policy import (
    COLLAPSED_WORD,
    ECHO_PROBABILITY,
    MIN_WORD_PROBABILITY,
    SILENCE_PHANTOMS,
    LocalAgreement,
    accepted_words,
    first_repetition,
    heard_prefix,
    is_hallucination,
    is_trailing_echo,
    join_words,
    normalize_text,
    normalize_word,
    repeats_a_phrase,
)


def words(
    text: str, start: float = 0.0, step: float = 0.4, length: float = 0.3, p: float = 0.9
) -> list[Word]:
    """Words as Whisper gives them: each with its leading space, 0.3 s long, 0.4 s apart."""
    return [Word(start + i * step, start + i * step + length, " " + w, p) for i, w in enumerate(text.split())]


def texts(ws: list[Word]) -> list[str]:
    return [w.text.strip() for w in ws]


def segment(text: str, *, start: float = 0.0, **stats) -> Segment:
    ws = tuple(words(text, start))  # 0.3 s words with probability 0.9: speech by every word-level sign
    return Segment(ws[0].start if ws else start, ws[-1].end if ws else start, text, ws, **stats)


# -- normalization ----------------------------------------------------------------------------


def test_normalize():
    assert normalize_word(" Country,") == "country"
    assert normalize_word("don't!") == "don't"
    assert normalize_text("Thank you.") == "thank you"
    assert normalize_text("  Thanks   for watching!! ") == "thanks for watching"
    assert join_words(words("And so, my")) == "And so, my"
    assert (
        join_words([Word(0, 1, " don"), Word(1, 2, "'t"), Word(2, 3, " go")]) == "don't go"
    )  # sub-word pieces
    assert join_words([]) == ""


# -- LocalAgreement ---------------------------------------------------------------------------


def test_first_hypothesis_is_all_unstable():
    la = LocalAgreement()
    stable, unstable = la.update(words("and so my"))
    assert stable == [] and texts(unstable) == ["and", "so", "my"]


def test_stable_grows_only_when_two_consecutive_hypotheses_agree():
    la = LocalAgreement()
    la.update(words("and so my"))
    stable, unstable = la.update(words("And so, my fellow"))  # agrees on 3 words (normalized)
    assert texts(stable) == ["And", "so,", "my"]  # the newest hypothesis' spelling is kept
    assert texts(unstable) == ["fellow"]
    stable, unstable = la.update(words("And so my fellow Americans"))
    assert texts(stable) == ["And", "so,", "my", "fellow"]
    assert texts(unstable) == ["Americans"]


def test_agreement_is_with_the_previous_hypothesis_only():
    la = LocalAgreement()
    la.update(words("ask not what"))
    la.update(words("ask knot"))  # agrees on "ask" only
    assert texts(la.stable) == ["ask"]
    stable, _ = la.update(words("ask not what your"))  # agrees with "ask knot" on 1 word, not with the first
    assert texts(stable) == ["ask"]
    stable, unstable = la.update(words("ask not what your country"))
    assert texts(stable) == ["ask", "not", "what", "your"]
    assert texts(unstable) == ["country"]


def test_stable_never_shrinks():
    la = LocalAgreement()
    la.update(words("a b c d"))
    la.update(words("a b c d e"))
    assert texts(la.stable) == ["a", "b", "c", "d"]
    for hyp in ("a b", "x y z w v", "", "a b c"):  # shorter, different, empty
        stable, unstable = la.update(words(hyp))
        assert texts(stable) == ["a", "b", "c", "d"]
    stable, unstable = la.update(words("a b c d e f"))
    assert texts(stable) == ["a", "b", "c", "d"] and texts(unstable) == ["e", "f"]


def test_unstable_tail_is_what_follows_stable():
    la = LocalAgreement()
    la.update(words("one two three"))
    stable, unstable = la.update(words("one two four five"))
    assert texts(stable) == ["one", "two"] and texts(unstable) == ["four", "five"]
    stable, unstable = la.update(words("one"))  # hypothesis shorter than stable: no tail
    assert texts(stable) == ["one", "two"] and unstable == []


def test_agreement_ignores_case_and_punctuation():
    la = LocalAgreement()
    la.update(words("Hello, World"))
    stable, _ = la.update(words("hello world!"))
    assert len(stable) == 2


def test_stable_words_keep_their_timestamps():
    la = LocalAgreement()
    la.update(words("alpha beta gamma", start=1.0))
    stable, _ = la.update(words("alpha beta delta", start=1.02))
    assert [w.start for w in stable] == pytest.approx([1.02, 1.42])


# -- is_hallucination -------------------------------------------------------------------------


def test_normal_speech_is_not_a_hallucination():
    assert not is_hallucination(
        segment("ask not what your country can do for you", avg_logprob=-0.3, no_speech_prob=0.1)
    )


def test_no_speech_rule_needs_both_conditions():
    # Whisper's own rule, on a text that is not one of the phantoms (those have a rule of their own).
    assert is_hallucination(segment("see you there", no_speech_prob=0.9, avg_logprob=-1.5))
    assert not is_hallucination(
        segment("see you there", no_speech_prob=0.9, avg_logprob=-0.5)
    )  # confident text
    assert not is_hallucination(
        segment("see you there", no_speech_prob=0.3, avg_logprob=-1.5)
    )  # likely speech
    assert not is_hallucination(
        segment("see you there", no_speech_prob=0.6, avg_logprob=-1.5)
    )  # bounds are strict
    assert not is_hallucination(segment("see you there", no_speech_prob=0.9, avg_logprob=-1.0))


def test_a_phantom_text_needs_less_evidence_of_silence():
    # tiny.en after "Ask not!" over a 15 s window: a segment of its own, the aligner's "Thank" on
    # the last speech frames, so the VAD check alone would keep it.
    assert is_hallucination(segment("Thank you.", no_speech_prob=0.82, avg_logprob=-0.87))
    assert not is_hallucination(segment("Thank you.", no_speech_prob=0.05, avg_logprob=-0.3))  # said
    assert not is_hallucination(segment("Thank you all.", no_speech_prob=0.82, avg_logprob=-0.87))


def test_compression_ratio_rule():
    assert is_hallucination(segment("la la la", compression_ratio=2.5))
    assert not is_hallucination(segment("la la la", compression_ratio=2.4))


def test_repeated_words_rule():
    assert not is_hallucination(segment("no no no no"))  # 4 in a row is speech
    assert is_hallucination(segment("no no no no no"))  # 5 is a loop
    assert is_hallucination(segment("we said No, no. no no NO!"))  # normalized before comparing
    assert not is_hallucination(segment("no no no yes no no no"))  # the run restarts


def test_repeated_words_rule_without_word_timestamps():
    seg = Segment(0.0, 3.0, "the the the the the end")
    assert seg.words == ()
    assert is_hallucination(seg)
    assert not is_hallucination(Segment(0.0, 3.0, "the end"))


@pytest.mark.parametrize(
    "text",
    [
        "he can do for you. He can do for you.",  # tiny.en over a 10 s window, jfk cut mid-phrase
        "one tree can do for you one tree can do for you one tree can do for you",
        "and then ask not what your country, what your country can do",  # inside the text
    ],
)
def test_a_repeated_phrase_is_a_loop(text):
    assert repeats_a_phrase(words(text))


@pytest.mark.parametrize(
    "text",
    [
        "ask not what your country can do for you ask what you can do for your country",
        "no no no",  # words, not a phrase: the repeated-words rule judges those
        "that that is is that that is not is not that it it is",  # two-word repeats are speech
        "the cat saw the dog and the cat saw it",  # a phrase again, but not in a row
        "",
    ],
)
def test_speech_is_not_a_loop(text):
    assert not repeats_a_phrase(words(text))


# -- collapsed and low-confidence words -----------------------------------------------------


def collapsed_segment(n_collapsed: int, n_real: int) -> Segment:
    real = words(" ".join(f"real{i}" for i in range(n_real)))
    t = real[-1].end if real else 0.0
    squeezed = [Word(t, t + COLLAPSED_WORD / 2, f" next{i}") for i in range(n_collapsed)]
    ws = tuple(real + squeezed)
    return Segment(0.0, t, "".join(w.text for w in ws), ws)


def test_segment_of_mostly_collapsed_words_is_a_hallucination():
    """Phantom sign-offs ("We'll see you in the next one.") come squeezed into no time at all."""
    assert is_hallucination(collapsed_segment(3, 0))
    assert is_hallucination(collapsed_segment(3, 3))  # half collapsed
    assert not is_hallucination(collapsed_segment(2, 3))
    assert not is_hallucination(collapsed_segment(1, 5))  # one short word may be real
    assert not is_hallucination(collapsed_segment(1, 0))  # a single word is never judged by its length


def test_low_word_confidence_is_a_hallucination():
    seg = lambda p: Segment(0.0, 2.0, "we will see you", tuple(words("we will see you", p=p)))  # noqa: E731
    assert is_hallucination(seg(MIN_WORD_PROBABILITY - 0.05))
    assert not is_hallucination(seg(MIN_WORD_PROBABILITY + 0.05))


# -- accepted_words ---------------------------------------------------------------------------


def result(*segments: Segment) -> Transcription:
    return Transcription(tuple(segments))


def test_accepted_words_shift_to_session_time():
    r = result(segment("ask not what"), segment("your country", start=1.2))
    got = accepted_words(r, 10.0)
    assert texts(got) == ["ask", "not", "what", "your", "country"]
    assert [w.start for w in got] == pytest.approx([10.0, 10.4, 10.8, 11.2, 11.6])
    assert [w.end for w in got] == pytest.approx([10.3, 10.7, 11.1, 11.5, 11.9])


@pytest.mark.parametrize("phantom", ["Thank you.", "you", "Thanks for watching!", "Bye.", "So", "  "])
def test_accepted_words_drop_phantom_texts(phantom):
    r = result(Segment(0, 1, phantom, tuple(words(phantom, length=0.35))))
    assert accepted_words(r, 5.0) == []


def test_all_phantoms_are_normalized():
    assert all(p == normalize_text(p) for p in SILENCE_PHANTOMS)


def test_phantom_words_inside_real_speech_are_kept():
    r = result(segment("thank you for coming"))
    assert texts(accepted_words(r, 0.0)) == ["thank", "you", "for", "coming"]


def test_accepted_words_drop_hallucinated_segments_only():
    good = segment("my fellow Americans", start=0.0)
    loop = segment("the the the the the the", start=2.0, compression_ratio=3.0)
    silent = segment("i'm going to", start=5.0, no_speech_prob=0.95, avg_logprob=-2.0)
    assert texts(accepted_words(result(good, loop, silent), 0.0)) == ["my", "fellow", "Americans"]
    assert accepted_words(result(loop, silent), 0.0) == []


def test_accepted_words_drop_empty_words_and_collapsed_segments():
    ws = (*words("ask not"), Word(0.8, 0.9, ""), Word(0.9, 1.0, " "))
    assert texts(accepted_words(result(Segment(0, 1, " ask not", ws)), 2.0)) == ["ask", "not"]
    sign_off = Segment(1.0, 1.0, " Subscribe now", (Word(1.0, 1.0, " Subscribe"), Word(1.0, 1.01, " now")))
    assert texts(accepted_words(result(segment("ask not"), sign_off), 0.0)) == ["ask", "not"]


def test_accepted_words_of_nothing():
    assert accepted_words(result(), 0.0) == []


# -- trailing echoes --------------------------------------------------------------------------


def with_last(text: str, last: str, p: float) -> list[Word]:
    ws = words(text)
    return [*ws, Word(ws[-1].end, ws[-1].end + 0.14, " " + last, p)]


@pytest.mark.parametrize(
    ("text", "last"),
    [
        ("the Gutenberg Bible of about 1455.", "5."),  # tiny.en at a soft endpoint, p=0.32
        ("the true printed book.", "Book."),
        ("from the Netherlands", "lands"),
    ],
)
def test_a_low_confidence_tail_of_the_word_before_is_an_echo(text, last):
    echoed = with_last(text, last, ECHO_PROBABILITY - 0.2)
    assert is_trailing_echo(echoed)
    r = result(Segment(0.0, echoed[-1].end, "", tuple(echoed)))
    assert texts(accepted_words(r, 0.0)) == text.split()


def test_a_confident_repetition_is_speech():
    said_twice = with_last("and I said no,", "no.", ECHO_PROBABILITY + 0.3)
    assert not is_trailing_echo(said_twice)
    assert texts(accepted_words(result(Segment(0.0, 2.0, "", tuple(said_twice))), 0.0))[-2:] == ["no,", "no."]


@pytest.mark.parametrize(
    "ws",
    [
        with_last("about 1455", "six", 0.1),  # unsure, but not the word before
        [Word(0.0, 0.14, " 5.", 0.1)],  # a single word has nothing before it
        with_last("printed", "book", 0.1),  # a different word that happens to be unsure
        [*words("a golden fortune"), Word(1.2, 1.3, " ", 0.1)],  # no text to compare
    ],
)
def test_other_last_words_are_not_echoes(ws):
    assert not is_trailing_echo(ws)


# -- salvaging a partial's loop ---------------------------------------------------------------


def squeezed(text: str, at: float) -> list[Word]:
    return [Word(at, at, " " + w, 0.9) for w in text.split()]


def test_a_partial_keeps_what_a_loop_heard_before_it_repeated():
    """tiny.en given 0.8 s of speech in a 10 s window: "Printing. Printing. Printing. Printing."
    with every copy after the first squeezed into no time at 0.36-0.74 s."""
    looped = Segment(0.0, 0.74, "", (*words("Printing."), *squeezed("Printing. Printing. Printing.", 0.36)))
    assert is_hallucination(looped)
    assert accepted_words(result(looped), 1.0) == []  # a final never keeps any of it
    kept = accepted_words(result(looped), 1.0, salvage=True)
    assert texts(kept) == ["Printing."]
    assert kept[0].start == pytest.approx(1.0)


def test_salvage_stops_at_a_phrase_said_again():
    # "Differs from both. Differs from both." with real durations: cut where the phrase comes back.
    loop = Segment(0.0, 2.4, "", tuple(words("Differs from both. Differs from both.")), compression_ratio=3.0)
    assert texts(accepted_words(result(loop), 0.0, salvage=True)) == ["Differs", "from", "both."]
    assert first_repetition(["no", "no"]) == 1
    assert first_repetition(["a", "b", "c"]) == 3
    assert first_repetition([]) == 0


def test_salvage_keeps_nothing_of_silence_phantoms_or_low_confidence():
    silent = Segment(
        0.0, 1.0, "", tuple(words("see you there see you there")), no_speech_prob=0.9, avg_logprob=-1.5
    )
    phantom = Segment(0.0, 1.0, "", (*words("Thank you."), *squeezed("Thank you.", 0.7)))
    unsure = Segment(0.0, 1.0, "", tuple(words("Ask what?", p=MIN_WORD_PROBABILITY - 0.1)))
    only_squeezed = Segment(0.0, 0.0, "", tuple(squeezed("We'll see you", 0.0)))
    for seg in (silent, phantom, unsure, only_squeezed):
        assert heard_prefix(seg) == []
        assert accepted_words(result(seg), 0.0, salvage=True) == []


def test_salvage_leaves_segments_that_pass_the_guards_alone():
    said = segment("no no no no")  # four in a row is speech: kept whole, not cut at the repetition
    assert texts(accepted_words(result(said), 0.0, salvage=True)) == ["no", "no", "no", "no"]
