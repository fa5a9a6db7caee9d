//! The modules form layers: no import cycle between modules, at any depth.
//!
//! Reads the source of both crates (no build needed), finds every path a
//! module names (`crate::…`, `super::…`, `self::…`, in `use` lines and
//! inline, tests and comments left out), and lifts each reference to the
//! two sibling modules it crosses between: `worker::settle` naming
//! `redis::entry::Entry` is an edge `worker → redis` among the top-level
//! modules, `console::pages` naming `super::session` an edge
//! `pages → session` inside `console`. A module naming its own parent or
//! child is no edge. Any strongly connected set of siblings is a cycle.
//!
//! Run it alone with `cargo test --test it layering`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// Every module of the crate whose root is `root`, with its source.
fn modules(root: &Path) -> BTreeMap<Module, String> {
    fn walk(dir: &Path, root: &Path, found: &mut BTreeMap<Module, String>) {
        for entry in std::fs::read_dir(dir).expect("a source directory") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                walk(&path, root, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let relative = path.strip_prefix(root).expect("under the root").with_extension("");
                let mut module: Module =
                    relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
                if matches!(module.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    module.pop();
                }
                found.insert(module, std::fs::read_to_string(&path).expect("readable source"));
            }
        }
    }
    let mut found = BTreeMap::new();
    walk(root, root, &mut found);
    found
}

/// The source without its unit tests and comments.
fn code_of(source: &str) -> String {
    let without_tests = source.split("#[cfg(test)]\nmod tests").next().unwrap_or_default();
    without_tests
        .lines()
        .map(|line| match line.find("//") {
            // `//` inside a string (a URL) is rare in paths; cutting it only loses text.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths `code` names from `crate`, `super` or `self`, brace groups
/// expanded one level deep or more (`crate::{a, b::{c, d}}`).
fn paths_named(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::", "self::"].iter().flat_map(|anchor| code.match_indices(anchor)) {
        let at = start.0;
        if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_' || bytes[at - 1] == b':') {
            continue;
        }
        expand(&code[at..], Vec::new(), &mut found);
    }
    found
}

/// Reads one path from the start of `text` after `prefix`, expanding braces.
fn expand(text: &str, mut prefix: Vec<String>, found: &mut Vec<Vec<String>>) {
    let mut rest = text;
    loop {
        let ident: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if ident.is_empty() {
            if let Some(group) = rest.strip_prefix('{') {
                for item in split_group(group) {
                    expand(item.trim(), prefix.clone(), found);
                }
                return;
            }
            break;
        }
        prefix.push(ident.clone());
        rest = &rest[ident.len()..];
        match rest.strip_prefix("::") {
            Some(next) => rest = next,
            None => break,
        }
    }
    if !prefix.is_empty() {
        found.push(prefix);
    }
}

/// The items of a brace group (the text after `{`), split at top-level commas.
fn split_group(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0usize, 0, Vec::new());
    for (at, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..at]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items
}

/// The module a path from `module` lands in: its longest prefix that is a module.
fn resolve(module: &Module, path: &[String], modules: &BTreeMap<Module, String>) -> Option<Module> {
    let mut full: Module = Vec::new();
    let mut segments = path.iter().peekable();
    match segments.peek().map(|segment| segment.as_str()) {
        Some("crate") => {
            segments.next();
        }
        _ => {
            full.clone_from(module);
            while let Some(segment) = segments.peek() {
                match segment.as_str() {
                    "super" => {
                        full.pop();
                    }
                    "self" => {}
                    _ => break,
                }
                segments.next();
            }
        }
    }
    full.extend(segments.cloned());
    (0..=full.len()).rev().map(|len| full[..len].to_vec()).find(|prefix| modules.contains_key(prefix))
}

