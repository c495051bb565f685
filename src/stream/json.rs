//! A small JSON cursor over raw bytes: walks one value, validating it as it goes, and hands out
//! the keys and the raw bytes of the values a reader asks for, without building anything.
//!
//! It exists for the token path of the stream tap: a typical streamed event is read by walking
//! it once, skipping the values nobody needs (strings eight bytes at a time), instead of
//! deserializing it. It accepts exactly what `serde_json` accepts for the values it skips
//! (strings are checked for control bytes and escapes, not for UTF-8, as `serde_json` does for
//! ignored strings), and gives up ([`Bail`]) on anything it does not handle itself: an escaped
//! or non-ASCII key, nesting deeper than [`MAX_DEPTH`], any syntax error. A reader that gets
//! [`Bail`] reads the payload the slow, complete way instead, so giving up is never wrong, only
//! slower.

/// The cursor could not decide; read the payload another way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bail;

/// What a walk gives: a value, or [`Bail`].
pub(crate) type Walk<T> = Result<T, Bail>;

/// The deepest nesting walked (below `serde_json`'s own recursion limit).
pub(crate) const MAX_DEPTH: u32 = 64;

/// The raw bytes of one value, as on the wire (a string with its quotes and escapes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Raw<'a> {
    pub(crate) bytes: &'a [u8],
    /// Known to be ASCII (so valid UTF-8). False means "not known", not "not ASCII".
    pub(crate) ascii: bool,
}

impl<'a> Raw<'a> {
    /// The value as text, if it is valid UTF-8 (as `serde_json` requires of a raw value).
    pub(crate) fn text(self) -> Walk<&'a str> {
        std::str::from_utf8(self.bytes).map_err(|_| Bail)
    }

    /// Check that the value is valid UTF-8, cheaply when it is known to be ASCII.
    pub(crate) fn check_utf8(self) -> Walk<()> {
        if self.ascii {
            return Ok(());
        }
        self.text().map(|_| ())
    }

    pub(crate) fn is_null(self) -> bool {
        self.bytes == b"null"
    }

    /// A string without escapes, its bytes between the quotes (what `serde_json` can lend as
    /// `&str`); `None` for any other value.
    pub(crate) fn plain_str(self) -> Option<&'a [u8]> {
        let inner = self.bytes.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
        (!inner.contains(&b'\\')).then_some(inner)
    }
}

/// Walks one JSON text. See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: u32,
    /// CR and LF are not whitespace here: the text is one line of an event stream, and a line
    /// end means the event's data has more lines (read it the slow way).
    one_line: bool,
}

const ONES: u64 = u64::MAX / 255;
const HIGH: u64 = ONES << 7;

