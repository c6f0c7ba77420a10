"""What a client's text becomes before it is stored (contract §11): phone
numbers and e-mail addresses masked, blocked words refused or starred.

Pure, except :func:`load_blocklist` (reads the ``[moderation] blocklist``
file) and :func:`blocklist_reloader` (reads it again and logs how it went).
One entry point for every path that stores client text:
:meth:`TextPolicy.apply` takes the text and gives back what to store, or
raises ``ImdError("blocked")``.  The original text goes nowhere else.

Blocked words are compared case-insensitively after Unicode NFKC
normalisation (:func:`fold`), wherever they occur (no word boundaries, so
scripts without spaces work).  Folding changes lengths (``ﬁ`` becomes two
characters, ``İ`` becomes ``i`` and a combining dot, a decomposed ``é`` one),
so a match in the folded text is mapped back to the characters of the
original text it came from (:func:`_pieces`): those are the ones starred,
one ``*`` per original code point.

The search is an Aho-Corasick automaton (pyahocorasick) over the UTF-8
bytes of the folded text, each byte a character (Latin-1): pyahocorasick
looks a node's children up one by one, so a node with thousands of children
(the first characters of a Chinese word list) is slow, while over bytes no
node has more than 256.  UTF-8 is self-synchronising: a word's bytes can
only match at a character boundary of the text.

That is on CPython.  On PyPy every call into a C extension goes through
its emulation layer (cpyext), and handing the text to pyahocorasick cost
more than the search: there :class:`_CodePointAutomaton`, an Aho-Corasick
automaton in Python over code points (the JIT compiles its loop), reads
the original text and folds it on the way, character by character
(:func:`_fold_kinds`), unless a character needs the whole :func:`fold`.
:data:`PYTHON_MATCHER` chooses (tests compare the two).
"""

import platform
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections import deque
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import ahocorasick
from twisted.logger import Logger

from imd.errors import ImdError

_log = Logger()

PHONE, EMAIL = "phone", "email"
MASK_KINDS = (PHONE, EMAIL)
REFUSE, MASK = "refuse", "mask"
ACTIONS = (REFUSE, MASK)
PHONE_TOKEN, EMAIL_TOKEN = "[phone]", "[email]"

Span = Tuple[int, int]


# CPython tells text NFKC leaves alone at ~1 ns a character; PyPy's check
# costs as much as normalising by runs
_CHECK_NORMALIZED = platform.python_implementation() == "CPython"

# Which automaton a Blocklist builds unless told: pyahocorasick on CPython,
# the Python one elsewhere (PyPy: a call into a C extension costs more
# than the search).  False turns the Python one off.
PYTHON_MATCHER = platform.python_implementation() != "CPython"


def fold(text: str) -> str:
    """The form blocked words are compared in: NFKC, then case-folded."""
    if text.isascii():
        return text.lower()   # NFKC leaves ASCII alone; casefold is lower there
    if _CHECK_NORMALIZED and unicodedata.is_normalized("NFKC", text):
        return text.casefold()
    # Chinese text is mostly characters NFKC leaves alone and fullwidth
    # punctuation: that made ASCII first (what NFKC does to it), then the
    # check again, and normalising is seldom left.  CPython: a str.replace
    # for each of the usual marks the text holds (~40 ns each; str.translate
    # costs 0.1 µs a character); PyPy: one regular expression for them all
    # (its str.replace and `in` cost 0.3 µs each on 100 characters)
    if _CHECK_NORMALIZED:
        for wide, narrow in _WIDE_PUNCTUATION:
            if wide in text:
                text = text.replace(wide, narrow)
        if unicodedata.is_normalized("NFKC", text):
            return text.casefold()
    else:
        text = _FULLWIDTH.sub(_narrow, text)
        if _changeable_runs().search(text) is None:
            return text.casefold()
    return _nfkc(text).casefold()


def _narrow(wide: "re.Match[str]") -> str:
    return _TO_ASCII[wide.group()]


