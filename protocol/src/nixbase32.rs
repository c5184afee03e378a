//! Nix's base-32 encoding, as used in store path hashes and `sha256:` hashes.
//!
//! It is not RFC 4648 base32: the alphabet omits `e o u t`, and the bytes are read from the
//! end, so that the first character of the text holds the last bits of the input.

use thiserror::Error;

/// The 32 characters of the encoding, in digit order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Text that is not valid nixbase32 for the length asked for.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("invalid nixbase32 character {0:?}")]
    InvalidCharacter(char),
    #[error("nixbase32 text of {got} characters, expected {expected}")]
    InvalidLength { got: usize, expected: usize },
    #[error("nixbase32 text has bits set beyond the decoded length")]
    TrailingBits,
}

/// The number of characters `len` bytes encode to.
pub const fn encoded_len(len: usize) -> usize {
    if len == 0 { 0 } else { (len * 8 - 1) / 5 + 1 }
}

/// The number of bytes `len` characters decode to.
pub const fn decoded_len(len: usize) -> usize {
    len * 5 / 8
}

/// Encodes `input` as nixbase32 text.
pub fn encode(input: &[u8]) -> String {
    let len = encoded_len(input.len());
    let mut out = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let low = input[i] >> j;
        let high = if j > 3 && i + 1 < input.len() { input[i + 1] << (8 - j) } else { 0 };
        out.push(ALPHABET[((low | high) & 0x1f) as usize] as char);
    }
    out
}

/// Each byte's digit, or [`NOT_A_DIGIT`]: a node decodes every path of its store each time it
/// lists it, and searching the alphabet for each character was most of that listing's time.
const DIGITS: [u8; 256] = {
    let mut digits = [NOT_A_DIGIT; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        digits[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    digits
};
const NOT_A_DIGIT: u8 = 0xff;

fn digit(c: u8) -> Result<u8, DecodeError> {
    match DIGITS[usize::from(c)] {
        NOT_A_DIGIT => Err(DecodeError::InvalidCharacter(c as char)),
        d => Ok(d),
    }
}

/// Decodes nixbase32 text of any length.
pub fn decode(input: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = vec![0u8; decoded_len(input.len())];
    decode_into(input, &mut out)?;
    Ok(out)
}

/// Decodes nixbase32 text into exactly `N` bytes.
pub fn decode_fixed<const N: usize>(input: &[u8]) -> Result<[u8; N], DecodeError> {
    if input.len() != encoded_len(N) {
        return Err(DecodeError::InvalidLength { got: input.len(), expected: encoded_len(N) });
    }
    let mut out = [0u8; N];
    decode_into(input, &mut out)?;
    Ok(out)
}

fn decode_into(input: &[u8], out: &mut [u8]) -> Result<(), DecodeError> {
    let len = input.len();
    for (n, &c) in input.iter().rev().enumerate() {
        let d = digit(c)? as u16;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let shifted = d << j;
        if i < out.len() {
            out[i] |= shifted as u8;
        } else if shifted != 0 {
            return Err(DecodeError::TrailingBits);
        }
        let carry = (shifted >> 8) as u8;
        if carry != 0 {
            if i + 1 < out.len() {
                out[i + 1] |= carry;
            } else {
                return Err(DecodeError::TrailingBits);
            }
        }
    }
    debug_assert_eq!(out.len(), decoded_len(len));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        // Values from Nix: `nix-hash --type sha256 --to-base32` of the hex digests below.
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0x1f]), "0z");
        let sha256_empty =
            hex_to_bytes("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(encode(&sha256_empty), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(decode(b"0e"), Err(DecodeError::InvalidCharacter('e')));
        // "zz" decodes to one byte, but its top bits do not fit in it.
        assert_eq!(decode(b"zz"), Err(DecodeError::TrailingBits));
        assert!(matches!(decode_fixed::<20>(b"abc"), Err(DecodeError::InvalidLength { .. })));
    }

    fn hex_to_bytes(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let text = encode(&bytes);
            prop_assert_eq!(text.len(), encoded_len(bytes.len()));
            prop_assert_eq!(decode(text.as_bytes()).unwrap(), bytes);
        }

        #[test]
        fn decode_never_panics(text in "[0-9a-z]{0,70}") {
            let _ = decode(text.as_bytes());
        }
    }
}
