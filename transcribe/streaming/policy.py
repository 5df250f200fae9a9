"""What text to show and what to keep: LocalAgreement-2 for partials, and hallucination guards.

LocalAgreement-2 (Macháček et al., whisper_streaming): a word becomes *stable* once two consecutive
hypotheses of the growing utterance agree on it and on everything before it. Stable words never
change in later partials; the final of the utterance is a fresh, wider-beam decode that supersedes
the partials.
"""

from __future__ import annotations

import re

from ..engines.base import Segment, Transcription, Word

# Texts Whisper is known to invent on silence, music or noise (compared after normalization).
SILENCE_PHANTOMS = frozenset(
    {
        "",
        "you",
        "thank you",
        "thanks",
        "thank you very much",
        "thanks for watching",
        "thank you for watching",
        "thank you so much for watching",
        "please subscribe",
        "subtitles by the amara org community",
        "bye",
        "so",
        "okay",
        "oh",
        "uh",
        "um",
        "hmm",
        "the end",
    }
)

NO_SPEECH_PROB = 0.6
# A segment that is one of the phantom texts needs less evidence of silence: real "Thank you." scores
# well under 0.1, the one Whisper appends after the last word 0.57-0.82 (tiny.en, 10-15 s windows).
PHANTOM_NO_SPEECH_PROB = 0.4
LOGPROB_FLOOR = -1.0
COMPRESSION_RATIO = 2.4
MAX_WORD_REPEATS = 4
LOOP_PHRASE_WORDS = 3  # a phrase this long said twice in a row is a decoding loop, not speech
COLLAPSED_WORD = 0.05  # seconds: shorter than any spoken word
MIN_WORD_PROBABILITY = 0.25  # mean over a segment; real speech scores far higher
# A window that ends just after a word can make Whisper hear that word's tail again as one more
# word ("about 1455. 5.", p=0.32 on tiny.en); a word someone said twice scores far higher.
ECHO_PROBABILITY = 0.5

_non_word = re.compile(r"[^\w']+")


def normalize_word(text: str) -> str:
    return _non_word.sub("", text.lower())


def normalize_text(text: str) -> str:
    return " ".join(_non_word.sub(" ", text.lower()).split())


def is_silence(segment: Segment) -> bool:
    """Whisper's own rule: a segment it thinks is no speech, decoded anyway with low confidence."""
    return segment.no_speech_prob > NO_SPEECH_PROB and segment.avg_logprob < LOGPROB_FLOOR


def is_unsure(words: tuple[Word, ...] | list[Word]) -> bool:
    """Mean word confidence too low for speech (phantom sign-offs score far lower than words said)."""
    return sum(w.probability for w in words) / len(words) < MIN_WORD_PROBABILITY


def is_hallucination(segment: Segment) -> bool:
    """Whisper's own rules (silence decoded anyway, repetition loops) plus word-level signs."""
    if is_silence(segment):
        return True
    if segment.no_speech_prob > PHANTOM_NO_SPEECH_PROB and normalize_text(segment.text) in SILENCE_PHANTOMS:
        return True
    if segment.words:
        # Phantom sign-offs ("We'll see you in the next one.") come out squeezed into no time
        # at all by the aligner, or with very low word confidence.
        collapsed = sum(w.end - w.start < COLLAPSED_WORD for w in segment.words)
        if len(segment.words) >= 2 and collapsed * 2 >= len(segment.words):
            return True
        if is_unsure(segment.words):
            return True
    return is_loop(segment)


def is_loop(segment: Segment) -> bool:
    """Whisper decoding in circles: text that compresses too well, or one word again and again."""
    if segment.compression_ratio > COMPRESSION_RATIO:
        return True
    words = [normalize_word(w.text) for w in segment.words] or normalize_text(segment.text).split()
    run = 1
    for previous, current in zip(words, words[1:], strict=False):
        run = run + 1 if current and current == previous else 1
        if run > MAX_WORD_REPEATS:
            return True
    return False


def repeats_a_phrase(words: list[Word]) -> bool:
    """Whether some phrase of LOOP_PHRASE_WORDS or more words comes twice in a row ("he can do for
    you. He can do for you."): Whisper re-reading its window, which a compression ratio of ~1.2
    does not catch. People repeat a word or two, hardly ever a whole phrase verbatim."""
    texts = [normalize_word(w.text) for w in words]
    for n in range(LOOP_PHRASE_WORDS, len(texts) // 2 + 1):
        for i in range(len(texts) - 2 * n + 1):
            if texts[i : i + n] == texts[i + n : i + 2 * n]:
                return True
    return False


def is_trailing_echo(words: list[Word]) -> bool:
    """Whether the last word is the tail of the word before it heard again, with low confidence
    ("1455. 5.", "book. Book."). A repetition someone said ("no, no.") scores high: it stays."""
    if len(words) < 2 or words[-1].probability >= ECHO_PROBABILITY:
        return False
    last, before = normalize_word(words[-1].text), normalize_word(words[-2].text)
    return bool(last) and before.endswith(last)


def first_repetition(texts: list[str]) -> int:
    """Index where a word or phrase starts to be said again right after itself (len if never)."""
    for j in range(1, len(texts)):
        for n in range(1, min(j, len(texts) - j) + 1):
            if texts[j : j + n] == texts[j - n : j]:
                return j
    return len(texts)


def heard_prefix(segment: Segment) -> list[Word]:
    """What a looping segment heard before it went in circles, for a partial. Given half a second
    of speech in a 10 s window, Whisper often hears it right and then repeats it ("Printing.
    Printing. Printing.") or trails off into words squeezed into no time; the words before the
    first squeezed one and the first repetition were aligned to real audio. [] for a segment of
    silence or of words with too little confidence."""
    if is_silence(segment):
        return []
    aligned: list[Word] = []
    for word in segment.words:
        if word.end - word.start < COLLAPSED_WORD:
            break
        aligned.append(word)
    words = aligned[: first_repetition([normalize_word(w.text) for w in aligned])]
    if not words or is_unsure(words):
        return []
    return [] if normalize_text(" ".join(w.text for w in words)) in SILENCE_PHANTOMS else words


def accepted_words(result: Transcription, offset: float, *, salvage: bool = False) -> list[Word]:
    """Words of the segments that pass the guards, shifted to session time; [] for a phantom.
    With ``salvage`` (partials: shown sooner, replaced by the final) a segment that fails them
    still gives its ``heard_prefix``."""

    def kept(segment: Segment) -> tuple[Word, ...] | list[Word]:
        if not is_hallucination(segment):
            return segment.words
        return heard_prefix(segment) if salvage else ()

    words = [w.shifted(offset) for s in result.segments for w in kept(s) if w.text.strip()]
    if normalize_text(" ".join(w.text for w in words)) in SILENCE_PHANTOMS:
        return []
    return words[:-1] if is_trailing_echo(words) else words


def join_words(words: list[Word]) -> str:
    return "".join(w.text for w in words).strip()


class LocalAgreement:
    """Stable prefix of consecutive hypotheses of one utterance; ``stable`` never shrinks."""

    def __init__(self) -> None:
        self.stable: list[Word] = []
        self._previous: list[str] = []

    def update(self, words: list[Word]) -> tuple[list[Word], list[Word]]:
        """Feed a new hypothesis; return (stable words, unstable tail)."""
        current = [normalize_word(w.text) for w in words]
        agreed = 0
        for a, b in zip(self._previous, current, strict=False):
            if a != b:
                break
            agreed += 1
        if agreed > len(self.stable):
            self.stable.extend(words[len(self.stable) : agreed])
        self._previous = current
        return self.stable, words[len(self.stable) :]
