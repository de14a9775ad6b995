//! Time formats of `%START_TIME(…)%` and friends, as Envoy formats them (always UTC).
//!
//! Envoy first cuts the format at its own sub-second specifiers — `%f` (nanoseconds, 9 digits),
//! `%1f` … `%9f` (that many digits, truncated) and `%s` (seconds since the epoch) — scanning
//! naively (a `%%f` still contains a `%f`), then formats each remaining piece like
//! `absl::FormatTime`: absl's extensions `%Ez`, `%E*z`, `%E<n>S`, `%E*S`, `%E<n>f`, `%E*f`,
//! `%E4Y`, and glibc's `strftime` (C locale, with its `_`, `-`, `0`, `^` flags and widths) for
//! everything else; an unknown conversion is copied as written. Without a format (or with an
//! empty one) the time is `2024-01-31T12:34:56.789Z`.
//!
//! Everything is parsed once, at config load.

use std::time::{SystemTime, UNIX_EPOCH};

/// A compiled time format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeFormat {
    segments: Box<[Segment]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// A piece formatted like `absl::FormatTime`.
    Items(Box<[Item]>),
    /// `%s`.
    EpochSeconds,
    /// `%f` (9) or `%<n>f`.
    Fraction(u8),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Literal(Box<str>),
    Conv(Conv),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Conv {
    /// `_`, `-`, `0`, `^` or none.
    flag: Option<u8>,
    width: Option<u8>,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A glibc conversion character.
    Char(u8),
    /// `%Ez` (`+00:00`) and `%E*z` (`+00:00:00`).
    OffsetColon { seconds: bool },
    /// `%E<n>S` / `%E*S` (`None`): seconds with a fraction.
    SecondsFraction(Option<u8>),
    /// `%E<n>f` / `%E*f` (`None`): the fraction alone.
    FractionOnly(Option<u8>),
    /// `%E4Y`.
    Year4,
}

/// Envoy's default: `%Y-%m-%dT%H:%M:%E3SZ`.
pub const DEFAULT_FORMAT: &str = "%Y-%m-%dT%H:%M:%E3SZ";

impl TimeFormat {
    /// Compile a format; the empty format is Envoy's default.
    pub fn parse(format: &str) -> TimeFormat {
        let format = if format.is_empty() { DEFAULT_FORMAT } else { format };
        let bytes = format.as_bytes();
        let mut segments = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                i += 1;
                continue;
            }
            let special = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(b's'), _) => Some((Segment::EpochSeconds, 2)),
                (Some(b'f'), _) => Some((Segment::Fraction(9), 2)),
                (Some(d @ b'1'..=b'9'), Some(b'f')) => Some((Segment::Fraction(d - b'0'), 3)),
                _ => None,
            };
            match special {
                Some((seg, len)) => {
                    if start < i {
                        segments.push(Segment::Items(parse_items(&format[start..i])));
                    }
                    segments.push(seg);
                    i += len;
                    start = i;
                }
                None => i += 1,
            }
        }
        if start < bytes.len() {
            segments.push(Segment::Items(parse_items(&format[start..])));
        }
        TimeFormat { segments: segments.into_boxed_slice() }
    }

    /// Append `time` formatted.
    pub fn write(&self, time: SystemTime, out: &mut Vec<u8>) {
        let t = Parts::new(time);
        for seg in self.segments.iter() {
            match seg {
                Segment::EpochSeconds => push_int(out, t.secs),
                Segment::Fraction(n) => push_fraction(out, t.nanos, *n),
                Segment::Items(items) => {
                    for item in items.iter() {
                        match item {
                            Item::Literal(s) => out.extend_from_slice(s.as_bytes()),
                            Item::Conv(c) => write_conv(out, *c, &t),
                        }
                    }
                }
            }
        }
    }

    pub fn format(&self, time: SystemTime) -> String {
        let mut out = Vec::with_capacity(32);
        self.write(time, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn parse_items(s: &str) -> Box<[Item]> {
    let b = s.as_bytes();
    let mut items = Vec::new();
    let mut lit = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            // Copy a run of literal bytes (keeps UTF-8 intact).
            let next = s[i..].find('%').map_or(s.len(), |p| i + p);
            lit.push_str(&s[i..next]);
            i = next;
            continue;
        }
        match parse_conv(&b[i + 1..]) {
            Some((conv, used)) => {
                if !lit.is_empty() {
                    items.push(Item::Literal(std::mem::take(&mut lit).into_boxed_str()));
                }
                items.push(Item::Conv(conv));
                i += 1 + used;
            }
            None => {
                // An unknown conversion (or a lone `%` at the end) is copied as written.
                let end = (i + 2).min(b.len());
                let end = (end..=b.len()).find(|e| s.is_char_boundary(*e)).unwrap_or(b.len());
                lit.push_str(&s[i..end]);
                i = end;
            }
        }
    }
    if !lit.is_empty() {
        items.push(Item::Literal(lit.into_boxed_str()));
    }
    items.into_boxed_slice()
}

