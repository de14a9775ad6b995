//! The request parser's differential check, used by the cargo-fuzz target (`crates/proxy/fuzz`)
//! and by a bounded test in the normal suite.
//!
//! [`reference`] is a deliberately plain, line-by-line implementation of the same head syntax
//! (Envoy's leniencies included) with no `httparse` and no offsets. [`check`] runs both on the
//! same bytes and panics when they disagree on accept/reject (and the reply class) or on the
//! parsed fields; it then runs the whole parser ([`parse_request`]) to prove it cannot panic
//! and that what it accepts is consistent with the head.

use super::parse::{is_tchar, parse_request, scan_raw, CodecError, ParseConfig, RawHead, Reject};

/// What the reference finds: a head, "need more bytes", or the class of reply.
#[derive(Debug, PartialEq, Eq)]
pub enum RefResult {
    Head(RawHead),
    Partial,
    Reject(Reject),
}

fn is_value_byte(b: u8) -> bool {
    b == b'\t' || (0x20..0x7f).contains(&b) || b >= 0x80
}

fn trim_ws(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b' ' && *b != b'\t').unwrap_or(v.len());
    let end = v.iter().rposition(|b| *b != b' ' && *b != b'\t').map_or(start, |e| e + 1);
    &v[start..end]
}

/// The head syntax, written plainly.
pub fn reference(buf: &[u8], cfg: &ParseConfig) -> RefResult {
    // Empty lines before the request line.
    let mut at = 0;
    loop {
        if buf[at..].starts_with(b"\r\n") {
            at += 2;
        } else if buf[at..].starts_with(b"\n") {
            at += 1;
        } else if buf[at..] == *b"\r" {
            return RefResult::Partial;
        } else if buf[at..].starts_with(b"\r") {
            return RefResult::Reject(Reject::BadRequest);
        } else {
            break;
        }
    }
    // Split into lines (LF-terminated; the CR before the LF is part of the terminator).
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut end = None;
    let mut pos = at;
    while let Some(nl) = buf[pos..].iter().position(|b| *b == b'\n') {
        let mut line = &buf[pos..pos + nl];
        if line.last() == Some(&b'\r') {
            line = &line[..line.len() - 1];
        }
        pos += nl + 1;
        if line.is_empty() && !lines.is_empty() {
            end = Some(pos);
            break;
        }
        lines.push(line);
    }
    // The request line, once complete.
    let Some(request_line) = lines.first() else {
        return if buf.len() > cfg.max_head_bytes { RefResult::Reject(Reject::TooLarge) } else { RefResult::Partial };
    };
    if request_line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
        return RefResult::Reject(Reject::BadRequest);
    }
    let tokens: Vec<&[u8]> = request_line.split(|b| *b == b' ' || *b == b'\t').filter(|t| !t.is_empty()).collect();
    let (method, target, version) = match tokens.as_slice() {
        [m, t] => (*m, *t, None),
        [m, t, v] => (*m, *t, Some(*v)),
        _ => return RefResult::Reject(Reject::BadRequest),
    };
    if !method.iter().all(|b| is_tchar(*b)) || !target.iter().all(|b| (0x21..0x7f).contains(b)) {
        return RefResult::Reject(Reject::BadRequest);
    }
    let http10 = match version {
        Some(b"HTTP/1.1") => Some(false),
        Some(b"HTTP/1.0") => Some(true),
        None => None,
        Some(v) if v.len() == 8 && v.starts_with(b"HTTP/") && v[5].is_ascii_digit() && v[6] == b'.' && v[7].is_ascii_digit() => None,
        Some(_) => return RefResult::Reject(Reject::BadRequest),
    };
    let Some(end) = end else {
        return if buf.len() > cfg.max_head_bytes { RefResult::Reject(Reject::TooLarge) } else { RefResult::Partial };
    };
    if end > cfg.max_head_bytes {
        return RefResult::Reject(Reject::TooLarge);
    }
    // Field lines: a line starting with whitespace continues the one before.
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in &lines[1..] {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            let Some(last) = fields.last_mut() else {
                return RefResult::Reject(Reject::BadRequest);
            };
            last.extend_from_slice(line);
        } else {
            fields.push(line.to_vec());
        }
    }
    let mut headers = Vec::new();
    for f in &fields {
        let Some(colon) = f.iter().position(|b| *b == b':') else {
            return RefResult::Reject(Reject::BadRequest);
        };
        let (name, value) = (&f[..colon], trim_ws(&f[colon + 1..]));
        if name.is_empty() || !name.iter().all(|b| is_tchar(*b)) || !value.iter().all(|b| is_value_byte(*b)) {
            return RefResult::Reject(Reject::BadRequest);
        }
        headers.push((name.to_vec(), value.to_vec()));
    }
    if headers.len() > cfg.max_headers {
        return RefResult::Reject(Reject::TooManyHeaders);
    }
    RefResult::Head(RawHead { len: end, method: method.to_vec(), target: target.to_vec(), http10, headers })
}

