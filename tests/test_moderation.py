"""imd.moderation, pure: masking of phone numbers and addresses, blocked
words (NFKC, case-insensitive, anywhere), the characters a match maps back
to, and the blocklist file.  Contract §11."""

import os
import unicodedata

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from twisted.trial import unittest

from imd import moderation
from imd.errors import ImdError
from imd.moderation import (MASK, REFUSE, Blocklist, BlocklistError, PrivateDataMask, TextPolicy, _fold_kinds,
                            _nfkc, _pieces, blocklist_reloader, fold, load_blocklist)


def masker(kinds=("phone", "email"), digits=8):
    return TextPolicy(PrivateDataMask(kinds, digits))


def starrer(*words):
    return TextPolicy(PrivateDataMask(()), Blocklist(words), MASK)


class PhoneTests(unittest.SynchronousTestCase):
    """A run of at least phone_min_digits digits, which may hold spaces, -,
    ., parentheses and one leading +; replaced from that +, ( or first digit
    to the last digit."""

    def assert_masked(self, text, expected, digits=8):
        self.assertEqual(masker(("phone",), digits).apply(text), (expected, expected != text))

    def test_the_forms_of_a_number(self):
        for number in ("0612345678", "06 12 34 56 78", "06-12-34-56-78", "06.12.34.56.78", "+33 6 12 34 56 78",
                       "+33612345678", "(555) 123-4567", "+1 (555) 123-4567", "(+44) 20 7946 0958",
                       "+(44) 20 7946 0958", "555 - 123 - 4567", "06\n12\n34\n56\n78"):
            self.assert_masked("call %s now" % number, "call [phone] now")

    def test_what_is_replaced_ends_at_the_last_digit(self):
        self.assert_masked("tel: 0612345678.", "tel: [phone].")
        self.assert_masked("(0612345678)", "[phone])")
        self.assert_masked("0612345678-", "[phone]-")
        self.assert_masked("a+0612345678", "a[phone]")

    def test_a_plus_only_leads(self):
        # "+" inside the run ends it: "12 34+56 78 90 12" = "12 34" and "+56 78 90 12" (8 digits)
        self.assert_masked("12 34+56 78 90 12", "12 34[phone]")

    def test_fewer_digits_than_the_minimum_stay(self):
        self.assert_masked("code 1234567, floor 3", "code 1234567, floor 3")
        self.assert_masked("12345678", "[phone]")
        self.assert_masked("123456789", "123456789", digits=10)
        self.assert_masked("12 345 678 90", "[phone]", digits=10)

    def test_every_run_is_masked(self):
        self.assert_masked("0612345678 or 0798765432", "[phone] or [phone]")

    def test_digits_of_other_scripts(self):
        self.assert_masked("电话 ０６１２３４５６７８ 谢谢", "电话 [phone] 谢谢")
        self.assert_masked("٠٦١٢٣٤٥٦٧٨", "[phone]")

    def test_letters_between_digits_cut_the_run(self):
        self.assert_masked("06 12 ab 34 56 78", "06 12 ab 34 56 78")


class EmailTests(unittest.SynchronousTestCase):

    def assert_masked(self, text, expected):
        self.assertEqual(masker(("email",)).apply(text), (expected, expected != text))

    def test_addresses(self):
        for address in ("john@example.com", "john.doe+tag@mail.example.co.uk", "j_d-1@sub-domain.example.org",
                        "用户@例子.中国", "o'brien@example.ie"):
            self.assert_masked("write to %s please" % address, "write to [email] please")

    def test_what_is_not_an_address(self):
        for text in ("me@home", "@example.com", "a @ b.com", "price 5@3", "x@.com"):
            self.assert_masked(text, text)

    def test_the_sentence_around_it_stays(self):
        self.assert_masked("(mail: a@b.co).", "(mail: [email]).")

    def test_an_address_of_digits_is_an_address(self):
        self.assertEqual(masker().apply("12345678@example.com"), ("[email]", True))

    def test_phone_and_email_together(self):
        self.assertEqual(masker().apply("a@b.io or +33 6 12 34 56 78"), ("[email] or [phone]", True))

    def test_nothing_masked_by_default(self):
        self.assertEqual(masker(()).apply("a@b.io 0612345678"), ("a@b.io 0612345678", False))


