//! The redaction logic, independent of the plugin ABI: text goes in piece by
//! piece, redacted text comes out, and only the tail that could still become
//! a match is held back.
//!
//! One lazy DFA does all the work. Every position that could start a match
//! gets an anchored run of the DFA (leftmost-first, like `find_iter`); a
//! run that dies has either matched (the match is final once no earlier
//! run is still going: redact it) or not (the position is final: release
//! it); a run still alive at the end of the text could become a match with
//! more text, so everything from its start on is held. Runs keep their DFA
//! state between pieces, so each byte is stepped once per run that covers
//! it, never rescanned; a byte table skips positions no pattern can start
//! at. Text that cannot start a match (most text) is released at once; the
//! held tail is also capped at `window` characters, so a pattern that keeps
//! matching (say `[0-9]+` on a long number) cannot hold the stream
//! indefinitely.
//!
//! Only the DFA is compiled (no other regex engine), because a fresh plugin
//! instance serves each answer and compiles the patterns again.

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};

/// Patterns for `pii = true`: email addresses, payment card numbers, US
/// social security numbers and phone numbers (North American and
/// international shapes). ASCII classes keep the automaton small.
pub const PII_PATTERNS: &[&str] = &[
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    r"(?-u:\b)(?:[0-9][ -]?){12,18}[0-9](?-u:\b)",
    r"(?-u:\b)[0-9]{3}-[0-9]{2}-[0-9]{4}(?-u:\b)",
    r"(?:\+[0-9]{1,3}[ .-]?)?(?:\([0-9]{3}\)|[0-9]{3})[ .-]?[0-9]{3}[ .-]?[0-9]{4}(?-u:\b)",
];

/// Look-behind bytes that stand for every start condition a pattern can
/// ask about (none, a word byte, a non-word byte, line ends).
const LOOK_BEHINDS: [Option<u8>; 5] = [None, Some(b'a'), Some(b' '), Some(b'\n'), Some(b'\r')];

pub struct Guard {
    dfa: DFA,
    cache: Cache,
    /// `can_start[b]`: some pattern can begin with byte `b`.
    can_start: [bool; 256],
    window: usize,
    replacement: String,
    /// The text not released yet.
    held: String,
    /// The byte just before `held`, for look-behind (`\b`).
    before_held: Option<u8>,
    /// The anchored runs from positions of `held`, in order of position.
    runs: Vec<Run>,
    /// `cache.clear_count()` when the runs' states were taken: a cleared
    /// cache invalidates them.
    clears: usize,
    /// What the last call released, kept to reuse its allocation.
    out: String,
}

/// An anchored run of the DFA from one position of the held text.
#[derive(Clone, Copy, Debug)]
struct Run {
    /// Byte offset in `held`.
    start: usize,
    state: State,
    /// End of the longest match found so far (leftmost-first).
    found: Option<usize>,
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// More text could still make (or extend) a match: the DFA state after
    /// the held text.
    Alive(LazyStateID),
    /// The DFA gave up (a byte it cannot decide on, e.g. non-ASCII around a
    /// Unicode `\b`): undecided until the end of the text.
    Stuck,
    /// Nothing more can match from here.
    Done,
}

