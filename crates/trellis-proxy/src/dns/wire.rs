//! The DNS message format (RFC 1035) for what the resolver needs: an A or AAAA query with
//! recursion desired, and the addresses and smallest TTL of the answer section. Answers from
//! the network are untrusted: every read is bounds-checked, names are skipped (a compression
//! pointer ends one) within a bounded number of labels, and anything malformed is an error,
//! never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

/// Record type A.
pub const TYPE_A: u16 = 1;
/// Record type AAAA.
pub const TYPE_AAAA: u16 = 28;
const TYPE_CNAME: u16 = 5;
const CLASS_IN: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const RCODE_NXDOMAIN: u16 = 3;
/// Labels in one name (a name of 255 bytes has at most 127).
const MAX_LABELS: usize = 128;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("{0:?} is not a valid DNS name")]
    BadName(String),
    #[error("answer is malformed: {0}")]
    Malformed(&'static str),
    #[error("answer id {got} does not match query id {want}")]
    WrongId { got: u16, want: u16 },
    #[error("server answered rcode {0} (2 = server failure, 5 = refused)")]
    Rcode(u16),
}

/// What one answer says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Addresses of the queried type, in answer order (CNAME targets' included).
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL of those records (`None` when there are none).
    pub ttl: Option<Duration>,
    /// The TC bit: the answer did not fit; ask again over TCP.
    pub truncated: bool,
}

/// An `IN` query for `name` of type `qtype` with id `id`.
pub fn query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, WireError> {
    let name = name.trim_end_matches('.');
    let bad = || WireError::BadName(name.to_string());
    if name.is_empty() || name.len() > 253 {
        return Err(bad());
    }
    let mut out = Vec::with_capacity(18 + name.len());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&FLAG_RD.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        let len = u8::try_from(label.len()).map_err(|_| bad())?;
        if len == 0 || len > 63 {
            return Err(bad());
        }
        out.push(len);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(out)
}

/// The addresses of type `qtype` in the answer to query `id`. NXDOMAIN is an empty answer;
/// other error codes are errors.
pub fn parse(msg: &[u8], id: u16, qtype: u16) -> Result<Answer, WireError> {
    let mut r = Reader { msg, pos: 0 };
    let got = r.u16()?;
    if got != id {
        return Err(WireError::WrongId { got, want: id });
    }
    let flags = r.u16()?;
    if flags & FLAG_QR == 0 {
        return Err(WireError::Malformed("not a response"));
    }
    let truncated = flags & FLAG_TC != 0;
    let rcode = flags & 0x000f;
    let (qd, an) = (r.u16()?, r.u16()?);
    r.skip(4)?; // authority and additional counts
    let empty = Answer {
        addrs: Vec::new(),
        ttl: None,
        truncated,
    };
    if rcode == RCODE_NXDOMAIN {
        return Ok(empty);
    }
    if rcode != 0 {
        return Err(WireError::Rcode(rcode));
    }
    if truncated {
        return Ok(empty);
    }
    for _ in 0..qd {
        r.skip_name()?;
        r.skip(4)?;
    }
    let mut answer = empty;
    for _ in 0..an {
        r.skip_name()?;
        let (rtype, class) = (r.u16()?, r.u16()?);
        let ttl = r.u32()?;
        let len = usize::from(r.u16()?);
        let data = r.take(len)?;
        if class != CLASS_IN || rtype == TYPE_CNAME || rtype != qtype {
            continue;
        }
        let ip = match (rtype, data.len()) {
            (TYPE_A, 4) => IpAddr::V4(Ipv4Addr::new(data[0], data[1], data[2], data[3])),
            (TYPE_AAAA, 16) => {
                let mut b = [0u8; 16];
                b.copy_from_slice(data);
                IpAddr::V6(Ipv6Addr::from(b))
            }
            _ => return Err(WireError::Malformed("address record of the wrong length")),
        };
        answer.addrs.push(ip);
        let ttl = Duration::from_secs(u64::from(ttl));
        answer.ttl = Some(answer.ttl.map_or(ttl, |t| t.min(ttl)));
    }
    Ok(answer)
}

struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.msg.len());
        let end = end.ok_or(WireError::Malformed("ends early"))?;
        let out = &self.msg[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn skip(&mut self, n: usize) -> Result<(), WireError> {
        self.take(n).map(|_| ())
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Skips a (possibly compressed) name at the cursor; a pointer ends it.
    fn skip_name(&mut self) -> Result<(), WireError> {
        for _ in 0..=MAX_LABELS {
            let len = self.take(1)?[0];
            match len {
                0 => return Ok(()),
                l if l & 0xc0 == 0xc0 => return self.skip(1),
                l if l & 0xc0 == 0 => self.skip(usize::from(l))?,
                _ => return Err(WireError::Malformed("unknown label type")),
            }
        }
        Err(WireError::Malformed("name too long"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer to `q` with `records` as (type, ttl, rdata), the owner a pointer to the question.
    fn answer(q: &[u8], rcode: u16, tc: bool, records: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        let mut m = q.to_vec();
        let flags = FLAG_QR | FLAG_RD | 0x0080 | rcode | if tc { FLAG_TC } else { 0 };
        m[2..4].copy_from_slice(&flags.to_be_bytes());
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (t, ttl, data) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&CLASS_IN.to_be_bytes());
            m.extend_from_slice(&ttl.to_be_bytes());
            m.extend_from_slice(&(data.len() as u16).to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    #[test]
    fn a_query_round_trips_through_an_answer() {
        let q = query(0x1234, "api.example.test.", TYPE_A).expect("query");
        assert_eq!(&q[12..16], b"\x03api");
        let cname = b"\x03foo\xc0\x10".to_vec();
        let m = answer(
            &q,
            0,
            false,
            &[
                (TYPE_CNAME, 300, cname),
                (TYPE_A, 30, vec![127, 0, 0, 11]),
                (TYPE_A, 5, vec![127, 0, 0, 12]),
            ],
        );
        let a = parse(&m, 0x1234, TYPE_A).expect("parses");
        assert_eq!(
            a.addrs,
            vec![IpAddr::from([127, 0, 0, 11]), IpAddr::from([127, 0, 0, 12])]
        );
        assert_eq!(a.ttl, Some(Duration::from_secs(5)));
        assert!(!a.truncated);
    }

    #[test]
    fn nxdomain_is_empty_truncation_is_flagged_and_junk_is_an_error() {
        let q = query(7, "gone.test", TYPE_AAAA).expect("query");
        let nx = parse(&answer(&q, 3, false, &[]), 7, TYPE_AAAA).expect("nx");
        assert!(nx.addrs.is_empty());
        assert!(
            parse(&answer(&q, 0, true, &[]), 7, TYPE_AAAA)
                .expect("tc")
                .truncated
        );
        assert_eq!(
            parse(&answer(&q, 2, false, &[]), 7, TYPE_AAAA),
            Err(WireError::Rcode(2))
        );
        assert!(matches!(
            parse(&answer(&q, 0, false, &[]), 8, TYPE_AAAA),
            Err(WireError::WrongId { .. })
        ));
        let short = answer(&q, 0, false, &[(TYPE_AAAA, 1, vec![1, 2, 3])]);
        assert!(parse(&short, 7, TYPE_AAAA).is_err());
        for cut in 0..short.len() {
            let _ = parse(&short[..cut], 7, TYPE_AAAA);
        }
        // Corrupted answers (a fixed pseudo-random sequence of byte flips) never panic.
        let good = answer(
            &q,
            0,
            false,
            &[(TYPE_AAAA, 9, vec![0; 16]), (TYPE_A, 9, vec![1; 4])],
        );
        let mut seed: u32 = 0x2545_f491;
        for _ in 0..5_000 {
            let mut m = good.clone();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let i = (seed >> 8) as usize % m.len();
                m[i] = (seed >> 24) as u8;
            }
            let _ = parse(&m, 7, TYPE_AAAA);
        }
        assert!(query(1, "a..b", TYPE_A).is_err());
        assert!(query(1, &"x".repeat(64), TYPE_A).is_err());
    }
}