def _nfkc(text: str) -> str:
    """``unicodedata.normalize("NFKC", text)``, normalising only the runs
    of characters NFKC may change, each with the character before it (which
    such a run may compose with: ``e`` + U+0301, ``ｶ`` + ``ﾞ``).  CPython's
    NFKC of 100 Chinese characters with one fullwidth comma costs ~12 µs,
    this about half (docs/performance.md).  A run's neighbours are starters that compose with nothing
    before them, so the runs normalise independently (a property test
    compares the two)."""
    pieces, at = [], 0
    for run in _changeable_runs().finditer(text):
        start, end = run.span()
        simple = _TO_ASCII.get(text[start:end]) if end - start == 1 else None
        if simple is not None:
            # (fullwidth punctuation: what NFKC makes of it composes with nothing)
            pieces.append(text[at:start])
            pieces.append(simple)
        else:
            if start > at:
                start -= 1
            pieces.append(text[at:start])
            pieces.append(unicodedata.normalize("NFKC", text[start:end]))
        at = end
    if not pieces:
        return text
    pieces.append(text[at:])
    return "".join(pieces)


_CHANGEABLE: List["re.Pattern[str]"] = []
# the fullwidth forms of ASCII and the ideographic space: NFKC makes each
# an ASCII character, which composes with nothing before or after it
_TO_ASCII = {chr(code): chr(code - 0xFEE0) for code in range(0xFF01, 0xFF5F)}
_TO_ASCII["\u3000"] = " "
# the ones Chinese and Japanese text is full of (NFKC of a text with these
# replaced is NFKC of the text: each is one ASCII character in NFKD too)
_FULLWIDTH = re.compile("[\uff01-\uff5e\u3000]")
_WIDE_PUNCTUATION = tuple((wide, _TO_ASCII[wide]) for wide in "，？！：；（）～\u3000")


def _changeable_runs() -> "re.Pattern[str]":
    """Runs of the characters NFKC may change or join to the one before:
    those it maps to something else, combining marks, and the second
    character of a canonical composition that is not a combining mark
    (Hangul vowel and final jamo, some Indic vowel signs); and, whole, the
    planes beyond the first (re finds a character of the first plane in a
    bitmap, others range by range: one range keeps that cheap; normalising
    an emoji changes nothing).  Built from the interpreter's Unicode tables
    on first use (a quarter of a second)."""
    if not _CHANGEABLE:
        changeable = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))   # Hangul V and T jamo
        for code in range(0x80, 0x10000):
            if 0xD800 <= code < 0xE000:
                continue
            char = chr(code)
            decomposition = unicodedata.decomposition(char)
            if unicodedata.combining(char):
                changeable.add(code)
            elif decomposition:
                if unicodedata.normalize("NFKC", char) != char:
                    changeable.add(code)
                parts = decomposition.split()
                if len(parts) == 2 and not parts[0].startswith("<"):
                    changeable.add(int(parts[1], 16))   # composes with what comes before it
        ranges = "".join(_class_ranges(sorted(c for c in changeable if c <= 0xFFFF)))
        _CHANGEABLE.append(re.compile("[%s\\U00010000-\\U0010ffff]+" % ranges))
    return _CHANGEABLE[0]


def _class_ranges(codes: List[int]) -> Iterable[str]:
    """``\\uXXXX`` and ``\\uXXXX-\\uYYYY`` items of a character class."""
    start = prev = codes[0]
    for code in codes[1:] + [-1]:
        if code == prev + 1:
            prev = code
            continue
        yield "\\u%04x" % start if start == prev else "\\u%04x-\\u%04x" % (start, prev)
        start = prev = code


def _as_bytes(folded: str) -> str:
    """``folded``'s UTF-8 bytes, one character each (what the automaton reads)."""
    return folded if folded.isascii() else folded.encode("utf-8").decode("latin-1")


# --- phone numbers and e-mail addresses ----------------------------------------

# An address: a local part of up to 64 characters, "@", then at least two
# dot-separated labels of letters, digits and inner hyphens (any script).
# Searched from each "@" (rare in chat), not from every position: the local
# part's characters are most characters, so a forward search would read up
# to 64 of them at each position of the text.
_LOCAL_PART_REVERSED = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]{1,64}")
_DOMAIN = re.compile(r"(?:[^\W_][\w-]{0,62}\.)+[^\W_][\w-]{0,62}")


