//! Build script: the commit the binary is built from, as `PROMO_BUILD_COMMIT` for
//! `promo_build_info{commit}`.
//!
//! Taken from the `PROMO_BUILD_COMMIT` environment variable when set (the Docker build, which
//! has no `.git`, passes it as a build argument), else from git, else `unknown`: a build never
//! fails for want of git.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PROMO_BUILD_COMMIT");
    let commit = std::env::var("PROMO_BUILD_COMMIT")
        .ok()
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=PROMO_BUILD_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_owned();
    (output.status.success() && !text.is_empty()).then_some(text)
}

fn git_commit() -> Option<String> {
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    // Rebuilt when HEAD moves: HEAD itself (a checkout), the branch it points to (a commit), and
    // packed-refs (a branch packed by gc). Only files that exist: cargo reruns a script on every
    // build while a path it watches is missing.
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &branch]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        if Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    Some(commit)
}
