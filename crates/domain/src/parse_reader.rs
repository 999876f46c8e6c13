//! The cursor the domain parsers share over quick-xml's event stream: child
//! elements, skipped subtrees, text and attribute values.
//!
//! Values are borrowed from the document whenever they need no rewriting (no
//! `&` to unescape, no line end to normalise): the reader is `from_str`, so
//! every slice quick-xml hands out lies inside the input `&str` and can be
//! re-sliced from it without validating UTF-8 again. This file knows nothing
//! of libvirt's elements; parse.rs and parse_io.rs do.

use std::borrow::Cow;
use std::str::FromStr;

use quick_xml::events::{BytesRef, BytesStart, BytesText, Event};
use quick_xml::Reader;

use super::error::DomainError;
use super::parse_attr::{same, AttrIter};

pub(super) type Res<T> = Result<T, DomainError>;

/// A child element: its start tag and whether it has content to consume.
pub(super) type Child<'a> = (BytesStart<'a>, bool);

pub(super) struct P<'a> {
    xml: &'a str,
    pub(super) r: Reader<&'a [u8]>,
    pub(super) notes: Vec<String>,
}

impl<'a> P<'a> {
    pub(super) fn new(xml: &'a str) -> Self {
        let mut r = Reader::from_str(xml);
        // The default, stated because the parser relies on it: a mismatched
        // end tag is an error, not a silently closed element.
        r.config_mut().check_end_names = true;
        P {
            xml,
            r,
            notes: Vec::new(),
        }
    }

    pub(super) fn err(&self, reason: impl Into<String>) -> DomainError {
        DomainError::Xml {
            position: self.r.buffer_position(),
            reason: reason.into(),
        }
    }

    pub(super) fn xml_err(&self, e: impl std::fmt::Display) -> DomainError {
        self.err(e.to_string())
    }

    pub(super) fn note(&mut self, what: String) {
        self.notes.push(what);
    }

