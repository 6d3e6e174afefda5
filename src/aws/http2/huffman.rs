//! The HPACK Huffman code (RFC 7541, Appendix B): decoding, and encoding
//! for the tests that play a server.

use std::sync::OnceLock;

/// The code of each byte value, right-aligned: RFC 7541, Appendix B.
#[rustfmt::skip]
const CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7,
    0xfffffe8, 0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec,
    0xfffffed, 0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3,
    0xffffff4, 0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb,
    0x14, 0x3f8, 0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa,
    0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d,
    0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb, 0x3fc,
    0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62,
    0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a,
    0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72,
    0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0, 0x1ffc, 0x3ffc, 0x22,
    0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26,
    0x27, 0x6, 0x74, 0x75, 0x28, 0x29, 0x2a, 0x7,
    0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78,
    0x79, 0x7a, 0x7b, 0x7ffe, 0x7fc, 0x3ffd, 0x1ffd, 0xffffffc,
    0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4, 0x3fffd5, 0x7fffd9,
    0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb, 0x7fffdf,
    0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef,
    0x3fffda, 0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde,
    0x7fffea, 0x3fffdd, 0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec,
    0x1fffe0, 0x1fffe1, 0x3fffe0, 0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef,
    0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4, 0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1,
    0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7, 0x7ffff2, 0x3fffe8, 0x1ffffec,
    0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf, 0x3ffffe5, 0xfffff1, 0x1ffffed,
    0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7, 0x7ffffe2, 0xfffff2,
    0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4, 0x7ffffe5,
    0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4,
    0x3ffffeb, 0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea,
    0x7ffffeb, 0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

/// The length in bits of each byte value's code: RFC 7541, Appendix B.
#[rustfmt::skip]
const LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];

/// The end-of-string symbol (256): 30 one bits. It must never be decoded.
const EOS_LENGTH: u8 = 30;

/// A node of the decoding tree: for bit 0 and bit 1, the next node or a
/// symbol. `EMPTY` marks the EOS leaf and any unused branch.
#[derive(Clone, Copy)]
struct Node {
    next: [u16; 2],
}

/// A branch that leads to a symbol has this bit set (the low bits hold it).
const LEAF: u16 = 0x8000;
/// A branch that leads nowhere a valid string may go (EOS).
const EMPTY: u16 = 0;

/// The decoding tree, built once from the table: one node per inner point
/// of the code (255 of them for 257 symbols), root first.
fn tree() -> &'static [Node] {
    static TREE: OnceLock<Vec<Node>> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut nodes = vec![Node { next: [EMPTY; 2] }];
        for symbol in 0..256usize {
            let (code, length) = (CODES[symbol], LENGTHS[symbol]);
            let mut at = 0usize;
            for bit_index in (0..length).rev() {
                let bit = ((code >> bit_index) & 1) as usize;
                if bit_index == 0 {
                    nodes[at].next[bit] = LEAF | symbol as u16;
                } else {
                    if nodes[at].next[bit] == EMPTY {
                        nodes.push(Node { next: [EMPTY; 2] });
                        nodes[at].next[bit] = (nodes.len() - 1) as u16;
                    }
                    at = nodes[at].next[bit] as usize;
                }
            }
        }
        nodes
    })
}

/// Why a Huffman string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HuffmanError {
    /// The string holds the EOS symbol or a code no symbol has.
    InvalidCode,
    /// The padding is longer than 7 bits or not all ones.
    BadPadding,
}

impl std::fmt::Display for HuffmanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HuffmanError::InvalidCode => "a Huffman string holds EOS or an invalid code",
            HuffmanError::BadPadding => "a Huffman string is padded wrongly",
        })
    }
}

/// Decodes a Huffman-coded string (RFC 7541, section 5.2).
pub(crate) fn decode(input: &[u8]) -> Result<Vec<u8>, HuffmanError> {
    let nodes = tree();
    let mut out = Vec::with_capacity(input.len() * 8 / 5);
    let mut at = 0usize;
    // Bits read since the last symbol, and whether all were ones: what is
    // left at the end must be a prefix of EOS shorter than a byte.
    let (mut pending, mut all_ones) = (0u32, true);
    for byte in input {
        for shift in (0..8).rev() {
            let bit = usize::from((byte >> shift) & 1);
            pending += 1;
            all_ones &= bit == 1;
            let next = nodes[at].next[bit];
            if next & LEAF != 0 {
                out.push((next & 0xFF) as u8);
                (at, pending, all_ones) = (0, 0, true);
            } else if next == EMPTY {
                return Err(HuffmanError::InvalidCode);
            } else {
                at = next as usize;
            }
            if pending >= u32::from(EOS_LENGTH) {
                return Err(HuffmanError::InvalidCode);
            }
        }
    }
    if pending > 7 || !all_ones {
        return Err(HuffmanError::BadPadding);
    }
    Ok(out)
}

/// Huffman-codes `input`, padded with ones (RFC 7541, section 5.2).
#[cfg(test)]
pub(crate) fn encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut bits, mut count) = (0u64, 0u32);
    for &b in input {
        bits = bits << LENGTHS[b as usize] | u64::from(CODES[b as usize]);
        count += u32::from(LENGTHS[b as usize]);
        while count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
        }
    }
    if count > 0 {
        out.push((bits << (8 - count)) as u8 | (0xFF >> count));
    }
    out
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

    #[test]
    fn the_code_is_complete_and_prefix_free() {
        // Kraft's sum of a complete prefix code is exactly 1; with EOS
        // (2^-30) in units of 2^-30.
        let sum: u64 = LENGTHS.iter().map(|&l| 1u64 << (30 - l)).sum::<u64>() + 1;
        assert_eq!(sum, 1 << 30);
        // Building the tree never put two symbols on one leaf: every symbol
        // decodes back to itself.
        for b in 0..=255u8 {
            assert_eq!(decode(&encode(&[b])).unwrap(), [b], "symbol {b}");
        }
    }

    #[test]
    fn rfc7541_appendix_c4_strings() {
        for (coded, plain) in [
            ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", "www.example.com"),
            ("a8eb 1064 9cbf", "no-cache"),
            ("25a8 49e9 5ba9 7d7f", "custom-key"),
            ("25a8 49e9 5bb8 e8b4 bf", "custom-value"),
            ("6402", "302"),
            ("aec3 771a 4b", "private"),
            (
                "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
                "Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
                "https://www.example.com",
            ),
        ] {
            assert_eq!(decode(&hex(coded)).unwrap(), plain.as_bytes(), "{plain}");
            assert_eq!(encode(plain.as_bytes()), hex(coded), "{plain}");
        }
    }

    #[test]
    fn bad_padding_and_eos_are_refused() {
        // "0" is 00000 (5 bits): padded with zeros instead of ones.
        assert_eq!(decode(&[0b0000_0000]), Err(HuffmanError::BadPadding));
        // A whole byte of ones after a symbol is padding longer than 7 bits.
        assert_eq!(decode(&[0b0000_0111, 0xFF]), Err(HuffmanError::BadPadding));
        // EOS itself (30 ones) in the string.
        assert_eq!(
            decode(&[0xFF, 0xFF, 0xFF, 0xFF]),
            Err(HuffmanError::InvalidCode)
        );
        assert_eq!(decode(&[]).unwrap(), b"");
    }
}
