//! The map and the house rules, kept true: ARCHITECTURE.md lists every source file of
//! both crates (and only files that exist); no file or function grows past the limits;
//! the client's imports run one way (the engine knows no front end, the journal knows
//! neither, and no files import each other in a circle); every feature is in the
//! feature tables.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The source folders of the two crates.
const SOURCES: [&str; 2] = ["src", "mock/src"];
const MAX_CODE_LINES: usize = 450;
const MAX_FUNCTION_LINES: usize = 80;

/// Every `.rs` file under `dir`, as a path relative to the repository's root.
fn rust_files(dir: &Path, into: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(ROOT).unwrap();
            into.insert(relative.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn source_files() -> BTreeSet<String> {
    let mut files = BTreeSet::new();
    for dir in SOURCES {
        rust_files(&Path::new(ROOT).join(dir), &mut files);
    }
    files
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(relative)).unwrap()
}

/// The files ARCHITECTURE.md's listings name: the first word of each line of its
/// `text` blocks that starts at the margin (an indented one continues the line above),
/// when that word is a `.rs` path.
fn mapped(text: &str) -> BTreeSet<String> {
    let mut listed = BTreeSet::new();
    let mut in_block = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_block = line == "```text";
            continue;
        }
        let first = line.split(' ').next().unwrap_or("");
        if in_block && first.ends_with(".rs") {
            listed.insert(first.to_owned());
        }
    }
    listed
}

#[test]
fn architecture_md_lists_every_source_file_and_only_those() {
    let listed = mapped(&read("ARCHITECTURE.md"));
    let files = source_files();
    let missing: Vec<_> = files.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&files).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "ARCHITECTURE.md is out of date.\nnot listed: {missing:?}\nlisted but gone: {stale:?}"
    );
}

#[test]
fn the_map_reader_finds_what_it_should() {
    let text = "intro src/lib.rs\n```text\nsrc/a.rs   one\n           src/b.rs not first\nmock/src/c.rs\n```\n```rust\nsrc/d.rs\n```\n";
    let found: Vec<_> = mapped(text).into_iter().collect();
    assert_eq!(found, ["mock/src/c.rs", "src/a.rs"]);
}

/// A file's text without its `#[cfg(test)]` module (the first one, which by the house
/// style is at the end).
fn without_tests(text: &str) -> &str {
    let mut at = 0;
    while let Some(found) = text[at..].find("#[cfg(test)]\n") {
        let start = at + found;
        let next = text[start + 13..].trim_start();
        if next.starts_with("mod ") || next.starts_with("pub(super) mod ") {
            return &text[..start];
        }
        at = start + 13;
    }
    text
}

/// Lines of code: not blank, not a comment.
fn code_lines(text: &str) -> usize {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .count()
}

/// Each function's name and length in lines, from its `fn` line to the closing brace
/// at its own indentation (rustfmt's layout).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let mut rest = trimmed;
        for prefix in ["pub(crate) ", "pub(super) ", "pub ", "async ", "const "] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        let Some(signature) = rest.strip_prefix("fn ") else {
            continue;
        };
        let name: String = signature
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let Some(open) = (at..lines.len()).find(|&i| {
            let l = lines[i].trim_end();
            l.ends_with('{') || l.ends_with(';')
        }) else {
            continue;
        };
        if lines[open].trim_end().ends_with(';') {
            continue; // a declaration without a body
        }
        let close = format!("{indent}}}");
        if let Some(end) = (open + 1..lines.len()).find(|&i| lines[i] == close) {
            found.push((name, at + 1, end - at + 1));
        }
    }
    found
}

#[test]
fn no_file_or_function_grows_past_the_limits() {
    let mut over = Vec::new();
    for file in source_files() {
        let text = read(&file);
        let code = without_tests(&text);
        let lines = code_lines(code);
        if lines > MAX_CODE_LINES {
            over.push(format!(
                "{file}: {lines} lines of code (at most {MAX_CODE_LINES})"
            ));
        }
        for (name, line, length) in functions(code) {
            if length > MAX_FUNCTION_LINES {
                over.push(format!(
                    "{file}:{line}: fn {name} is {length} lines (at most {MAX_FUNCTION_LINES})"
                ));
            }
        }
    }
    assert!(over.is_empty(), "split these:\n{}", over.join("\n"));
}

