//! A small strict DER reader for the X.509 and key builtins: tag-length-value elements with
//! their raw bytes, so that the builtins can return Go's `Raw…` fields byte for byte.
//! Every read is bounds-checked; malformed input is an error, never a panic.

use anyhow::{bail, Result};

/// One DER element.
#[derive(Debug, Clone, Copy)]
pub struct Tlv<'a> {
    /// The identifier octet (class, constructed bit, tag number < 31).
    pub tag: u8,
    /// The contents.
    pub value: &'a [u8],
    /// The whole element: identifier, length and contents.
    pub raw: &'a [u8],
}

pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OCTET_STRING: u8 = 0x04;
pub const NULL: u8 = 0x05;
pub const OID: u8 = 0x06;
pub const BOOLEAN: u8 = 0x01;
pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;

/// Reads one element from the front of `input`; returns it and the rest.
pub fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8])> {
    let Some(&tag) = input.first() else { bail!("asn1: unexpected end of data") };
    if tag & 0x1f == 0x1f {
        bail!("asn1: multi-byte tags are not supported");
    }
    let Some(&l0) = input.get(1) else { bail!("asn1: truncated length") };
    let (len, hdr) = if l0 < 0x80 {
        (l0 as usize, 2)
    } else {
        let n = (l0 & 0x7f) as usize;
        if n == 0 || n > 4 {
            bail!("asn1: unsupported length encoding");
        }
        let Some(bytes) = input.get(2..2 + n) else { bail!("asn1: truncated length") };
        if bytes[0] == 0 {
            bail!("asn1: non-minimal length");
        }
        let len = bytes.iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        if len < 0x80 {
            bail!("asn1: non-minimal length");
        }
        (len, 2 + n)
    };
    let end = hdr.checked_add(len).filter(|e| *e <= input.len());
    let Some(end) = end else { bail!("asn1: data truncated") };
    Ok((Tlv { tag, value: &input[hdr..end], raw: &input[..end] }, &input[end..]))
}

/// Reads one element that must have tag `tag`.
pub fn expect<'a>(input: &'a [u8], tag: u8, what: &str) -> Result<(Tlv<'a>, &'a [u8])> {
    let (t, rest) = read(input)?;
    if t.tag != tag {
        bail!("asn1: structure error: {what}: expected tag {tag:#04x}, found {:#04x}", t.tag);
    }
    Ok((t, rest))
}

/// Every element of a constructed value's contents.
pub fn items(mut input: &[u8]) -> Result<Vec<Tlv<'_>>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let (t, rest) = read(input)?;
        out.push(t);
        input = rest;
    }
    Ok(out)
}

/// The arcs of an OBJECT IDENTIFIER's contents.
pub fn oid(value: &[u8]) -> Result<Vec<u64>> {
    if value.is_empty() {
        bail!("asn1: empty object identifier");
    }
    let mut arcs = Vec::new();
    let mut acc: u64 = 0;
    for (i, b) in value.iter().enumerate() {
        if acc > (u64::MAX >> 7) {
            bail!("asn1: object identifier arc too large");
        }
        acc = (acc << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = (acc / 40).min(2);
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        } else if i == value.len() - 1 {
            bail!("asn1: truncated object identifier");
        }
    }
    Ok(arcs)
}

/// Dotted form of an OID.
pub fn oid_string(arcs: &[u64]) -> String {
    arcs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(".")
}

/// A non-negative INTEGER's magnitude, without leading zero bytes.
pub fn unsigned(value: &[u8]) -> Result<&[u8]> {
    if value.is_empty() {
        bail!("asn1: empty integer");
    }
    if value[0] & 0x80 != 0 {
        bail!("asn1: negative integer where a positive one is required");
    }
    let first = value.iter().position(|b| *b != 0).unwrap_or(value.len());
    Ok(&value[first..])
}

/// A small INTEGER as i64.
pub fn small_int(value: &[u8]) -> Result<i64> {
    if value.is_empty() || value.len() > 8 {
        bail!("asn1: integer too large");
    }
    let mut v: i64 = if value[0] & 0x80 != 0 { -1 } else { 0 };
    for b in value {
        v = (v << 8) | *b as i64;
    }
    Ok(v)
}

/// A BIT STRING's bytes (the unused-bits octet removed) and its number of unused bits.
pub fn bit_string(value: &[u8]) -> Result<(&[u8], u8)> {
    let Some((&unused, bits)) = value.split_first() else { bail!("asn1: empty bit string") };
    if unused > 7 || (bits.is_empty() && unused != 0) {
        bail!("asn1: invalid bit string");
    }
    Ok((bits, unused))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_rejects() {
        let (t, rest) = read(&[0x30, 0x03, 0x02, 0x01, 0x05, 0xff]).unwrap();
        assert_eq!((t.tag, t.value, rest), (0x30, &[0x02, 0x01, 0x05][..], &[0xff][..]));
        assert_eq!(small_int(items(t.value).unwrap()[0].value).unwrap(), 5);
        assert!(read(&[0x30, 0x05, 0x00]).is_err(), "truncated");
        assert!(read(&[0x30, 0x81, 0x05]).is_err(), "non-minimal");
        assert!(read(&[0x30, 0x89, 1, 2, 3, 4, 5, 6, 7, 8, 9]).is_err(), "huge length");
        assert!(read(&[]).is_err());
        assert_eq!(oid(&[0x55, 0x1d, 0x11]).unwrap(), vec![2, 5, 29, 17]);
        assert_eq!(oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b]).unwrap(), vec![1, 2, 840, 113549, 1, 1, 11]);
        assert!(oid(&[0x86]).is_err());
        assert_eq!(small_int(&[0xff]).unwrap(), -1);
        assert_eq!(unsigned(&[0x00, 0x80]).unwrap(), &[0x80]);
    }
}
