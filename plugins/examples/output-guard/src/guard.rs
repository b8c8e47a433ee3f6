//! The redaction logic, independent of the plugin ABI: text goes in piece by
//! piece, redacted text comes out, and only the tail that could still become
//! a match is held back.
//!
//! One lazy DFA does all the work, run anchored at each position of the held
//! text (leftmost-first, like `find_iter`): a run that dies has either
//! matched (the match is final: redact it) or not (the position is final:
//! release it); a run still alive at the end of the text could become a
//! match with more text, so everything from there on is held. Text that
//! cannot start a match (most text) is released at once; the held tail is
//! also capped at `window` characters, so a pattern that keeps matching
//! (say `[0-9]+` on a long number) cannot hold the stream indefinitely.
//!
//! Only the DFA is compiled (no other regex engine), because a fresh plugin
//! instance serves each answer and compiles the patterns again.

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::{Anchored, Input};

/// Patterns for `pii = true`: email addresses, payment card numbers, US
/// social security numbers and phone numbers (North American and
/// international shapes). ASCII classes keep the automaton small.
pub const PII_PATTERNS: &[&str] = &[
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    r"(?-u:\b)(?:[0-9][ -]?){12,18}[0-9](?-u:\b)",
    r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
    r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{3}\)|[0-9]{3})[ .-]?[0-9]{3}[ .-]?[0-9]{4}(?-u:\b)",
];

pub struct Guard {
    dfa: DFA,
    cache: Cache,
    window: usize,
    replacement: String,
    held: String,
}

/// How an anchored run from one position ended.
enum Run {
    /// More text could still make (or extend) a match from here; the end
    /// of the match found so far, if any.
    Alive(Option<usize>),
    /// Nothing more can match from here; the end of the match found, if any.
    Dead(Option<usize>),
}

impl Guard {
    /// Compiles `patterns`; the error names the pattern that does not compile.
    pub fn new(patterns: &[String], window: usize, replacement: &str) -> Result<Guard, String> {
        let build = |ps: &[String]| {
            DFA::builder()
                // Unicode \b works on ASCII text; on other text the DFA gives
                // up, and the guard holds that text (up to the window).
                .configure(DFA::config().unicode_word_boundary(true))
                .build_many(ps)
                .map_err(Box::new)
        };
        let dfa = build(patterns).map_err(|e| {
            match patterns
                .iter()
                .find(|p| build(std::slice::from_ref(*p)).is_err())
            {
                Some(p) => format!("pattern {p:?} is not a valid regex: {e}"),
                None => format!("patterns do not compile: {e}"),
            }
        })?;
        let cache = dfa.create_cache();
        Ok(Guard {
            dfa,
            cache,
            window,
            replacement: replacement.to_owned(),
            held: String::new(),
        })
    }

    /// Characters held back right now.
    pub fn held_chars(&self) -> usize {
        self.held.chars().count()
    }

    /// Takes the next piece of text; returns what can be sent now, redacted.
    pub fn push(&mut self, text: &str) -> String {
        self.held.push_str(text);
        let mut out = String::new();
        let at = self.scan(&mut out, 0, false);
        let held_chars = self.held[at..].chars().count();
        let at = if held_chars > self.window {
            // Over the window: the oldest text goes out as it is now.
            let excess = held_chars - self.window;
            let force_to = at
                + self.held[at..]
                    .char_indices()
                    .nth(excess)
                    .map_or(self.held.len() - at, |(i, _)| i);
            self.scan_forced(&mut out, at, force_to)
        } else {
            at
        };
        self.held.drain(..at);
        out
    }

    /// The end of the text: everything held, redacted.
    pub fn finish(&mut self) -> String {
        let mut out = String::new();
        let at = self.scan(&mut out, 0, true);
        self.held.drain(..at);
        out
    }

    /// Walks the held text from `from`: final text and redactions go to
    /// `out`; returns where the held tail starts (the end, at `at_end`).
    fn scan(&mut self, out: &mut String, from: usize, at_end: bool) -> usize {
        let (mut i, mut plain) = (from, from);
        while i < self.held.len() {
            match self.run(i, at_end) {
                Run::Alive(_) => break,
                Run::Dead(Some(end)) if end > i => {
                    out.push_str(&self.held[plain..i]);
                    out.push_str(&self.replacement);
                    (i, plain) = (end, end);
                }
                Run::Dead(_) => i = self.next_char(i),
            }
        }
        out.push_str(&self.held[plain..i]);
        i
    }

    /// Releases the held text from `from` to at least `to`, redacting
    /// the matches already complete in it.
    fn scan_forced(&mut self, out: &mut String, from: usize, to: usize) -> usize {
        let (mut i, mut plain) = (from, from);
        while i < to {
            match self.run(i, false) {
                // A match still growing is cut here: what matched so far goes.
                Run::Dead(Some(end)) | Run::Alive(Some(end)) if end > i => {
                    out.push_str(&self.held[plain..i]);
                    out.push_str(&self.replacement);
                    (i, plain) = (end, end);
                }
                _ => i = self.next_char(i),
            }
        }
        out.push_str(&self.held[plain..i]);
        i
    }

    /// The char boundary after the char at `i`.
    fn next_char(&self, i: usize) -> usize {
        i + self.held[i..].chars().next().map_or(1, char::len_utf8)
    }