def _addresses(text: str) -> List[Span]:
    found: List[Span] = []
    at = text.find("@")
    while at >= 0:
        local = _LOCAL_PART_REVERSED.match(text[max(0, at - 64):at][::-1])
        domain = _DOMAIN.match(text, at + 1)
        if local is not None and domain is not None:
            start = at - local.end()
            if found and start < found[-1][1]:   # "a@b.c@d.e": the first one's domain is not a local part
                start = found[-1][1]
            found.append((start, domain.end()))
            at = text.find("@", domain.end())
        else:
            at = text.find("@", at + 1)
    return found


def _phone(min_digits: int) -> "re.Pattern[str]":
    # a digit, then digits each after any run of spaces, "-", ".", "(" or
    # ")": at least min_digits digits in all, the match ending on the last
    # one.  (A pattern that starts with a digit is searched for far faster
    # than one starting with an optional group: the leading "+" or "(" is
    # taken by _phone_start.)
    return re.compile(r"\d(?:[\s().\-]*\d){%d,}" % (min_digits - 1))


def _phone_start(text: str, start: int) -> int:
    """Where a number found at ``start`` begins: at the ``+``, ``(``,
    ``(+`` or ``+(`` right before its first digit, if any."""
    if start and text[start - 1] in "+(":
        start -= 1
        if start and text[start - 1] in "+(" and text[start - 1] != text[start]:
            start -= 1
    return start


class PrivateDataMask:
    """``[privacy] mask``: where phone numbers and e-mail addresses are."""

    def __init__(self, kinds: Sequence[str], phone_min_digits: int = 8) -> None:
        for kind in kinds:
            if kind not in MASK_KINDS:
                raise ValueError("unknown mask %r" % (kind,))
        if phone_min_digits < 1:
            raise ValueError("phone_min_digits must be at least 1")
        self.kinds = tuple(kinds)
        self._phone = _phone(phone_min_digits) if PHONE in kinds else None
        self._email = EMAIL in kinds

    def find(self, text: str) -> List[Tuple[int, int, str]]:
        """``(start, end, replacement)`` of each phone number and address,
        in order, none overlapping: a number within an address is the
        address's (``12345678@example.com``)."""
        found = [(start, end, EMAIL_TOKEN) for start, end in _addresses(text)] \
            if self._email and "@" in text else []
        if self._phone is None:
            return found
        addresses = found
        found = []
        for m in self._phone.finditer(text):
            start, end = _phone_start(text, m.start()), m.end()
            if any(a_start < end and start < a_end for a_start, a_end, _ in addresses):
                continue
            if found and start < found[-1][1]:
                start = found[-1][1]
            found.append((start, end, PHONE_TOKEN))
        if not addresses:
            return found
        return sorted(found + addresses)


# --- blocked words -------------------------------------------------------------

class Blocklist:
    """Words and phrases found in any text, after :func:`fold`.
    ``python_matcher``: which automaton (default :data:`PYTHON_MATCHER`)."""

    def __init__(self, entries: Iterable[str], python_matcher: Optional[bool] = None) -> None:
        _changeable_runs()   # built now (once), not while a message waits
        words = {fold(entry.strip()) for entry in entries}
        words.discard("")
        self.size = len(words)
        self._automaton: Optional[ahocorasick.Automaton] = None
        self._python: Optional[_CodePointAutomaton] = None
        if python_matcher is None:
            python_matcher = PYTHON_MATCHER
        if words and python_matcher:
            self._python = _CodePointAutomaton(words)
        elif words:
            automaton = ahocorasick.Automaton()
            for word in words:
                key = _as_bytes(word)
                automaton.add_word(key, len(key))
            automaton.make_automaton()
            self._automaton = automaton

    def __len__(self) -> int:
        return self.size

    def occurs_in(self, text: str) -> bool:
        """Whether any entry occurs in ``text``."""
        if self._python is not None:
            hits, at, state = self._python.hits(text, True)
            if hits or at < 0:
                return bool(hits)
            # what comes before ``at`` folded character by character
            return bool(self._python.folded_hits(fold(text[at:]), True, state))
        if self._automaton is None:
            return False
        for _ in self._automaton.iter(_as_bytes(fold(text))):
            return True
        return False

    def spans(self, text: str) -> List[Span]:
        """The ``(start, end)`` ranges of ``text`` (original characters)
        that the occurrences of entries came from, sorted and merged."""
        if self._python is not None:
            hits, at, _ = self._python.hits(text, False)
            if at < 0:   # folded character by character: same places
                return _merge(hits)
            folded = fold(text)
            hits = self._python.folded_hits(folded, False)
            return _merge(_to_original(text, folded, hits)) if hits else []
        if self._automaton is None:
            return []
        folded = fold(text)
        encoded = _as_bytes(folded)
        hits = [(end + 1 - length, end + 1) for end, length in self._automaton.iter(encoded)]
        if not hits:
            return []
        if encoded is not folded:
            char_at = _char_index_of_byte(folded)
            hits = [(char_at[start], char_at[end]) for start, end in hits]
        return _merge(_to_original(text, folded, hits))


