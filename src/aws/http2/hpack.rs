//! HPACK (RFC 7541): the header compression of HTTP/2. The decoder keeps
//! the dynamic table and reads Huffman-coded strings; the encoder writes
//! every field as a literal that is never indexed, so it keeps no state.

use std::collections::VecDeque;
use std::fmt;

use super::huffman;

/// The static table (RFC 7541, Appendix A); index 1 is the first entry.
#[rustfmt::skip]
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"),
    (":status", "200"), (":status", "204"), (":status", "206"), (":status", "304"),
    (":status", "400"), (":status", "404"), (":status", "500"),
    ("accept-charset", ""), ("accept-encoding", "gzip, deflate"), ("accept-language", ""),
    ("accept-ranges", ""), ("accept", ""), ("access-control-allow-origin", ""), ("age", ""),
    ("allow", ""), ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
];

/// Each entry of the dynamic table counts its name, its value and 32 bytes
/// (RFC 7541, section 4.1).
const ENTRY_OVERHEAD: usize = 32;

/// A header field: name and value as sent (values may be any bytes).
pub(crate) type Field = (String, Vec<u8>);

/// Why a header block could not be decoded (a connection error,
/// COMPRESSION_ERROR, in HTTP/2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HpackError(pub(crate) String);

impl fmt::Display for HpackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HPACK: {}", self.0)
    }
}

fn error<T>(message: impl Into<String>) -> Result<T, HpackError> {
    Err(HpackError(message.into()))
}

/// Decodes header blocks; one per connection, as the dynamic table is.
pub(crate) struct Decoder {
    /// Newest entry first.
    table: VecDeque<(String, Vec<u8>)>,
    size: usize,
    /// The size the peer chose with its last size update.
    max_size: usize,
    /// The most we allow (our SETTINGS_HEADER_TABLE_SIZE).
    limit: usize,
    /// The most bytes of names and values one block may decode to.
    max_list_size: usize,
}

impl Decoder {
    /// A decoder whose table may hold `limit` bytes (4096 unless our
    /// SETTINGS say otherwise), refusing blocks that decode to more than
    /// `max_list_size` bytes.
    pub(crate) fn new(limit: usize, max_list_size: usize) -> Decoder {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
            max_list_size,
        }
    }

    /// Decodes one complete header block.
    pub(crate) fn decode(&mut self, block: &[u8]) -> Result<Vec<Field>, HpackError> {
        let mut input = Input {
            bytes: block,
            at: 0,
        };
        let mut fields = Vec::new();
        let mut list_size = 0usize;
        while let Some(&b) = input.peek() {
            if b & 0x80 != 0 {
                // Indexed field (6.1).
                let index = input.integer(7)?;
                fields.push(self.entry(index)?);
            } else if b & 0xC0 == 0x40 {
                // Literal with incremental indexing (6.2.1).
                let field = self.literal(&mut input, 6)?;
                self.insert(field.clone());
                fields.push(field);
            } else if b & 0xE0 == 0x20 {
                // Dynamic table size update (6.3): only before the first field.
                if !fields.is_empty() {
                    return error("a table size update after a header field");
                }
                let size = input.integer(5)?;
                if size > self.limit {
                    return error(format!(
                        "a table size update to {size} bytes, above the {} allowed",
                        self.limit
                    ));
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (6.2.2) or never indexed (6.2.3).
                fields.push(self.literal(&mut input, 4)?);
            }
            let (name, value) = fields
                .last()
                .map(|(n, v)| (n.len(), v.len()))
                .unwrap_or_default();
            list_size += name + value + ENTRY_OVERHEAD;
            if list_size > self.max_list_size {
                return error(format!(
                    "the header list is larger than {} bytes",
                    self.max_list_size
                ));
            }
        }
        Ok(fields)
    }

    /// The field at `index` of the static then the dynamic table.
    fn entry(&self, index: usize) -> Result<Field, HpackError> {
        match index {
            0 => error("index 0"),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.to_owned(), value.as_bytes().to_vec()))
            }
            _ => self.table.get(index - 62).cloned().ok_or_else(|| {
                HpackError(format!(
                    "index {index} is beyond the table ({} dynamic entries)",
                    self.table.len()
                ))
            }),
        }
    }

    /// A literal field whose name index has `prefix` bits.
    fn literal(&self, input: &mut Input<'_>, prefix: u8) -> Result<Field, HpackError> {
        let index = input.integer(prefix)?;
        let name = if index == 0 {
            String::from_utf8(input.string()?)
                .map_err(|_| HpackError("a header name is not UTF-8".into()))?
        } else {
            self.entry(index)?.0
        };
        Ok((name, input.string()?))
    }

    fn insert(&mut self, field: Field) {
        let size = field.0.len() + field.1.len() + ENTRY_OVERHEAD;
        self.evict(size);
        // An entry larger than the table empties it and is not added (4.4).
        if size <= self.max_size {
            self.size += size;
            self.table.push_front(field);
        }
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.table.pop_back() {
                Some((name, value)) => self.size -= name.len() + value.len() + ENTRY_OVERHEAD,
                None => break,
            }
        }
    }

    /// The dynamic table's size in bytes as RFC 7541 counts it.
    #[cfg(test)]
    pub(crate) fn table_size(&self) -> usize {
        self.size
    }
}

struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Input<'_> {
    fn peek(&self) -> Option<&u8> {
        self.bytes.get(self.at)
    }

    fn byte(&mut self) -> Result<u8, HpackError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| HpackError("the header block ends inside a field".into()))?;
        self.at += 1;
        Ok(b)
    }

    /// An integer with an N-bit prefix (5.1); at most 2^28, far above any
    /// length or index a sane peer sends.
    fn integer(&mut self, prefix: u8) -> Result<usize, HpackError> {
        let max_prefix = (1usize << prefix) - 1;
        let mut value = usize::from(self.byte()?) & max_prefix;
        if value < max_prefix {
            return Ok(value);
        }
        let mut shift = 0;
        loop {
            let b = self.byte()?;
            value += usize::from(b & 0x7F) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                return Ok(value);
            }
            if shift > 21 {
                return error("an integer is too large");
            }
        }
    }

    /// A string literal (5.2), Huffman-decoded when flagged.
    fn string(&mut self) -> Result<Vec<u8>, HpackError> {
        let huffman = self.peek().is_some_and(|b| b & 0x80 != 0);
        let len = self.integer(7)?;
        let end = self.at.checked_add(len).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return error(format!(
                "a string of {len} bytes runs past the end of the header block"
            ));
        };
        let raw = &self.bytes[self.at..end];
        self.at = end;
        if huffman {
            huffman::decode(raw).map_err(|e| HpackError(e.to_string()))
        } else {
            Ok(raw.to_vec())
        }
    }
}

