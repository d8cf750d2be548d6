//! The crate's modules form floors: each uses only modules below it, never one that
//! uses it back (directly or through others). Read from the sources: every `crate::X`
//! path in a module's code (doc comments and test code aside), a module's submodules
//! counting as the module itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module and the top-level modules its code names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs")
                || path.file_name().is_some_and(|n| n == "tests.rs")
            {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy()
                .trim_end_matches(".rs")
                .to_owned();
            if top == "lib" || top == "proto" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let code = text.split("#[cfg(test)]").next().unwrap();
            let deps = graph.entry(top.clone()).or_default();
            for line in code.lines() {
                let line = line.trim_start();
                if line.starts_with("//") {
                    continue;
                }
                for (i, _) in line.match_indices("crate::") {
                    let name: String = line[i + 7..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                        .collect();
                    if !name.is_empty() && name != top && name != "proto" {
                        deps.insert(name);
                    }
                }
            }
        }
    }
    graph
}

#[test]
fn no_module_uses_one_that_uses_it_back() {
    let graph = graph();
    // Peel floors off the bottom: a module whose every dependency is already placed.
    let mut placed: BTreeMap<String, usize> = BTreeMap::new();
    let mut floor = 0;
    while placed.len() < graph.len() {
        let next: Vec<String> = graph
            .iter()
            .filter(|(m, deps)| {
                !placed.contains_key(*m)
                    && deps
                        .iter()
                        .all(|d| placed.contains_key(d) || !graph.contains_key(d))
            })
            .map(|(m, _)| m.clone())
            .collect();
        if next.is_empty() {
            let stuck: Vec<_> = graph
                .iter()
                .filter(|(m, _)| !placed.contains_key(*m))
                .map(|(m, deps)| format!("{m} -> {deps:?}"))
                .collect();
            panic!("modules in an import circle:\n  {}", stuck.join("\n  "));
        }
        for m in next {
            placed.insert(m, floor);
        }
        floor += 1;
    }
    let mut floors: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for (m, f) in &placed {
        floors.entry(*f).or_default().push(m);
    }
    for (f, ms) in floors {
        println!("floor {f}: {}", ms.join(", "));
    }
}

/// A source file a reader can hold in mind: none in src/ over 700 lines.
#[test]
fn no_source_file_is_over_700_lines() {
    let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    let mut long = Vec::new();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let lines = std::fs::read_to_string(&path).unwrap().lines().count();
                if lines > 700 {
                    long.push(format!("{}: {lines} lines", path.display()));
                }
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over 700 lines:\n  {}",
        long.join("\n  ")
    );
}