# what _fold_kinds() says of a code point: folds to itself (and, in a
# blocklist's copy, _IN_ENTRY: occurs in an entry); folds to one other
# character (_FOLDS_TO holds it) whatever surrounds it; needs fold()
_ITSELF, _IN_ENTRY, _ONE, _CONTEXT = 0, 1, 2, 3
_KINDS: List[bytearray] = []
_FOLDS_TO: Dict[int, int] = {}


def _fold_kinds() -> bytearray:
    """For each code point, how it folds when the text around it holds
    only code points that fold alone (_ITSELF, _ONE): then ``fold(text)``
    is the text folded character by character.  A code point that NFKC
    may join to the one before it (combining marks, the second character
    of a canonical composition, Hangul vowel and final jamo) or whose
    NFKD starts with one, one that NFKC changes (except the fullwidth
    forms of ASCII and the ideographic space, see _TO_ASCII) and one that
    case-folds to several characters are _CONTEXT.  Built from the
    interpreter's Unicode tables on first use (~0.3 s on PyPy, ~0.6 s on
    CPython); a property test compares it with fold()."""
    if not _KINDS:
        joins = set(range(0x1161, 0x1176)) | set(range(0x11A8, 0x11C3))   # Hangul V and T jamo
        for code in range(0x80, 0x110000):
            decomposition = unicodedata.decomposition(chr(code))
            if decomposition and not decomposition.startswith("<"):
                parts = decomposition.split()
                if len(parts) == 2:
                    joins.add(int(parts[1], 16))
        kinds = bytearray(0x110000)
        for code in range(0x41, 0x110000):
            char = chr(code)
            narrow = _TO_ASCII.get(char)
            if narrow is None:
                if code in joins or unicodedata.combining(char):
                    kinds[code] = _CONTEXT
                    continue
                if code >= 0x80:
                    decomposed = unicodedata.normalize("NFKD", char)[0]
                    if ord(decomposed) in joins or unicodedata.combining(decomposed) \
                            or unicodedata.normalize("NFKC", char) != char:
                        kinds[code] = _CONTEXT
                        continue
                narrow = char
            folded = narrow.casefold()
            if len(folded) != 1:
                kinds[code] = _CONTEXT
            elif folded != char:
                kinds[code] = _ONE
                _FOLDS_TO[code] = ord(folded)
        _KINDS.append(kinds)
    return _KINDS[0]


