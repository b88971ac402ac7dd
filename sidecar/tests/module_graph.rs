//! The sidecar's modules import each other without a cycle, and its
//! features stand side by side.
//!
//! A feature folder may use what sits below it (the request model's shared
//! parts, the bodies, the upstream client, the error type) and is used by
//! what sits above it (the table that holds its compiled state, the stacks
//! that assemble it), never both: a cycle means the folders no longer say
//! which way the code depends, and every change to one module reaches all
//! the others.
//!
//! The check reads `sidecar/src` with `syn`: every `use` and every path that
//! starts with `crate`, `super` or `self` is a dependency of the module it is
//! written in on the module it names. Sibling modules (children of one
//! folder, each with everything below it) must form a graph without a cycle,
//! at every level. A module using its own parent or children is not counted:
//! that is how a folder shares its types. Test-only code (`#[cfg(test)]`) is
//! left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

type ModulePath = Vec<String>;

/// Every `.rs` file under `src`, with the module it defines.
fn source_modules(src: &Path) -> Vec<(PathBuf, ModulePath)> {
    fn walk(dir: &Path, src: &Path, out: &mut Vec<(PathBuf, ModulePath)>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
            .map(|entry| entry.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, src, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let relative = path.strip_prefix(src).expect("under src");
                let mut module: ModulePath = relative
                    .with_extension("")
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if matches!(
                    module.last().map(String::as_str),
                    Some("mod" | "lib" | "main")
                ) {
                    module.pop();
                }
                out.push((path, module));
            }
        }
    }
    let mut out = Vec::new();
    walk(src, src, &mut out);
    // A file declared `#[cfg(test)] mod tests;` is test-only code too,
    // like an inline `#[cfg(test)] mod tests { ... }`: left out, with
    // everything below it.
    let test_only = test_only_files(&out);
    out.retain(|(_, module)| !test_only.iter().any(|t| module.starts_with(t)));
    out
}

/// The modules declared `#[cfg(test)] mod name;` in their parent's file.
fn test_only_files(modules: &[(PathBuf, ModulePath)]) -> BTreeSet<ModulePath> {
    let mut test_only = BTreeSet::new();
    for (path, module) in modules {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        let Ok(file) = syn::parse_file(&text) else {
            continue;
        };
        for item in &file.items {
            if let syn::Item::Mod(declared) = item
                && declared.content.is_none()
                && is_test_only(&declared.attrs)
            {
                let mut child = module.clone();
                child.push(declared.ident.to_string());
                test_only.insert(child);
            }
        }
    }
    test_only
}

fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Meta>()
                .is_ok_and(|meta| meta.path().is_ident("test"))
    })
}

/// The paths a file names that start with `crate`, `super` or `self`,
/// resolved to absolute paths, with how they were written.
struct Uses {
    module: ModulePath,
    found: Vec<(ModulePath, String)>,
}