impl Guard {
    /// Compiles `patterns`; the error names the pattern that does not compile.
    pub fn new(patterns: &[String], window: usize, replacement: &str) -> Result<Guard, String> {
        let build = |ps: &[String]| {
            DFA::builder()
                .configure(
                    DFA::config()
                        .match_kind(MatchKind::LeftmostFirst)
                        // Unicode \b works on ASCII text; on other text the
                        // DFA gives up, and the guard holds that text (up to
                        // the window).
                        .unicode_word_boundary(true),
                )
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
        let mut cache = dfa.create_cache();
        let can_start = start_bytes(&dfa, &mut cache);
        let clears = cache.clear_count();
        Ok(Guard {
            dfa,
            cache,
            can_start,
            window,
            replacement: replacement.to_owned(),
            held: String::new(),
            before_held: None,
            runs: Vec::new(),
            clears,
            out: String::new(),
        })
    }

    /// A guard with the same patterns and settings and nothing held, for
    /// a second text (the model's thinking) without compiling again.
    pub fn fresh(&self) -> Guard {
        // The byte table was read off the DFA; only the cache is per guard.
        let cache = self.dfa.create_cache();
        let clears = cache.clear_count();
        Guard {
            dfa: self.dfa.clone(),
            cache,
            can_start: self.can_start,
            window: self.window,
            replacement: self.replacement.clone(),
            held: String::new(),
            before_held: None,
            runs: Vec::new(),
            clears,
            out: String::new(),
        }
    }

    /// Characters held back right now.
    pub fn held_chars(&self) -> usize {
        self.held.chars().count()
    }

    /// Takes the next piece of text; returns what can be sent now, redacted.
    pub fn push(&mut self, text: &str) -> &str {
        self.out.clear();
        let old = self.held.len();
        self.held.push_str(text);
        for k in 0..self.runs.len() {
            self.advance(k, old);
        }
        self.start_runs(old);
        if self.cache.clear_count() != self.clears {
            self.restart_runs();
        }
        let mut release = self.resolve(false);
        // A char is at least a byte: no count while the bytes fit (per chunk).
        let held_chars = match self.held.len() - release {
            bytes if bytes <= self.window => bytes,
            _ => self.held[release..].chars().count(),
        };
        if held_chars > self.window {
            // Over the window: the oldest text goes out as it is now.
            let excess = held_chars - self.window;
            let force_to = release
                + self.held[release..]
                    .char_indices()
                    .nth(excess)
                    .map_or(self.held.len() - release, |(i, _)| i);
            release = self.force(release, force_to);
        }
        self.release(release);
        &self.out
    }

    /// The end of the text: everything held, redacted.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        let len = self.held.len();
        for run in &mut self.runs {
            if let State::Alive(sid) = run.state {
                // A match may need the end of the text (`\b`, `$`).
                if self
                    .dfa
                    .next_eoi_state(&mut self.cache, sid)
                    .is_ok_and(|eoi| eoi.is_match())
                {
                    run.found = Some(len);
                }
            }
            run.state = State::Done;
        }
        let release = self.resolve(true);
        debug_assert_eq!(release, len);
        self.release(len);
        &self.out
    }

    /// Starts a run at every char boundary of `held[from..]` some pattern
    /// can start at.
    fn start_runs(&mut self, from: usize) {
        let mut at = from;
        while at < self.held.len() {
            let b = self.held.as_bytes()[at];
            let next = at + utf8_len(b);
            if self.can_start[b as usize] {
                let look_behind = match at {
                    0 => self.before_held,
                    _ => Some(self.held.as_bytes()[at - 1]),
                };
                let config = start::Config::new()
                    .anchored(Anchored::Yes)
                    .look_behind(look_behind);
                let state = match self.dfa.start_state(&mut self.cache, &config) {
                    Ok(sid) => State::Alive(sid),
                    Err(_) => State::Stuck,
                };
                self.runs.push(Run {
                    start: at,
                    state,
                    found: None,
                });
                let k = self.runs.len() - 1;
                self.advance(k, at);
            }
            at = next;
        }
    }

    /// Steps run `k` over `held[from..]`.
    fn advance(&mut self, k: usize, from: usize) {
        let Run { state, found, .. } = &mut self.runs[k];
        let State::Alive(mut sid) = *state else {
            return;
        };
        for (at, &b) in self.held.as_bytes().iter().enumerate().skip(from) {
            sid = match self.dfa.next_state(&mut self.cache, sid, b) {
                Ok(s) if !s.is_quit() => s,
                _ => {
                    *state = State::Stuck;
                    return;
                }
            };
            if sid.is_match() {
                // Match states trail by one byte: this match ended at `at`.
                *found = Some(at);
            } else if sid.is_dead() {
                *state = State::Done;
                return;
            }
        }
        *state = if sid.is_match() && !grows(&self.dfa, &mut self.cache, sid) {
            State::Done
        } else {
            State::Alive(sid)
        };
    }

    /// The cache was cleared, so the runs' states are stale: runs again
    /// from every position of the held text. Should that clear the cache
    /// again, the live runs wait for the end of the text instead.
    fn restart_runs(&mut self) {
        self.runs.clear();
        self.clears = self.cache.clear_count();
        self.start_runs(0);
        if self.cache.clear_count() != self.clears {
            for run in &mut self.runs {
                if let State::Alive(_) = run.state {
                    run.state = State::Stuck;
                }
            }
            self.clears = self.cache.clear_count();
        }
    }

    /// Releases what is decided, from the front: text no run covers goes
    /// out, a finished match goes out redacted. Returns where the held text
    /// now starts (the first undecided run). `at_end`: every run is done.
    fn resolve(&mut self, at_end: bool) -> usize {
        let mut plain = 0;
        let mut k = 0;
        while k < self.runs.len() {
            let run = self.runs[k];
            if run.start < plain {
                k += 1; // inside a match already redacted
                continue;
            }
            if !at_end && !matches!(run.state, State::Done) {
                break;
            }
            if let Some(end) = run.found.filter(|&end| end > run.start) {
                self.out.push_str(&self.held[plain..run.start]);
                self.out.push_str(&self.replacement);
                plain = end;
            }
            k += 1;
        }
        let release = self.runs.get(k).map_or(self.held.len(), |r| r.start);
        self.runs.drain(..k);
        let release = release.max(plain);
        self.out.push_str(&self.held[plain..release]);
        release
    }