class _CodePointAutomaton:
    """Aho-Corasick over the code points of folded words, in Python.

    The transitions are one dict keyed by state and code point (PyPy looks
    one dict up faster than a dict per state); a code point in no word
    sends the search back to the root without a look-up (a copy of
    :func:`_fold_kinds` marks the ones in words).  ``longest[state]``: the
    length of the longest word ending there (the spans are merged, so the
    shorter ones ending at the same place add nothing)."""

    __slots__ = ("_delta", "_fail", "_longest", "_kinds")

    def __init__(self, words: Iterable[str]) -> None:
        children: List[Dict[int, int]] = [{}]
        ends = [0]
        for word in words:
            state = 0
            for char in word:
                code = ord(char)
                nxt = children[state].get(code)
                if nxt is None:
                    nxt = len(children)
                    children[state][code] = nxt
                    children.append({})
                    ends.append(0)
                state = nxt
            ends[state] = len(word)
        fail = [0] * len(children)
        longest = list(ends)
        delta: Dict[int, int] = {}
        queue = deque([0])
        while queue:
            state = queue.popleft()
            for code, nxt in children[state].items():
                delta[state << 21 | code] = nxt
                queue.append(nxt)
                if state:
                    back = fail[state]
                    while back and code not in children[back]:
                        back = fail[back]
                    fail[nxt] = children[back].get(code, 0)
                if not longest[nxt]:
                    longest[nxt] = longest[fail[nxt]]
        kinds = bytearray(_fold_kinds())
        for code in {code for node in children for code in node}:
            if kinds[code] == _ITSELF:
                kinds[code] = _IN_ENTRY
        self._delta, self._fail, self._longest, self._kinds = delta, fail, longest, kinds

    def hits(self, text: str, first: bool) -> Tuple[List[Span], int, int]:
        """``(start, end)`` of each place in ``text`` where words end (the
        longest one there), folding ``text`` on the way; only the first if
        ``first``.  Stops at a code point that needs :func:`fold` (looked
        for up to the character after the first match, if ``first``: what
        follows that one cannot change how the text before it folds), and
        then also says where to go on: ``(hits, index, state)``, the hits
        that end before the character before that code point (it may join
        it), that character's index and the state before it;
        ``(hits, -1, 0)`` when the whole text was read."""
        # (the automaton's step, ``while True: ... fail[state]``, is written
        # out here and in folded_hits rather than called: this loop is PyPy's
        # per-character hot path, where the blocklist's cost is measured)
        delta, fail, longest, kinds, folds_to = self._delta, self._fail, self._longest, self._kinds, _FOLDS_TO
        hits: List[Span] = []
        state = before = at = 0
        found = False
        for char in text:
            code = ord(char)
            kind = kinds[code]
            if kind == _CONTEXT:
                if hits and hits[-1][1] == at:
                    hits.pop()
                return hits, max(at - 1, 0), before
            if found:   # (a combining mark after a match would have changed its fold)
                break
            before = state
            at += 1
            if kind == _ITSELF:
                state = 0
                continue
            if kind != _IN_ENTRY:
                code = folds_to[code]
            while True:
                nxt = delta.get(state << 21 | code, -1)
                if nxt >= 0:
                    state = nxt
                    break
                if not state:
                    break
                state = fail[state]
            length = longest[state]
            if length:
                hits.append((at - length, at))
                found = first
        return hits, -1, 0

    def folded_hits(self, folded: str, first: bool, state: int = 0) -> List[Span]:
        """:meth:`hits` in text :func:`fold` gave, from ``state``."""
        delta, fail, longest = self._delta, self._fail, self._longest
        hits: List[Span] = []
        at = 0
        for char in folded:
            code = ord(char)
            at += 1
            while True:
                nxt = delta.get(state << 21 | code, -1)
                if nxt >= 0:
                    state = nxt
                    break
                if not state:
                    break
                state = fail[state]
            length = longest[state]
            if length:
                hits.append((at - length, at))
                if first:
                    break
        return hits


def _char_index_of_byte(folded: str) -> List[int]:
    """For each UTF-8 byte offset of ``folded`` (and its end), the index of
    the character it is in."""
    index: List[int] = []
    for i, ch in enumerate(folded):
        index.extend([i] * len(ch.encode("utf-8")))
    index.append(len(folded))
    return index


def _pieces(text: str, folded: str) -> List[Tuple[int, int, int, int]]:
    """``text`` cut into pieces that fold one by one into consecutive parts
    of ``folded``: ``(start, end, folded start, folded end)`` each.

    A piece starts at a character whose decomposition starts with a
    non-combining character, and grows while its folded form is not what
    ``folded`` holds there (a character composing with the one before it:
    Hangul jamo, a halfwidth voiced sound mark).  Should the pieces still
    not add up, the whole text is one piece: everything is masked rather
    than the wrong characters."""
    starts = [0] + [i for i in range(1, len(text))
                    if not unicodedata.combining(unicodedata.normalize("NFKD", text[i])[0])]
    starts.append(len(text))
    pieces, at, i = [], 0, 0
    while i < len(starts) - 1:
        j = i + 1
        while True:
            part = fold(text[starts[i]:starts[j]])
            if folded.startswith(part, at) or j == len(starts) - 1:
                break
            j += 1
        if not folded.startswith(part, at):
            return [(0, len(text), 0, len(folded))]
        pieces.append((starts[i], starts[j], at, at + len(part)))
        at += len(part)
        i = j
    if at != len(folded):
        return [(0, len(text), 0, len(folded))]
    return pieces