class BlockedWordTests(unittest.SynchronousTestCase):
    """NFKC, case-insensitive, anywhere; refuse or one * per original character."""

    def test_refuse(self):
        policy = TextPolicy(PrivateDataMask(()), Blocklist(["scam"]), REFUSE)
        for text in ("SCAM", "this is a sCaM", "scammer", "noscamhere"):
            with self.assertRaises(ImdError) as caught:
                policy.apply(text)
            self.assertEqual(caught.exception.code, "blocked")
        self.assertEqual(policy.apply("sc am"), ("sc am", False))

    def test_mask_keeps_everything_else(self):
        self.assertEqual(starrer("scam").apply("a Scam, a SCAM!"), ("a ****, a ****!", True))
        self.assertEqual(starrer("scam").apply("fine"), ("fine", False))

    def test_phrases(self):
        self.assertEqual(starrer("pay cash").apply("please PAY CASH now"), ("please ******** now", True))

    def test_scripts_without_spaces(self):
        self.assertEqual(starrer("坏蛋").apply("你是坏蛋吗"), ("你是**吗", True))
        self.assertEqual(starrer("バカ").apply("おまえはﾊﾞｶだ"), ("おまえは***だ", True))

    def test_fullwidth_letters(self):
        self.assertEqual(starrer("scam").apply("ｓｃａｍ!"), ("****!", True))
        self.assertEqual(starrer("ｓｃａｍ").apply("SCAM"), ("****", True))

    def test_ligatures(self):
        # "ﬁ" folds to "fi": the ligature is one character of the original
        self.assertEqual(starrer("fine").apply("ﬁne ﬁNE"), ("*** ***", True))
        # a match inside a ligature's expansion stars the whole ligature
        self.assertEqual(starrer("ff").apply("oﬃce"), ("o*ce", True))

    def test_combining_marks(self):
        # a decomposed é (e + U+0301) matches a precomposed one, and counts two characters
        self.assertEqual(starrer("café").apply("CAFE\u0301!"), ("*****!", True))
        self.assertEqual(starrer("cafe\u0301").apply("café"), ("****", True))
        # "cafe" is not in "café": the e carries an accent
        self.assertEqual(starrer("cafe").apply("café"), ("café", False))
        self.assertFalse(Blocklist(["cafe"]).occurs_in("CAFE\u0301"))
        self.assertTrue(Blocklist(["café"]).occurs_in("CAFE\u0301"))
        self.assertTrue(Blocklist(["café"]).occurs_in("x cafe\u0301\u0301"))
        self.assertTrue(Blocklist(["ab"]).occurs_in("ab\u0301"))
        # a mark after the word belongs to its last letter
        self.assertEqual(starrer("bad").apply("bad\u0301 x"), ("**** x", True))

    def test_turkish_dotted_i(self):
        # İ case-folds to i + combining dot: two characters folded, one original
        self.assertEqual(starrer("i\u0307stanbul").apply("İSTANBUL İstanbul"), ("******** ********", True))
        # the dotless form of the word does not match the dotted one (list both)
        self.assertEqual(starrer("istanbul").apply("İstanbul"), ("İstanbul", False))
        # before a word, an İ shifts every folded position by one
        self.assertEqual(starrer("scam").apply("İİİ scam"), ("İİİ ****", True))

    def test_sharp_s(self):
        self.assertEqual(starrer("strasse").apply("Straße STRASSE"), ("****** *******", True))

    def test_emoji(self):
        self.assertEqual(starrer("💩").apply("you 💩💩"), ("you **", True))
        thumbs = "👍\U0001F3FD"   # with a skin tone: two code points
        self.assertEqual(starrer(thumbs).apply("ok " + thumbs), ("ok **", True))
        self.assertEqual(starrer("scam").apply("🎉scam🎉"), ("🎉****🎉", True))

    def test_halfwidth_voiced_mark_composes(self):
        # ｶﾞ (two characters) folds to ガ (one): both are starred
        self.assertEqual(starrer("ガ").apply("xｶﾞx"), ("x**x", True))

    def test_compatibility_characters(self):
        self.assertEqual(starrer("kg").apply("5㎏"), ("5*", True))
        self.assertEqual(starrer("1").apply("①"), ("*", True))

    def test_overlapping_words_are_all_starred(self):
        self.assertEqual(starrer("ab", "bcd").apply("xabcdx"), ("x****x", True))
        self.assertEqual(starrer("aa").apply("aaa"), ("***", True))

    def test_blocked_word_inside_a_masked_number(self):
        policy = TextPolicy(PrivateDataMask(("phone", "email")), Blocklist(["badword", "666"]), MASK)
        self.assertEqual(policy.apply("badword@x.com 0612666678 badwords"), ("[email] [phone] *******s", True))

    def test_refuse_looks_at_the_original_text(self):
        policy = TextPolicy(PrivateDataMask(("email",)), Blocklist(["scam"]), REFUSE)
        with self.assertRaises(ImdError):
            policy.apply("scam@example.com")

    def test_entries_are_folded_and_counted_once(self):
        blocklist = Blocklist(["Scam", "SCAM", " scam ", "", "  ", "ｓｃａｍ", "other"])
        self.assertEqual(len(blocklist), 2)
        self.assertEqual(len(Blocklist([])), 0)
        self.assertFalse(Blocklist([]).occurs_in("anything"))
        self.assertEqual(Blocklist([]).spans("anything"), [])