    /// The next event, with quick-xml's error turned into ours.
    pub(super) fn event(&mut self) -> Res<Event<'a>> {
        match self.r.read_event() {
            Ok(ev) => Ok(ev),
            Err(e) => Err(self.xml_err(e)),
        }
    }

    /// The next child element of the element being read; None at its end tag.
    pub(super) fn child(&mut self) -> Res<Option<Child<'a>>> {
        loop {
            match self.event()? {
                Event::Start(e) => return Ok(Some((e, true))),
                Event::Empty(e) => return Ok(Some((e, false))),
                Event::End(_) => return Ok(None),
                Event::Eof => return Err(self.err("document ends inside an element")),
                _ => {}
            }
        }
    }

    /// Consumes an element the model does not use (quick-xml still checks
    /// that everything inside is well-formed).
    pub(super) fn skip(&mut self, (e, open): &Child<'a>) -> Res<()> {
        if *open {
            if let Err(er) = self.r.read_to_end(e.name()) {
                return Err(self.xml_err(er));
            }
        }
        Ok(())
    }

    /// `bytes`, a slice quick-xml cut from the document, as the same part of
    /// the document's `&str`: no UTF-8 check, no copy. None only for bytes
    /// that are not from the document or cut inside a character, which the
    /// slice reader never produces.
    fn doc_str(&self, bytes: &[u8]) -> Option<&'a str> {
        let start = (bytes.as_ptr() as usize).checked_sub(self.xml.as_ptr() as usize)?;
        self.xml.get(start..start.checked_add(bytes.len())?)
    }

    /// Text bytes as a string, decoded the slow way when not from the document.
    fn decoded(&self, bytes: &[u8]) -> Res<Cow<'a, str>> {
        match self.doc_str(bytes) {
            Some(s) => Ok(Cow::Borrowed(s)),
            None => match std::str::from_utf8(bytes) {
                Ok(s) => Ok(Cow::Owned(s.to_owned())),
                Err(e) => Err(self.xml_err(e)),
            },
        }
    }

    /// An attribute's value with its references resolved; borrowed unless it has any.
    fn attr_value(&self, e: &BytesStart<'a>, raw: &[u8]) -> Res<Cow<'a, str>> {
        let s = self.decoded(raw)?;
        if !raw.contains(&b'&') {
            return Ok(s);
        }
        match quick_xml::escape::unescape(&s) {
            Ok(v) => Ok(Cow::Owned(v.into_owned())),
            Err(er) => Err(self.bad(e, "attribute", &er.to_string())),
        }
    }

    /// Several attributes in one pass over the tag (most elements we read
    /// need more than one; re-scanning per key doubled the parse time). The
    /// first of duplicate attributes wins; a malformed tag is an error.
    pub(super) fn attrs<const N: usize>(
        &self,
        e: &BytesStart<'a>,
        keys: [&str; N],
    ) -> Res<[Option<Cow<'a, str>>; N]> {
        let mut out: [Option<Cow<'a, str>>; N] = std::array::from_fn(|_| None);
        for a in AttrIter::new(e.attributes_raw()) {
            let (key, raw) = a.map_err(|why| self.malformed(e, why))?;
            if let Some(i) = keys.iter().position(|k| same(k.as_bytes(), key)) {
                if out[i].is_none() {
                    out[i] = Some(self.attr_value(e, raw)?);
                }
            }
        }
        Ok(out)
    }

    /// The value of attribute `key`, if present.
    pub(super) fn attr(&self, e: &BytesStart<'a>, key: &str) -> Res<Option<Cow<'a, str>>> {
        let [v] = self.attrs(e, [key])?;
        Ok(v)
    }

    pub(super) fn attr_string(&self, e: &BytesStart<'a>, key: &str) -> Res<Option<String>> {
        Ok(self.attr(e, key)?.map(Cow::into_owned))
    }

    /// A numeric attribute; malformed numbers are errors naming the attribute.
    pub(super) fn attr_num<T: FromStr>(&self, e: &BytesStart<'a>, key: &str) -> Res<Option<T>> {
        let v = self.attr(e, key)?;
        self.opt_num(e, key, v)
    }

    /// A number from an attribute value already read (see `attrs`).
    pub(super) fn opt_num<T: FromStr>(
        &self,
        e: &BytesStart<'a>,
        key: &str,
        v: Option<Cow<'a, str>>,
    ) -> Res<Option<T>> {
        match v {
            None => Ok(None),
            Some(v) => num(&v).map(Some).ok_or_else(|| self.bad(e, key, &v)),
        }
    }

    /// A start tag whose attributes are not `name='value'` pairs.
    pub(super) fn malformed(&self, e: &BytesStart, why: &str) -> DomainError {
        let el = String::from_utf8_lossy(e.name().into_inner()).into_owned();
        self.err(format!("<{el}> has {why}"))
    }

    pub(super) fn bad(&self, e: &BytesStart<'a>, what: &str, value: &str) -> DomainError {
        let el = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        self.err(format!("<{el}> {what}: cannot read {value:?}"))
    }

    /// A text node as it reads, borrowed unless it needs XML 1.1 end-of-line
    /// normalisation (what quick-xml's `xml_content` would rewrite).
    fn text_node(&self, t: &BytesText<'a>) -> Res<Cow<'a, str>> {
        let raw: &[u8] = t;
        if !raw.iter().any(|&b| matches!(b, b'\r' | 0xC2 | 0xE2)) {
            if let Some(s) = self.doc_str(raw) {
                return Ok(Cow::Borrowed(s));
            }
        }
        t.xml_content()
            .map(|s| Cow::Owned(s.into_owned()))
            .map_err(|e| self.xml_err(e))
    }

    /// Reads an element's text; nested elements are skipped. Borrowed from
    /// the document when it is one plain text node (the usual case).
    pub(super) fn text(&mut self, open: bool) -> Res<Cow<'a, str>> {
        let mut out = Cow::Borrowed("");
        if !open {
            return Ok(out);
        }
        loop {
            match self.event()? {
                Event::Text(t) => {
                    let s = self.text_node(&t)?;
                    append(&mut out, s);
                }
                Event::CData(t) => {
                    let s = t.decode().map_err(|e| self.xml_err(e))?;
                    out.to_mut().push_str(&s);
                }
                Event::GeneralRef(r) => self.push_ref(out.to_mut(), &r)?,
                Event::Start(e) => self.skip(&(e, true))?,
                Event::End(_) => return Ok(out),
                Event::Eof => return Err(self.err("document ends inside an element")),
                _ => {}
            }
        }
    }

    fn push_ref(&self, out: &mut String, r: &BytesRef) -> Res<()> {
        if let Some(c) = r.resolve_char_ref().map_err(|e| self.xml_err(e))? {
            out.push(c);
            return Ok(());
        }
        let name = r.decode().map_err(|e| self.xml_err(e))?;
        match quick_xml::escape::resolve_predefined_entity(&name) {
            Some(s) => out.push_str(s),
            None => return Err(self.err(format!("unknown entity &{name};"))),
        }
        Ok(())
    }

    /// A numeric element value: exactly one text node, nothing else.
    pub(super) fn text_num<T: FromStr>(&mut self, c: &Child<'a>) -> Res<T> {
        if c.1 {
            if let Event::Text(t) = self.event()? {
                let t = self.text_node(&t)?;
                if let Event::End(_) = self.event()? {
                    return num(&t).ok_or_else(|| self.bad(&c.0, "value", &t));
                }
            }
        }
        Err(self.bad(&c.0, "value", "(not a plain number)"))
    }
}

/// Appends `s` to `out`, keeping `out` borrowed while it is the only piece.
fn append<'a>(out: &mut Cow<'a, str>, s: Cow<'a, str>) {
    if out.is_empty() {
        *out = s;
    } else {
        out.to_mut().push_str(&s);
    }
}

pub(super) fn num<T: FromStr>(s: &str) -> Option<T> {
    s.trim().parse().ok()
}

pub(super) fn yes(v: Option<&str>) -> bool {
    matches!(v, Some("yes" | "on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first element's start tag, with the cursor after it.
    fn first(xml: &str) -> (P<'_>, Child<'_>) {
        let mut p = P::new(xml);
        let c = p.child().expect("well-formed").expect("an element");
        (p, c)
    }

    #[test]
    fn plain_values_are_borrowed_escaped_ones_resolved() {
        let (p, c) = first("<a x='plain' y='a&amp;b&#33;' z=\"q'\"/>");
        let [x, y, z, w] = p.attrs(&c.0, ["x", "y", "z", "w"]).expect("attrs");
        assert!(matches!(x, Some(Cow::Borrowed("plain"))));
        assert_eq!(y.as_deref(), Some("a&b!"));
        assert_eq!(z.as_deref(), Some("q'"));
        assert_eq!(w, None);
    }

    #[test]
    fn malformed_attributes_and_unknown_entities_are_errors() {
        for xml in ["<a x='1' y/>", "<a x=1/>", "<a x='&bogus;'/>"] {
            let (p, c) = first(xml);
            let e = p.attrs(&c.0, ["x"]).expect_err(xml);
            assert!(matches!(e, DomainError::Xml { .. }), "{xml}: {e}");
        }
    }

    #[test]
    fn text_is_borrowed_unless_it_must_be_rewritten() {
        let (mut p, c) = first("<a> two words </a>");
        assert!(matches!(p.text(c.1), Ok(Cow::Borrowed(" two words "))));
        let (mut p, c) = first("<a>x\r\ny&lt;<![CDATA[<z>]]><b>skipped</b>&#65;</a>");
        assert_eq!(p.text(c.1).expect("text"), "x\ny<<z>A");
    }

    #[test]
    fn numbers_must_be_one_plain_text_node() {
        let (mut p, c) = first("<a> 42 </a>");
        assert_eq!(p.text_num::<u32>(&c).expect("number"), 42);
        for xml in ["<a>4<!-- c -->2</a>", "<a/>", "<a>x</a>", "<a><b/>1</a>"] {
            let (mut p, c) = first(xml);
            assert!(p.text_num::<u32>(&c).is_err(), "{xml}");
        }
    }
}
