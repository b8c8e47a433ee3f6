//! Finding emails, phone numbers and payment card numbers in text.
//!
//! The rules, chosen to catch the common shapes without flagging ordinary
//! numbers (years, prices, decimals, dates):
//! - email: `local@domain.tld`, local part of `[A-Za-z0-9._%+-]`, a domain
//!   with a dot and an alphabetic top-level label of 2+ letters;
//! - card: 13–19 digits, grouped by single spaces or dashes, that pass the
//!   Luhn check (every real card number does; random digits mostly do not);
//! - phone: 9–15 digits, optionally starting with `+` or `(`, grouped by
//!   spaces, dashes, parentheses or (2+) dots; an ISO date is not a phone.

use crate::Kind;

fn is_local(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._%+-".contains(c)
}

fn is_domain(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '.' || c == '-'
}

fn is_number_char(c: char) -> bool {
    c.is_ascii_digit() || " +-.()".contains(c)
}

/// Spans (char index ranges) of emails.
fn emails(chars: &[char]) -> Vec<(usize, usize, Kind)> {
    let mut spans = Vec::new();
    for (at, _) in chars.iter().enumerate().filter(|(_, c)| **c == '@') {
        let mut start = at;
        while start > 0 && is_local(chars[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < chars.len() && is_domain(chars[end]) {
            end += 1;
        }
        while end > at + 1 && matches!(chars[end - 1], '.' | '-') {
            end -= 1;
        }
        let domain: String = chars[at + 1..end].iter().collect();
        let tld_ok = domain.rsplit_once('.').is_some_and(|(host, tld)| {
            !host.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
        });
        if start < at && tld_ok {
            spans.push((start, end, Kind::Email));
        }
    }
    spans
}

fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 { d * 2 - 9 } else { d * 2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Classifies a run of number characters (already trimmed to end in a digit).
fn classify(run: &[char]) -> Option<Kind> {
    let digits: Vec<u32> = run.iter().filter_map(|c| c.to_digit(10)).collect();
    let only_space_dash = run
        .iter()
        .all(|c| c.is_ascii_digit() || *c == ' ' || *c == '-');
    if (13..=19).contains(&digits.len()) && only_space_dash && luhn(&digits) {
        return Some(Kind::Card);
    }
    let dots = run.iter().filter(|c| **c == '.').count();
    let text: String = run.iter().collect();
    let iso_date = text.len() >= 10
        && text.as_bytes()[..10].iter().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                *b == b'-'
            } else {
                b.is_ascii_digit()
            }
        });
    if (9..=15).contains(&digits.len()) && dots != 1 && !iso_date {
        return Some(Kind::Phone);
    }
    None
}

/// Spans of phone and card numbers outside the `taken` spans.
fn numbers(chars: &[char], taken: &[(usize, usize, Kind)]) -> Vec<(usize, usize, Kind)> {
    let inside = |i: usize| taken.iter().any(|(s, e, _)| (*s..*e).contains(&i));
    let mut spans = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts = (c.is_ascii_digit() || c == '+' || c == '(')
            && (i == 0 || !chars[i - 1].is_alphanumeric())
            && !inside(i);
        if !starts {
            i += 1;
            continue;
        }
        let mut end = i;
        // Stop at two separators in a row ("10  20" or "5 - 6" are not one number).
        while end < chars.len() && is_number_char(chars[end]) && !inside(end) {
            // Parentheses may touch a space: "+1 (555) 010".
            let paren = |c: char| c == '(' || c == ')';
            if end > i
                && !chars[end].is_ascii_digit()
                && !chars[end - 1].is_ascii_digit()
                && !paren(chars[end - 1])
                && !paren(chars[end])
            {
                break;
            }
            end += 1;
        }
        let mut last = end;
        while last > i && !chars[last - 1].is_ascii_digit() {
            last -= 1;
        }
        let glued_to_letters = last < chars.len() && chars[last].is_alphabetic();
        if last > i
            && !glued_to_letters
            && let Some(kind) = classify(&chars[i..last])
        {
            spans.push((i, last, kind));
        }
        i = end.max(i + 1);
    }
    spans
}

/// The text with the configured kinds of personal data replaced by
/// `[email]`, `[phone]` or `[card]`; `None` when there was nothing to redact.
pub fn redact(text: &str, kinds: &[Kind]) -> Option<String> {
    if !text.chars().any(|c| c.is_ascii_digit() || c == '@') {
        return None;
    }
    let chars: Vec<char> = text.chars().collect();
    let mut spans = emails(&chars);
    spans.extend(numbers(&chars, &spans));
    spans.retain(|(_, _, k)| kinds.contains(k));
    if spans.is_empty() {
        return None;
    }
    spans.sort_by_key(|s| s.0);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, kind) in spans {
        if start < at {
            continue;
        }
        out.extend(&chars[at..start]);
        out.push_str(match kind {
            Kind::Email => "[email]",
            Kind::Phone => "[phone]",
            Kind::Card => "[card]",
        });
        at = end;
    }
    out.extend(&chars[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Kind] = &[Kind::Email, Kind::Phone, Kind::Card];

    #[test]
    fn redaction_table() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "mail me: a.b+c@mail.example.org.",
                Some("mail me: [email]."),
            ),
            ("an @ sign, user@localhost, x@y.z1", None),
            ("call 555-010-9999 now", Some("call [phone] now")),
            ("(555) 010 9999", Some("[phone]")),
            ("+33 1 23 45 67 89", Some("[phone]")),
            ("555.010.9999", Some("[phone]")),
            ("visa 4111-1111-1111-1111 ok", Some("visa [card] ok")),
            // 16 digits failing Luhn: not a card, and too long for a phone.
            ("4111 1111 1111 1112", None),
            ("in 1969, for $1,299.99", None),
            ("pi is 3.141592653589", None),
            ("on 2024-01-15 10:30", None),
            ("order AB123456789 shipped", None),
            ("ids 1, 2, 3", None),
            ("ünïcödé a@b.io ✓", Some("ünïcödé [email] ✓")),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input, ALL).as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn luhn_accepts_real_test_numbers() {
        let digits = |s: &str| s.chars().filter_map(|c| c.to_digit(10)).collect::<Vec<_>>();
        assert!(luhn(&digits("4111111111111111")));
        assert!(luhn(&digits("5500005555555559")));
        assert!(!luhn(&digits("4111111111111112")));
    }
}