class BlocklistFileTests(unittest.SynchronousTestCase):

    def write(self, data):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_one_entry_a_line(self):
        path = self.write("\ufeffscam\r\n  pay cash  \n\n坏蛋\n#hashtag\n".encode("utf-8"))
        blocklist = load_blocklist(path)
        self.assertEqual(len(blocklist), 4)
        for text in ("SCAM", "Pay Cash", "坏蛋", "#HASHTAG"):
            self.assertTrue(blocklist.occurs_in(text), text)
        self.assertFalse(blocklist.occurs_in("hash tag"))

    def test_unreadable(self):
        with self.assertRaises(BlocklistError) as caught:
            load_blocklist(os.path.join(self.mktemp(), "missing.txt"))
        self.assertIn("No such file", str(caught.exception))
        with self.assertRaises(BlocklistError) as caught:
            load_blocklist(self.write(b"ok\n\xff\xfe bad\n"))
        self.assertIn("not UTF-8", str(caught.exception))

    def test_reloader_swaps_the_list_or_keeps_the_old_one(self):
        path = self.write(b"one\n")
        policy = TextPolicy(PrivateDataMask(()), load_blocklist(path), REFUSE)
        reload = blocklist_reloader(policy, path)
        with open(path, "wb") as f:
            f.write(b"two\nthree\n")
        self.assertEqual(reload(), 2)
        self.assertEqual(policy.apply("one"), ("one", False))
        self.assertRaises(ImdError, policy.apply, "three")
        os.remove(path)
        self.assertIsNone(reload())
        self.assertRaises(ImdError, policy.apply, "two")


class OtherMatcherTests(BlockedWordTests, BlocklistFileTests):
    """The same with the automaton this interpreter does not use by default
    (pyahocorasick on PyPy, the Python one on CPython)."""

    def setUp(self):
        self.patch(moderation, "PYTHON_MATCHER", not moderation.PYTHON_MATCHER)

    def test_the_other_matcher_is_the_one_built(self):
        blocklist = Blocklist(["scam"])
        self.assertEqual(blocklist._python is not None, moderation.PYTHON_MATCHER)
        self.assertEqual(blocklist._automaton is None, moderation.PYTHON_MATCHER)


# --- properties ---------------------------------------------------------------

# characters whose folded form differs in length or composes with a neighbour
TRICKY = ("aAbBsSiIkK*-. 1" "İıßẞﬁﬃＡａ①㎏Ωǅς" "\u0301\u0307\u0308\u0323éè" "가\u1100\u1161\u11a8"
          "ｶﾞカガ坏蛋" "👍\U0001F3FD\u200d")
texts = st.text(alphabet=st.sampled_from(TRICKY), max_size=30)
words = st.text(alphabet=st.sampled_from(TRICKY.replace("*", "")), min_size=1, max_size=4)


def naive_occurs(entries, text):
    folded = fold(text)
    return any(fold(e.strip()) and fold(e.strip()) in folded for e in entries)


# CJK (a root with many children), words that are prefixes of others or
# overlap, mixed case, fullwidth forms and what NFKC joins or splits
ALIKE = "abAB我到了坏蛋，？Ａｂ　 " "ßİﬁé́ｶﾞ각👍"
alike_texts = st.text(alphabet=st.sampled_from(ALIKE), max_size=40)
alike_words = st.text(alphabet=st.sampled_from(ALIKE.replace(" ", "")), min_size=1, max_size=4)
word_lists = st.lists(alike_words | words, min_size=1, max_size=12).flatmap(
    lambda ws: st.just(ws) | st.just(ws + [w[:-1] for w in ws if len(w) > 1]) | st.just(ws + [w + w for w in ws]))