#[test]
fn the_limit_readers_count_what_they_should() {
    let text = "// a comment\nfn short() {\n    let a = 1;\n\n    // why\n}\n\nimpl X {\n    pub(crate) async fn method(\n        &self,\n    ) -> u8 {\n        1\n    }\n}\n#[cfg(test)]\nmod tests {\n    fn hidden() {}\n}\n";
    let code = without_tests(text);
    assert!(!code.contains("hidden"));
    assert_eq!(code_lines(code), 10);
    assert_eq!(
        functions(code),
        [("short".into(), 2, 5), ("method".into(), 9, 5)]
    );
}

/// A client module's path: `src/retry/engine.rs` is `retry::engine`, a `mod.rs` its
/// folder's, `lib.rs` the root.
fn module_of(file: &str) -> Vec<String> {
    let relative = file
        .strip_prefix("src/")
        .unwrap()
        .strip_suffix(".rs")
        .unwrap();
    let mut path: Vec<String> = relative.split('/').map(str::to_owned).collect();
    if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
        path.pop();
    }
    path
}

/// The paths a `use` tree names, its braces expanded: `a::{b, c::{d}}` is `a::b` and
/// `a::c::d`.
fn expand(prefix: &str, tree: &str, into: &mut Vec<String>) {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or("").trim();
        if !path.is_empty() {
            into.push(format!("{prefix}{path}"));
        }
        return;
    };
    let head = format!("{prefix}{}", &tree[..open]);
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&head, &inner[start..i], into);
                start = i + 1;
            }
            _ => {}
        }
    }
    expand(&head, &inner[start..], into);
}

/// What a file refers to: each `use` (braces expanded) and each path written in code
/// that starts at `crate`, `super` or `self`, or, in a `mod.rs` or `lib.rs`, at one of
/// its own child modules (outside its re-exports).
fn references(code: &str, children: &[String]) -> Vec<String> {
    let code: String = code
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at + 4..];
        let end = tail.find(';').unwrap_or(tail.len());
        let reexport = rest[..at].trim_end().ends_with(')') || rest[..at].ends_with("pub ");
        if !before.is_some_and(|c| c.is_alphanumeric() || c == '_') && !reexport {
            expand("", &tail[..end].replace('\n', " "), &mut found);
        }
        rest = &tail[end.min(tail.len())..];
    }
    let starts: Vec<String> = ["crate::", "super::", "self::"]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(children.iter().map(|c| format!("{c}::")))
        .collect();
    for line in code.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("use ") || trimmed.starts_with("pub") || trimmed.starts_with("mod ")
        {
            continue;
        }
        for start in &starts {
            let mut from = 0;
            while let Some(at) = line[from..].find(start.as_str()) {
                let at = from + at;
                let before = line[..at].chars().next_back();
                let path: String = line[at..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    found.push(path.trim_end_matches(':').to_owned());
                }
                from = at + start.len();
            }
        }
    }
    found
}

/// The module a reference lands in, from `module` (the file's own): the longest prefix
/// of its path that is a module. `None` for the public vocabulary (`crate::Error`,
/// what the root re-exports) and for anything outside the crate.
fn resolve(
    reference: &str,
    module: &[String],
    is_parent: bool,
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut parts: Vec<&str> = reference.split("::").filter(|p| !p.is_empty()).collect();
    let mut path: Vec<String> = match parts.first() {
        Some(&"crate") => {
            parts.remove(0);
            Vec::new()
        }
        Some(&"self") => {
            parts.remove(0);
            module.to_vec()
        }
        Some(&"super") => {
            let mut path = module.to_vec();
            while parts.first() == Some(&"super") {
                parts.remove(0);
                path.pop();
            }
            path
        }
        Some(_) if is_parent => module.to_vec(),
        _ => return None,
    };
    let base = path.len();
    path.extend(parts.iter().map(|p| (*p).to_owned()));
    (base + 1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
        .or_else(|| (base > 0).then(|| path[..base].to_vec()))
}

/// The client's module graph: each module and the modules it refers to.
fn client_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let files: Vec<String> = source_files()
        .into_iter()
        .filter(|f| f.starts_with("src/"))
        .collect();
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_of(f)).collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(file);
        let is_parent = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        let children: Vec<String> = modules
            .iter()
            .filter(|m| m.len() == module.len() + 1 && m.starts_with(&module))
            .map(|m| m.last().unwrap().clone())
            .filter(|_| is_parent)
            .collect();
        let text = read(file);
        let mut edges = BTreeSet::new();
        for reference in references(without_tests(&text), &children) {
            let parent = is_parent && children.iter().any(|c| reference.starts_with(c.as_str()));
            if let Some(target) = resolve(&reference, &module, parent, &modules) {
                if target != module {
                    edges.insert(target);
                }
            }
        }
        graph.insert(module, edges);
    }
    graph
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib".into()
    } else {
        module.join("/")
    }
}

