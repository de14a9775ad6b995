//! `regex.globs_match(a, b)`: whether two glob-regexes have a non-empty intersection.
//!
//! The pattern language is OPA's (the glob-intersection syntax): `.` any character,
//! `[...]` a character class with `x-y` ranges, `+` / `*` (one or more / zero or more of the
//! preceding element), `\` escapes the next character; anything else is a literal character.
//! Patterns are anchored at both ends. The answer is whether some *non-empty* string matches
//! both patterns (and, as OPA answers, `true` for two empty patterns).
//!
//! Each pattern becomes a list of (class, repeated) elements (`x+` is `x x*`); the two lists are
//! read as nondeterministic automata whose states are positions, and the product automaton is
//! searched breadth-first for an accepting pair reached after at least one character. Two
//! elements can advance together when their classes share a character. The search visits at
//! most `2 × (n+1) × (m+1)` states, bounded by [`MAX_STATES`].

use std::collections::VecDeque;

use anyhow::{bail, Result};
use regorus::Value;

use super::args::string;
use super::{Def, LimitExceeded};

pub(crate) fn defs(v: &mut Vec<Def>) {
    v.push(Def { name: "regex.globs_match", arity: 2, f: globs_match });
}

/// Most product states searched (about 8 MiB of visited marks).
pub const MAX_STATES: usize = 8 << 20;

/// A set of characters: sorted, non-overlapping inclusive ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    Any,
    Ranges(Vec<(char, char)>),
}

impl Class {
    fn one(c: char) -> Class {
        Class::Ranges(vec![(c, c)])
    }