class PropertyTests(unittest.SynchronousTestCase):

    @settings(max_examples=1000, deadline=None)
    @given(word_lists, alike_texts | texts | st.text(max_size=30))
    @example(["ab", "b", "abab"], "xAbAbABx")
    @example(["我到", "到了了", "了"], "我到了了，Ａｂ")
    @example(["fi", "ss"], "ﬁ STRAßE İ")
    @example(["a"], "A\u0301")
    @example(["aé", "ab"], "xAe\u0301 ab\u0301")
    @example(["strasse", "坏蛋"], "坏 STRAßE 蛋")
    def test_the_python_automaton_agrees_with_pyahocorasick(self, entries, text):
        ours, theirs = Blocklist(entries, python_matcher=True), Blocklist(entries, python_matcher=False)
        self.assertEqual(ours.occurs_in(text), theirs.occurs_in(text), (entries, text))
        self.assertEqual(ours.spans(text), theirs.spans(text))
        self.assertEqual(ours.occurs_in(text), naive_occurs(entries, text))

    @settings(max_examples=1000, deadline=None)
    @given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
           | st.text(alphabet=st.sampled_from(ALIKE + TRICKY), max_size=20))
    def test_text_of_characters_that_fold_alone_folds_character_by_character(self, text):
        kinds = _fold_kinds()
        assume(all(kinds[ord(c)] != moderation._CONTEXT for c in text))
        self.assertEqual(fold(text), "".join(chr(moderation._FOLDS_TO.get(ord(c), ord(c))) for c in text))

    def test_each_character_that_folds_alone(self):
        kinds = _fold_kinds()
        for code in range(0x110000):
            if kinds[code] != moderation._CONTEXT and not 0xD800 <= code < 0xE000:
                char = chr(code)
                self.assertEqual(unicodedata.normalize("NFKC", char).casefold(),
                                 chr(moderation._FOLDS_TO.get(code, code)), hex(code))

    @settings(max_examples=400, deadline=None)
    @given(st.lists(words, min_size=1, max_size=5), texts)
    @example(["ab"], "xAbx")
    @example(["\u0301"], "e\u0301")
    def test_the_automaton_finds_what_a_plain_search_finds(self, entries, text):
        self.assertEqual(Blocklist(entries).occurs_in(text), naive_occurs(entries, text))

    @settings(max_examples=400, deadline=None)
    @given(st.lists(words, min_size=1, max_size=5), texts, texts)
    def test_a_blocked_word_planted_in_any_text_is_found(self, entries, before, after):
        assume(entries[0].strip())   # (a blank line is no entry)
        self.assertTrue(Blocklist(entries).occurs_in(before + " " + entries[0] + " " + after))

    @settings(max_examples=400, deadline=None)
    @given(st.lists(words, min_size=1, max_size=5), texts)
    def test_masking_stars_characters_and_leaves_no_match(self, entries, text):
        masked, changed = starrer(*entries).apply(text)
        self.assertEqual(len(masked), len(text))
        self.assertTrue(all(m == c or m == "*" for m, c in zip(masked, text)), (text, masked))
        self.assertEqual(changed, masked != text)
        self.assertEqual(changed, naive_occurs(entries, text))
        self.assertFalse(Blocklist(entries).occurs_in(masked), (text, masked))

    @settings(max_examples=1000, deadline=None)
    @given(texts | st.text(max_size=40))
    @example("ｶﾞ 가\u11a8 \u1100\u1161\u11a8 e\u0323\u0301 é\u0323 \U0001d400 \U0002f800")
    def test_nfkc_by_runs_is_nfkc(self, text):
        self.assertEqual(_nfkc(text), unicodedata.normalize("NFKC", text))

    @settings(max_examples=1000, deadline=None)
    @given(texts | st.text(alphabet=st.sampled_from(TRICKY + "，？！：（）\u3000ＡｚＺ０我到了请"), max_size=40)
           | st.text(max_size=40))
    @example("我到了，请稍等一下？（ｚ）\u3000Ａ")
    @example("，\u0301 Ａ\u0301 ｶ\uff9e，")
    def test_fold_is_nfkc_then_casefold(self, text):
        self.assertEqual(fold(text), unicodedata.normalize("NFKC", text).casefold())

    @settings(max_examples=400, deadline=None)
    @given(texts)
    def test_pieces_fold_into_the_folded_text(self, text):
        folded = fold(text)
        pieces = _pieces(text, folded)
        self.assertEqual("".join(fold(text[a:b]) for a, b, _, _ in pieces), folded)
        self.assertEqual([(fa, fb) for _, _, fa, fb in pieces],
                         [(sum(len(fold(text[a:b])) for a, b, _, _ in pieces[:i]),
                           sum(len(fold(text[a:b])) for a, b, _, _ in pieces[:i + 1])) for i in range(len(pieces))])
        # the fall-back (one piece for a text that would cut into several) is not needed
        starters = [c for c in text[1:] if not unicodedata.combining(unicodedata.normalize("NFKD", c)[0])]
        if starters and not any(c in text for c in "\u1161\u11a8ﾞ"):
            self.assertGreater(len(pieces), 1, text)

    @settings(max_examples=300, deadline=None)
    @given(st.text(alphabet=st.sampled_from("0123456789 -.()+a"), max_size=40))
    def test_phone_masking_leaves_no_run_of_eight_digits(self, text):
        masked, changed = masker(("phone",)).apply(text)
        run = 0
        for c in masked:
            if c.isdigit():
                run += 1
                self.assertLess(run, 8, (text, masked))
            elif c not in " -.()":
                run = 0
        self.assertEqual(changed, "[phone]" in masked)
