//! The module layering of the workspace's crates, checked: under every module, its child
//! modules depend on each other without a circle (a module's own children and ancestors do
//! not count: a parent re-exports its children, a child uses its parent's types).
//!
//! "Depends" means a path written in the module's code (a `use` or any path expression)
//! through `crate::`, `super::` or `self::` that names another module. Code only tests build
//! (`#[cfg(test)]` items, and modules declared under `test`, the `testing` or the `reference`
//! feature) is left out: tests may reach anywhere.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// A module's path inside its crate (`["policy", "cluster"]`; empty for the root).
type ModPath = Vec<String>;

/// Why `from` depends on `to`: the first file and path written that makes it so.
type Edges = BTreeMap<ModPath, BTreeMap<ModPath, String>>;

/// The module graph of the crate whose sources are in `src`: for each module, the modules
/// its code names (the longest known module prefix of every path).
fn module_edges(src: &Path) -> Result<Edges, String> {
    let mut files = Vec::new();
    collect_rs(src, &mut files)?;
    let mut parsed = Vec::new();
    let mut test_only: BTreeSet<ModPath> = BTreeSet::new();
    for f in &files {
        let text = fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let ast = syn::parse_file(&text).map_err(|e| format!("{}: {e}", f.display()))?;
        let module = module_of(src, f);
        for item in &ast.items {
            if let syn::Item::Mod(m) = item
                && m.content.is_none()
                && test_only_attrs(&m.attrs)
            {
                let mut child = module.clone();
                child.push(m.ident.to_string());
                test_only.insert(child);
            }
        }
        parsed.push((f.clone(), module, ast));
    }
    let modules: BTreeSet<ModPath> = parsed.iter().map(|(_, m, _)| m.clone()).collect();
    let mut edges = Edges::new();
    for (file, module, ast) in &parsed {
        if test_only.iter().any(|t| module.starts_with(t)) {
            continue;
        }
        let mut paths = PathCollector::default();
        for item in ast.items.iter().filter(|i| !test_only_item(i)) {
            paths.visit_item(item);
        }
        for written in paths.found {
            let Some(target) = resolve(module, &written, &modules) else {
                continue;
            };
            if target != *module {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| format!("{}: {}", file.display(), written.join("::")));
            }
        }
    }
    Ok(edges)
}

/// The circles among siblings: for each module, its children's graph (an edge `a → b` when
/// something in `a`'s subtree names something in `b`'s), each strongly connected set of two
/// or more children reported with the paths that make it.
fn sibling_circles(edges: &Edges) -> Vec<String> {
    let mut by_parent: BTreeMap<ModPath, BTreeMap<String, BTreeMap<String, String>>> =
        BTreeMap::new();
    for (from, tos) in edges {
        for (to, why) in tos {
            let common = from.iter().zip(to).take_while(|(a, b)| a == b).count();
            if common == from.len() || common == to.len() {
                continue; // an ancestor or a descendant
            }
            by_parent
                .entry(from[..common].to_vec())
                .or_default()
                .entry(from[common].clone())
                .or_default()
                .entry(to[common].clone())
                .or_insert_with(|| why.clone());
        }
    }
    let mut circles = Vec::new();
    for (parent, graph) in &by_parent {
        for group in strongly_connected(graph) {
            let name = if parent.is_empty() {
                "crate".to_owned()
            } else {
                parent.join("::")
            };
            let mut text = format!("under {name}: {}", group.join(" <-> "));
            for a in &group {
                for (b, why) in &graph[a] {
                    if group.contains(b) {
                        text.push_str(&format!("\n    {a} -> {b} ({why})"));
                    }
                }
            }
            circles.push(text);
        }
    }
    circles
}

/// The strongly connected sets of two or more nodes of `graph` (Tarjan's algorithm).
fn strongly_connected(graph: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    #[derive(Default)]
    struct Tarjan<'g> {
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, graph: &'g BTreeMap<String, BTreeMap<String, String>>, v: &'g str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in graph.get(v).into_iter().flat_map(BTreeMap::keys) {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(graph, w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.stack.contains(&w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let at = self
                    .stack
                    .iter()
                    .rposition(|x| *x == v)
                    .expect("on the stack");
                let group: Vec<String> = self.stack.drain(at..).map(str::to_owned).collect();
                if group.len() > 1 {
                    self.found.push(group);
                }
            }
        }
    }
    let mut t = Tarjan::default();
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(graph, v);
        }
    }
    t.found
}

/// Every path written in the visited code that starts with `crate`, `super` or `self`
/// (a `use` tree expanded into its paths).
#[derive(Default)]
struct PathCollector {
    found: Vec<Vec<String>>,
}

impl PathCollector {
    fn keep(&mut self, segments: Vec<String>) {
        if matches!(
            segments.first().map(String::as_str),
            Some("crate" | "super" | "self")
        ) {
            self.found.push(segments);
        }
    }

