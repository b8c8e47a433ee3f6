//! The redaction logic, independent of the plugin ABI: text goes in piece by
//! piece, redacted text comes out, and only the tail that could still become
//! a match is held back.
//!
//! How much to hold: after each piece, the held text is searched for the
//! first position from which some pattern is still "alive" — a lazy DFA run
//! anchored there has not died by the end of the text, so more text could
//! complete (or extend) a match starting there. Everything before that
//! position is final: its matches are redacted and it is released. Text that
//! cannot start a match (most text) is released at once; the held tail is
//! also capped at `window` characters, so a pattern that keeps matching
//! (say `\d+` on a long number) cannot hold the stream indefinitely.

use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::meta::Regex;
use regex_automata::{Anchored, Input};

/// Patterns for `pii = true`: email addresses, payment card numbers, US
/// social security numbers and phone numbers (North American and
/// international shapes).
pub const PII_PATTERNS: &[&str] = &[
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    r"(?-u:\b)(?:\d[ -]?){12,18}\d(?-u:\b)",
    r"(?-u:\b)\d{3}-\d{2}-\d{4}(?-u:\b)",
    r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?-u:\b)",
];

pub struct Guard {
    find: Regex,
    dfa: DFA,
    cache: Cache,
    window: usize,
    replacement: String,
    held: String,
}

impl Guard {
    /// Compiles `patterns`; the error names the pattern that does not compile.
    pub fn new(patterns: &[String], window: usize, replacement: &str) -> Result<Guard, String> {
        for p in patterns {
            Regex::new(p).map_err(|e| format!("pattern {p:?} is not a valid regex: {e}"))?;
        }
        let find =
            Regex::new_many(patterns).map_err(|e| format!("patterns do not compile: {e}"))?;
        let dfa = DFA::builder()
            // Unicode \b works on ASCII text; on other text the DFA gives up
            // and the guard holds conservatively (see `alive`).
            .configure(DFA::config().unicode_word_boundary(true))
            .build_many(patterns)
            .map_err(|e| format!("patterns do not compile: {e}"))?;
        let cache = dfa.create_cache();
        Ok(Guard {
            find,
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
        let mut cut = self.first_alive();
        // Never hold more than `window` characters.
        let held_chars = self.held[cut..].chars().count();
        if held_chars > self.window {
            let excess = held_chars - self.window;
            cut += self.held[cut..]
                .char_indices()
                .nth(excess)
                .map_or(self.held.len() - cut, |(i, _)| i);
        }
        self.release(cut)
    }

    /// The end of the text: everything held, redacted.
    pub fn finish(&mut self) -> String {
        self.release(self.held.len())
    }

    /// Redacts every match that starts before `cut`, sends the text up to
    /// `cut` (or to the end of a match that crosses it), keeps the rest.
    fn release(&mut self, cut: usize) -> String {
        let mut out = String::new();
        let mut sent = 0;
        let mut end = cut;
        for m in self.find.find_iter(&self.held) {
            if m.start() >= cut {
                break;
            }
            if m.is_empty() {
                continue;
            }
            out.push_str(&self.held[sent..m.start()]);
            out.push_str(&self.replacement);
            sent = m.end();
            end = end.max(m.end());
        }
        out.push_str(&self.held[sent.min(end)..end]);
        self.held.drain(..end);
        out
    }

    /// The first char boundary from which a match could still be under way
    /// at the end of the held text; its length when there is none.
    fn first_alive(&mut self) -> usize {
        let starts: Vec<usize> = self.held.char_indices().map(|(i, _)| i).collect();
        for i in starts {
            if self.alive(i) {
                return i;
            }
        }
        self.held.len()
    }

    fn alive(&mut self, start: usize) -> bool {
        let hay = self.held.as_bytes();
        let input = Input::new(hay).range(start..).anchored(Anchored::Yes);
        let Ok(mut sid) = self.dfa.start_state_forward(&mut self.cache, &input) else {
            return true; // the DFA gave up: hold, to be safe
        };
        for &b in &hay[start..] {
            sid = match self.dfa.next_state(&mut self.cache, sid, b) {
                Ok(s) => s,
                Err(_) => return true,
            };
            if sid.is_dead() {
                return false;
            }
            if sid.is_quit() {
                return true;
            }
        }
        if !sid.is_match() {
            return true;
        }
        // A match is complete here (match states trail by one byte). It is
        // final unless some next byte keeps the DFA going (`\d+` could
        // grow, `sky is` cannot).
        (0..=255u8).any(|b| {
            self.dfa
                .next_state(&mut self.cache, sid, b)
                .map_or(true, |next| !next.is_dead())
        })
    }
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
        assert_eq!(g.push("34567"), "#");
        assert_eq!(g.held_chars(), 0);
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
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Guard::new(&["ok".into(), "(".into()], 8, "x")
            .err()
            .unwrap();
        assert!(err.contains("\"(\""), "{err}");
    }
}