/// Appends an integer with an N-bit prefix whose high bits are `flags`.
pub(crate) fn encode_integer(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let max_prefix = (1usize << prefix) - 1;
    if value < max_prefix {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max_prefix as u8);
    let mut rest = value - max_prefix;
    while rest >= 0x80 {
        out.push((rest & 0x7F) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// Appends one field as a literal without indexing, new name, no Huffman
/// coding (RFC 7541, section 6.2.2): stateless and always valid.
pub(crate) fn encode_literal(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x00);
    encode_integer(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    encode_integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

/// Appends one field as a never-indexed literal, new name, no Huffman
/// coding (RFC 7541, section 6.2.3): no intermediary may add it to a
/// table when it forwards it (for credentials, section 7.1.3).
pub(crate) fn encode_never_indexed(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.push(0x10);
    encode_integer(out, 0, 7, name.len());
    out.extend_from_slice(name.as_bytes());
    encode_integer(out, 0, 7, value.len());
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(text: &str) -> Vec<u8> {
        let digits: String = text.split_whitespace().collect();
        (0..digits.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&digits[i..i + 2], 16).unwrap())
            .collect()
    }

    fn fields(list: &[(&str, &str)]) -> Vec<Field> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn integers_of_rfc7541_c1() {
        let mut out = Vec::new();
        encode_integer(&mut out, 0, 5, 10);
        assert_eq!(out, [0x0A]);
        out.clear();
        encode_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [0x1F, 0x9A, 0x0A]);
        let mut input = Input {
            bytes: &[0x1F, 0x9A, 0x0A],
            at: 0,
        };
        assert_eq!(input.integer(5).unwrap(), 1337);
        let mut input = Input {
            bytes: &[0x2A],
            at: 0,
        };
        assert_eq!(input.integer(8).unwrap(), 42);
    }

    /// RFC 7541 C.3: three requests without Huffman coding, one decoder.
    #[test]
    fn requests_of_rfc7541_c3() {
        let mut d = Decoder::new(4096, 65536);
        let first = d
            .decode(&hex("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"))
            .unwrap();
        assert_eq!(
            first,
            fields(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(d.table_size(), 57);
        let second = d
            .decode(&hex("8286 84be 5808 6e6f 2d63 6163 6865"))
            .unwrap();
        assert_eq!(second[3], fields(&[(":authority", "www.example.com")])[0]);
        assert_eq!(second[4], fields(&[("cache-control", "no-cache")])[0]);
        assert_eq!(d.table_size(), 110);
        let third = d
            .decode(&hex(
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ))
            .unwrap();
        assert_eq!(
            third,
            fields(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ])
        );
        assert_eq!(d.table_size(), 164);
    }

    /// RFC 7541 C.6: responses with Huffman coding and a 256-byte table,
    /// so entries are evicted.
    #[test]
    fn responses_of_rfc7541_c6_evict_with_huffman() {
        let mut d = Decoder::new(256, 65536);
        let first = d
            .decode(&hex(
                "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 \
                 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            ))
            .unwrap();
        assert_eq!(
            first,
            fields(&[
                (":status", "302"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
                ("location", "https://www.example.com")
            ])
        );
        assert_eq!(d.table_size(), 222);
        let second = d.decode(&hex("4883 640e ff c1 c0 bf")).unwrap();
        assert_eq!(second[0], fields(&[(":status", "307")])[0]);
        assert_eq!(
            second[3],
            fields(&[("location", "https://www.example.com")])[0]
        );
        assert_eq!(d.table_size(), 222);
        let third = d
            .decode(&hex(
                "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab \
                 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f \
                 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            ))
            .unwrap();
        assert_eq!(
            third,
            fields(&[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
                ("location", "https://www.example.com"),
                ("content-encoding", "gzip"),
                (
                    "set-cookie",
                    "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
                )
            ])
        );
        assert_eq!(d.table_size(), 215);
    }

    #[test]
    fn size_updates_evict_and_are_bounded() {
        let mut d = Decoder::new(4096, 65536);
        d.decode(&hex(
            "400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ))
        .unwrap();
        assert_eq!(d.table_size(), 54);
        // Size update to 0 empties the table; index 62 is then gone.
        assert_eq!(d.decode(&[0x20]).unwrap(), vec![]);
        assert_eq!(d.table_size(), 0);
        let err = d.decode(&[0xBE]).unwrap_err();
        assert!(err.0.contains("index 62"), "{err}");
        // Above our limit.
        let mut big = Vec::new();
        encode_integer(&mut big, 0x20, 5, 8192);
        assert!(d.decode(&big).unwrap_err().0.contains("8192"));
        // After a field.
        assert!(d.decode(&[0x82, 0x20]).unwrap_err().0.contains("after"));
    }

    #[test]
    fn bad_blocks_are_errors_not_panics() {
        let mut d = Decoder::new(4096, 100);
        for bad in [
            &[0x80][..],                           // index 0
            &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], // huge integer
            &[0x00, 0x05, b'a'],                   // string past the end
            &[0x00, 0x81, 0x00, 0x00],             // Huffman string with zero padding
            &[0x40],                               // ends inside a field
        ] {
            assert!(d.decode(bad).is_err(), "{bad:?}");
        }
        let mut long = Vec::new();
        encode_literal(&mut long, "x", &[b'v'; 200]);
        assert!(d.decode(&long).unwrap_err().0.contains("larger than 100"));
    }

    #[test]
    fn literals_round_trip() {
        let mut block = Vec::new();
        encode_literal(&mut block, ":method", b"POST");
        encode_literal(&mut block, "x-long", &[b'a'; 300]);
        let got = Decoder::new(4096, 65536).decode(&block).unwrap();
        assert_eq!(got[0], fields(&[(":method", "POST")])[0]);
        assert_eq!(got[1].1.len(), 300);
    }
}
