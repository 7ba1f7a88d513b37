//! The crates' modules depend on each other one way only: among the modules of one parent (the
//! crate's top-level modules, a module's submodules), no module refers, from any of its files,
//! to a sibling that refers back to it, directly or round a longer circle. References are read
//! from the code (`crate::`/`super::` paths outside comments), so a new circle fails here
//! rather than in review.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`["models", "text"]`) of each source file under `root`.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut found = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(root).unwrap().with_extension("");
            let mut module: Vec<String> = relative
                .iter()
                .map(|part| part.to_string_lossy().into_owned())
                .collect();
            if matches!(
                module.last().map(String::as_str),
                Some("mod" | "lib" | "main")
            ) {
                module.pop();
            }
            found.insert(module, path);
        }
    }
    found
}

/// The code of `source` without comments (doc links are not dependencies).
fn code(source: &str) -> String {
    source
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every module path `file` (module `at`) names: `crate::a::b`, `super::c` (resolved against
/// `at`), and the paths inside `use crate::{a::b, c}` groups.
fn references(at: &[String], file: &str) -> BTreeSet<Vec<String>> {
    let code = code(file);
    let mut found = BTreeSet::new();
    let base = |prefix: &str| -> Option<Vec<String>> {
        match prefix {
            "crate" => Some(Vec::new()),
            "super" => at.split_last().map(|(_, parent)| parent.to_vec()),
            _ => None,
        }
    };
    let bytes = code.as_bytes();
    for prefix in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(offset) = code[from..].find(prefix) {
            let start = from + offset;
            from = start + prefix.len();
            if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
                continue;
            }
            let Some(mut path) = base(&prefix[..prefix.len() - 2]) else {
                continue;
            };
            let rest = &code[from..];
            if let Some(group) = rest.strip_prefix('{') {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let mut item_path = path.clone();
                    item_path.extend(segments(item.trim()));
                    found.insert(item_path);
                }
                continue;
            }
            path.extend(segments(rest));
            found.insert(path);
        }
    }
    found
}

/// The leading `a::b::c` identifiers of `text`.
fn segments(text: &str) -> Vec<String> {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    text[..end]
        .split("::")
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Circles among siblings in the crate at `root`, as `a -> b -> a` strings.
fn circles(root: &Path) -> Vec<String> {
    let modules = modules(root);
    // sibling edges: parent → (child → children it refers to)
    let mut edges: BTreeMap<Vec<String>, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (module, path) in &modules {
        let source = std::fs::read_to_string(path).unwrap();
        for target in references(module, &source) {
            // The deepest existing module the path names.
            let target: Vec<String> = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|prefix| modules.contains_key(prefix))
                .unwrap_or_default();
            // The first place the two paths part: siblings under a common parent.
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            if common < module.len() && common < target.len() {
                edges
                    .entry(module[..common].to_vec())
                    .or_default()
                    .entry(module[common].clone())
                    .or_default()
                    .insert(target[common].clone());
            }
        }
    }
    let mut found = Vec::new();
    for (parent, graph) in &edges {
        for start in graph.keys() {
            // Depth-first from `start`: a path back to it is a circle.
            let mut stack = vec![vec![start.clone()]];
            let mut seen = BTreeSet::new();
            while let Some(path) = stack.pop() {
                let last = path.last().unwrap();
                for next in graph.get(last).into_iter().flatten() {
                    if next == start {
                        // Each circle once, from its first module in name order.
                        let mut circle = path.clone();
                        let first = (0..circle.len()).min_by_key(|&i| &circle[i]).unwrap();
                        circle.rotate_left(first);
                        circle.push(circle[0].clone());
                        let place = if parent.is_empty() {
                            String::from("crate")
                        } else {
                            parent.join("::")
                        };
                        found.push(format!("{place}: {}", circle.join(" -> ")));
                    } else if seen.insert(next.clone()) {
                        let mut longer = path.clone();
                        longer.push(next.clone());
                        stack.push(longer);
                    }
                }
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn no_module_refers_to_a_sibling_that_refers_back() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for crate_src in [root.join("src"), root.join("client/src")] {
        let found = circles(&crate_src);
        assert!(
            found.is_empty(),
            "{}: dependency circles:\n{}",
            crate_src.display(),
            found.join("\n")
        );
    }
}

#[test]
fn a_circle_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("lib.rs", "pub mod a;\npub mod b;\npub mod c;\n");
    write("a.rs", "use crate::b::Thing;\n");
    write("b/mod.rs", "mod inner;\n");
    write(
        "b/inner.rs",
        "use crate::{c::Other, a};\n// crate::a::Doc is a comment\n",
    );
    write("c.rs", "/// [`x`](crate::a::x)\n");
    assert_eq!(circles(dir.path()), ["crate: a -> b -> a"]);
    write("c.rs", "pub fn f() { super::a::g() }\n");
    write("a.rs", "use crate::c::f;\n");
    assert_eq!(circles(dir.path()), ["crate: a -> c -> a"]);
}