impl<'a> Cursor<'a> {
    /// A cursor at the start of `bytes`.
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Cursor {
            bytes,
            at: 0,
            depth: 0,
            one_line: false,
        }
    }

    /// A cursor at the start of `bytes`, which gives up at a CR or LF outside strings.
    pub(crate) fn one_line(bytes: &'a [u8]) -> Self {
        Cursor {
            one_line: true,
            ..Cursor::new(bytes)
        }
    }

    #[inline]
    fn skip_ws(&mut self) -> Walk<()> {
        while let Some(&b) = self.bytes.get(self.at) {
            match b {
                b' ' | b'\t' => self.at += 1,
                b'\n' | b'\r' if !self.one_line => self.at += 1,
                b'\n' | b'\r' => return Err(Bail),
                _ => break,
            }
        }
        Ok(())
    }

    /// The next byte that is not whitespace (not consumed).
    #[inline]
    pub(crate) fn peek(&mut self) -> Walk<u8> {
        self.skip_ws()?;
        self.bytes.get(self.at).copied().ok_or(Bail)
    }

    /// Only whitespace is left.
    pub(crate) fn finish(&mut self) -> Walk<()> {
        self.skip_ws()?;
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Bail)
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8) -> Walk<()> {
        if self.peek()? == byte {
            self.at += 1;
            Ok(())
        } else {
            Err(Bail)
        }
    }

    /// The next value, whatever it is, walked and validated.
    pub(crate) fn value(&mut self) -> Walk<Raw<'a>> {
        let first = self.peek()?;
        let start = self.at;
        let ascii = match first {
            b'"' => return self.string(),
            b'{' => {
                self.members(|c, _| c.value().map(|_| ()))?;
                false
            }
            b'[' => {
                self.elements(|c| c.value().map(|_| ()))?;
                false
            }
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.number()?,
            _ => return Err(Bail),
        };
        Ok(Raw {
            bytes: &self.bytes[start..self.at],
            ascii,
        })
    }

    fn literal(&mut self, word: &[u8]) -> Walk<bool> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(true)
        } else {
            Err(Bail)
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while matches!(self.bytes.get(self.at), Some(b'0'..=b'9')) {
            self.at += 1;
        }
        self.at - start
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Walk<bool> {
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        match self.bytes.get(self.at) {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(Bail),
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if self.digits() == 0 {
                return Err(Bail);
            }
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if self.digits() == 0 {
                return Err(Bail);
            }
        }
        Ok(true)
    }

    /// The next value as an unsigned integer (digits only, no fraction or exponent, fits a
    /// `u64`), or `None` for `null`.
    pub(crate) fn u64_or_null(&mut self) -> Walk<Option<u64>> {
        match self.peek()? {
            b'n' => {
                self.literal(b"null")?;
                Ok(None)
            }
            b'0'..=b'9' => {
                let start = self.at;
                let len = self.digits();
                if matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E'))
                    || (len > 1 && self.bytes[start] == b'0')
                {
                    return Err(Bail);
                }
                let mut n: u64 = 0;
                for &d in &self.bytes[start..self.at] {
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d - b'0')))
                        .ok_or(Bail)?;
                }
                Ok(Some(n))
            }
            _ => Err(Bail),
        }
    }

    /// The next value as a boolean, or `None` for `null`.
    pub(crate) fn bool_or_null(&mut self) -> Walk<Option<bool>> {
        match self.peek()? {
            b't' => self.literal(b"true").map(|_| Some(true)),
            b'f' => self.literal(b"false").map(|_| Some(false)),
            b'n' => self.literal(b"null").map(|_| None),
            _ => Err(Bail),
        }
    }

    /// Consume a `null` if it is next.
    pub(crate) fn null(&mut self) -> Walk<bool> {
        if self.peek()? == b'n' {
            self.literal(b"null")
        } else {
            Ok(false)
        }
    }

    /// Index of the first `"`, `\` or control byte at or after `at`, and whether the bytes
    /// scanned were all ASCII (false can also mean "not known").
    #[inline]
    fn string_stop(&self, mut at: usize) -> (usize, bool) {
        let bytes = self.bytes;
        let mut high = 0u64;
        while let Some(chunk) = bytes.get(at..at + 8) {
            let Ok(word) = <[u8; 8]>::try_from(chunk) else {
                break;
            };
            let w = u64::from_le_bytes(word);
            // Each test sets a byte's high bit when that byte matches (exactly for the lowest
            // match; a borrow can only add false matches above a true one).
            let control = w.wrapping_sub(ONES * 0x20) & !w;
            let q = w ^ (ONES * u64::from(b'"'));
            let quote = q.wrapping_sub(ONES) & !q;
            let s = w ^ (ONES * u64::from(b'\\'));
            let slash = s.wrapping_sub(ONES) & !s;
            let hit = (control | quote | slash) & HIGH;
            if hit != 0 {
                let n = (hit.trailing_zeros() / 8) as usize;
                // The bytes before the hit, as a mask of their high bits.
                let before = HIGH & ((1u64 << (n * 8)).wrapping_sub(1));
                high |= w & before;
                return (at + n, high == 0);
            }
            high |= w & HIGH;
            at += 8;
        }
        while let Some(&b) = bytes.get(at) {
            if b == b'"' || b == b'\\' || b < 0x20 {
                break;
            }
            high |= u64::from(b & 0x80);
            at += 1;
        }
        (at, high == 0)
    }

    /// The string that starts here (at its `"`), validated as `serde_json` validates a string
    /// it skips: no control bytes, only the escapes JSON has.
    fn string(&mut self) -> Walk<Raw<'a>> {
        let start = self.at;
        let mut at = start + 1;
        let mut ascii = true;
        loop {
            let (stop, plain) = self.string_stop(at);
            ascii &= plain;
            match self.bytes.get(stop) {
                Some(b'"') => {
                    self.at = stop + 1;
                    return Ok(Raw {
                        bytes: &self.bytes[start..self.at],
                        ascii,
                    });
                }
                Some(b'\\') => match self.bytes.get(stop + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => at = stop + 2,
                    Some(b'u') => {
                        let hex = self.bytes.get(stop + 2..stop + 6).ok_or(Bail)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(Bail);
                        }
                        at = stop + 6;
                    }
                    _ => return Err(Bail),
                },
                _ => return Err(Bail),
            }
        }
    }

    /// A key (at its `"`): plain ASCII without escapes, else [`Bail`]. Consumes the `:` after
    /// it too.
    fn key(&mut self) -> Walk<&'a [u8]> {
        let start = self.at + 1;
        let (stop, ascii) = self.string_stop(start);
        if !ascii || self.bytes.get(stop) != Some(&b'"') {
            return Err(Bail);
        }
        self.at = stop + 1;
        self.expect(b':')?;
        Ok(&self.bytes[start..stop])
    }

    fn enter(&mut self) -> Walk<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Bail);
        }
        Ok(())
    }

    /// The object that starts here (at `{`): `member` is called with each key and must walk
    /// that key's value.
    #[inline]
    pub(crate) fn members(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a [u8]) -> Walk<()>,
    ) -> Walk<()> {
        self.expect(b'{')?;
        self.enter()?;
        if self.peek()? == b'}' {
            self.at += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            if self.peek()? != b'"' {
                return Err(Bail);
            }
            let key = self.key()?;
            member(self, key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(Bail),
            }
        }
    }

    /// The array that starts here (at `[`): `element` is called for each element and must
    /// walk it.
    #[inline]
    pub(crate) fn elements(&mut self, mut element: impl FnMut(&mut Self) -> Walk<()>) -> Walk<()> {
        self.expect(b'[')?;
        self.enter()?;
        if self.peek()? == b']' {
            self.at += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return Err(Bail),
            }
        }
    }
}

