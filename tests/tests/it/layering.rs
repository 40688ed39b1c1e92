//! The code's shape, checked from its source: inside each crate the modules depend one way (no
//! cycle between a crate's top-level modules; the crate root, which declares and re-exports
//! them, aside), and no function outside tests grows past [`MAX_FN_LINES`] lines.
//!
//! The scan is textual: comments and string literals are blanked, then every `crate::x` path
//! (also inside `use crate::{x, y}`) is an edge to module `x`, or to the module whose item the
//! crate root re-exports under that name.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest function body (signature line to closing brace) outside tests.
const MAX_FN_LINES: usize = 120;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()) {
            if e.is_dir() {
                stack.push(e);
            } else if e.extension().is_some_and(|x| x == "rs") {
                out.push(e);
            }
        }
    }
    out.sort();
    out
}

/// The source with comments, string and char literals blanked (newlines kept), so that
/// braces and paths are only the code's.
fn code_only(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let blank = |s: &str, out: &mut String| {
        out.extend(s.chars().map(|c| if c == '\n' { '\n' } else { ' ' }))
    };
    let mut i = 0;
    while i < b.len() {
        let rest = &src[i..];
        let end = if rest.starts_with("//") {
            rest.find('\n').unwrap_or(rest.len())
        } else if rest.starts_with("/*") {
            rest.find("*/").map_or(rest.len(), |j| j + 2)
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].bytes().take_while(|&c| c == b'#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            rest[2 + hashes..]
                .find(&close)
                .map_or(rest.len(), |j| 2 + hashes + j + close.len())
        } else if rest.starts_with('"') {
            let mut j = 1;
            while j < rest.len() && rest.as_bytes()[j] != b'"' {
                j += if rest.as_bytes()[j] == b'\\' { 2 } else { 1 };
            }
            (j + 1).min(rest.len())
        } else if rest.starts_with('\'') && char_literal_len(rest).is_some() {
            char_literal_len(rest).unwrap()
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
            continue;
        };
        blank(&rest[..end], &mut out);
        i += end;
    }
    out
}

/// Length of a char literal at the start of `s` (`'a'`, `'\n'`, `'{'`), `None` for a lifetime.
fn char_literal_len(s: &str) -> Option<usize> {
    let mut chars = s.char_indices().skip(1);
    let (_, c) = chars.next()?;
    if c == '\\' {
        return s[2..].find('\'').map(|j| j + 3);
    }
    let (j, close) = chars.next()?;
    (close == '\'').then_some(j + 1)
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names a `crate::` path at the start of `rest` reaches: `x` of `crate::x`, or every
/// first segment inside `crate::{x, y::z}`.
fn crate_path_heads(rest: &str) -> Vec<String> {
    if let Some(group) = rest.strip_prefix('{') {
        let body = &group[..group.find('}').unwrap_or(group.len())];
        return body
            .split(',')
            .filter_map(|p| {
                let head: String = p.trim().chars().take_while(|&c| is_ident(c)).collect();
                (!head.is_empty()).then_some(head)
            })
            .collect();
    }
    let head: String = rest.chars().take_while(|&c| is_ident(c)).collect();
    vec![head]
}

/// The top-level module a source file belongs to (`None` for the crate root and binaries).
fn module_of(src_dir: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src_dir).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first {
        "lib.rs" | "main.rs" | "bin" => None,
        f => Some(f.trim_end_matches(".rs").to_string()),
    }
}

/// Items the crate root re-exports (`pub use m::{A, B}` / `pub use m::A`), by name.
fn root_reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for stmt in lib.split(';') {
        let Some(path) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((m, items)) = path.split_once("::") else {
            continue;
        };
        if !modules.contains(m.trim()) {
            continue;
        }
        for item in items
            .split(|c: char| !is_ident(c))
            .filter(|s| !s.is_empty())
        {
            out.insert(item.to_string(), m.trim().to_string());
        }
    }
    out
}

