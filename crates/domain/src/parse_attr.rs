//! Splits the attribute part of a start tag quick-xml has already cut out of
//! the document into `(name, raw value)` pairs, borrowing both.
//!
//! quick-xml's `Attributes` iterator does the same work in about 1.5 times
//! the instructions (measured: 4% of a whole parse of a running domain's
//! dumpxml, attribute reading being our largest cost on top of the event
//! walk). The rules are quick-xml's strict (non-HTML) ones without the
//! duplicate check, so the two accept and reject the same tags (a property
//! test compares them). This file must not unescape or interpret values:
//! parse_reader.rs does that.

/// XML whitespace, as quick-xml defines it.
#[inline]
fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[inline]
fn skip_ws(raw: &[u8], mut i: usize) -> usize {
    while i < raw.len() && is_ws(raw[i]) {
        i += 1;
    }
    i
}

/// Index of the first `b` at or after `i`, if any. A plain indexed loop: most
/// values are a few bytes long, where it beats memchr's setup.
#[inline]
fn find(raw: &[u8], mut i: usize, b: u8) -> Option<usize> {
    while i < raw.len() {
        if raw[i] == b {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// End of the name starting at `i`: the first `=` or whitespace.
#[inline]
fn name_end(raw: &[u8], mut i: usize) -> usize {
    while i < raw.len() && raw[i] != b'=' && !is_ws(raw[i]) {
        i += 1;
    }
    i
}

/// Byte-wise equality without a call to memcmp (names are a few bytes).
#[inline]
pub(super) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// One attribute: its name and its raw (still escaped) value.
pub(super) type Attr<'t> = (&'t [u8], &'t [u8]);

/// The `name='value'` pairs of `raw` (what follows the element name); stops
/// at the first malformed pair, which it reports once.
pub(super) struct AttrIter<'t> {
    raw: &'t [u8],
    pos: usize,
}

impl<'t> AttrIter<'t> {
    pub(super) fn new(raw: &'t [u8]) -> Self {
        AttrIter { raw, pos: 0 }
    }

    #[inline]
    fn pair(&mut self, start: usize) -> Result<Attr<'t>, &'static str> {
        let raw = self.raw;
        // The first byte always belongs to the name, even a '=' (quick-xml's
        // rule: `<a ='1'>` is a name "='1'" without a value, an error).
        let key_end = name_end(raw, start + 1);
        let eq = skip_ws(raw, key_end);
        if eq >= raw.len() || raw[eq] != b'=' {
            return Err("an attribute without '=' and a value");
        }
        let open = skip_ws(raw, eq + 1);
        let quote = match raw.get(open) {
            Some(&q @ (b'\'' | b'"')) => q,
            _ => return Err("an attribute value without quotes"),
        };
        let close =
            find(raw, open + 1, quote).ok_or("an attribute value without its closing quote")?;
        self.pos = close + 1;
        Ok((&raw[start..key_end], &raw[open + 1..close]))
    }
}

impl<'t> Iterator for AttrIter<'t> {
    type Item = Result<Attr<'t>, &'static str>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        let start = skip_ws(self.raw, self.pos);
        if start >= self.raw.len() {
            return None;
        }
        let item = self.pair(start);
        if item.is_err() {
            self.pos = self.raw.len();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::AttrIter;
    use proptest::prelude::*;
    use quick_xml::events::BytesStart;

    type Pairs = (Vec<(Vec<u8>, Vec<u8>)>, bool);

    /// Pairs up to the first error, and whether there was one.
    fn ours(raw: &[u8]) -> Pairs {
        let mut out = Vec::new();
        for a in AttrIter::new(raw) {
            match a {
                Ok((k, v)) => out.push((k.to_vec(), v.to_vec())),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    fn quick_xml(raw: &[u8]) -> Pairs {
        let mut tag = b"t".to_vec();
        tag.extend_from_slice(raw);
        let e = BytesStart::from_content(String::from_utf8_lossy(&tag).into_owned(), 1);
        let mut it = e.attributes();
        it.with_checks(false);
        let mut out = Vec::new();
        for a in it {
            match a {
                Ok(a) => out.push((a.key.as_ref().to_vec(), a.value.to_vec())),
                Err(_) => return (out, true),
            }
        }
        (out, false)
    }

    #[test]
    fn splits_like_quick_xml() {
        let cases: &[&[u8]] = &[
            b"",
            b"   ",
            b" a='1'",
            b" a = \"x y\"  b='2' ",
            b" a='1'b='2'",
            b" a='it''s'",
            b" a=\"'\" b='\"'",
            b" a",
            b" a ",
            b" a b='1'",
            b" a=1",
            b" a='1",
            b" ='1'",
            b" a=",
            b"\ta\n=\r'&amp;'",
            b" a='1' a='2'",
        ];
        for raw in cases {
            assert_eq!(
                ours(raw),
                quick_xml(raw),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    proptest! {
        #[test]
        fn splits_like_quick_xml_on_any_tag(raw in "[ab= '\"\t&;x]{0,24}") {
            let raw = format!(" {raw}");
            prop_assert_eq!(ours(raw.as_bytes()), quick_xml(raw.as_bytes()));
        }
    }
}
