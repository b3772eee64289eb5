//! `deploy/Dockerfile`: a cached dependency layer, files that exist and pass `.dockerignore`, and
//! a non-root runtime user.

use super::helpers::{path, read_text};

// ---------------------------------------------------------------------------------------------
// The Dockerfile

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read_text("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                if !current.trim().is_empty() {
                    out.push(current.trim().to_owned());
                }
                current.clear();
            }
        }
    }
    out
}

/// `COPY` into the final image from the build context: destination -> repository path.
pub(super) fn image_copies() -> Vec<(String, String)> {
    let instructions = dockerfile();
    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a FROM");
    instructions[last_from..]
        .iter()
        .filter_map(|i| i.strip_prefix("COPY "))
        .filter(|args| !args.starts_with("--from"))
        .map(|args| {
            let words: Vec<&str> = args.split_whitespace().collect();
            assert_eq!(words.len(), 2, "COPY with one source: {args}");
            (words[1].to_owned(), words[0].to_owned())
        })
        .collect()
}

#[test]
fn dockerfile_caches_dependencies_and_runs_as_non_root() {
    let instructions = dockerfile();
    let froms: Vec<&String> = instructions
        .iter()
        .filter(|i| i.starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    assert!(
        froms[0].contains("rust:") && froms[0].ends_with(" AS build"),
        "build stage from the Rust image: {}",
        froms[0]
    );
    let runtime = froms.last().expect("runtime stage");
    assert!(
        runtime.contains("debian:") && runtime.contains("-slim"),
        "slim Debian runtime: {runtime}"
    );

    // Dependencies are built before the sources are copied, so that layer survives code edits.
    let position = |needle: &str| {
        instructions
            .iter()
            .position(|i| i.contains(needle))
            .unwrap_or_else(|| panic!("no instruction with {needle:?}"))
    };
    let manifest = position("COPY Cargo.toml Cargo.lock");
    let sources = position("COPY src ");
    let first_build = position("cargo build --release --locked");
    assert!(manifest < first_build && first_build < sources);
    // The stub build needs every [[bench]] target of Cargo.toml to exist.
    let cargo: toml::Table = read_text("Cargo.toml").parse().expect("Cargo.toml");
    let stub = &instructions[first_build];
    for bench in cargo["bench"].as_array().into_iter().flatten() {
        let name = bench["name"].as_str().expect("bench name");
        assert!(
            stub.contains(name),
            "the dependency stage stubs no benches/{name}.rs; the manifest would not load"
        );
    }
    // The toolchain is the one Cargo.toml promises to build with, which the lockfile's
    // dependency versions were resolved for.
    let rust_version = cargo["package"]["rust-version"]
        .as_str()
        .expect("package.rust-version");
    assert!(
        instructions
            .iter()
            .any(|i| *i == format!("ARG RUST_VERSION={rust_version}")),
        "the build stage's RUST_VERSION must be Cargo.toml's rust-version {rust_version}"
    );

    // Everything copied from the context exists and is not excluded by .dockerignore.
    let ignore = read_text(".dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        ".dockerignore starts from nothing"
    );
    for instruction in instructions.iter().filter_map(|i| i.strip_prefix("COPY ")) {
        if instruction.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = instruction.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            assert!(
                path(source).exists(),
                "COPY {source}: missing in the repository"
            );
            assert!(
                allowed
                    .iter()
                    .any(|a| source.starts_with(a.trim_end_matches('/'))),
                "COPY {source}: excluded by .dockerignore"
            );
        }
    }

    let last_from = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("FROM");
    let user = instructions[last_from..]
        .iter()
        .filter_map(|i| i.strip_prefix("USER "))
        .next_back()
        .expect("the runtime stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert!(
        uid != "0" && uid != "root" && uid.parse::<u32>().is_ok(),
        "runtime user {user}: numeric and not root (Kubernetes runAsNonRoot checks the number)"
    );
    assert!(instructions.iter().any(|i| i == "EXPOSE 9464"));
    assert!(
        instructions
            .iter()
            .any(|i| i.starts_with("ENTRYPOINT [\"promo-attribution\"]"))
    );
}