/// The module graph of the crate whose sources are `src_dir`.
fn module_graph(src_dir: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = rust_files(src_dir);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src_dir, f)).collect();
    let lib = std::fs::read_to_string(src_dir.join("lib.rs"))
        .map(|s| code_only(&s))
        .unwrap_or_default();
    let reexports = root_reexports(&lib, &modules);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(me) = module_of(src_dir, f) else {
            continue;
        };
        let code = code_only(&std::fs::read_to_string(f).unwrap());
        let deps = graph.entry(me.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            if at > 0 && is_ident(code[..at].chars().last().unwrap()) {
                continue; // `mosr_crate::`, not `crate::`
            }
            for head in crate_path_heads(&code[at + "crate::".len()..]) {
                let target = if modules.contains(&head) {
                    Some(head)
                } else {
                    reexports.get(&head).cloned()
                };
                if let Some(t) = target.filter(|t| *t != me) {
                    deps.insert(t);
                }
            }
        }
    }
    graph
}

/// A module cycle of `graph`, as a path that returns to its start, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        v: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == v) {
            let mut cycle = path[i..].to_vec();
            cycle.push(v.to_string());
            return Some(cycle);
        }
        if done.contains(v) {
            return None;
        }
        path.push(v.to_string());
        for w in graph.get(v).into_iter().flatten() {
            if let Some(c) = visit(w, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(v.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|v| visit(v, graph, &mut done, &mut Vec::new()))
}

/// Every crate's `src/`: the library crates and xtask.
fn source_dirs() -> Vec<PathBuf> {
    let root = workspace();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .filter(|p| p.is_dir())
        .collect();
    dirs.push(root.join("xtask/src"));
    dirs.sort();
    dirs
}

#[test]
fn layering_no_module_cycle_inside_a_crate() {
    let mut cycles = Vec::new();
    for dir in source_dirs() {
        let graph = module_graph(&dir);
        if let Some(c) = find_cycle(&graph) {
            cycles.push(format!("{}: {}", dir.display(), c.join(" -> ")));
        }
    }
    assert!(cycles.is_empty(), "module cycles:\n{}", cycles.join("\n"));
}

/// (name, first line, lines) of every function body in `code` outside `#[cfg(test)]` modules.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let test_mod = code.find("#[cfg(test)]").unwrap_or(code.len());
    let mut out = Vec::new();
    for (at, _) in code[..test_mod].match_indices("fn ") {
        if at > 0 && is_ident(code[..at].chars().last().unwrap()) {
            continue;
        }
        let name: String = code[at + 3..]
            .chars()
            .take_while(|&c| is_ident(c))
            .collect();
        let Some(open) = code[at..].find(['{', ';']).map(|j| at + j) else {
            continue;
        };
        if name.is_empty() || code.as_bytes()[open] == b';' {
            continue; // a declaration without a body, or `fn(` in a type
        }
        let mut depth = 0;
        let close = code[open..]
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map_or(code.len(), |(j, _)| open + j);
        let first = code[..at].matches('\n').count() + 1;
        let last = code[..close].matches('\n').count() + 1;
        out.push((name, first, last - first + 1));
    }
    out
}

#[test]
fn layering_functions_fit_on_a_screen() {
    let root = workspace();
    let mut over = Vec::new();
    for dir in source_dirs() {
        for file in rust_files(&dir) {
            let rel = file.strip_prefix(&root).unwrap().to_string_lossy();
            let code = code_only(&std::fs::read_to_string(&file).unwrap());
            for (name, line, len) in functions(&code) {
                if len > MAX_FN_LINES {
                    over.push(format!("{rel}:{line} `{name}`: {len} lines"));
                }
            }
        }
    }
    assert!(
        over.is_empty(),
        "functions over {MAX_FN_LINES} lines (split them):\n{}",
        over.join("\n")
    );
}

#[test]
fn layering_scanner_sees_code_not_comments() {
    let src = "// crate::a in a comment\nuse crate::{b, c::D};\nfn f() { let s = \"{ crate::e\"; let c = '{'; }\n";
    let code = code_only(src);
    assert!(!code.contains("crate::a") && !code.contains("crate::e"));
    let heads: Vec<_> = code
        .match_indices("crate::")
        .flat_map(|(i, _)| crate_path_heads(&code[i + 7..]))
        .collect();
    assert_eq!(heads, ["b", "c"]);
    assert_eq!(functions(&code), [("f".to_string(), 3, 1)]);
}
