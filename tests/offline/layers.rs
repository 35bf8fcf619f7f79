//! The module layers of `src/lib.rs` hold: a module imports only from a
//! lower layer, the stages (one layer) never import each other, and no two
//! files import each other round a cycle.
//!
//! Imports are read from the source text: every `crate::a::b` path (in a
//! `use` or inline), every `super::` path, and every path through a child
//! module a file declares (`mod child;` then `child::x`). Comments are
//! skipped; macro paths (`crate::settings!`) are not modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A file module: `["block", "nft"]` for `src/block/nft.rs`, `[]` for lib.rs.
type Module = Vec<String>;

struct File {
    module: Module,
    code: String,
}

fn read_tree(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((path.clone(), std::fs::read_to_string(&path).unwrap()));
        }
    }
}

fn module_of(src: &Path, path: &Path) -> Option<Module> {
    let rel = path.strip_prefix(src).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop()?;
    match last.as_str() {
        "main.rs" if parts.is_empty() => None,
        "lib.rs" if parts.is_empty() => Some(parts),
        "mod.rs" => Some(parts),
        name => {
            parts.push(name.trim_end_matches(".rs").to_string());
            Some(parts)
        }
    }
}

/// The code without comments (line and block; doc comments are comments).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let (mut in_string, mut depth) = (false, 0usize);
    while let Some(c) = chars.next() {
        if depth > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                depth -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                depth += 1;
            }
            continue;
        }
        if in_string {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        match c {
            '"' => in_string = true,
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                depth = 1;
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path in `code` that starts with `head::` (`head` a whole word),
/// as its segments after the head; a path ending in a macro (`name!`) is
/// left out.
fn paths_after(code: &str, head: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let pattern = format!("{head}::");
    let mut from = 0;
    while let Some(found) = code[from..].find(&pattern) {
        let start = from + found;
        from = start + pattern.len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[from..];
        let mut segments = Vec::new();
        let mut tail = rest;
        loop {
            let len = tail
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            if len == 0 {
                // `use crate::{a, b::c}`: each item of the group.
                if tail.starts_with('{') {
                    let end = tail.find('}').unwrap_or(tail.len());
                    for item in tail[1..end].split(',') {
                        let item = item.trim();
                        if !item.is_empty() && item != "self" {
                            let mut path = segments.clone();
                            path.extend(
                                item.split("::")
                                    .map(|s| s.split_whitespace().next().unwrap_or("").to_string()),
                            );
                            out.push(path);
                        }
                    }
                }
                break;
            }
            let segment = &tail[..len];
            tail = &tail[len..];
            if tail.starts_with('!') {
                segments.clear();
                break;
            }
            segments.push(segment.to_string());
            if let Some(next) = tail.strip_prefix("::") {
                tail = next;
            } else {
                break;
            }
        }
        if !segments.is_empty() {
            out.push(segments);
        }
    }
    out
}

/// The file module a path names: its longest prefix that is a file.
fn resolve(modules: &BTreeSet<Module>, path: Vec<String>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// The modules a file declares with `mod name;`.
fn children(code: &str) -> Vec<String> {
    code.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?
                .strip_suffix(';')
                .map(str::to_string)
        })
        .collect()
}

fn edges(files: &[File]) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for file in files {
        let mut targets = Vec::new();
        for path in paths_after(&file.code, "crate") {
            targets.push(resolve(&modules, path));
        }
        for path in paths_after(&file.code, "super") {
            let mut full = file.module.clone();
            full.pop();
            let mut path = path.into_iter().peekable();
            while path.peek().map(String::as_str) == Some("super") {
                path.next();
                full.pop();
            }
            full.extend(path);
            targets.push(resolve(&modules, full));
        }
        for child in children(&file.code) {
            for path in paths_after(&file.code, &child) {
                let mut full = file.module.clone();
                full.push(child.clone());
                full.extend(path);
                targets.push(resolve(&modules, full));
            }
        }
        let from = edges.entry(file.module.clone()).or_default();
        for target in targets.into_iter().flatten() {
            if target != file.module && !target.is_empty() {
                from.insert(target);
            }
        }
    }
    edges
}

