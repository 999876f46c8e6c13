//! The layering check: inside every crate of the workspace, no two
//! top-level modules import each other, directly or through others.
//!
//! Cargo already refuses cycles between crates; this keeps the modules of
//! one crate from growing back into a knot (config ↔ link, vm ↔ handlers,
//! dispatch → metrics → status → dispatch, as they once were). It reads the
//! sources: every `crate::<module>` path outside comments and
//! `#[cfg(test)]` is an edge.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

#[test]
fn no_crate_has_a_cycle_between_its_top_level_modules() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut checked = 0;
    for entry in std::fs::read_dir(&crates).unwrap() {
        let src = entry.unwrap().path().join("src");
        if !src.is_dir() {
            continue;
        }
        let graph = module_graph(&src);
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "{}: top-level modules import each other: {}",
                src.display(),
                cycle.join(" -> ")
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} crates found under {}",
        crates.display()
    );
}

#[test]
fn the_check_sees_a_cycle() {
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&g), None);
    g.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g).map(|c| c.len()), Some(4), "a -> b -> c -> a");
    let uses = crate_refs(
        "use crate::{config::Config, link::{self, X}, vm};\nfn f() { crate::ops::start(); }",
    );
    assert_eq!(
        uses,
        ["config", "link", "ops", "vm"].map(String::from).into()
    );
}

/// Module name → the other top-level modules it refers to.
fn module_graph(src: &Path) -> Graph {
    let modules: BTreeMap<String, Vec<PathBuf>> = std::fs::read_dir(src)
        .unwrap()
        .filter_map(|e| {
            let p = e.ok()?.path();
            let name = p.file_stem()?.to_str()?.to_string();
            (!matches!(name.as_str(), "lib" | "main")).then_some((name, p))
        })
        .fold(BTreeMap::new(), |mut m, (name, p)| {
            m.entry(name).or_default().extend(rust_files(&p));
            m
        });
    let mut graph = Graph::new();
    for (name, files) in &modules {
        let deps = graph.entry(name.clone()).or_default();
        for f in files {
            let text = std::fs::read_to_string(f).unwrap();
            let product = text.split("#[cfg(test)]").next().unwrap_or_default();
            // Doc and line comments may name modules without using them.
            let code: Vec<&str> = product
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect();
            deps.extend(
                crate_refs(&code.join("\n"))
                    .into_iter()
                    .filter(|t| t != name && modules.contains_key(t)),
            );
        }
    }
    graph
}

fn rust_files(p: &Path) -> Vec<PathBuf> {
    if p.is_dir() {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            out.extend(rust_files(&e.unwrap().path()));
        }
        out
    } else if p.extension().is_some_and(|e| e == "rs") {
        vec![p.to_path_buf()]
    } else {
        Vec::new()
    }
}

/// The first segment of every `crate::` path, including each member of a
/// `crate::{a::X, b}` group.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => out.extend(group_heads(group)),
            None => out.extend(ident(rest)),
        }
    }
    out
}

/// The leading identifier of each member of a brace group (depth 1).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut at_member = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => at_member = true,
            c if at_member && !c.is_whitespace() => {
                heads.extend(ident(&group[i..]));
                at_member = false;
            }
            _ => {}
        }
    }
    heads
}

fn ident(s: &str) -> Option<String> {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (end > 0).then(|| s[..end].to_string())
}

/// A cycle as a path that starts and ends at the same module, if any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        g: &Graph,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for next in g.get(n).into_iter().flatten() {
            if let Some(c) = visit(next, g, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    g.keys()
        .find_map(|n| visit(n, g, &mut Vec::new(), &mut done))
}
