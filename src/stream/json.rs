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
    /// Where the value starts in the text walked.
    pub(crate) at: usize,
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

    fn span(self) -> (u32, u32) {
        // Texts walked are bounded far below 4 GiB (templates by MAX_TEMPLATE).
        (self.at as u32, (self.at + self.bytes.len()) as u32)
    }
}

/// The most values of skipped fields a cursor notes (see [`Cursor::skip`]).
pub(crate) const MAX_SPANS: usize = 32;

/// Walks one JSON text. See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
    depth: u32,
    /// CR and LF are not whitespace here: the text is one line of an event stream, and a line
    /// end means the event's data has more lines (read it the slow way).
    one_line: bool,
    /// Inside a [`Cursor::skip`]: note where scalars are.
    skipping: u32,
    /// Where the scalars of skipped values are, in order (the first MAX_SPANS).
    spans: [(u32, u32); MAX_SPANS],
    spans_len: usize,
    spans_over: bool,
    /// Keys may be any string (escapes kept as on the wire), not only plain ASCII.
    any_keys: bool,
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
            skipping: 0,
            spans: [(0, 0); MAX_SPANS],
            spans_len: 0,
            spans_over: false,
            any_keys: false,
        }
    }

    /// A cursor at the start of `bytes` that takes any key: keys with escapes are handed out
    /// as on the wire, between their quotes.
    pub(crate) fn any_keys(bytes: &'a [u8]) -> Self {
        Cursor {
            any_keys: true,
            ..Cursor::new(bytes)
        }
    }

    /// Where the cursor stands: a byte offset into the text.
    pub(crate) fn offset(&self) -> usize {
        self.at
    }

    /// A cursor at the start of `bytes`, which gives up at a CR or LF outside strings.
    pub(crate) fn one_line(bytes: &'a [u8]) -> Self {
        Cursor {
            one_line: true,
            ..Cursor::new(bytes)
        }
    }

    /// Where the scalars of the values walked by [`Cursor::skip`] are, in order; `None` when
    /// there were more than [`MAX_SPANS`].
    pub(crate) fn skipped_scalars(&self) -> Option<&[(u32, u32)]> {
        (!self.spans_over).then(|| &self.spans[..self.spans_len])
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

    /// The next value, whatever it is, walked and validated, when nobody reads it: as
    /// [`Cursor::value`], noting where its scalars are (see [`Cursor::skipped_scalars`]).
    pub(crate) fn skip(&mut self) -> Walk<()> {
        self.skipping += 1;
        let walked = self.value();
        self.skipping -= 1;
        walked.map(|_| ())
    }

    /// The next value, whatever it is, walked and validated.
    pub(crate) fn value(&mut self) -> Walk<Raw<'a>> {
        let first = self.peek()?;
        let start = self.at;
        let (end, ascii) = match first {
            b'"' => {
                let s = scan_string(self.bytes, start)?;
                (s.end, s.ascii)
            }
            b'{' => {
                self.members(|c, _| c.value().map(|_| ()))?;
                (self.at, false)
            }
            b'[' => {
                self.elements(|c| c.value().map(|_| ()))?;
                (self.at, false)
            }
            _ => (scan_scalar(self.bytes, start)?, true),
        };
        self.at = end;
        if self.skipping > 0 && !matches!(first, b'{' | b'[') {
            if self.spans_len < MAX_SPANS {
                self.spans[self.spans_len] = (start as u32, end as u32);
                self.spans_len += 1;
            } else {
                self.spans_over = true;
            }
        }
        Ok(Raw {
            bytes: &self.bytes[start..end],
            at: start,
            ascii,
        })
    }

    /// The next value as an unsigned integer (digits only, no fraction or exponent, fits a
    /// `u64`), or `None` for `null`.
    pub(crate) fn u64_or_null(&mut self) -> Walk<Option<u64>> {
        match self.peek()? {
            b'n' => self.literal(b"null").map(|_| None),
            b'0'..=b'9' => {
                let mut end = self.at;
                while matches!(self.bytes.get(end), Some(b'0'..=b'9')) {
                    end += 1;
                }
                let digits = &self.bytes[self.at..end];
                if matches!(self.bytes.get(end), Some(b'.' | b'e' | b'E'))
                    || (digits.len() > 1 && digits[0] == b'0')
                {
                    return Err(Bail);
                }
                let mut n: u64 = 0;
                for &d in digits {
                    n = n
                        .checked_mul(10)
                        .and_then(|n| n.checked_add(u64::from(d - b'0')))
                        .ok_or(Bail)?;
                }
                self.at = end;
                Ok(Some(n))
            }
            _ => Err(Bail),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Walk<()> {
        if self.bytes[self.at..].starts_with(word) {
            self.at += word.len();
            Ok(())
        } else {
            Err(Bail)
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
            self.literal(b"null").map(|_| true)
        } else {
            Ok(false)
        }
    }

    /// A key (at its `"`): plain ASCII without escapes, else [`Bail`]. Consumes the `:` after
    /// it too.
    fn key(&mut self) -> Walk<&'a [u8]> {
        let start = self.at + 1;
        if self.any_keys {
            let end = scan_string(self.bytes, self.at)?.end;
            self.at = end;
            self.expect(b':')?;
            return Ok(&self.bytes[start..end - 1]);
        }
        let (stop, ascii) = string_stop(self.bytes, start);
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

/// Index of the first `"`, `\` or control byte at or after `at`, and whether the bytes
/// scanned were all ASCII.
#[inline]
fn string_stop(bytes: &[u8], mut at: usize) -> (usize, bool) {
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

/// The string that starts at `start` (at its `"`), validated as `serde_json` validates a
/// string it skips (no control bytes, only the escapes JSON has): where it ends, and whether
/// it is ASCII.
fn scan_string(bytes: &[u8], start: usize) -> Walk<Scanned> {
    let mut at = start + 1;
    let mut ascii = true;
    let mut escaped = false;
    loop {
        let (stop, plain) = string_stop(bytes, at);
        ascii &= plain;
        match bytes.get(stop) {
            Some(b'"') => {
                return Ok(Scanned {
                    end: stop + 1,
                    ascii,
                    plain: ascii && !escaped,
                })
            }
            Some(b'\\') => match bytes.get(stop + 1) {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => at = stop + 2,
                Some(b'u') => {
                    let hex = bytes.get(stop + 2..stop + 6).ok_or(Bail)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return Err(Bail);
                    }
                    at = stop + 6;
                }
                _ => return Err(Bail),
            },
            _ => return Err(Bail),
        }
        escaped = true;
    }
}

/// Where a string ends, and what it holds.
struct Scanned {
    end: usize,
    ascii: bool,
    /// ASCII without escapes: its bytes between the quotes are its text.
    plain: bool,
}

fn digits(bytes: &[u8], mut at: usize) -> usize {
    while matches!(bytes.get(at), Some(b'0'..=b'9')) {
        at += 1;
    }
    at
}

/// The number or literal (`true`, `false`, `null`) that starts at `start`: where it ends.
/// Numbers as JSON has them: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn scan_scalar(bytes: &[u8], start: usize) -> Walk<usize> {
    let rest = &bytes[start..];
    for word in [&b"true"[..], b"false", b"null"] {
        if rest.starts_with(word) {
            return Ok(start + word.len());
        }
    }
    let mut at = start;
    if bytes.get(at) == Some(&b'-') {
        at += 1;
    }
    at = match bytes.get(at) {
        Some(b'0') => at + 1,
        Some(b'1'..=b'9') => digits(bytes, at + 1),
        _ => return Err(Bail),
    };
    if bytes.get(at) == Some(&b'.') {
        let end = digits(bytes, at + 1);
        if end == at + 1 {
            return Err(Bail);
        }
        at = end;
    }
    if matches!(bytes.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(bytes.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let end = digits(bytes, at);
        if end == at {
            return Err(Bail);
        }
        at = end;
    }
    Ok(at)
}

/// The text found in a payload that matched a [`Template`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Slot<'a> {
    /// The JSON string.
    pub(crate) raw: Raw<'a>,
    /// ASCII without escapes: the bytes between its quotes are its text.
    pub(crate) plain: bool,
}

/// The largest payload kept as a [`Template`]: 4 KiB.
pub(crate) const MAX_TEMPLATE: usize = 4 << 10;

/// The bytes of a payload already read, to recognise the next ones that differ from it only in
/// a few scalar values: a token stream's events repeat each other but for the text (and maybe
/// a sequence number or a timestamp).
///
/// A template is learnt from a payload whose only effect on a record that already holds it is
/// its text (a token delta, or an event that changes nothing). Its slots are the scalar values
/// of skipped fields and the text; the variable ones are the text and those seen to change
/// between two payloads of the same shape. A payload matches when, slot by variable slot, the
/// bytes between are the template's and each variable slot holds a valid scalar of the same
/// kind (a string where the template has a string): it then has the template's structure,
/// keys and read values exactly, so reading it means appending its text and nothing else.
#[derive(Debug, Default)]
pub(crate) struct Template {
    /// The payload learnt from; empty when there is none yet.
    bytes: Vec<u8>,
    /// Its SSE event name (`None`: it had none).
    event: Option<Vec<u8>>,
    one_line: bool,
    /// Where its slots are, in order (at most MAX_SPANS + 1).
    slots: Vec<(u32, u32)>,
    text_slot: Option<usize>,
    /// Bit `i`: slot `i` is variable.
    variable: u64,
}

impl Template {
    /// When `data` (with SSE event name `event`, walked in one-line mode or not) matches: the
    /// raw text in it, if the template has a text slot. `None`: no match.
    pub(crate) fn matches<'a>(
        &self,
        event: Option<&[u8]>,
        data: &'a [u8],
        one_line: bool,
    ) -> Option<Option<Slot<'a>>> {
        if self.bytes.is_empty() || self.one_line != one_line || self.event.as_deref() != event {
            return None;
        }
        let t = self.bytes.as_slice();
        let (mut pt, mut pd) = (0usize, 0usize);
        let mut text = None;
        let mut variable = self.variable;
        while variable != 0 {
            let i = variable.trailing_zeros() as usize;
            variable &= variable - 1;
            let (a, b) = self.slots[i];
            let (a, b) = (a as usize, b as usize);
            let segment = &t[pt..a];
            if data.get(pd..pd + segment.len())? != segment {
                return None;
            }
            pd += segment.len();
            let first = *data.get(pd)?;
            let (end, ascii, plain) = match (t[a], first) {
                (b'"', b'"') => {
                    let s = scan_string(data, pd).ok()?;
                    (s.end, s.ascii, s.plain)
                }
                (b'"', _) | (_, b'"' | b'{' | b'[') => return None,
                _ => (scan_scalar(data, pd).ok()?, true, false),
            };
            if Some(i) == self.text_slot {
                text = Some(Slot {
                    raw: Raw {
                        bytes: &data[pd..end],
                        at: pd,
                        ascii,
                    },
                    plain,
                });
            }
            pd = end;
            pt = b;
        }
        (data.get(pd..)? == &t[pt..]).then_some(text)
    }

    /// Learn from `data`, a payload just read whose only effect on a record holding it is its
    /// text `text` (see the type docs); `skipped` are the scalars of its skipped values
    /// ([`Cursor::skipped_scalars`]).
    pub(crate) fn learn(
        &mut self,
        event: Option<&[u8]>,
        data: &[u8],
        one_line: bool,
        skipped: Option<&[(u32, u32)]>,
        text: Option<Raw<'_>>,
    ) {
        let Some(skipped) = skipped else { return };
        if data.len() > MAX_TEMPLATE {
            return;
        }
        let text = text
            .filter(|t| t.bytes.first() == Some(&b'"'))
            .map(Raw::span);
        // The new slots: the skipped scalars and the text, in order.
        let mut slots = [(0u32, 0u32); MAX_SPANS + 1];
        let mut n = 0;
        let mut text_slot = None;
        for &span in skipped {
            if let Some(t) = text.filter(|t| text_slot.is_none() && t.0 < span.0) {
                text_slot = Some(n);
                slots[n] = t;
                n += 1;
            }
            slots[n] = span;
            n += 1;
        }
        if let Some(t) = text.filter(|_| text_slot.is_none()) {
            text_slot = Some(n);
            slots[n] = t;
            n += 1;
        }
        let slots = &slots[..n];
        let mut variable = text_slot.map_or(0, |i| 1u64 << i);
        if self.same_shape(event, data, one_line, slots, text_slot) {
            for (i, (&(a, b), &(c, d))) in self.slots.iter().zip(slots).enumerate() {
                if self.bytes[a as usize..b as usize] != data[c as usize..d as usize] {
                    variable |= 1 << i;
                }
            }
            variable |= self.variable;
        }
        self.bytes.clear();
        self.bytes.extend_from_slice(data);
        match (event, &mut self.event) {
            (Some(e), Some(kept)) => {
                kept.clear();
                kept.extend_from_slice(e);
            }
            (e, kept) => *kept = e.map(<[u8]>::to_vec),
        }
        self.one_line = one_line;
        self.slots.clear();
        self.slots.extend_from_slice(slots);
        self.text_slot = text_slot;
        self.variable = variable;
    }

    /// `data` with `slots` has the template's shape: the same bytes between all slots.
    fn same_shape(
        &self,
        event: Option<&[u8]>,
        data: &[u8],
        one_line: bool,
        slots: &[(u32, u32)],
        text_slot: Option<usize>,
    ) -> bool {
        if self.bytes.is_empty()
            || self.one_line != one_line
            || self.event.as_deref() != event
            || self.slots.len() != slots.len()
            || self.text_slot != text_slot
        {
            return false;
        }
        let (mut pt, mut pd) = (0usize, 0usize);
        for (&(a, b), &(c, d)) in self.slots.iter().zip(slots) {
            if self.bytes[pt..a as usize] != data[pd..c as usize] {
                return false;
            }
            pt = b as usize;
            pd = d as usize;
        }
        self.bytes[pt..] == data[pd..]
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
            let (stop, ascii) = string_stop(&text, 1);
            let want = body.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20)
                .map_or(text.len(), |p| p + 1);
            proptest::prop_assert_eq!(stop, want);
            proptest::prop_assert_eq!(ascii, text[1..stop].is_ascii());
        }
    }
}