/// The layer of each top-level module, as `src/lib.rs` lists it.
fn layers() -> BTreeMap<String, u8> {
    tcpwatch::LAYERS
        .iter()
        .map(|(m, l)| (m.to_string(), *l))
        .collect()
}

/// The imports that break the layers, as `from -> to` lines.
fn violations(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let layers = layers();
    let mut out = Vec::new();
    for (from, targets) in edges {
        let Some(top) = from.first() else { continue };
        for to in targets {
            let other = &to[0];
            if other == top {
                continue;
            }
            let (Some(a), Some(b)) = (layers.get(top), layers.get(other)) else {
                out.push(format!(
                    "{} -> {}: module without a layer",
                    from.join("::"),
                    to.join("::")
                ));
                continue;
            };
            if b >= a {
                out.push(format!(
                    "{} (layer {a}) imports {} (layer {b})",
                    from.join("::"),
                    to.join("::")
                ));
            }
        }
    }
    out
}

/// The cycles between files (strongly connected sets of more than one).
fn cycles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    // Tarjan's algorithm, iteratively small enough to write recursively here.
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on_stack: BTreeSet<&'a Module>,
        next: usize,
        found: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(targets) = s.edges.get(v) {
            for w in targets {
                let w = s.edges.get_key_value(w).map_or(w, |(k, _)| k);
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[w].min(s.low[v]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.index[w].min(s.low[v]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut set = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                set.push(w.clone());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                set.sort();
                s.found.push(set);
            }
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn crate_files() -> Vec<File> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut raw = Vec::new();
    read_tree(&src, &mut raw);
    raw.into_iter()
        .filter_map(|(path, text)| {
            Some(File {
                module: module_of(&src, &path)?,
                code: strip_comments(&text),
            })
        })
        .collect()
}

#[test]
fn every_import_goes_down_a_layer() {
    let files = crate_files();
    assert!(files.len() > 40, "read only {} files", files.len());
    let edges = edges(&files);
    let bad = violations(&edges);
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.join("\n")
    );
    // Every top-level module has a layer, and every listed layer a module.
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|f| f.module.first().cloned())
        .collect();
    let listed: BTreeSet<String> = layers().into_keys().collect();
    assert_eq!(tops, listed, "src/ and LAYERS disagree");
}

#[test]
fn no_file_imports_itself_round_a_cycle() {
    let found = cycles(&edges(&crate_files()));
    let shown: Vec<String> = found
        .iter()
        .map(|set| {
            let names: Vec<String> = set.iter().map(|m| m.join("::")).collect();
            names.join(" <-> ")
        })
        .collect();
    assert!(found.is_empty(), "import cycles:\n{}", shown.join("\n"));
}

/// The checker itself: it sees each kind of import, and flags what it must.
#[test]
fn the_checker_sees_bad_imports_and_cycles() {
    let file = |module: &[&str], code: &str| File {
        module: module.iter().map(|s| s.to_string()).collect(),
        code: strip_comments(code),
    };
    let files = vec![
        file(
            &["source"],
            "pub mod pcap;\nuse crate::{event::Event, pipeline};\nfn f() { pcap::open() }\n",
        ),
        file(&["source", "pcap"], "use super::Thing; // crate::cli\n"),
        file(
            &["event"],
            "fn f() { crate::text::printable(\"crate::cli\"); crate::settings!{} }",
        ),
        file(&["text"], ""),
        file(&["pipeline"], ""),
        file(&["cli"], ""),
        file(&["settings"], ""),
    ];
    let edges = edges(&files);
    let bad = violations(&edges);
    assert_eq!(bad, ["source (layer 5) imports pipeline (layer 8)"]);
    let found = cycles(&edges);
    assert_eq!(found.len(), 1, "source <-> source::pcap");
    assert!(edges[&vec!["event".to_string()]].contains(&vec!["text".to_string()]));
    assert!(!edges[&vec!["event".to_string()]].contains(&vec!["settings".to_string()]));
}