/// A circle of imports, if the graph has one.
fn circle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<String>> {
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        done: &mut BTreeSet<Vec<String>>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            return Some(stack[at..].iter().map(|m| name(m)).collect());
        }
        if !done.insert(node.clone()) {
            return None;
        }
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(found) = visit(next, graph, done, stack) {
                return Some(found);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut done, &mut Vec::new()))
}

#[test]
fn the_clients_imports_run_one_way() {
    let graph = client_graph();
    let front_end = [
        "client",
        "builder",
        "request",
        "operation",
        "inner",
        "settings",
        "journaled",
        "middleware",
    ];
    let mut wrong = Vec::new();
    for (module, edges) in &graph {
        let layer = module.first().map(String::as_str);
        let forbidden: Vec<&str> = match layer {
            Some("retry") => front_end.iter().copied().chain(["journal"]).collect(),
            Some("journal") => front_end
                .iter()
                .copied()
                .chain(["retry", "config"])
                .collect(),
            _ => continue,
        };
        for target in edges {
            if forbidden.contains(&target.first().map_or("", String::as_str)) {
                wrong.push(format!("{} imports {}", name(module), name(target)));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert_eq!(
        circle(&graph),
        None,
        "files that import each other in a circle"
    );
}

#[test]
fn the_import_reader_finds_what_it_should() {
    let mut paths = Vec::new();
    expand(
        "",
        "crate::retry::{engine::Engine, settings::{A, B as C}}",
        &mut paths,
    );
    assert_eq!(
        paths,
        [
            "crate::retry::engine::Engine",
            "crate::retry::settings::A",
            "crate::retry::settings::B"
        ]
    );
    let code = "use super::x::Y;\npub use child::Z;\nfn f() { crate::a::b(); child::g(); }\n";
    let found = references(code, &["child".to_owned()]);
    assert_eq!(found, ["super::x::Y", "crate::a::b", "child::g"]);

    let modules: BTreeSet<Vec<String>> = [vec![], vec!["a".into()], vec!["a".into(), "b".into()]]
        .into_iter()
        .collect();
    let here = vec!["a".to_owned(), "b".to_owned()];
    assert_eq!(resolve("crate::Error", &here, false, &modules), None);
    assert_eq!(
        resolve("super::thing", &here, false, &modules),
        Some(vec!["a".to_owned()])
    );
    // A circle is found, and a line is not one.
    let mut graph = BTreeMap::new();
    graph.insert(vec!["x".to_owned()], [vec!["y".to_owned()]].into());
    graph.insert(vec!["y".to_owned()], BTreeSet::new());
    assert_eq!(circle(&graph), None);
    graph.insert(vec!["y".to_owned()], [vec!["x".to_owned()]].into());
    assert_eq!(circle(&graph), Some(vec!["x".to_owned(), "y".to_owned()]));
}

/// The features a manifest declares, `default` aside.
fn features(manifest: &str) -> Vec<String> {
    let manifest: toml::Table = read(manifest).parse().unwrap();
    manifest
        .get("features")
        .and_then(toml::Value::as_table)
        .map(|t| t.keys().filter(|k| *k != "default").cloned().collect())
        .unwrap_or_default()
}

#[test]
fn the_feature_tables_list_every_feature() {
    let tables = [
        ("Cargo.toml", vec!["src/lib.rs", "README.md"]),
        ("mock/Cargo.toml", vec!["mock/src/lib.rs"]),
    ];
    let mut missing = Vec::new();
    for (manifest, docs) in tables {
        for feature in features(manifest) {
            for doc in &docs {
                if !read(doc).contains(&format!("| `{feature}` |")) {
                    missing.push(format!("{doc} has no row for `{feature}`"));
                }
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_paths_this_file_reads_exist() {
    // A sanity check of the paths this file reads from.
    assert!(PathBuf::from(ROOT).join("mock/Cargo.toml").exists());
    assert!(source_files().contains("src/retry/engine.rs"));
    assert!(source_files().contains("mock/src/lib.rs"));
}