    /// Releases the held text from `from` to at least `to`, redacting the
    /// matches found so far in it: a match still growing is cut here, and
    /// what matched so far goes. Returns where the held text now starts.
    fn force(&mut self, from: usize, to: usize) -> usize {
        let mut plain = from;
        for run in &self.runs {
            if run.start >= to.max(plain) {
                break;
            }
            if run.start < plain {
                continue;
            }
            if let Some(end) = run.found.filter(|&end| end > run.start) {
                self.out.push_str(&self.held[plain..run.start]);
                self.out.push_str(&self.replacement);
                plain = end;
            }
        }
        let release = to.max(plain);
        self.out.push_str(&self.held[plain..release]);
        release
    }

    /// Drops `held[..to]` (already written to `out`) and the runs in it.
    fn release(&mut self, to: usize) {
        if to == 0 {
            return;
        }
        self.before_held = Some(self.held.as_bytes()[to - 1]);
        self.held.drain(..to);
        self.runs.retain(|r| r.start >= to);
        for run in &mut self.runs {
            run.start -= to;
            run.found = run.found.map(|end| end - to);
        }
    }
}

/// The bytes some pattern can begin with, under any look-behind: a
/// position starting with another byte needs no run.
fn start_bytes(dfa: &DFA, cache: &mut Cache) -> [bool; 256] {
    let mut can = [false; 256];
    for look_behind in LOOK_BEHINDS {
        let config = start::Config::new()
            .anchored(Anchored::Yes)
            .look_behind(look_behind);
        let Ok(sid) = dfa.start_state(cache, &config) else {
            return [true; 256];
        };
        if sid.is_match() {
            return [true; 256]; // a pattern matches the empty string
        }
        for b in 0..=255u8 {
            if dfa
                .next_state(cache, sid, b)
                .map_or(true, |next| !next.is_dead())
            {
                can[b as usize] = true;
            }
        }
    }
    can
}

/// Whether some next byte keeps the DFA going from `sid` (`[0-9]+` can
/// grow; `sky is` cannot once matched).
fn grows(dfa: &DFA, cache: &mut Cache, sid: LazyStateID) -> bool {
    (0..=255u8).any(|b| dfa.next_state(cache, sid, b).map_or(true, |n| !n.is_dead()))
}

/// The length of the UTF-8 sequence a leading byte starts.
fn utf8_len(b: u8) -> usize {
    match b {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
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
        let mut out: String = pieces.iter().map(|p| g.push(p).to_owned()).collect();
        out.push_str(g.finish());
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

    /// The streamed output equals `find_iter` + replace on the whole text,
    /// however the text is cut (pseudo-random texts and cuts, ASCII so the
    /// reference regex never gives up on a Unicode `\b`).
    #[test]
    fn any_cut_gives_what_find_iter_gives_on_the_whole_text() {
        let mut patterns: Vec<String> = PII_PATTERNS.iter().map(|s| s.to_string()).collect();
        patterns.push(r"\bsky is\b".into());
        patterns.push("ab+c".into());
        let whole = regex_automata::hybrid::regex::Regex::builder()
            .dfa(DFA::config().unicode_word_boundary(true))
            .build_many(&patterns)
            .unwrap();
        let mut cache = whole.create_cache();
        let alphabet = b"abc sky is 0123456789 @.-+() x\n";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for round in 0..300 {
            let len = 1 + next(120);
            let text: String = (0..len)
                .map(|_| alphabet[next(alphabet.len())] as char)
                .collect();
            let mut expected = String::new();
            let mut last = 0;
            for m in whole.find_iter(&mut cache, &text) {
                expected.push_str(&text[last..m.start()]);
                expected.push('#');
                last = m.end();
            }
            expected.push_str(&text[last..]);
            let mut g = Guard::new(&patterns, 10_000, "#").unwrap();
            let mut pieces = Vec::new();
            let mut at = 0;
            while at < len {
                let to = (at + 1 + next(12)).min(len);
                pieces.push(&text[at..to]);
                at = to;
            }
            assert_eq!(run(&mut g, &pieces), expected, "round {round}: {pieces:?}");
        }
    }

    #[test]
    fn bad_patterns_are_named() {
        let err = Guard::new(&["ok".into(), "(".into()], 8, "x")
            .err()
            .unwrap();
        assert!(err.contains("\"(\""), "{err}");
    }
}
