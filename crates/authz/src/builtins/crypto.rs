//! `crypto.*` hashes and HMACs (hex-encoded, as OPA).

use anyhow::Result;
use hmac::{KeyInit, Mac};
use regorus::Value;
use sha2::Digest;

use super::args::string;
use super::Def;

pub(crate) fn defs(v: &mut Vec<Def>) {
    v.push(Def { name: "crypto.md5", arity: 1, f: |a| hash::<md5::Md5>(a, "crypto.md5") });
    v.push(Def { name: "crypto.sha1", arity: 1, f: |a| hash::<sha1::Sha1>(a, "crypto.sha1") });
    v.push(Def { name: "crypto.sha256", arity: 1, f: |a| hash::<sha2::Sha256>(a, "crypto.sha256") });
    v.push(Def { name: "crypto.hmac.md5", arity: 2, f: |a| mac::<md5::Md5>(a, "crypto.hmac.md5") });
    v.push(Def { name: "crypto.hmac.sha1", arity: 2, f: |a| mac::<sha1::Sha1>(a, "crypto.hmac.sha1") });
    v.push(Def { name: "crypto.hmac.sha256", arity: 2, f: |a| mac::<sha2::Sha256>(a, "crypto.hmac.sha256") });
    v.push(Def { name: "crypto.hmac.sha512", arity: 2, f: |a| mac::<sha2::Sha512>(a, "crypto.hmac.sha512") });
    v.push(Def { name: "crypto.hmac.equal", arity: 2, f: hmac_equal });
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hash<D: Digest>(a: &[Value], name: &str) -> Result<Value> {
    let s = string(a, 0, name)?;
    Ok(Value::from(hex(&D::digest(s.as_bytes()))))
}

fn mac<D>(a: &[Value], name: &str) -> Result<Value>
where
    hmac::Hmac<D>: KeyInit + Mac,
    D: hmac::digest::block_api::EagerHash,
{
    let msg = string(a, 0, name)?;
    let key = string(a, 1, name)?;
    let mut m = <hmac::Hmac<D> as KeyInit>::new_from_slice(key.as_bytes()).map_err(|e| anyhow::anyhow!("{e}"))?;
    m.update(msg.as_bytes());
    Ok(Value::from(hex(&m.finalize().into_bytes())))
}

/// Constant-time comparison of two MACs.
fn hmac_equal(a: &[Value]) -> Result<Value> {
    let x = string(a, 0, "crypto.hmac.equal")?.as_bytes();
    let y = string(a, 1, "crypto.hmac.equal")?.as_bytes();
    let mut diff = (x.len() != y.len()) as u8;
    for (p, q) in x.iter().zip(y.iter()) {
        diff |= p ^ q;
    }
    Ok(Value::Bool(diff == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_opa() {
        let s = |x: &str| Value::from(x);
        assert_eq!(hash::<md5::Md5>(&[s("abc")], "m").unwrap(), s("900150983cd24fb0d6963f7d28e17f72"));
        assert_eq!(hash::<sha1::Sha1>(&[s("abc")], "m").unwrap(), s("a9993e364706816aba3e25717850c26c9cd0d89d"));
        assert_eq!(
            mac::<sha2::Sha256>(&[s("msg"), s("key")], "m").unwrap(),
            s("2d93cbc1be167bcb1637a4a23cbff01a7878f0c50ee833954ea5221bb1b8c628")
        );
        assert_eq!(mac::<md5::Md5>(&[s("msg"), s("key")], "m").unwrap(), s("18e3548c59ad40dd03907b7aeee71d67"));
        assert_eq!(hmac_equal(&[s("a"), s("a")]).unwrap(), Value::Bool(true));
        assert_eq!(hmac_equal(&[s("a"), s("ab")]).unwrap(), Value::Bool(false));
    }
}
