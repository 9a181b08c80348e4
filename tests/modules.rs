//! The gateway's modules import one another without a cycle: the check reads `src/**/*.rs`,
//! draws who uses whom (`crate::x::..`, `super::..`, `self::..` and a parent's uses of its child
//! modules, `use` trees expanded) and fails, printing the cycle with the references that close
//! it, when one module reaches itself again.
//!
//! The nodes are the top-level modules (`api`, `router`, ...), with everything under them counted
//! as theirs, except in the modules that hold backends ([`WITH_BACKENDS`]): there each child is a
//! node of its own, so the interface and its backends cannot lean on each other either (the
//! backends use the interface's contract; the interface only chooses among them). Comments and
//! unit tests (what follows `#[cfg(test)]` in a file) are not read: a doc link is no dependency,
//! and a test may use what it checks against.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules whose children are backends: each child is a node of its own.
const WITH_BACKENDS: [&str; 2] = ["feed", "store"];

/// References known to close a cycle, left out of the graph while work in progress on those
/// modules removes them, as (from, to) nodes. The ONE place for exceptions: delete each entry
/// once that work has landed, and keep the list empty from then on.
const KNOWN: &[(&str, &str)] = &[];

/// One module's file, as a module path (`["feed", "postgres", "changes"]`).
struct Source {
    path: PathBuf,
    module: Vec<String>,
    text: String,
}

fn sources(dir: &Path, module: &[String], out: &mut Vec<Source>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let name = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default().to_string();
        if path.is_dir() {
            let mut inner = module.to_vec();
            inner.push(name);
            sources(&path, &inner, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let mut m = module.to_vec();
            if !matches!(name.as_str(), "mod" | "lib" | "main") {
                m.push(name.clone());
            }
            if (module.is_empty() && name == "main") || name == "tests" {
                continue; // the binary (it uses the library by its crate name), unit tests
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            out.push(Source { path, module: m, text: code_of(&text) });
        }
    }
}

/// The text without comments and without the unit tests at the end.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let code = match line.find("//") {
            // `://` is a URL in a string, not a comment.
            Some(i) if !line[..i].ends_with(':') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths of a `use` tree (or a plain path) starting at `s`: `a::b::{c, d::e}` gives
/// `a::b::c` and `a::b::d::e`.
fn use_tree(s: &str) -> Vec<Vec<String>> {
    let (paths, _) = tree_at(s, 0);
    paths
}

fn tree_at(s: &str, mut i: usize) -> (Vec<Vec<String>>, usize) {
    let bytes = s.as_bytes();
    let mut prefix = Vec::new();
    loop {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < bytes.len() && bytes[i] == b'{' {
            let mut out = Vec::new();
            i += 1;
            loop {
                let (inner, next) = tree_at(s, i);
                out.extend(inner.into_iter().map(|p| [prefix.clone(), p].concat()));
                i = next;
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                match bytes.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => return (out, i + 1),
                    _ => return (out, i),
                }
                while i < bytes.len() && bytes[i].is_ascii_whitespace() {
                    i += 1;
                }
                if bytes.get(i) == Some(&b'}') {
                    return (out, i + 1);
                }
            }
        }
        let start = i;
        while i < bytes.len() && is_ident(bytes[i] as char) {
            i += 1;
        }
        if i == start {
            return (vec![prefix], i);
        }
        prefix.push(s[start..i].to_string());
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            return (vec![prefix], i);
        }
    }
}

