//! Small helpers over quick-xml for the libvirt XML this module writes
//! (pool, snapshot) and reads back (pool and domain descriptions).
//!
//! Owns: escaped writing and a flat element view for reading. Must not:
//! know any libvirt schema; callers pick the elements they need.

use std::io::Cursor;

use quick_xml::events::{BytesStart, BytesText, Event};
use quick_xml::{Reader, Writer};

use super::error::StorageError;

pub type XmlWriter = Writer<Cursor<Vec<u8>>>;

pub fn writer() -> XmlWriter {
    Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2)
}

pub fn finish(w: XmlWriter, what: &'static str) -> Result<String, StorageError> {
    String::from_utf8(w.into_inner().into_inner()).map_err(|e| StorageError::Internal {
        step: what,
        reason: e.to_string(),
    })
}

/// `<name>text</name>` with the text escaped by the writer.
pub fn text_elem(w: &mut XmlWriter, name: &str, text: &str) -> std::io::Result<()> {
    w.create_element(name)
        .write_text_content(BytesText::new(text))
        .map(drop)
}

pub fn render_err(what: &'static str, e: std::io::Error) -> StorageError {
    StorageError::Internal {
        step: what,
        reason: format!("rendering XML: {e}"),
    }
}

/// One element of a document: its slash-joined path from the root,
/// attributes and direct text, in document order.
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub path: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Flattens `xml` into its elements. Errors name `what` was parsed.
pub fn nodes(xml: &str, what: &'static str) -> Result<Vec<Node>, StorageError> {
    let bad = |e: String| StorageError::Internal {
        step: what,
        reason: format!("unreadable XML from libvirt: {e}"),
    };
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<usize> = Vec::new();
    let mut out: Vec<Node> = Vec::new();
    loop {
        match reader.read_event().map_err(|e| bad(e.to_string()))? {
            Event::Start(s) => {
                let idx = push(&mut out, &stack, &s).map_err(bad)?;
                stack.push(idx);
            }
            Event::Empty(s) => {
                push(&mut out, &stack, &s).map_err(bad)?;
            }
            Event::End(_) => {
                stack.pop();
            }
            Event::Text(t) => {
                if let Some(&i) = stack.last() {
                    let raw = t.decode().map_err(|e| bad(e.to_string()))?;
                    let s = quick_xml::escape::unescape(&raw).map_err(|e| bad(e.to_string()))?;
                    out[i].text.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(&i) = stack.last() {
                    let name = r.decode().map_err(|e| bad(e.to_string()))?;
                    let s = quick_xml::escape::unescape(&format!("&{name};"))
                        .map_err(|e| bad(e.to_string()))?
                        .into_owned();
                    out[i].text.push_str(&s);
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(out)
}

fn push(out: &mut Vec<Node>, stack: &[usize], s: &BytesStart<'_>) -> Result<usize, String> {
    let name = String::from_utf8_lossy(s.name().as_ref()).into_owned();
    let path = match stack.last() {
        Some(&p) => format!("{}/{name}", out[p].path),
        None => name,
    };
    let mut attrs = Vec::new();
    for a in s.attributes() {
        let a = a.map_err(|e| e.to_string())?;
        let k = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let v = a.unescape_value().map_err(|e| e.to_string())?.into_owned();
        attrs.push((k, v));
    }
    out.push(Node {
        path,
        attrs,
        text: String::new(),
    });
    Ok(out.len() - 1)
}

/// First node at `path`.
pub fn find<'a>(nodes: &'a [Node], path: &str) -> Option<&'a Node> {
    nodes.iter().find(|n| n.path == path)
}

/// Each element at `path` with its descendants, the element first. In the
/// flat view (document order) they are one contiguous run.
pub fn groups<'a>(nodes: &'a [Node], path: &str) -> Vec<&'a [Node]> {
    let inside = format!("{path}/");
    let mut out = Vec::new();
    let mut i = 0;
    while i < nodes.len() {
        if nodes[i].path != path {
            i += 1;
            continue;
        }
        let len = nodes[i + 1..]
            .iter()
            .take_while(|n| n.path.starts_with(&inside))
            .count();
        out.push(&nodes[i..=i + len]);
        i += len + 1;
    }
    out
}

/// Attribute `attr` of the first descendant at `path` inside `group`.
pub fn group_attr<'a>(group: &'a [Node], path: &str, attr: &str) -> Option<&'a str> {
    find(group, path).and_then(|n| n.attr(attr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_are_elements_with_their_descendants() {
        let x = "<d><disk n='a'><source file='/a'/><b><source file='/x'/></b></disk>\
                 <other/><disk n='b'/><disk n='c'><source file='/c'/></disk></d>";
        let nodes = nodes(x, "test").unwrap();
        let g = groups(&nodes, "d/disk");
        assert_eq!(g.iter().map(|g| g.len()).collect::<Vec<_>>(), vec![4, 1, 2]);
        assert_eq!(group_attr(g[0], "d/disk/source", "file"), Some("/a"));
        assert_eq!(group_attr(g[1], "d/disk/source", "file"), None);
        assert_eq!(group_attr(g[2], "d/disk/source", "file"), Some("/c"));
    }
}
