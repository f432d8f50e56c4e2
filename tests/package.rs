//! What the published packages' docs point at: only files the package ships. For the
//! client and for the mock server, the README (above its "Development" section, which is
//! about a clone of the repository) and the rustdoc in `src/` name no path that the
//! package's `Cargo.toml` excludes or that does not exist, and `Cargo.toml` links the
//! docs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests panic on purpose.

use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The two packages: the client at the root, the mock server in `mock/`.
fn packages() -> [PathBuf; 2] {
    [PathBuf::from(ROOT), Path::new(ROOT).join("mock")]
}

/// The manifest's `exclude` list.
fn excluded(package: &Path) -> Vec<String> {
    let manifest: toml::Table = std::fs::read_to_string(package.join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    manifest["package"]["exclude"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// Every repository path named in `text`: a word starting with one of the folders the
/// docs point into, up to the first character that cannot be in a path.
fn named_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for start in ["examples/", "tests/", "benches/", "fuzz/", ".ci/"] {
        let mut rest = text;
        while let Some(at) = rest.find(start) {
            let before = rest[..at].chars().next_back();
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
                .unwrap_or(tail.len());
            // A path starts a word: `examples/x`, not `src/examples/x` or a URL's tail.
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || "/._-".contains(c)) {
                found.push(tail[..end].trim_end_matches('.').to_owned());
            }
            rest = &tail[start.len()..];
        }
    }
    found
}

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn user_docs_point_only_at_files_the_package_ships() {
    let mut wrong = Vec::new();
    for package in packages() {
        wrong.extend(wrong_paths(&package));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every path the package's user docs name that it does not ship.
fn wrong_paths(package: &Path) -> Vec<String> {
    let readme = std::fs::read_to_string(package.join("README.md")).unwrap();
    let for_users = readme.split("\n## Development").next().unwrap();
    let mut sources = vec![("README.md".to_owned(), for_users.to_owned())];
    let mut files = Vec::new();
    rust_files(&package.join("src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let docs: String = text
            .lines()
            .map(str::trim_start)
            .filter(|l| l.starts_with("///") || l.starts_with("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        sources.push((file.display().to_string(), docs));
    }
    let excluded = excluded(package);
    let mut wrong = Vec::new();
    for (source, text) in &sources {
        for path in named_paths(text) {
            if excluded.iter().any(|ex| path.starts_with(ex.as_str())) {
                wrong.push(format!("{source}: {path} is excluded from the package"));
            } else if !package.join(&path).exists() {
                wrong.push(format!("{source}: {path} does not exist"));
            }
        }
    }
    wrong
}

#[test]
fn the_path_finder_finds_what_it_should() {
    let text = "see `examples/checkout/Cargo.toml`, tests/mock.rs. and .ci/run; not src/examples/x";
    assert_eq!(
        named_paths(text),
        ["examples/checkout/Cargo.toml", "tests/mock.rs", ".ci/run"]
    );
}

#[test]
fn the_manifests_link_the_docs() {
    for (package, name) in packages()
        .iter()
        .zip(["idempotent-retry", "idempotent-retry-mock"])
    {
        let manifest = std::fs::read_to_string(package.join("Cargo.toml")).unwrap();
        assert!(
            manifest.contains(&format!("documentation = \"https://docs.rs/{name}\"")),
            "{}/Cargo.toml needs a documentation link",
            package.display()
        );
    }
}
