//! The architecture's rules, checked by `cargo test` (rust-analyzer's "tidy" tests): crates
//! depend only in the order ARCHITECTURE.md gives, no crate's modules form a cycle that is not
//! listed below (and listed ones do not grow), and no source file grows past its ceiling.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn crates() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(workspace().join("crates"))
        .expect("crates/")
        .filter_map(Result::ok)
        .filter(|e| e.path().join("Cargo.toml").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The `kiln-*` crates a crate depends on (normal dependencies, not dev-dependencies).
fn kiln_dependencies(krate: &str) -> BTreeSet<String> {
    let manifest = read(&workspace().join("crates").join(krate).join("Cargo.toml"));
    let mut section = String::new();
    let mut deps = BTreeSet::new();
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section == "[dependencies]"
            && let Some(name) = line.split(['=', '.', ' ']).next()
            && name.starts_with("kiln-")
        {
            deps.insert(name.to_string());
        }
    }
    deps
}

/// ARCHITECTURE.md's "Crate dependencies" sentence: `kiln-a → kiln-b → …`.
fn documented_order() -> Vec<String> {
    let doc = read(&workspace().join("ARCHITECTURE.md"));
    let start = doc.find("Crate dependencies").expect("ARCHITECTURE.md has a 'Crate dependencies' paragraph");
    let paragraph: String = doc[start..].split("\n\n").next().unwrap_or_default().replace('\n', " ");
    let kiln = |w: &&str| w.starts_with("kiln-");
    let clean = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric() && c != '-').to_string();
    // The name before the first arrow, then the name right after each arrow.
    let mut parts = paragraph.split('→');
    let first = parts.next().and_then(|p| p.split_whitespace().rev().find(kiln)).map(clean);
    first.into_iter().chain(parts.filter_map(|p| p.split_whitespace().find(kiln)).map(clean)).collect()
}

#[test]
fn crates_depend_only_in_the_documented_order() {
    let order = documented_order();
    for krate in crates() {
        let at = order
            .iter()
            .position(|c| *c == krate)
            .unwrap_or_else(|| panic!("crate {krate} is not in ARCHITECTURE.md's crate dependency order {order:?}"));
        for dependency in kiln_dependencies(&krate) {
            let to = order.iter().position(|c| *c == dependency).expect("a documented crate");
            assert!(to > at, "{krate} depends on {dependency}, which ARCHITECTURE.md lists before it: {order:?}");
        }
    }
}

/// Module cycles that exist today, to be broken (never to grow). None: the engine's executors
/// sit behind `model::Executor`, which `model` defines and never imports back.
const KNOWN_CYCLES: &[(&str, &[&str])] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Top-level module → the top-level modules of the same crate it names (`crate::x`), test
/// modules left out.
fn module_graph(krate: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = workspace().join("crates").join(krate).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative.components().next().expect("a file").as_os_str().to_string_lossy().replace(".rs", "");
        if top == "lib" || top == "main" || top == "tests" {
            continue;
        }
        let text = read(&file);
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let edges = graph.entry(top.clone()).or_default();
        for (at, _) in code.match_indices("crate::") {
            let name: String = code[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                edges.insert(name);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for edges in graph.values_mut() {
        edges.retain(|m| modules.contains(m));
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w.as_str()]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w.as_str()) {
                    let low = self.low[v].min(self.index[w.as_str()]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    component.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk { graph, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), found: Vec::new() };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

#[test]
fn no_module_cycle_beyond_the_known_ones() {
    for krate in crates() {
        for cycle in cycles(&module_graph(&krate)) {
            let known = KNOWN_CYCLES
                .iter()
                .any(|(k, modules)| *k == krate && cycle.iter().all(|m| modules.contains(&m.as_str())));
            assert!(known, "{krate}: modules {cycle:?} import each other in a cycle");
        }
    }
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut graph = BTreeMap::new();
    graph.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    graph.insert("b".to_string(), BTreeSet::from(["a".to_string(), "c".to_string()]));
    graph.insert("c".to_string(), BTreeSet::new());
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".to_string()]]);
}

/// Most lines a source file may have.
const MAX_LINES: usize = 600;

/// Files over [`MAX_LINES`] today, each with the ceiling it may not pass until it is split: none.
const TOO_LONG: &[(&str, usize)] = &[];

#[test]
fn no_source_file_is_longer_than_its_ceiling() {
    let root = workspace();
    let mut files = Vec::new();
    rust_files(&root.join("crates"), &mut files);
    for file in files {
        let name = file.strip_prefix(&root).expect("under the workspace").to_string_lossy().replace('\\', "/");
        let lines = read(&file).lines().count();
        let ceiling = TOO_LONG.iter().find(|(f, _)| *f == name).map_or(MAX_LINES, |(_, n)| *n);
        assert!(lines <= ceiling, "{name} has {lines} lines; split it (at most {ceiling})");
    }
}

/// What only the lifecycle (`kiln-server/src/infer.rs`) may do in the server: open a
/// prediction-log capture, open an in-flight guard, run a model. The one other call allowed is an
/// LLM's generation in `rest/chat` (a stream), which runs inside an `infer::Call`.
#[test]
fn every_model_running_route_goes_through_the_lifecycle() {
    let src = workspace().join("crates/kiln-server/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let lifecycle_only = ["records::begin(", "records::finish(", "ServedModel::track(", ".infer(", ".infer_blocking("];
    for file in files {
        let name = file.strip_prefix(&src).expect("under src").to_string_lossy().replace('\\', "/");
        if name == "infer.rs" || name == "records.rs" {
            continue;
        }
        let text = read(&file);
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for needle in lifecycle_only {
            assert!(!code.contains(needle), "kiln-server/src/{name} calls {needle} outside the lifecycle (infer.rs)");
        }
        if code.contains(".generate(") {
            assert!(
                name.starts_with("rest/chat/") && code.contains("crate::infer::Call::open("),
                "{name} generates outside an infer::Call"
            );
        }
    }
}