def _to_original(text: str, folded: str, hits: List[Span]) -> List[Span]:
    """Ranges of ``folded`` mapped to the whole pieces of ``text`` they touch."""
    if text.isascii():   # folded character by character: same places
        return hits
    pieces = _pieces(text, folded)
    ends = [piece[3] for piece in pieces]
    return [(pieces[bisect_right(ends, start)][0], pieces[bisect_left(ends, end)][1]) for start, end in hits]


def _merge(spans: List[Span]) -> List[Span]:
    merged: List[Span] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


class BlocklistError(Exception):
    """The blocklist file cannot be read (the message says why, in one line)."""


def load_blocklist(path: str) -> Blocklist:
    """The entries of ``path``: UTF-8 text, one word or phrase a line
    (surrounding white space ignored, blank lines skipped)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise BlocklistError("cannot read %s: %s" % (path, e.strerror or e))
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BlocklistError("%s is not UTF-8 text (byte %d)" % (path, e.start))
    return Blocklist(text.splitlines())


# --- the policy: what a text becomes --------------------------------------------

class TextPolicy:
    """``[privacy] mask`` and ``[moderation]``: :meth:`apply` to every
    client text before it is stored.  ``blocklist`` may be swapped at any
    time (a reload): each call reads it once."""

    def __init__(self, mask: PrivateDataMask, blocklist: Optional[Blocklist] = None,
                 action: str = REFUSE) -> None:
        if action not in ACTIONS:
            raise ValueError("unknown action %r" % (action,))
        self.mask = mask
        self.blocklist = blocklist
        self.action = action

    @property
    def active(self) -> bool:
        return bool(self.mask.kinds) or self.blocklist is not None

    def apply(self, text: str) -> Tuple[str, bool]:
        """``(text to store, whether anything was replaced)``; ImdError
        ``blocked`` when a blocked word occurs and the action is refuse."""
        blocklist = self.blocklist
        starred: List[Span] = []
        if blocklist is not None:
            if self.action == REFUSE:
                if blocklist.occurs_in(text):
                    raise ImdError("blocked", "the message contains a blocked word")
            else:
                starred = blocklist.spans(text)
        private = self.mask.find(text) if self.mask.kinds else []
        if not starred and not private:
            return text, False
        return _render(text, private, starred), True


def _render(text: str, private: List[Tuple[int, int, str]], starred: List[Span]) -> str:
    """``text`` with each private range replaced by its token and every
    other character of a starred range by ``*``."""
    out, at = [], 0
    for start, end, token in private:
        out.append(_stars(text, at, start, starred))
        out.append(token)
        at = end
    out.append(_stars(text, at, len(text), starred))
    return "".join(out)


def _stars(text: str, begin: int, end: int, starred: List[Span]) -> str:
    out, at = [], begin
    for start, stop in starred:
        start, stop = max(start, begin), min(stop, end)
        if start >= stop:
            continue
        out.append(text[at:start])
        out.append("*" * (stop - start))
        at = stop
    out.append(text[at:end])
    return "".join(out)


def blocklist_reloader(policy: TextPolicy, path: str) -> Callable[[], Optional[int]]:
    """What SIGHUP runs: read ``path`` again into ``policy`` and log how
    many entries it has; a file that cannot be read keeps the old list
    (and logs why).  Returns the new count, or None."""
    def reload() -> Optional[int]:
        try:
            blocklist = load_blocklist(path)
        except BlocklistError as e:
            old = policy.blocklist
            _log.error("blocklist reload failed, keeping the old list ({entries} entries): {why}",
                       entries=len(old) if old is not None else 0, why=str(e))
            return None
        policy.blocklist = blocklist
        _log.info("blocklist reloaded from {path}: {entries} entries", path=path, entries=len(blocklist))
        return len(blocklist)
    return reload
