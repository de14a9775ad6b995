//! Load-time bounds on policy text, checked before the text reaches regorus' parser.
//!
//! regorus 0.14's parser tries every `[`/`{` as a comprehension first and, when that fails,
//! parses the same text again as an array, set or object literal (`parse_compr` restores a saved
//! state after parsing the first term). Each nesting level therefore doubles the work: a policy
//! with `x := [[[…]]]` nested 20 deep never finishes loading (cause, measurements and a fix for
//! upstream: docs/regorus-nested-literals.md; regorus 0.14.1 is still the newest release). Until
//! that is fixed upstream, sluice rejects such text up front with an error naming the place, so
//! that a load or a hot reload can never burn a core. The bounds are:
//!
//! - size: at most [`Bounds::max_bytes`] bytes per policy file;
//! - nesting: at most [`Bounds::max_nesting`] brackets (`[`, `{`, counting rule bodies) open at
//!   any point;
//! - parse cost: every bracket nested deeper than [`FREE_DEPTH`] costs `2^(depth - FREE_DEPTH)`
//!   units, and a file may spend at most `4 × brackets + 1024` units, so that parse time stays
//!   linear in the size of the file whatever its shape.

use std::fmt;

/// Brackets up to this depth cost one unit each.
pub const FREE_DEPTH: usize = 4;

/// The limits applied to each policy file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Largest policy file, in bytes.
    pub max_bytes: usize,
    /// Deepest bracket nesting.
    pub max_nesting: usize,
    /// Longest chain of rules referring to each other.
    pub max_rule_chain: usize,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { max_bytes: 1 << 20, max_nesting: 12, max_rule_chain: 200 }
    }
}

/// Why a policy text was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BoundError {
    /// The file is larger than [`Bounds::max_bytes`].
    TooLarge { bytes: usize, limit: usize },
    /// A bracket at `line:col` opens nesting level `depth`, above the limit.
    TooDeep { line: usize, col: usize, limit: usize },
    /// The file's nesting costs more than its size allows.
    TooCostly { line: usize, col: usize, cost: u64, budget: u64 },
}

impl fmt::Display for BoundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BoundError::TooLarge { bytes, limit } => {
                write!(f, "policy is {bytes} bytes, larger than the limit of {limit} bytes")
            }
            BoundError::TooDeep { line, col, limit } => write!(
                f,
                "{line}:{col}: brackets nested more than {limit} deep (array, set, object and \
                 comprehension literals and rule bodies count; the Rego parser's time doubles with \
                 each level, so sluice refuses deeper nesting)"
            ),
            BoundError::TooCostly { line, col, cost, budget } => write!(
                f,
                "{line}:{col}: too many deeply nested literals (parse cost {cost} exceeds {budget}; \
                 each bracket deeper than {FREE_DEPTH} levels doubles the Rego parser's work): \
                 move large literals to data files"
            ),
        }
    }
}

impl std::error::Error for BoundError {}

/// Checks one policy text against `bounds`. Linear in the length of `src`.
pub fn check(src: &str, bounds: Bounds) -> Result<(), BoundError> {
    if src.len() > bounds.max_bytes {
        return Err(BoundError::TooLarge { bytes: src.len(), limit: bounds.max_bytes });
    }
    let b = src.as_bytes();
    let (mut line, mut line_start) = (1usize, 0usize);
    let mut depth = 0usize;
    let mut brackets = 0u64;
    let mut cost = 0u64;
    let mut deepest = (0usize, 1usize, 1usize);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\n' => {
                line += 1;
                line_start = i + 1;
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                i += 1;
                while i < b.len() && b[i] != b'"' && b[i] != b'\n' {
                    if b[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    if b[i] == b'\n' {
                        line += 1;
                        line_start = i + 1;
                    }
                    i += 1;
                }
            }
            b'[' | b'{' => {
                depth += 1;
                brackets += 1;
                let col = src[line_start..i].chars().count() + 1;
                if depth > bounds.max_nesting {
                    return Err(BoundError::TooDeep { line, col, limit: bounds.max_nesting });
                }
                cost += 1u64 << depth.saturating_sub(FREE_DEPTH);
                if depth > deepest.0 {
                    deepest = (depth, line, col);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    let budget = 4 * brackets + 1024;
    if cost > budget {
        let (_, line, col) = deepest;
        return Err(BoundError::TooCostly { line, col, cost, budget });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(d: usize) -> String {
        format!("package p\n\nx := {}1{}\n", "[".repeat(d), "]".repeat(d))
    }

    #[test]
    fn ordinary_policies_pass() {
        let p = "package p\n# [[[[[[[[[[[[[[[[ in a comment\ns := \"{{{{{{{{{{{{{{{{{{\"\nr := `[[[[[[[[[[[[[[[[[[[`\n\
                 allow if { some x in [{\"a\": [1, {2}]}]; x }\n";
        assert_eq!(check(p, Bounds::default()), Ok(()));
        assert_eq!(check(&nested(12), Bounds::default()), Ok(()));
    }

    #[test]
    fn deep_nesting_is_refused_with_its_place() {
        let e = check(&nested(20), Bounds::default()).unwrap_err();
        assert_eq!(e, BoundError::TooDeep { line: 3, col: 18, limit: 12 });
        assert!(e.to_string().starts_with("3:18: brackets nested more than 12 deep"), "{e}");
    }

    #[test]
    fn many_deep_literals_exceed_the_budget() {
        // One 12-deep literal is fine; thirty of them in a small file are not.
        let one = format!("{}1{}", "[".repeat(12), "]".repeat(12));
        let mut p = String::from("package p\n");
        for i in 0..30 {
            p.push_str(&format!("x{i} := {one}\n"));
        }
        assert!(matches!(check(&p, Bounds::default()), Err(BoundError::TooCostly { .. })), "{:?}", check(&p, Bounds::default()));
        // The same literals among plenty of shallow ones are within budget (linear in size).
        let mut big = p.clone();
        for i in 0..30_000 {
            big.push_str(&format!("y{i} := [{i}]\n"));
        }
        assert_eq!(check(&big, Bounds { max_bytes: 4 << 20, ..Bounds::default() }), Ok(()));
    }

    #[test]
    fn size_limit() {
        let e = check(&"#".repeat(100), Bounds { max_bytes: 10, max_nesting: 5, max_rule_chain: 200 }).unwrap_err();
        assert_eq!(e.to_string(), "policy is 100 bytes, larger than the limit of 10 bytes");
    }
}