/// Run the codec and the reference on `data`; panic when they disagree.
pub fn check(data: &[u8]) {
    // Small limits so the fuzzer reaches them.
    let cfg = ParseConfig { max_head_bytes: 512, max_headers: 8, ..ParseConfig::default() };
    let ours = scan_raw(data, &cfg);
    let theirs = reference(data, &cfg);
    match (&ours, &theirs) {
        (Ok(Some(a)), RefResult::Head(b)) => assert_eq!(a, b, "parsed fields differ for {:?}", String::from_utf8_lossy(data)),
        (Ok(None), RefResult::Partial) => {}
        (Err(CodecError { reject, .. }), RefResult::Reject(r)) => {
            // The reply (status and body); a head both too long and with too many fields may be
            // named either way.
            assert_eq!((reject.status(), reject.body()), (r.status(), r.body()), "reply class differs for {:?}", String::from_utf8_lossy(data))
        }
        _ => panic!("codec {ours:?} vs reference {theirs:?} for {:?}", String::from_utf8_lossy(data)),
    }
    // The whole parser never panics, and what it accepts is what the head said.
    if let Ok(Some((head, len))) = parse_request(data, &cfg) {
        let Ok(Some(raw)) = ours else { panic!("build accepted what scan did not: {:?}", String::from_utf8_lossy(data)) };
        assert_eq!(len, raw.len);
        assert_eq!(head.request.method().as_str().as_bytes(), &raw.method[..]);
        assert!(head.request.headers().len() <= raw.headers.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heads that exercise every rule; the bounded run mutates them.
    const SEEDS: &[&[u8]] = &[
        b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        b"GET  /\tHTTP/1.1 \r\nHost: x\r\nX-F: a\r\n  b\r\n\t c\r\n\r\n",
        b"\r\n\nGET http://u@x/y HTTP/1.1\nHost: x\n\n",
        b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
        b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\nHost: x\r\nX_Y: 1\r\nExpect: 100-continue\r\n\r\n",
        b"GET /#f HTTP/1.1\r\nHost: a b\r\nConnection: host\r\n\r\n",
    ];

    /// xorshift64: deterministic, no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }
    }

    #[test]
    fn seeds_agree() {
        for s in SEEDS {
            check(s);
            for cut in 0..s.len() {
                check(&s[..cut]);
            }
        }
    }

    #[test]
    fn the_reference_is_not_trivially_equal() {
        let cfg = ParseConfig { max_head_bytes: 512, max_headers: 8, ..ParseConfig::default() };
        assert_eq!(reference(b"GET / HTTP/1.1\r\n", &cfg), RefResult::Partial);
        assert_eq!(reference(b"GET / HTTP/1.1\r\n X: 1\r\n\r\n", &cfg), RefResult::Reject(Reject::BadRequest));
        assert_eq!(reference(b"GET / HTTP/2.0\r\n\r\n", &cfg).clone_head().unwrap().http10, None);
    }

    impl RefResult {
        fn clone_head(&self) -> Option<RawHead> {
            match self {
                RefResult::Head(h) => Some(h.clone()),
                _ => None,
            }
        }
    }

    /// The fuzz target's check, bounded: 30,000 mutated heads.
    #[test]
    fn bounded_differential_fuzz() {
        const TOKENS: &[&[u8]] = &[b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"\x00", b"\x7f", b"\x80", b"#", b"_", b"HTTP/1.", b"Host: ", b"\r\n ", b"0", b","];
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for i in 0..30_000 {
            let mut data = SEEDS[i % SEEDS.len()].to_vec();
            for _ in 0..=rng.below(4) {
                let at = rng.below(data.len() + 1);
                match rng.below(4) {
                    0 if !data.is_empty() => {
                        let at = at.min(data.len() - 1);
                        data[at] = rng.next() as u8;
                    }
                    1 if !data.is_empty() => {
                        let at = at.min(data.len() - 1);
                        data.remove(at);
                    }
                    2 => {
                        let t = TOKENS[rng.below(TOKENS.len())];
                        data.splice(at..at, t.iter().copied());
                    }
                    _ => data.truncate(at),
                }
            }
            check(&data);
        }
    }
}
