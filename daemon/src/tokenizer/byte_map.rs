//! GPT-2's reversible byte-to-character mapping, which GGUF (`tokenizer.ggml.model =
//! gpt2`) uses to store byte-level tokens and merges as printable strings.
//!
//! Printable Latin-1 bytes (`!`..`~`, `¡`..`¬`, `®`..`ÿ`) stand for themselves; the other 68
//! bytes (controls, space, DEL, NBSP, soft hyphen...) are shifted to U+0100.. in byte order,
//! so that a space is `Ġ` and a newline `Ċ`.

/// Whether byte `b` is printed as itself.
const fn is_printable(b: u8) -> bool {
    matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)
}

const fn build_encode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut shifted = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let cp = if is_printable(b as u8) {
            b as u32
        } else {
            shifted += 1;
            255 + shifted
        };
        table[b] = match char::from_u32(cp) {
            Some(c) => c,
            None => '\0',
        };
        b += 1;
    }
    table
}

/// Byte -> character.
static ENCODE: [char; 256] = build_encode();

/// Highest character the mapping produces (U+0143): the decode table's size.
const MAX_CHAR: usize = 0x143;

const fn build_decode() -> [i16; MAX_CHAR + 1] {
    let enc = build_encode();
    let mut table = [-1i16; MAX_CHAR + 1];
    let mut b = 0usize;
    while b < 256 {
        table[enc[b] as usize] = b as i16;
        b += 1;
    }
    table
}

/// Character -> byte, or -1 for characters the mapping never produces.
static DECODE: [i16; MAX_CHAR + 1] = build_decode();

/// The character GPT-2 uses for byte `b`.
#[inline]
pub(crate) fn byte_to_char(b: u8) -> char {
    ENCODE[usize::from(b)]
}

/// The byte a GPT-2 character stands for, if it is one of the 256.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let i = c as usize;
    if i > MAX_CHAR {
        return None;
    }
    u8::try_from(DECODE[i]).ok()
}

/// Appends the GPT-2 spelling of `bytes` to `out`.
pub(crate) fn encode_into(bytes: &[u8], out: &mut String) {
    out.extend(bytes.iter().map(|&b| byte_to_char(b)));
}

/// Decodes a GPT-2 spelled string into `out`; `false` (with `out` partly written) if it
/// holds a character outside the mapping.
pub(crate) fn decode_into(s: &str, out: &mut Vec<u8>) -> bool {
    for c in s.chars() {
        match char_to_byte(c) {
            Some(b) => out.push(b),
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_characters_and_round_trip() {
        assert_eq!(byte_to_char(b' '), 'Ġ');
        assert_eq!(byte_to_char(b'\n'), 'Ċ');
        assert_eq!(byte_to_char(0), 'Ā');
        assert_eq!(byte_to_char(b'a'), 'a');
        assert_eq!(byte_to_char(0xAD), 'Ń');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(byte_to_char(b)), Some(b));
        }
        let distinct: std::collections::HashSet<char> = (0..=255u8).map(byte_to_char).collect();
        assert_eq!(distinct.len(), 256);
        assert_eq!(char_to_byte('€'), None);
    }
}
