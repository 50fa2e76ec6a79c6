//! RESP2, the Redis wire format: commands as arrays of bulk strings, replies parsed from a
//! buffer that may hold less than one reply (then `Ok(None)`: read more). Strict: anything
//! malformed is an error, never a guess. Sockets are not its business.

/// Deepest nesting of arrays accepted (`CLUSTER SLOTS` needs 3).
const MAX_DEPTH: usize = 8;
/// Largest bulk string or array length accepted.
const MAX_LEN: i64 = 1 << 20;

/// A command: its arguments, the first being its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    args: Vec<Vec<u8>>,
}

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    /// `None`: the null bulk string (e.g. `GET` of a missing key).
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

impl Command {
    pub fn new(name: &str) -> Command {
        Command {
            args: vec![name.as_bytes().to_vec()],
        }
    }

    pub fn arg(mut self, arg: impl AsRef<[u8]>) -> Command {
        self.args.push(arg.as_ref().to_vec());
        self
    }

    /// `*<n>\r\n` then `$<len>\r\n<bytes>\r\n` per argument.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(format!("*{}\r\n", self.args.len()).as_bytes());
        for arg in &self.args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl Reply {
    /// The integer of an `:n` reply, or of a bulk string holding digits (`GET` of a counter).
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Reply::Integer(n) => Some(*n),
            Reply::Bulk(Some(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// Parses one reply from the start of `buf`: the reply and the bytes it used, `None` when
/// `buf` holds only part of it, or what is wrong.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut pos = 0;
    match parse_at(buf, &mut pos, 0)? {
        Some(reply) => Ok(Some((reply, pos))),
        None => Ok(None),
    }
}

fn parse_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Reply>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("reply nested deeper than {MAX_DEPTH} arrays"));
    }
    let Some(line) = line(buf, *pos)? else {
        return Ok(None);
    };
    let (kind, text) = (line[0], &line[1..]);
    let text = std::str::from_utf8(text).map_err(|_| "reply line is not UTF-8".to_owned())?;
    let after_line = *pos + line.len() + 2;
    let reply = match kind {
        b'+' => Reply::Status(text.to_owned()),
        b'-' => Reply::Error(text.to_owned()),
        b':' => Reply::Integer(number(text)?),
        b'$' => {
            let len = length(text)?;
            let Some(len) = len else {
                *pos = after_line;
                return Ok(Some(Reply::Bulk(None)));
            };
            let end = after_line + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err("bulk string not followed by CRLF".into());
            }
            *pos = end + 2;
            return Ok(Some(Reply::Bulk(Some(buf[after_line..end].to_vec()))));
        }
        b'*' => {
            let Some(n) = length(text)? else {
                *pos = after_line;
                return Ok(Some(Reply::Array(None)));
            };
            let mut at = after_line;
            let mut items = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                match parse_at(buf, &mut at, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            *pos = at;
            return Ok(Some(Reply::Array(Some(items))));
        }
        other => return Err(format!("unknown reply type byte 0x{other:02x}")),
    };
    *pos = after_line;
    Ok(Some(reply))
}

/// The line at `start` without its CRLF; `None` if the CRLF has not arrived yet.
fn line(buf: &[u8], start: usize) -> Result<Option<&[u8]>, String> {
    let rest = &buf[start.min(buf.len())..];
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        return Ok(None);
    };
    if rest.len() < cr + 2 {
        return Ok(None);
    }
    if rest[cr + 1] != b'\n' {
        return Err("CR not followed by LF in a reply line".into());
    }
    if cr == 0 {
        return Err("empty reply line".into());
    }
    Ok(Some(&rest[..cr]))
}

fn number(text: &str) -> Result<i64, String> {
    text.parse()
        .map_err(|_| format!("integer reply {text:?} is not a number"))
}

/// A bulk or array length: `-1` is null; others must be 0..=MAX_LEN.
fn length(text: &str) -> Result<Option<usize>, String> {
    match number(text)? {
        -1 => Ok(None),
        n if (0..=MAX_LEN).contains(&n) => Ok(Some(n as usize)),
        n => Err(format!("length {n} out of range")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        Command::new("INCRBY").arg("k y").arg("1").encode(&mut out);
        assert_eq!(out, b"*3\r\n$6\r\nINCRBY\r\n$3\r\nk y\r\n$1\r\n1\r\n");
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let all =
            b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$1\r\nx\r\n-MOVED 1 a:1\r\n";
        let mut pos = 0;
        let mut got = Vec::new();
        while pos < all.len() {
            let (reply, used) = parse(&all[pos..]).unwrap().unwrap();
            got.push(reply);
            pos += used;
        }
        assert_eq!(
            got,
            vec![
                Reply::Status("OK".into()),
                Reply::Integer(42),
                Reply::Bulk(Some(b"abc".to_vec())),
                Reply::Bulk(None),
                Reply::Array(Some(vec![
                    Reply::Integer(1),
                    Reply::Array(Some(vec![Reply::Bulk(Some(b"x".to_vec()))])),
                ])),
                Reply::Error("MOVED 1 a:1".into()),
            ]
        );
        // Every strict prefix of a reply is "not yet".
        let one = b"*2\r\n:1\r\n$3\r\nabc\r\n";
        for cut in 0..one.len() {
            assert_eq!(parse(&one[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
        assert_eq!(Reply::Bulk(Some(b"17".to_vec())).as_integer(), Some(17));
    }

    #[test]
    fn malformed_replies_are_errors() {
        for bad in [
            &b"?x\r\n"[..],
            b":abc\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"+OK\rX",
            b"*99999999\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "*1\r\n".repeat(20);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