    /// Runs the DFA anchored at `start` over the held text.
    fn run(&mut self, start: usize, at_end: bool) -> Run {
        let (dfa, cache, hay) = (&self.dfa, &mut self.cache, self.held.as_bytes());
        let input = Input::new(hay).range(start..).anchored(Anchored::Yes);
        let Ok(mut sid) = dfa.start_state_forward(cache, &input) else {
            return if at_end {
                Run::Dead(None)
            } else {
                Run::Alive(None)
            };
        };
        let mut found = None;
        for (at, &b) in hay.iter().enumerate().skip(start) {
            sid = match dfa.next_state(cache, sid, b) {
                Ok(s) => s,
                Err(_) => {
                    return if at_end {
                        Run::Dead(found)
                    } else {
                        Run::Alive(found)
                    };
                }
            };
            if sid.is_match() {
                // Match states trail by one byte: this match ended at `at`.
                found = Some(at);
            } else if sid.is_dead() {
                return Run::Dead(found);
            } else if sid.is_quit() {
                return if at_end {
                    Run::Dead(found)
                } else {
                    Run::Alive(found)
                };
            }
        }
        if at_end {
            if dfa
                .next_eoi_state(cache, sid)
                .is_ok_and(|eoi| eoi.is_match())
            {
                found = Some(hay.len());
            }
            return Run::Dead(found);
        }
        if sid.is_match() && !grows(dfa, cache, sid) {
            return Run::Dead(found);
        }
        Run::Alive(found)
    }
}

/// Whether some next byte keeps the DFA going from `sid` (`[0-9]+` can
/// grow; `sky is` cannot once matched).
fn grows(dfa: &DFA, cache: &mut Cache, sid: LazyStateID) -> bool {
    (0..=255u8).any(|b| dfa.next_state(cache, sid, b).map_or(true, |n| !n.is_dead()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(patterns: &[&str]) -> Guard {
        let p: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        Guard::new(&p, 256, "[REDACTED]").unwrap()
    }

    /// Feeds `pieces` and collects the output, flushed at the end.
    fn run(g: &mut Guard, pieces: &[&str]) -> String {
        let mut out: String = pieces.iter().map(|p| g.push(p)).collect();
        out.push_str(&g.finish());
        out
    }

    #[test]
    fn a_match_split_across_pieces_is_redacted() {
        let mut g = guard(&["secret-[0-9]+"]);
        assert_eq!(
            run(&mut g, &["the code is sec", "ret-12", "34 ok"]),
            "the code is [REDACTED] ok"
        );
        // Every split of the same text gives the same output.
        let text = "a secret-42 and secret-7.";
        for i in 0..=text.len() {
            let mut g = guard(&["secret-[0-9]+"]);
            assert_eq!(
                run(&mut g, &[&text[..i], &text[i..]]),
                "a [REDACTED] and [REDACTED].",
                "split at {i}"
            );
        }
    }

    #[test]
    fn only_text_that_could_start_a_match_is_held() {
        let mut g = guard(&["password"]);
        assert_eq!(g.push("The sky is blue "), "The sky is blue ");
        assert_eq!(g.held_chars(), 0);
        assert_eq!(g.push("and my pass"), "and my ");
        assert_eq!(g.held_chars(), 4, "\"pass\" could become \"password\"");
        assert_eq!(g.push("port"), "passport");
        assert_eq!(g.held_chars(), 0);
    }

    #[test]
    fn held_text_is_capped_by_the_window() {
        let p = vec![r"\d+".to_string()];
        let mut g = Guard::new(&p, 4, "#").unwrap();
        // Past the window the oldest text goes out, and a match crossing the
        // cut goes out whole, redacted.
        assert_eq!(g.push("12"), "");
        assert_eq!(g.held_chars(), 2);
        assert_eq!(g.push("34567"), "#", "what matched so far goes, redacted");
        assert_eq!(g.held_chars(), 1);
        assert_eq!(g.finish(), "#");
        let mut g = Guard::new(&p, 4, "#").unwrap();
        assert_eq!(g.push("ab 12"), "ab ");
        assert_eq!(g.push("3 cd"), "# cd");
        assert_eq!(g.finish(), "");
    }

    #[test]
    fn pii_is_found_in_streamed_text() {
        let p: Vec<String> = PII_PATTERNS.iter().map(|s| s.to_string()).collect();
        let mut g = Guard::new(&p, 256, "[REDACTED]").unwrap();
        let out = run(
            &mut g,
            &[
                "Mail jane.doe@exa",
                "mple.com or call +1 415-555-",
                "0100; card 4111 1111 1111 1111, ssn 123-45-6789. In 2024 it cost 12.50.",
            ],
        );
        assert_eq!(
            out,
            "Mail [REDACTED] or call [REDACTED]; card [REDACTED], ssn [REDACTED]. In 2024 it cost 12.50."
        );
    }

    #[test]
    fn unicode_text_passes_through() {
        let mut g = guard(&[r"\bsecret\b"]);
        assert_eq!(
            run(&mut g, &["café ", "secret", " naïve"]),
            "café [REDACTED] naïve"
        );
        // A match that needs the end of the text to be sure (`\b` at the end).
        let mut g = guard(&[r"\bsecret\b"]);
        assert_eq!(run(&mut g, &["say secret"]), "say [REDACTED]");
        let mut g = guard(&[r"\bsecret\b"]);
        assert_eq!(run(&mut g, &["secrets"]), "secrets");
    }

    #[test]
    fn matches_are_leftmost_first_like_find_iter() {
        let mut g = guard(&["ab", "abcd", "cde"]);
        // "ab" wins at 0 (first pattern), then "cde" from 2.
        assert_eq!(run(&mut g, &["xabcdex"]), "x[REDACTED][REDACTED]x");
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Guard::new(&["ok".into(), "(".into()], 8, "x")
            .err()
            .unwrap();
        assert!(err.contains("\"(\""), "{err}");
    }
}