/// Every import cycle among sibling modules of the crate at `root`, each
/// with the references that make it.
fn cycles(root: &Path) -> Vec<String> {
    let modules = modules(root);
    let mut edges: BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>> = BTreeMap::new();
    for (module, source) in &modules {
        for path in paths_named(&code_of(source)) {
            let Some(target) = resolve(module, &path, &modules) else { continue };
            let common = module.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common == module.len() || common == target.len() {
                continue; // itself, its parent or its child
            }
            let (from, to) = (module[..=common].to_vec(), target[..=common].to_vec());
            let why = format!("{} names {}", module.join("::"), path.join("::"));
            edges.entry(from).or_default().entry(to).or_default().insert(why);
        }
    }
    // Tarjan's strongly connected components.
    struct Search<'a> {
        edges: &'a BTreeMap<Module, BTreeMap<Module, BTreeSet<String>>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        components: Vec<Vec<Module>>,
    }
    impl Search<'_> {
        fn visit(&mut self, node: &Module) {
            let next = self.index.len();
            self.index.insert(node.clone(), next);
            self.low.insert(node.clone(), next);
            self.stack.push(node.clone());
            let targets: Vec<Module> = self.edges.get(node).map(|to| to.keys().cloned().collect()).unwrap_or_default();
            for target in targets {
                if !self.index.contains_key(&target) {
                    self.visit(&target);
                    let low = self.low[node].min(self.low[&target]);
                    self.low.insert(node.clone(), low);
                } else if self.stack.contains(&target) {
                    let low = self.low[node].min(self.index[&target]);
                    self.low.insert(node.clone(), low);
                }
            }
            if self.low[node] == self.index[node] {
                let mut component = Vec::new();
                while let Some(member) = self.stack.pop() {
                    let done = &member == node;
                    component.push(member);
                    if done {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.components.push(component);
                }
            }
        }
    }
    let mut search = Search {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        components: Vec::new(),
    };
    let nodes: BTreeSet<Module> = edges.iter().flat_map(|(from, to)| to.keys().chain([from]).cloned()).collect();
    for node in &nodes {
        if !search.index.contains_key(node) {
            search.visit(node);
        }
    }
    search
        .components
        .iter()
        .map(|component| {
            let members: BTreeSet<&Module> = component.iter().collect();
            let mut lines = vec![format!(
                "cycle between {}",
                component.iter().map(|module| module.join("::")).collect::<Vec<_>>().join(", ")
            )];
            for from in component {
                for (to, why) in &edges[from] {
                    if members.contains(to) {
                        lines.push(format!(
                            "  {} -> {}: {}",
                            from.join("::"),
                            to.join("::"),
                            why.iter().next().expect("a reference")
                        ));
                    }
                }
            }
            lines.join("\n")
        })
        .collect()
}

#[test]
fn no_module_imports_a_module_that_imports_it() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    for root in ["src", "jobs/src"] {
        let found = cycles(&manifest.join(root));
        assert!(found.is_empty(), "import cycles in {root}:\n{}", found.join("\n"));
    }
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let dir = Scratch(std::env::temp_dir().join(format!("fleet-layering-{}", std::process::id())));
    std::fs::create_dir_all(dir.path().join("a")).expect("a/");
    std::fs::write(dir.path().join("lib.rs"), "mod a;\nmod b;\n").expect("lib.rs");
    std::fs::write(dir.path().join("a/mod.rs"), "mod inner;\nuse crate::b::{Thing, other::{More}};\n")
        .expect("a/mod.rs");
    std::fs::write(dir.path().join("a/inner.rs"), "pub fn f() { super::super::c::g() }\n").expect("a/inner.rs");
    std::fs::write(dir.path().join("b.rs"), "pub struct Thing;\n// crate::a is only a comment\n").expect("b.rs");
    std::fs::write(dir.path().join("c.rs"), "fn g() { crate::a::inner::f() }\n").expect("c.rs");
    let found = cycles(dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("cycle between ") && found[0].contains("a -> c") && found[0].contains("c -> a"));
    assert!(!found[0].contains("-> b") && !found[0].contains(", b"), "a comment is no reference: {found:?}");
}

/// A directory removed when dropped, even by a failing assertion.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
