//! `cargo xtask imports`: inside each crate, files import only downwards — no two files import
//! each other, directly or around a loop.
//!
//! A file is a module (`src/a/b.rs` and `src/a/b/mod.rs` are `a::b`, `lib.rs`/`main.rs` the crate
//! root). A file depends on every module it names through `crate::…` or `super::…` paths (in `use`
//! lines, `use` groups and inline paths), outside comments and before its `#[cfg(test)]` part: a
//! test module may look at its parent. The check fails naming each loop's files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// A module path inside one crate (`[]` is the crate root).
type Module = Vec<String>;

pub(crate) fn run(root: &Path) -> anyhow::Result<()> {
    let mut sources: Vec<PathBuf> = Vec::new();
    for entry in std::fs::read_dir(root.join("crates")).context("failed to list crates/")? {
        sources.push(entry?.path().join("src"));
    }
    sources.push(root.join("xtask").join("src"));
    sources.sort();
    let mut loops = Vec::new();
    let mut files_seen = 0;
    for src in sources.iter().filter(|s| s.is_dir()) {
        let files = module_files(src)?;
        files_seen += files.len();
        let mut graph = BTreeMap::new();
        for (module, file) in &files {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("failed to read `{}`", file.display()))?;
            graph.insert(module.clone(), dependencies(module, &text, &files));
        }
        for cycle in cycles(&graph) {
            let names: Vec<String> = cycle
                .iter()
                .map(|m| {
                    files[m]
                        .strip_prefix(root)
                        .unwrap_or(&files[m])
                        .display()
                        .to_string()
                })
                .collect();
            loops.push(names.join(" ⇄ "));
        }
    }
    if loops.is_empty() {
        println!("imports: {files_seen} files, no import loop inside any crate");
        return Ok(());
    }
    for l in &loops {
        println!("import loop: {l}");
    }
    bail!(
        "{} import loop(s): move what both sides need into a module below them",
        loops.len()
    )
}

/// Every `.rs` file under `src`, by module path.
fn module_files(src: &Path) -> anyhow::Result<BTreeMap<Module, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("failed to list `{}`", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.insert(module_of(src, &path), path);
            }
        }
    }
    Ok(out)
}

fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("lib" | "main" | "mod")
    ) {
        parts.pop();
    }
    parts
}

/// The modules `text` (the file of `module`) names, other than itself.
fn dependencies(
    module: &Module,
    text: &str,
    files: &BTreeMap<Module, PathBuf>,
) -> BTreeSet<Module> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let code: String = code
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    for (base, path) in paths(&code) {
        let mut full: Module = match base {
            Base::Crate => Vec::new(),
            Base::Super => module[..module.len().saturating_sub(1)].to_vec(),
        };
        full.extend(path);
        let known = (0..=full.len())
            .rev()
            .map(|k| full[..k].to_vec())
            .find(|prefix| files.contains_key(prefix));
        if let Some(known) = known.filter(|k| k != module) {
            out.insert(known);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Base {
    Crate,
    Super,
}

/// Every `crate::a::b` / `super::a` path in `code`, with `use` groups (`crate::{a, b::{c, d}}`)
/// expanded into one path per leaf.
fn paths(code: &str) -> Vec<(Base, Vec<String>)> {
    let mut out = Vec::new();
    for (keyword, base) in [("crate::", Base::Crate), ("super::", Base::Super)] {
        for (at, _) in code.match_indices(keyword) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            expand(&code[at + keyword.len()..], &[], &mut |p| {
                out.push((base, p))
            });
        }
    }
    out
}

/// Reads one path (possibly ending in a `{…}` group) from the start of `rest`, calling `emit` for
/// each full path.
fn expand(rest: &str, prefix: &[String], emit: &mut dyn FnMut(Vec<String>)) {
    let mut segs = prefix.to_vec();
    let mut rest = rest;
    loop {
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if ident.is_empty() {
            if let Some(group) = rest.strip_prefix('{') {
                for item in split_group(group) {
                    expand(item.trim(), &segs, emit);
                }
                return;
            }
            break;
        }
        rest = &rest[ident.len()..];
        if ident != "self" {
            segs.push(ident);
        }
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    emit(segs);
}

/// The top-level, comma-separated items of a `{…}` group (the text after `{`).
fn split_group(group: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// The strongly connected groups of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
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
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let Some((w, _)) = graph.get_key_value(w) else {
                continue;
            };
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.found.push(group);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(path: &str) -> Module {
        path.split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    fn files(names: &[&str]) -> BTreeMap<Module, PathBuf> {
        names
            .iter()
            .map(|n| (m(n), PathBuf::from(format!("{n}.rs"))))
            .collect()
    }

    #[test]
    fn reads_paths_groups_and_super() {
        let f = files(&["", "a", "b", "store", "store::jobs", "store::reports"]);
        let text = "use crate::a::Thing;\nuse crate::{b, store::{jobs::X, reports}};\n\
                    fn f() { crate::a::g(); }\n// crate::nothing::here\n";
        let deps = dependencies(&m("c"), text, &f);
        assert_eq!(
            deps,
            [m("a"), m("b"), m("store::jobs"), m("store::reports")]
                .into_iter()
                .collect()
        );
        let deps = dependencies(
            &m("store::jobs"),
            "use super::reports::R;\nuse super::Store;",
            &f,
        );
        assert_eq!(
            deps,
            [m("store::reports"), m("store")].into_iter().collect()
        );
    }

    #[test]
    fn test_modules_may_look_at_their_parent() {
        let f = files(&["a", "b"]);
        let text = "use crate::b::B;\n#[cfg(test)]\nmod tests { use crate::a::A; }";
        assert_eq!(
            dependencies(&m("a"), text, &f),
            [m("b")].into_iter().collect()
        );
    }

    #[test]
    fn finds_two_file_and_longer_loops_only() {
        let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        graph.insert(m("a"), [m("b")].into_iter().collect());
        graph.insert(m("b"), [m("a")].into_iter().collect());
        graph.insert(m("c"), [m("d")].into_iter().collect());
        graph.insert(m("d"), [m("e")].into_iter().collect());
        graph.insert(m("e"), [m("c")].into_iter().collect());
        graph.insert(m("f"), [m("a")].into_iter().collect());
        let mut found = cycles(&graph);
        found.sort();
        assert_eq!(
            found,
            vec![vec![m("a"), m("b")], vec![m("c"), m("d"), m("e")]]
        );
    }

    #[test]
    fn the_crate_root_counts_as_a_module() {
        assert_eq!(module_of(Path::new("src"), Path::new("src/lib.rs")), m(""));
        assert_eq!(
            module_of(Path::new("src"), Path::new("src/a/mod.rs")),
            m("a")
        );
        assert_eq!(
            module_of(Path::new("src"), Path::new("src/a/b.rs")),
            m("a::b")
        );
    }
}
