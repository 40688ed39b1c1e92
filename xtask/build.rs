//! Stamps the commit `xtask` is built from, and whether the code (not docs or results) differed
//! from it then, so a run's manifests name the code that ran rather than whatever is checked
//! out when they are written (a binary that outlives a commit was mislabelled before).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir("..")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    const CODE: [&str; 5] = ["crates", "xtask", "tests", "Cargo.toml", "Cargo.lock"];
    // Reruns when a commit moves HEAD or the code changes; only paths that exist (a missing
    // one would rerun the script on every build).
    let mut watch: Vec<PathBuf> = CODE.iter().map(|p| PathBuf::from("..").join(p)).collect();
    if let (Some(dir), Some(common)) = (
        git(&["rev-parse", "--git-dir"]),
        git(&["rev-parse", "--git-common-dir"]),
    ) {
        let (dir, common) = (
            PathBuf::from("..").join(dir),
            PathBuf::from("..").join(common),
        );
        watch.extend([
            dir.join("HEAD"),
            common.join("refs/heads"),
            common.join("packed-refs"),
        ]);
    }
    for p in watch.iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let version = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let mut args = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            args.extend(CODE);
            let dirty = git(&args).is_some_and(|s| !s.is_empty());
            let pkg = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
            format!("{pkg}+{commit}{}", if dirty { "-dirty" } else { "" })
        }
        _ => String::new(),
    };
    println!("cargo:rustc-env=MOSR_BUILD_VERSION={version}");
}