/// Every module path `source` refers to, with the text that names it.
fn references(source: &Source, modules: &BTreeSet<Vec<String>>) -> Vec<(Vec<String>, String)> {
    let text = &source.text;
    let children: Vec<&Vec<String>> =
        modules.iter().filter(|m| m.len() == source.module.len() + 1 && m.starts_with(&source.module)).collect();
    let mut out = Vec::new();
    for (at, _) in text.char_indices() {
        if at > 0 && (is_ident(text[..at].chars().next_back().unwrap_or(' ')) || text[..at].ends_with("::")) {
            continue; // the middle of a word or of a longer path
        }
        let rest = &text[at..];
        let base: Vec<String> = if rest.starts_with("crate::") {
            Vec::new()
        } else if rest.starts_with("super::") || rest.starts_with("self::") {
            source.module.clone()
        } else if let Some(child) = children.iter().find(|c| {
            let name = c.last().map(String::as_str).unwrap_or_default();
            rest.starts_with(name) && rest[name.len()..].starts_with("::")
        }) {
            child[..child.len() - 1].to_vec()
        } else {
            continue;
        };
        let line: String = rest.chars().take_while(|c| *c != '\n' && *c != ';').collect();
        for path in use_tree(rest) {
            let mut module = base.clone();
            let mut segments = path.into_iter().peekable();
            if segments.peek().is_some_and(|s| s == "crate") {
                segments.next();
            }
            for segment in segments {
                match segment.as_str() {
                    "super" => {
                        module.pop();
                    }
                    "self" => {}
                    _ => module.push(segment),
                }
            }
            out.push((module, line.clone()));
        }
    }
    out
}

/// The node a module path belongs to (its top-level module, or a backend's child of it).
fn node_of(module: &[String], modules: &BTreeSet<Vec<String>>) -> Option<String> {
    // The longest prefix that is a module: the rest are items in it.
    let known = (1..=module.len()).rev().find(|n| modules.contains(&module[..*n]))?;
    let module = &module[..known];
    let top = module.first()?;
    match module.get(1) {
        Some(child) if WITH_BACKENDS.contains(&top.as_str()) => Some(format!("{top}::{child}")),
        _ => Some(top.clone()),
    }
}

type Edges = BTreeMap<String, BTreeMap<String, Vec<String>>>;

fn graph() -> Edges {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &[], &mut files);
    assert!(files.len() > 20, "read the sources under {}", src.display());
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| f.module.clone()).collect();
    let mut edges = Edges::new();
    for file in &files {
        let Some(from) = node_of(&file.module, &modules) else { continue };
        for (module, line) in references(file, &modules) {
            let Some(to) = node_of(&module, &modules) else { continue };
            if to != from && !KNOWN.contains(&(from.as_str(), to.as_str())) {
                let shown = file.path.strip_prefix(&src).unwrap_or(&file.path).display();
                let why = format!("src/{shown}: {}", line.trim());
                let whys = edges.entry(from.clone()).or_default().entry(to).or_default();
                if !whys.contains(&why) {
                    whys.push(why);
                }
            }
        }
    }
    edges
}

/// Every node `from` reaches.
fn reach(edges: &Edges, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(node) = stack.pop() {
        for next in edges.get(&node).into_iter().flat_map(|m| m.keys()) {
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    seen
}

#[test]
fn the_modules_have_no_cycle() {
    let edges = graph();
    let reached: BTreeMap<&String, BTreeSet<String>> = edges.keys().map(|n| (n, reach(&edges, n))).collect();
    let mut circles: BTreeSet<BTreeSet<String>> = BTreeSet::new();
    for (node, from_here) in &reached {
        if from_here.contains(*node) {
            // The modules this one reaches and that reach it back: one circle.
            let circle = from_here.iter().filter(|m| reached.get(m).is_some_and(|r| r.contains(*node))).cloned();
            circles.insert(circle.collect());
        }
    }
    let mut report = String::new();
    for circle in &circles {
        report.push_str(&format!("circle: {}\n", circle.iter().cloned().collect::<Vec<_>>().join(", ")));
        for from in circle {
            for (to, whys) in edges[from].iter().filter(|(to, _)| circle.contains(*to)) {
                for why in whys {
                    report.push_str(&format!("    {from} -> {to}: {why}\n"));
                }
            }
        }
    }
    assert!(circles.is_empty(), "module cycles (each circle, with the references inside it):\n{report}");
}

#[test]
fn the_check_sees_the_graph() {
    let edges = graph();
    let uses = |from: &str, to: &str| edges.get(from).is_some_and(|m| m.contains_key(to));
    assert!(uses("router", "feed"), "{edges:#?}");
    assert!(uses("store", "store::postgres") && uses("store::postgres", "store::types"));
    assert!(uses("feed::realtime", "feed") && uses("feed::postgres", "feed"));
    assert!(uses("server", "config"));
}