/// Set `bit` in `seen`, or [`Bail`] when it was set already: a key given twice (which
/// `serde_json` refuses for a struct's fields).
#[inline]
pub(crate) fn once(seen: &mut u32, bit: u32) -> Walk<()> {
    if *seen & bit != 0 {
        return Err(Bail);
    }
    *seen |= bit;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::IgnoredAny;

    fn walks(text: &[u8]) -> bool {
        let mut c = Cursor::new(text);
        c.value().and_then(|_| c.finish()).is_ok()
    }

    #[test]
    fn json_cursor_accepts_what_serde_accepts() {
        for text in [
            &b"{}"[..],
            b" [ ] ",
            b"{\"a\":[1,-0,0.5,1e9,-2.5E-3,true,false,null,\"x\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\"]}",
            b"\"\xff\xfe ignored strings are not checked for UTF-8\"",
            b"{\"a\" : { \"b\" :\t[ {} , [] ] } }\r\n",
            b"\"0123456789abcdef0123456789\"",
        ] {
            assert!(
                serde_json::from_slice::<IgnoredAny>(text).is_ok(),
                "{text:?}"
            );
            assert!(walks(text), "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn json_cursor_gives_up_where_serde_refuses() {
        for text in [
            &b""[..],
            b"{",
            b"{\"a\"}",
            b"{\"a\":1,}",
            b"[1,]",
            b"01",
            b"1.",
            b"1e",
            b"-",
            b"+1",
            b"tru",
            b"nul",
            b"\"a",
            b"\"\\x\"",
            b"\"\\u12g4\"",
            b"\"a\x01b\"",
            b"\"0123456789\tabcdef\"",
            b"{} {}",
            b"{'a':1}",
        ] {
            assert!(
                serde_json::from_slice::<IgnoredAny>(text).is_err(),
                "{text:?}"
            );
            assert!(!walks(text), "{}", String::from_utf8_lossy(text));
        }
    }

    #[test]
    fn json_cursor_gives_up_on_what_it_does_not_handle() {
        // Valid JSON, left to the complete reader: escaped or non-ASCII keys, deep nesting,
        // a line end in one-line mode.
        assert!(!walks(b"{\"\\u0061\":1}"));
        assert!(!walks("{\"é\":1}".as_bytes()));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(!walks(deep.as_bytes()));
        let mut c = Cursor::one_line(b"{\"a\":\n1}");
        assert_eq!(c.value(), Err(Bail));
        let mut c = Cursor::one_line(b"{\"a\":1}  ");
        assert!(c.value().is_ok() && c.finish().is_ok());
    }

    #[test]
    fn json_cursor_raw_values() {
        let mut c = Cursor::new(b"{\"k\": \"ab\\\"c\", \"n\": 12, \"u\": \"\xc3\xa9\"}");
        let mut got = Vec::new();
        c.members(|c, key| {
            got.push((key.to_vec(), c.value()?));
            Ok(())
        })
        .unwrap();
        assert_eq!(got[0].0, b"k");
        assert_eq!(got[0].1.bytes, b"\"ab\\\"c\"");
        assert!(got[0].1.ascii && got[0].1.plain_str().is_none());
        assert_eq!(got[1].1.bytes, b"12");
        assert!(!got[2].1.ascii);
        assert_eq!(got[2].1.text(), Ok("\"é\""));
        assert_eq!(
            Cursor::new(b" 18446744073709551615").u64_or_null(),
            Ok(Some(u64::MAX))
        );
        assert_eq!(
            Cursor::new(b"18446744073709551616").u64_or_null(),
            Err(Bail)
        );
        assert_eq!(Cursor::new(b"07").u64_or_null(), Err(Bail));
        assert_eq!(Cursor::new(b"1.0").u64_or_null(), Err(Bail));
        assert_eq!(Cursor::new(b"null").u64_or_null(), Ok(None));
    }

    proptest::proptest! {
        #[test]
        fn json_cursor_string_scan_matches_a_byte_loop(
            body in proptest::collection::vec(proptest::sample::select(
                vec![b'a', b'"', b'\\', b'\x01', b'\x1f', b' ', 0x7f, 0x80, 0xff, b'u', b'0']), 0..40),
        ) {
            let mut text = vec![b'"'];
            text.extend_from_slice(&body);
            let c = Cursor::new(&text);
            let (stop, ascii) = c.string_stop(1);
            let want = body.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map_or(text.len(), |p| p + 1);
            proptest::prop_assert_eq!(stop, want);
            proptest::prop_assert_eq!(ascii, text[1..stop].is_ascii());
        }
    }
}