    fn use_tree(&mut self, prefix: &[String], tree: &syn::UseTree) {
        let mut path = prefix.to_vec();
        match tree {
            syn::UseTree::Path(p) => {
                path.push(p.ident.to_string());
                self.use_tree(&path, &p.tree);
            }
            syn::UseTree::Name(n) => {
                if n.ident != "self" {
                    path.push(n.ident.to_string());
                }
                self.keep(path);
            }
            syn::UseTree::Rename(r) => {
                path.push(r.ident.to_string());
                self.keep(path);
            }
            syn::UseTree::Glob(_) => self.keep(path),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(&path, t);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for PathCollector {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&[], &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        self.keep(p.segments.iter().map(|s| s.ident.to_string()).collect());
        syn::visit::visit_path(self, p);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if !test_only_attrs(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !test_only_attrs(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
}

/// Whether `item` is built only for tests.
fn test_only_item(item: &syn::Item) -> bool {
    match item {
        syn::Item::Mod(m) => test_only_attrs(&m.attrs),
        syn::Item::Fn(f) => test_only_attrs(&f.attrs),
        syn::Item::Impl(i) => test_only_attrs(&i.attrs),
        syn::Item::Use(u) => test_only_attrs(&u.attrs),
        _ => false,
    }
}

/// Whether `attrs` hold a `#[cfg(…)]` naming `test` or the `testing`/`reference` features.
fn test_only_attrs(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && {
            let text = a.meta.require_list().map(|l| l.tokens.to_string());
            text.is_ok_and(|t| {
                t.split(|c: char| !c.is_alphanumeric() && c != '_' && c != '"')
                    .any(|w| matches!(w, "test" | "\"testing\"" | "\"reference\""))
            })
        }
    })
}

/// The module a path written in `module` names: the longest prefix that is a module.
fn resolve(module: &ModPath, written: &[String], modules: &BTreeSet<ModPath>) -> Option<ModPath> {
    let mut rest = written;
    let mut base: ModPath = match rest.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("self") => module.clone(),
        Some("super") => module.clone(),
        _ => return None,
    };
    if rest[0] == "crate" || rest[0] == "self" {
        rest = &rest[1..];
    }
    while rest.first().is_some_and(|s| s == "super") {
        base.pop()?;
        rest = &rest[1..];
    }
    let full: ModPath = base.into_iter().chain(rest.iter().cloned()).collect();
    (0..=full.len())
        .rev()
        .map(|k| full[..k].to_vec())
        .find(|p| modules.contains(p))
}

/// The module a source file holds (`src/policy/cluster/mod.rs` → `policy::cluster`).
fn module_of(src: &Path, file: &Path) -> ModPath {
    let rel = file.strip_prefix(src).unwrap_or(file).with_extension("");
    let mut parts: ModPath = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        if path.is_dir() {
            // `src/bin/*` are crates of their own.
            if path.file_name().is_some_and(|n| n != "bin") {
                collect_rs(&path, out)?;
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crates with modules of their own (the eBPF crate is a few flat programs).
    const CRATES: [&str; 6] = [
        "netpol-observe/core",
        "netpol-observe/agent",
        "netpol-observe/lab",
        "netpol-observe/devkit",
        "netpol-observe",
        "xtask",
    ];

    #[test]
    fn no_module_circle_in_any_crate() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut circles = Vec::new();
        let mut modules = 0;
        for krate in CRATES {
            let edges = module_edges(&root.join(krate).join("src")).expect("sources parse");
            modules += edges.len();
            circles.extend(
                sibling_circles(&edges)
                    .into_iter()
                    .map(|c| format!("{krate} {c}")),
            );
        }
        assert!(
            modules > 50,
            "only {modules} modules with dependencies found"
        );
        assert!(
            circles.is_empty(),
            "module circles:\n{}",
            circles.join("\n")
        );
    }

    #[test]
    fn a_circle_is_found_with_its_paths() {
        let dir = tempfile_dir();
        fs::create_dir_all(dir.join("a")).unwrap();
        fs::write(dir.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
        fs::write(dir.join("a/mod.rs"), "mod x; pub struct A;").unwrap();
        fs::write(dir.join("a/x.rs"), "use crate::{b::B, c};").unwrap();
        fs::write(dir.join("b.rs"), "pub struct B(super::a::A);").unwrap();
        fs::write(
            dir.join("c.rs"),
            "#[cfg(test)] mod t { use crate::a::A; }\npub fn f() {}",
        )
        .unwrap();
        let circles = sibling_circles(&module_edges(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(circles.len(), 1, "{circles:?}");
        let lines: Vec<&str> = circles[0].lines().collect();
        assert_eq!(lines[0], "under crate: a <-> b", "{}", circles[0]);
        assert!(lines[1].starts_with("    a -> b (") && lines[1].ends_with("a/x.rs: crate::b::B)"));
        assert!(lines[2].starts_with("    b -> a (") && lines[2].ends_with("b.rs: super::a::A)"));
        assert_eq!(lines.len(), 3, "test-only code counted: {}", circles[0]);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-layers-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