/// A conversion after its `%`: the conversion and the bytes it used.
fn parse_conv(b: &[u8]) -> Option<(Conv, usize)> {
    // absl's extensions first.
    if b.first() == Some(&b'E') {
        match (b.get(1), b.get(2)) {
            (Some(b'z'), _) => return Some((Conv { flag: None, width: None, kind: Kind::OffsetColon { seconds: false } }, 2)),
            (Some(b'*'), Some(b'z')) => return Some((Conv { flag: None, width: None, kind: Kind::OffsetColon { seconds: true } }, 3)),
            (Some(b'*'), Some(b'S')) => return Some((Conv { flag: None, width: None, kind: Kind::SecondsFraction(None) }, 3)),
            (Some(b'*'), Some(b'f')) => return Some((Conv { flag: None, width: None, kind: Kind::FractionOnly(None) }, 3)),
            (Some(b'4'), Some(b'Y')) => return Some((Conv { flag: None, width: None, kind: Kind::Year4 }, 3)),
            (Some(d), _) if d.is_ascii_digit() => {
                let digits = b[1..].iter().take_while(|c| c.is_ascii_digit()).count();
                let n: usize = std::str::from_utf8(&b[1..1 + digits]).ok()?.parse().ok()?;
                let n = n.min(15) as u8;
                match b.get(1 + digits) {
                    Some(b'S') => return Some((Conv { flag: None, width: None, kind: Kind::SecondsFraction(Some(n)) }, 2 + digits)),
                    Some(b'f') => return Some((Conv { flag: None, width: None, kind: Kind::FractionOnly(Some(n)) }, 2 + digits)),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    // glibc: flags, width, an E/O modifier, the conversion.
    let mut i = 0;
    let mut flag = None;
    while let Some(&c) = b.get(i) {
        if matches!(c, b'_' | b'-' | b'0' | b'^' | b'#') {
            flag = Some(c);
            i += 1;
        } else {
            break;
        }
    }
    let wstart = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let width = if i > wstart {
        Some(std::str::from_utf8(&b[wstart..i]).ok()?.parse::<usize>().ok()?.min(64) as u8)
    } else {
        None
    };
    if matches!(b.get(i), Some(b'E' | b'O')) {
        i += 1;
    }
    let c = *b.get(i)?;
    const KNOWN: &[u8] = b"aAbBcCdDeFgGhHIjklmMnpPrRStTuUVwWxXyYzZ%";
    if !KNOWN.contains(&c) {
        return None;
    }
    Some((Conv { flag, width, kind: Kind::Char(c) }, i + 1))
}

/// The broken-down UTC time.
struct Parts {
    secs: i64,
    nanos: u32,
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    /// 0 = Sunday.
    weekday: u32,
    /// 0-based day of the year.
    yday: u32,
}

impl Parts {
    fn new(time: SystemTime) -> Parts {
        let (secs, nanos) = match time.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let (s, n) = (d.as_secs() as i64, d.subsec_nanos());
                if n == 0 {
                    (-s, 0)
                } else {
                    (-s - 1, 1_000_000_000 - n)
                }
            }
        };
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        let yday = (days - days_from_civil(year, 1, 1)) as u32;
        Parts {
            secs,
            nanos,
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem / 60 % 60,
            second: rem % 60,
            weekday: (days + 4).rem_euclid(7) as u32,
            yday,
        }
    }

    /// ISO 8601 week-based year and week number.
    fn iso_week(&self) -> (i64, u32) {
        let wday = ((self.weekday + 6) % 7) as i64; // Monday = 0
        let week = (self.yday as i64 - wday + 10).div_euclid(7);
        if week < 1 {
            (self.year - 1, weeks_in_year(self.year - 1))
        } else if week > weeks_in_year(self.year) as i64 {
            (self.year + 1, 1)
        } else {
            (self.year, week as u32)
        }
    }
}

/// 52 or 53 ISO weeks.
fn weeks_in_year(y: i64) -> u32 {
    let p = |y: i64| (y + y.div_euclid(4) - y.div_euclid(100) + y.div_euclid(400)).rem_euclid(7);
    if p(y) == 4 || p(y - 1) == 3 {
        53
    } else {
        52
    }
}

/// Howard Hinnant's `civil_from_days`: days since 1970-01-01 → (year, month, day).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 } as i64;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
const MONTHS: [&str; 12] = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December",
];

fn push_int(out: &mut Vec<u8>, v: i64) {
    let mut buf = itoa_buf(v);
    out.append(&mut buf);
}

fn itoa_buf(v: i64) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn push_fraction(out: &mut Vec<u8>, nanos: u32, digits: u8) {
    let s = format!("{nanos:09}");
    out.extend_from_slice(&s.as_bytes()[..digits.min(9) as usize]);
}

/// A number with glibc's padding rules: `default_pad` is `b'0'` or `b' '`, `width` the default width.
fn push_num(out: &mut Vec<u8>, v: i64, width: usize, default_pad: u8, c: Conv) {
    let digits = v.unsigned_abs().to_string();
    let width = c.width.map_or(width, usize::from);
    let pad = match c.flag {
        Some(b'-') => None,
        Some(b'_') => Some(b' '),
        Some(b'0') => Some(b'0'),
        _ => Some(default_pad),
    };
    let len = digits.len() + usize::from(v < 0);
    if v < 0 && pad == Some(b'0') {
        out.push(b'-');
    }
    if let Some(p) = pad {
        for _ in len..width {
            out.push(p);
        }
    }
    if v < 0 && pad != Some(b'0') {
        out.push(b'-');
    }
    out.extend_from_slice(digits.as_bytes());
}

fn push_text(out: &mut Vec<u8>, s: &str, c: Conv) {
    let width = c.width.map(usize::from).unwrap_or(0);
    let pad = if c.flag == Some(b'0') { b'0' } else { b' ' };
    for _ in s.len()..width {
        out.push(pad);
    }
    match c.flag {
        Some(b'^') => out.extend(s.bytes().map(|b| b.to_ascii_uppercase())),
        Some(b'#') => out.extend(s.bytes().map(|b| if b.is_ascii_lowercase() { b.to_ascii_uppercase() } else { b.to_ascii_lowercase() })),
        _ => out.extend_from_slice(s.as_bytes()),
    }
}

fn write_conv(out: &mut Vec<u8>, c: Conv, t: &Parts) {
    let plain = Conv { flag: None, width: None, kind: Kind::Char(b'%') };
    let hour12 = match t.hour % 12 {
        0 => 12,
        h => h as i64,
    };
    let k = match c.kind {
        Kind::OffsetColon { seconds } => {
            out.extend_from_slice(if seconds { b"+00:00:00" } else { b"+00:00" });
            return;
        }
        Kind::SecondsFraction(n) => {
            push_num(out, t.second as i64, 2, b'0', plain);
            match n {
                Some(0) => {}
                Some(n) => {
                    out.push(b'.');
                    let s = format!("{:09}", t.nanos);
                    let n = n as usize;
                    if n <= 9 {
                        out.extend_from_slice(&s.as_bytes()[..n]);
                    } else {
                        out.extend_from_slice(s.as_bytes());
                        out.extend(std::iter::repeat_n(b'0', n - 9));
                    }
                }
                None => {
                    if t.nanos != 0 {
                        out.push(b'.');
                        let s = format!("{:09}", t.nanos);
                        out.extend_from_slice(s.trim_end_matches('0').as_bytes());
                    }
                }
            }
            return;
        }
        Kind::FractionOnly(n) => {
            let s = format!("{:09}", t.nanos);
            match n {
                Some(n) if n as usize <= 9 => out.extend_from_slice(&s.as_bytes()[..n as usize]),
                Some(n) => {
                    out.extend_from_slice(s.as_bytes());
                    out.extend(std::iter::repeat_n(b'0', n as usize - 9));
                }
                None => {
                    let trimmed = s.trim_end_matches('0');
                    out.extend_from_slice(if trimmed.is_empty() { b"0" } else { trimmed.as_bytes() });
                }
            }
            return;
        }
        Kind::Year4 => {
            push_num(out, t.year, if t.year < 0 { 5 } else { 4 }, b'0', plain);
            return;
        }
        Kind::Char(k) => k,
    };
    match k {
        b'a' => push_text(out, &DAYS[t.weekday as usize][..3], c),
        b'A' => push_text(out, DAYS[t.weekday as usize], c),
        b'b' | b'h' => push_text(out, &MONTHS[t.month as usize - 1][..3], c),
        b'B' => push_text(out, MONTHS[t.month as usize - 1], c),
        b'c' => {
            let mut s = Vec::new();
            push_text(&mut s, &DAYS[t.weekday as usize][..3], plain);
            s.push(b' ');
            push_text(&mut s, &MONTHS[t.month as usize - 1][..3], plain);
            s.push(b' ');
            push_num(&mut s, t.day as i64, 2, b' ', plain);
            s.push(b' ');
            hms(&mut s, t);
            s.push(b' ');
            push_num(&mut s, t.year, 1, b'0', plain);
            push_text(out, &String::from_utf8_lossy(&s), c);
        }
        b'C' => push_num(out, t.year.div_euclid(100), 2, b'0', c),
        b'd' => push_num(out, t.day as i64, 2, b'0', c),
        b'D' | b'x' => {
            let mut s = Vec::new();
            push_num(&mut s, t.month as i64, 2, b'0', plain);
            s.push(b'/');
            push_num(&mut s, t.day as i64, 2, b'0', plain);
            s.push(b'/');
            push_num(&mut s, t.year.rem_euclid(100), 2, b'0', plain);
            push_text(out, &String::from_utf8_lossy(&s), c);
        }
        b'e' => push_num(out, t.day as i64, 2, b' ', c),
        b'F' => {
            let mut s = Vec::new();
            push_num(&mut s, t.year, 1, b'0', plain);
            s.push(b'-');
            push_num(&mut s, t.month as i64, 2, b'0', plain);
            s.push(b'-');
            push_num(&mut s, t.day as i64, 2, b'0', plain);
            push_text(out, &String::from_utf8_lossy(&s), c);
        }
        b'g' => push_num(out, t.iso_week().0.rem_euclid(100), 2, b'0', c),
        b'G' => push_num(out, t.iso_week().0, 1, b'0', c),
        b'H' => push_num(out, t.hour as i64, 2, b'0', c),
        b'I' => push_num(out, hour12, 2, b'0', c),
        b'j' => push_num(out, t.yday as i64 + 1, 3, b'0', c),
        b'k' => push_num(out, t.hour as i64, 2, b' ', c),
        b'l' => push_num(out, hour12, 2, b' ', c),
        b'm' => push_num(out, t.month as i64, 2, b'0', c),
        b'M' => push_num(out, t.minute as i64, 2, b'0', c),
        b'n' => out.push(b'\n'),
        b'p' => push_text(out, if t.hour < 12 { "AM" } else { "PM" }, c),
        b'P' => push_text(out, if t.hour < 12 { "am" } else { "pm" }, c),
        b'r' => {
            let mut s = Vec::new();
            push_num(&mut s, hour12, 2, b'0', plain);
            s.push(b':');
            push_num(&mut s, t.minute as i64, 2, b'0', plain);
            s.push(b':');
            push_num(&mut s, t.second as i64, 2, b'0', plain);
            s.extend_from_slice(if t.hour < 12 { b" AM" } else { b" PM" });
            push_text(out, &String::from_utf8_lossy(&s), c);
        }
        b'R' => {
            let mut s = Vec::new();
            push_num(&mut s, t.hour as i64, 2, b'0', plain);
            s.push(b':');
            push_num(&mut s, t.minute as i64, 2, b'0', plain);
            push_text(out, &String::from_utf8_lossy(&s), c);
        }
        b'S' => push_num(out, t.second as i64, 2, b'0', c),
        b't' => out.push(b'\t'),
        b'T' | b'X' => {
            let mut s = Vec::new();
            hms(&mut s, t);
            push_text(out, &String::from_utf8_lossy(&s), c);
        }
        b'u' => push_num(out, if t.weekday == 0 { 7 } else { t.weekday } as i64, 1, b'0', c),
        b'U' => push_num(out, ((t.yday + 7 - t.weekday) / 7) as i64, 2, b'0', c),
        b'V' => push_num(out, t.iso_week().1 as i64, 2, b'0', c),
        b'w' => push_num(out, t.weekday as i64, 1, b'0', c),
        b'W' => push_num(out, ((t.yday + 7 - (t.weekday + 6) % 7) / 7) as i64, 2, b'0', c),
        b'y' => push_num(out, t.year.rem_euclid(100), 2, b'0', c),
        b'Y' => push_num(out, t.year, 1, b'0', c),
        b'z' => push_text(out, "+0000", c),
        b'Z' => push_text(out, "UTC", c),
        _ => out.push(b'%'),
    }
}

fn hms(s: &mut Vec<u8>, t: &Parts) {
    let plain = Conv { flag: None, width: None, kind: Kind::Char(b'%') };
    push_num(s, t.hour as i64, 2, b'0', plain);
    s.push(b':');
    push_num(s, t.minute as i64, 2, b'0', plain);
    s.push(b':');
    push_num(s, t.second as i64, 2, b'0', plain);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// 2026-12-01T15:42:31.633381000Z, a Tuesday.
    fn t() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_796_139_751, 633_381_000)
    }

    fn f(fmt: &str) -> String {
        TimeFormat::parse(fmt).format(t())
    }

    #[test]
    fn default_is_milliseconds_utc() {
        assert_eq!(f(""), "2026-12-01T15:42:31.633Z");
        assert_eq!(f(DEFAULT_FORMAT), "2026-12-01T15:42:31.633Z");
    }

    #[test]
    fn envoy_specifiers() {
        assert_eq!(f("%s|%f|%1f|%6f|%9f"), "1796139751|633381000|6|633381|633381000");
        assert_eq!(f("%s%3f"), "1796139751633");
        assert_eq!(f("%f%f%s"), "6333810006333810001796139751");
        // Envoy's scan is naive: `%%f` still holds a `%f`.
        assert_eq!(f("%ss%%f"), "1796139751s%633381000");
    }

    #[test]
    fn strftime_conversions_match_glibc_and_absl() {
        assert_eq!(
            f("%Y-%m-%dT%H:%M:%S.%3f %z %Z %a %A %b %B %e %j"),
            "2026-12-01T15:42:31.633 +0000 UTC Tue Tuesday Dec December  1 335"
        );
        assert_eq!(
            f("%T|%F|%D|%p|%I|%y|%u|%w|%C|%G|%g|%V|%U|%W|%h|%c|%x|%X|%R|%r|%k|%l|%%|%E3S|%Ez|%Q|%q|%4Y|%-d|%_m|%0e"),
            "15:42:31|2026-12-01|12/01/26|PM|03|26|2|2|20|2026|26|49|48|48|Dec|Tue Dec  1 15:42:31 2026|12/01/26|15:42:31|15:42|03:42:31 PM|15| 3|%|31.633|+00:00|%Q|%q|2026|1|12|01"
        );
        assert_eq!(f("%E*S %E6f %E*f %E*z %^a %E4Y"), "31.633381 633381 633381 +00:00:00 TUE 2026");
        assert_eq!(f("100%"), "100%");
    }

    #[test]
    fn calendar_edges() {
        let at = |s: i64| TimeFormat::parse("%F %a %j %G-W%V-%u %U %W").format(UNIX_EPOCH + Duration::from_secs(s as u64));
        assert_eq!(at(0), "1970-01-01 Thu 001 1970-W01-4 00 00");
        // 2021-01-01 is a Friday in ISO week 2020-W53.
        assert_eq!(at(1_609_459_200), "2021-01-01 Fri 001 2020-W53-5 00 00");
        // 2024-12-30 (Monday) is in ISO week 2025-W01.
        assert_eq!(at(1_735_516_800), "2024-12-30 Mon 365 2025-W01-1 52 53");
        // 2000-02-29, a leap day.
        assert_eq!(at(951_782_400), "2000-02-29 Tue 060 2000-W09-2 09 09");
        let before = UNIX_EPOCH - Duration::from_millis(1500);
        assert_eq!(TimeFormat::parse("").format(before), "1969-12-31T23:59:58.500Z");
    }
}