impl Uses {
    fn resolve(&mut self, segments: &[String]) {
        let Some(first) = segments.first() else {
            return;
        };
        let mut absolute = match first.as_str() {
            "crate" => Vec::new(),
            "self" => self.module.clone(),
            "super" => {
                let mut base = self.module.clone();
                let mut rest = segments;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                base.extend(rest.iter().cloned());
                self.found.push((base, segments.join("::")));
                return;
            }
            _ => return,
        };
        absolute.extend(segments[1..].iter().cloned());
        self.found.push((absolute, segments.join("::")));
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(prefix, &path.tree);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                prefix.push(name.ident.to_string());
                self.resolve(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(rename) => {
                prefix.push(rename.ident.to_string());
                self.resolve(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.resolve(prefix),
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(prefix, tree);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Uses {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Struct(s) => &s.attrs,
            syn::Item::Enum(e) => &e.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Trait(t) => &t.attrs,
            syn::Item::Type(t) => &t.attrs,
            syn::Item::Macro(m) => &m.attrs,
            _ => return syn::visit::visit_item(self, item),
        };
        if is_test_only(attrs) {
            return;
        }
        if let syn::Item::Use(item_use) = item {
            self.use_tree(&mut Vec::new(), &item_use.tree);
            return;
        }
        syn::visit::visit_item(self, item);
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        self.resolve(&segments);
        syn::visit::visit_path(self, path);
    }

    /// A macro's body is tokens, not syntax: `crate::`, `super::` and
    /// `self::` paths written inside one (`format!`, `pin_project!`,
    /// `tokio::select!`) are picked out of the tokens.
    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        self.paths_in_tokens(mac.tokens.clone());
        syn::visit::visit_macro(self, mac);
    }
}

impl Uses {
    fn paths_in_tokens(&mut self, tokens: proc_macro2::TokenStream) {
        use proc_macro2::TokenTree;
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let is_path_sep = |i: usize| {
            matches!((tokens.get(i), tokens.get(i + 1)),
                (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                    if a.as_char() == ':' && b.as_char() == ':')
        };
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(group) => self.paths_in_tokens(group.stream()),
                TokenTree::Ident(first)
                    if matches!(first.to_string().as_str(), "crate" | "super" | "self")
                        && is_path_sep(i + 1) =>
                {
                    let mut segments = vec![first.to_string()];
                    let mut j = i + 1;
                    while is_path_sep(j) {
                        let Some(TokenTree::Ident(next)) = tokens.get(j + 2) else {
                            break;
                        };
                        segments.push(next.to_string());
                        j += 3;
                    }
                    self.resolve(&segments);
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// A dependency between two sibling modules, with one place that makes it.
type Edges = BTreeMap<(ModulePath, ModulePath), String>;

fn sibling_edges(src: &Path) -> Edges {
    let files = source_modules(src);
    let modules: BTreeSet<ModulePath> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut edges = Edges::new();
    for (file, module) in &files {
        let text = std::fs::read_to_string(file).expect("a source file");
        let syntax =
            syn::parse_file(&text).unwrap_or_else(|error| panic!("{}: {error}", file.display()));
        let mut uses = Uses {
            module: module.clone(),
            found: Vec::new(),
        };
        uses.visit_file(&syntax);
        for (absolute, written) in uses.found {
            // The longest known module the path names.
            let Some(target) = (0..=absolute.len())
                .rev()
                .map(|n| absolute[..n].to_vec())
                .find(|prefix| modules.contains(prefix))
            else {
                continue;
            };
            let common = module
                .iter()
                .zip(&target)
                .take_while(|(a, b)| a == b)
                .count();
            // Itself, an ancestor or a descendant: not a sibling dependency.
            if common == module.len() || common == target.len() {
                continue;
            }
            let from = module[..=common].to_vec();
            let to = target[..=common].to_vec();
            let relative = file.strip_prefix(src).unwrap_or(file).display();
            edges
                .entry((from, to))
                .or_insert_with(|| format!("{relative} uses {written}"));
        }
    }
    edges
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(edges: &Edges) -> Vec<Vec<ModulePath>> {
    struct State<'a> {
        next: BTreeMap<&'a ModulePath, Vec<&'a ModulePath>>,
        index: BTreeMap<&'a ModulePath, usize>,
        low: BTreeMap<&'a ModulePath, usize>,
        stack: Vec<&'a ModulePath>,
        on_stack: BTreeSet<&'a ModulePath>,
        found: Vec<Vec<ModulePath>>,
    }
    fn connect<'a>(state: &mut State<'a>, v: &'a ModulePath) {
        let n = state.index.len();
        state.index.insert(v, n);
        state.low.insert(v, n);
        state.stack.push(v);
        state.on_stack.insert(v);
        for w in state.next.get(v).cloned().unwrap_or_default() {
            if !state.index.contains_key(w) {
                connect(state, w);
                let low = state.low[v].min(state.low[w]);
                state.low.insert(v, low);
            } else if state.on_stack.contains(w) {
                let low = state.low[v].min(state.index[w]);
                state.low.insert(v, low);
            }
        }
        if state.low[v] == state.index[v] {
            let mut component = Vec::new();
            while let Some(w) = state.stack.pop() {
                state.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                state.found.push(component);
            }
        }
    }
    let mut state = State {
        next: BTreeMap::new(),
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for (from, to) in edges.keys() {
        state.next.entry(from).or_default().push(to);
    }
    let nodes: Vec<&ModulePath> = state.next.keys().copied().collect();
    for v in nodes {
        if !state.index.contains_key(v) {
            connect(&mut state, v);
        }
    }
    state.found
}

fn describe(cycles: &[Vec<ModulePath>], edges: &Edges) -> String {
    let mut text = String::new();
    for component in cycles {
        let names: Vec<String> = component.iter().map(|m| m.join("::")).collect();
        text.push_str(&format!("cycle among {}:\n", names.join(", ")));
        for ((from, to), example) in edges {
            if component.contains(from) && component.contains(to) {
                text.push_str(&format!(
                    "  {} -> {}  ({example})\n",
                    from.join("::"),
                    to.join("::")
                ));
            }
        }
    }
    text
}

#[test]
fn no_two_sidecar_modules_depend_on_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = sibling_edges(&src);
    assert!(
        edges.len() > 20,
        "only {} dependencies found: the reader is broken",
        edges.len()
    );
    let found = cycles(&edges);
    assert!(
        found.is_empty(),
        "import cycles:\n{}",
        describe(&found, &edges)
    );
}

/// One folder per feature, each with its config, compile step, layer and
/// metrics hooks. A feature reads the request through a trait of its own,
/// which the table's request implements, so it needs nothing above the
/// shared plumbing (`model`, the bodies, `upstream`, `mtls`, `error`, ...).
const FEATURES: &[&str] = &[
    "access_log",
    "authn",
    "authz",
    "breaker",
    "cache",
    "compression",
    "cors",
    "ejection",
    "metrics",
    "ratelimit",
    "retry",
    "tcp",
    "trace",
    "validation",
];

/// What assembles the features: the compiled table (which holds their
/// state), the stacks, the xDS client and the process around them.
const ABOVE_FEATURES: &[&str] = &[
    "table",
    "proxy",
    "xds",
    "server",
    "admin",
    "config",
    "identity",
    "call_report",
];

#[test]
fn a_feature_imports_no_other_feature_and_nothing_that_assembles_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let top_level: BTreeSet<String> = source_modules(&src)
        .into_iter()
        .filter_map(|(_, module)| module.first().cloned())
        .collect();
    for name in FEATURES.iter().chain(ABOVE_FEATURES) {
        assert!(
            top_level.contains(*name),
            "`{name}` is not a module of sidecar/src: update this test"
        );
    }
    let wrong: Vec<String> = sibling_edges(&src)
        .into_iter()
        .filter(|((from, to), _)| {
            from.len() == 1
                && FEATURES.contains(&from[0].as_str())
                && (FEATURES.contains(&to[0].as_str()) || ABOVE_FEATURES.contains(&to[0].as_str()))
        })
        .map(|((from, to), example)| format!("  {} -> {}  ({example})", from[0], to[0]))
        .collect();
    assert!(
        wrong.is_empty(),
        "features importing upwards or sideways:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_finds_a_cycle_between_two_sibling_folders() {
    let dir = std::env::temp_dir().join(format!("weft-module-graph-{}", std::process::id()));
    let write = |path: &str, text: &str| {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("a directory");
        std::fs::write(path, text).expect("a file");
    };
    write("lib.rs", "mod a; mod b; mod c; mod d; mod e;");
    write("a/mod.rs", "mod inner; pub struct A;");
    write("a/inner.rs", "pub fn f() -> crate::b::B { todo!() }");
    write("b.rs", "use super::a::A; pub struct B(A);");
    write(
        "c.rs",
        "use crate::a::A; #[cfg(test)] mod tests { use crate::c; }",
    );
    write(
        "d.rs",
        "pub fn f() -> String { format!(\"{}\", crate::e::NAME) }",
    );
    write(
        "e.rs",
        "pub const NAME: &str = \"e\"; pub fn g() { let _ = crate::d::f(); }",
    );
    let edges = sibling_edges(&dir);
    let mut found = cycles(&edges);
    found.sort();
    std::fs::remove_dir_all(&dir).expect("clean up");
    let [a, b, d, e] = ["a", "b", "d", "e"].map(|m| vec![m.to_string()]);
    // d -> e is written only inside `format!`.
    assert_eq!(
        found,
        [vec![a, b], vec![d, e]],
        "{}",
        describe(&found, &edges)
    );
}
