//! The dependency direction of docs/DESIGN.md, checked on every test run:
//! store <- chunk API <- server / distribute / image / qemu <- migrate <- cli.
//!
//! Crate boundaries enforce most of it (the store and chunk-api crates cannot
//! name the root crate); inside the root crate this reads every module's
//! `crate::` paths and fails on an edge the table below does not allow, and
//! on any cycle between top-level modules. A new edge is a design change:
//! add it here and to docs/DESIGN.md in the same commit.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step is a failed test

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The lower workspace crates the root library re-exports as modules
/// (`strato::store`, `strato::chunk_api`): every module may use them.
const BELOW_EVERYTHING: &[&str] = &["store", "chunk_api"];

/// Top-level modules of the root library and what each may import.
/// Modules not listed (none today) fail the test, so a new module must say
/// where it sits.
const ALLOWED: &[(&str, &[&str])] = &[
    ("config", &["store"]),
    ("server", &["store", "config"]),
    ("distribute", &["store", "config"]),
    ("image", &["store", "config", "distribute"]),
    ("qemu", &["store", "config"]),
    (
        "migrate",
        &["store", "config", "distribute", "image", "qemu"],
    ),
];

/// Edges that exist today and are being removed. This list only ever
/// shrinks; it is empty now and should stay so.
const KNOWN_VIOLATIONS: &[(&str, &str)] = &[];

/// strato crates each workspace crate may depend on (by package name).
const CRATE_DEPS: &[(&str, &[&str])] = &[
    ("store", &[]),
    ("trust", &[]),
    ("chunk-api", &["strato-store"]),
    ("s3-compat", &[]),
    ("chain-broadcast", &["strato-trust"]),
    ("tools/wanem", &[]),
    ("testbed", &[]),
];

/// Test tooling any crate's tests may use (dev-dependencies only).
const TEST_TOOLING: &[&str] = &["strato-testbed"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    files_with(dir, &["rs"], out)
}

fn files_with(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_with(&p, exts, out);
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| exts.contains(&x))
        {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`src/a.rs` and
/// `src/a/**` are module `a`); `None` for the crate roots and the binary.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    match name {
        "lib" | "main" | "bin" | "cli" => None,
        other => Some(other.to_string()),
    }
}

/// Every `crate::NAME` in the file's code (comments stripped), as NAME.
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let before = rest[..i].chars().last();
            let after = &rest[i + "crate::".len()..];
            // `$crate::` in macros and `foo_crate::` are not the root crate.
            let is_root = !before.is_some_and(|c| c == '$' || c == '_' || c.is_alphanumeric());
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if is_root && !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let src = root().join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 20,
        "found only {} files under src/",
        files.len()
    );

    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut wrong = Vec::new();
    for f in &files {
        let Some(module) = module_of(&src, f) else {
            continue;
        };
        let Some(ok) = allowed.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module `{module}` has no row in tests/layering.rs",
                f.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).expect("reading a source file");
        for target in crate_paths(&text) {
            if target == module || BELOW_EVERYTHING.contains(&target.as_str()) {
                continue;
            }
            let known = KNOWN_VIOLATIONS.contains(&(module.as_str(), target.as_str()));
            if !known {
                edges
                    .entry(module.clone())
                    .or_default()
                    .insert(target.clone());
            }
            if !ok.contains(&target.as_str()) && !known {
                wrong.push(format!(
                    "{}: `{module}` imports crate::{target}, which is not below it",
                    f.strip_prefix(root()).unwrap_or(f).display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "layering violations:\n{}",
        wrong.join("\n")
    );

    // No cycles between top-level modules (the table above is a DAG only
    // if it says so; check what the code really does).
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in edges.keys() {
        let cycle = visit(n, &edges, &mut Vec::new(), &mut done);
        assert!(
            cycle.is_none(),
            "module cycle: {}",
            cycle.unwrap_or_default().join(" -> ")
        );
    }
}

#[test]
fn workspace_crates_depend_only_on_the_layers_below() {
    for (dir, ok) in CRATE_DEPS {
        let manifest = root().join(dir).join("Cargo.toml");
        let Ok(text) = std::fs::read_to_string(&manifest) else {
            // chunk-api may not exist in every checkout of this test's history.
            assert_ne!(*dir, "store", "{} missing", manifest.display());
            continue;
        };
        let mut in_deps = false;
        let mut in_dev_deps = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_deps = line.contains("dependencies");
                in_dev_deps = line.contains("dev-dependencies");
                continue;
            }
            if !in_deps || !line.contains("path =") {
                continue;
            }
            let name = line.split('=').next().unwrap_or("").trim();
            assert!(
                ok.contains(&name) || (in_dev_deps && TEST_TOOLING.contains(&name)),
                "{dir}/Cargo.toml depends on {name}, which is not below it"
            );
        }
    }
}

#[test]
fn nothing_points_outside_the_repository() {
    // A person who clones the project has none of the files beside it.
    let mut files = Vec::new();
    for dir in [
        "src",
        "store",
        "chunk-api",
        "s3-compat",
        "chain-broadcast",
        "trust",
        "testbed",
        "tools",
        "tests",
        "benches",
        "scripts",
        "docs",
    ] {
        files_with(
            &root().join(dir),
            &["rs", "md", "sh", "py", "toml"],
            &mut files,
        );
    }
    files.push(root().join("README.md"));
    files.push(root().join("Cargo.toml"));
    let needle = ["..", "/shared/"].concat();
    let machine = ["/wo", "rk/"].concat();
    for f in files {
        let Ok(text) = std::fs::read_to_string(&f) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            assert!(
                !line.contains(&needle) && !line.contains(&machine),
                "{}:{}: points outside the repository: {line}",
                f.display(),
                i + 1
            );
        }
    }
}