    fn from_ranges(mut r: Vec<(char, char)>) -> Class {
        r.sort();
        let mut out: Vec<(char, char)> = Vec::with_capacity(r.len());
        for (lo, hi) in r {
            match out.last_mut() {
                Some(last) if lo <= last.1 || (last.1 as u32).checked_add(1) == Some(lo as u32) => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Class::Ranges(out)
    }

    /// Whether some character is in both classes.
    fn meets(&self, other: &Class) -> bool {
        match (self, other) {
            (Class::Any, Class::Any) => true,
            (Class::Any, Class::Ranges(r)) | (Class::Ranges(r), Class::Any) => !r.is_empty(),
            (Class::Ranges(a), Class::Ranges(b)) => {
                let (mut i, mut j) = (0, 0);
                while i < a.len() && j < b.len() {
                    if a[i].1 < b[j].0 {
                        i += 1;
                    } else if b[j].1 < a[i].0 {
                        j += 1;
                    } else {
                        return true;
                    }
                }
                false
            }
        }
    }
}

/// One element of a pattern: a class, repeated zero or more times or taken once.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Elem {
    class: Class,
    star: bool,
}

/// The next character of `p` from `i`, with whether it was escaped.
fn next_char(p: &[char], i: usize, whole: &str) -> Result<Option<(char, bool, usize)>> {
    match p.get(i) {
        None => Ok(None),
        Some('\\') => match p.get(i + 1) {
            Some(c) => Ok(Some((*c, true, i + 2))),
            None => bail!("input:{whole}, pos:{i}, input ends with a \\ (escape) character: the input provided is invalid"),
        },
        Some(c) => Ok(Some((*c, false, i + 1))),
    }
}

/// Parses a glob-regex into elements, with OPA's errors for malformed patterns.
fn parse(whole: &str) -> Result<Vec<Elem>> {
    let p: Vec<char> = whole.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some((c, escaped, ni)) = next_char(&p, i, whole)? {
        i = ni;
        let class = if escaped {
            Class::one(c)
        } else {
            match c {
                '.' => Class::Any,
                ']' => bail!("input:{whole}, pos:{i}, set-close ']' with no preceding '[': the input provided is invalid"),
                '+' | '*' => bail!("input:{whole}, pos:{i}, flag '{c}' must be preceded by a non-flag: the input provided is invalid"),
                '[' => {
                    let (class, ni) = parse_set(&p, i, whole)?;
                    i = ni;
                    class
                }
                c => Class::one(c),
            }
        };
        let flag = match p.get(i) {
            Some(f @ ('+' | '*')) => {
                i += 1;
                Some(*f)
            }
            _ => None,
        };
        match flag {
            None => out.push(Elem { class, star: false }),
            Some('*') => out.push(Elem { class, star: true }),
            Some(_) => {
                out.push(Elem { class: class.clone(), star: false });
                out.push(Elem { class, star: true });
            }
        }
    }
    Ok(out)
}

/// Parses a character class after its `[`; returns the class and the index after its `]`.
fn parse_set(p: &[char], mut i: usize, whole: &str) -> Result<(Class, usize)> {
    let mut ranges = Vec::new();
    let mut prev: Option<char> = None;
    while let Some((c, escaped, ni)) = next_char(p, i, whole)? {
        i = ni;
        if escaped {
            ranges.push((c, c));
            prev = Some(c);
            continue;
        }
        match c {
            ']' => return Ok((Class::from_ranges(ranges), i)),
            '-' => {
                let Some(lo) = prev else {
                    bail!("input:{whole}, pos:{i}, range character '-' must be preceded by a Unicode character: the input provided is invalid")
                };
                if i + 1 >= p.len() {
                    bail!("input:{whole}, pos:{i}, range character '-' must be followed by a Unicode character: the input provided is invalid");
                }
                let Some((hi, esc, ni)) = next_char(p, i, whole)? else {
                    bail!("input:{whole}, pos:{i}, range character '-' must be followed by a Unicode character: the input provided is invalid")
                };
                i = ni;
                if !esc && (hi == ']' || hi == '-') {
                    bail!("input:{whole}, pos:{i}, range character '-' cannot be followed by a special symbol: the input provided is invalid");
                }
                if hi < lo {
                    bail!("input:{whole}, pos:{i}, range is out of order: '{hi}' comes before '{lo}' in Unicode: the input provided is invalid");
                }
                ranges.push((lo, hi));
                prev = None;
            }
            c => {
                ranges.push((c, c));
                prev = Some(c);
            }
        }
    }
    bail!("input:{whole}, pos:{i}, found [ without matching ]: the input provided is invalid")
}

/// Whether the two patterns share a non-empty string (or are both empty).
pub fn intersect(a: &str, b: &str) -> Result<bool> {
    let x = parse(a)?;
    let y = parse(b)?;
    if x.is_empty() && y.is_empty() {
        return Ok(true);
    }
    let (n, m) = (x.len() + 1, y.len() + 1);
    let states = n.checked_mul(m).and_then(|s| s.checked_mul(2)).unwrap_or(usize::MAX);
    if states > MAX_STATES {
        return Err(LimitExceeded(format!(
            "regex.globs_match: the patterns have {} and {} elements, whose product automaton ({states} states) exceeds sluice's limit of {MAX_STATES}",
            x.len(),
            y.len()
        ))
        .into());
    }
    let idx = |i: usize, j: usize, any: bool| (i * m + j) * 2 + any as usize;
    let mut seen = vec![false; states];
    let mut queue = VecDeque::new();
    let mut visit = |i: usize, j: usize, any: bool, queue: &mut VecDeque<(usize, usize, bool)>| {
        let k = idx(i, j, any);
        if !seen[k] {
            seen[k] = true;
            queue.push_back((i, j, any));
        }
    };
    visit(0, 0, false, &mut queue);
    while let Some((i, j, any)) = queue.pop_front() {
        if any && i == x.len() && j == y.len() {
            return Ok(true);
        }
        // A starred element may be skipped without reading a character.
        if i < x.len() && x[i].star {
            visit(i + 1, j, any, &mut queue);
        }
        if j < y.len() && y[j].star {
            visit(i, j + 1, any, &mut queue);
        }
        if i == x.len() || j == y.len() || !x[i].class.meets(&y[j].class) {
            continue;
        }
        // Read one character common to both elements.
        let ni = if x[i].star { i } else { i + 1 };
        let nj = if y[j].star { j } else { j + 1 };
        visit(ni, nj, true, &mut queue);
    }
    Ok(false)
}

fn globs_match(a: &[Value]) -> Result<Value> {
    let x = string(a, 0, "regex.globs_match")?;
    let y = string(a, 1, "regex.globs_match")?;
    Ok(Value::Bool(intersect(x, y)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersections() {
        let yes = [
            ("a.a.", ".b.b"),
            ("a.a.[0-9]+z", ".b.b2359825792*594823z"),
            ("abcd", "[a-d]*"),
            ("d*", "d[a-z]+"),
            ("[a-p]+", "[p-z]+"),
            ("foo.*bar", "fooalkdsjfbar"),
            (".*\\\\", "asdf\\\\"),
            ("", ""),
            ("a*b*c*", "c"),
            ("\\.", "."),
            ("\\[x\\]", "[[][x][\\]]"),
        ];
        for (a, b) in yes {
            assert!(intersect(a, b).unwrap(), "{a} ∩ {b}");
            assert!(intersect(b, a).unwrap(), "{b} ∩ {a}");
        }
        let no = [
            ("[a-z]+", "[0-9]*"),
            ("a*", "b*"),
            ("a*", ""),
            ("abc", "abd"),
            ("a+", "aa+b"),
            ("[]", "."),
            ("\\.", "a"),
            ("ab*c", "a[b]+d"),
        ];
        for (a, b) in no {
            assert!(!intersect(a, b).unwrap(), "{a} ∩ {b}");
            assert!(!intersect(b, a).unwrap(), "{b} ∩ {a}");
        }
    }

    #[test]
    fn malformed_patterns_are_errors() {
        for bad in ["*a", "a**", "[a", "a]", "[-a]", "[a-]", "[z-a]", "a\\", "[a-c-e]", "+"] {
            assert!(intersect(bad, "a").is_err(), "{bad}");
        }
        assert!(intersect("[\\]-a]", "_").unwrap());
    }

    /// A character in both classes.
    fn common(a: &Class, b: &Class) -> char {
        match (a, b) {
            (Class::Any, Class::Any) => 'a',
            (Class::Any, Class::Ranges(r)) | (Class::Ranges(r), Class::Any) => r[0].0,
            (Class::Ranges(x), Class::Ranges(y)) => {
                for p in x {
                    for q in y {
                        if p.0 <= q.1 && q.0 <= p.1 {
                            return p.0.max(q.0);
                        }
                    }
                }
                unreachable!("classes do not meet")
            }
        }
    }

    /// The search of [`intersect`] with parent links: a shortest common non-empty string.
    fn witness(a: &str, b: &str) -> Option<String> {
        let (x, y) = (parse(a).unwrap(), parse(b).unwrap());
        let m = y.len() + 1;
        let idx = |i: usize, j: usize, any: bool| (i * m + j) * 2 + any as usize;
        let mut parent: Vec<Option<(usize, Option<char>)>> = vec![None; (x.len() + 1) * m * 2];
        let mut queue = VecDeque::new();
        parent[idx(0, 0, false)] = Some((usize::MAX, None));
        queue.push_back((0, 0, false));
        while let Some((i, j, any)) = queue.pop_front() {
            let k = idx(i, j, any);
            if any && i == x.len() && j == y.len() {
                let mut out = Vec::new();
                let mut at = k;
                while let Some((p, c)) = parent[at] {
                    if p == usize::MAX {
                        break;
                    }
                    out.extend(c);
                    at = p;
                }
                return Some(out.into_iter().rev().collect());
            }
            let mut next = Vec::new();
            if i < x.len() && x[i].star {
                next.push((i + 1, j, any, None));
            }
            if j < y.len() && y[j].star {
                next.push((i, j + 1, any, None));
            }
            if i < x.len() && j < y.len() && x[i].class.meets(&y[j].class) {
                let c = common(&x[i].class, &y[j].class);
                next.push((if x[i].star { i } else { i + 1 }, if y[j].star { j } else { j + 1 }, true, Some(c)));
            }
            for (ni, nj, na, c) in next {
                let nk = idx(ni, nj, na);
                if parent[nk].is_none() {
                    parent[nk] = Some((k, c));
                    queue.push_back((ni, nj, na));
                }
            }
        }
        None
    }

    /// The pattern as an anchored `regex` (the crate is the reference matcher here).
    fn to_regex(p: &str) -> regex::Regex {
        let mut out = String::from("(?s)^(?:");
        for e in parse(p).unwrap() {
            match &e.class {
                Class::Any => out.push('.'),
                Class::Ranges(r) if r.is_empty() => out.push_str("[^\\x00-\\x{10FFFF}]"),
                Class::Ranges(r) => {
                    out.push('[');
                    for (lo, hi) in r {
                        out.push_str(&format!("\\x{{{:x}}}-\\x{{{:x}}}", *lo as u32, *hi as u32));
                    }
                    out.push(']');
                }
            }
            if e.star {
                out.push('*');
            }
        }
        out.push_str(")$");
        regex::Regex::new(&out).unwrap()
    }

    /// Random patterns over a small alphabet: the answer agrees with a witness (checked
    /// with the `regex` crate) and, when it is false, no string up to 7 characters matches both.
    #[test]
    fn random_patterns_against_a_reference_matcher() {
        let pieces = ["a", "b", "c", ".", "[ab]", "[b-c]", "[]", "\\."];
        let flags = ["", "", "*", "+"];
        let mut seed: u64 = 0x5eed_1234_abcd;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut words = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..7 {
            let mut next = Vec::new();
            for w in &frontier {
                for c in ['a', 'b', 'c', '.'] {
                    next.push(format!("{w}{c}"));
                }
            }
            words.extend(next.iter().cloned());
            frontier = next;
        }
        let (mut t, mut f) = (0, 0);
        for _ in 0..400 {
            let mut pat = || (0..1 + rnd(3)).map(|_| format!("{}{}", pieces[rnd(pieces.len())], flags[rnd(flags.len())])).collect::<String>();
            let (a, b) = (pat(), pat());
            let got = intersect(&a, &b).unwrap();
            assert_eq!(got, intersect(&b, &a).unwrap(), "symmetry: {a} {b}");
            let (ra, rb) = (to_regex(&a), to_regex(&b));
            if got {
                t += 1;
                let w = witness(&a, &b).expect("a witness");
                assert!(!w.is_empty() && ra.is_match(&w) && rb.is_match(&w), "{a} ∩ {b}: witness {w:?}");
            } else {
                f += 1;
                assert!(witness(&a, &b).is_none());
                let found = words.iter().find(|w| !w.is_empty() && ra.is_match(w) && rb.is_match(w));
                assert!(found.is_none(), "{a} ∩ {b} answered false but both match {found:?}");
            }
        }
        assert!(t > 50 && f > 50, "both answers exercised: {t} true, {f} false");
    }

    #[test]
    fn large_patterns_are_bounded() {
        let big = ".*".repeat(5000);
        let e = intersect(&big, &big).unwrap_err();
        assert!(e.downcast_ref::<LimitExceeded>().is_some(), "{e}");
        let ok = ".*".repeat(500);
        assert!(intersect(&ok, &"a".repeat(500)).unwrap());
    }

    /// Random pattern text (every special character, unbalanced brackets, escapes) is an
    /// answer or an error, never a panic.
    #[test]
    fn random_text_never_panics() {
        let alphabet = ['a', '.', '*', '+', '[', ']', '-', '\\', 'z', 'é'];
        let mut seed: u64 = 42;
        let mut rnd = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let (mut ok, mut err) = (0, 0);
        for _ in 0..5000 {
            let mut p = || (0..rnd(8)).map(|_| alphabet[rnd(alphabet.len())]).collect::<String>();
            let (a, b) = (p(), p());
            match intersect(&a, &b) {
                Ok(_) => ok += 1,
                Err(_) => err += 1,
            }
        }
        assert!(ok > 100 && err > 100, "{ok} answers, {err} errors");
    }
}
