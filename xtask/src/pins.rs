//! One build shared: what xtask builds (stage binaries for the bench and the e2e) is built
//! beside xtask, and [`check`], part of `cargo xtask test`, holds that `crates/workspace-hack`
//! still pins every feature `--features wgpu` adds to a crate the default build compiles, so
//! the wgpu build (CI's second) reuses every crate below burn. A dependency update can move a
//! feature; without the check that shows only as a CI run ten minutes longer. The same check
//! holds that the wgpu build leaves burn's autotune off (TF32 products on a GPU).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// `cargo build -p xtask` plus `what` (packages, binaries): built beside xtask, features
/// resolve as for xtask's own build, so only the named binaries are compiled. Alone, a
/// package resolves its dependencies' features for itself (without the pins) and rebuilds
/// most of the tree: minutes.
pub fn build_beside_xtask(repo: &Path, what: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(["build", "-q", "-p", "xtask"])
        .args(what)
        .current_dir(repo)
        .status()?;
    ensure!(status.success(), "building {what:?} failed ({status})");
    Ok(())
}

/// Crates the wgpu feature changes by design (their features or their dependencies).
const REBUILT: [&str; 5] = ["burn", "cubecl", "cubek", "mosr-", "xtask"];

/// Each package (`name vX.Y.Z`) with the feature sets it is built with (one per instance:
/// a crate built for build scripts and for the target may differ).
type Features = BTreeMap<String, BTreeSet<String>>;

fn features(repo: &Path, cargo: &str, extra: &[&str]) -> Result<Features> {
    let out = Command::new(cargo)
        .args(["tree", "--workspace", "-e", "normal,build,dev"])
        .args(["--prefix", "none", "-f", "{p}|{f}"])
        .args(extra)
        .current_dir(repo)
        .output()
        .context("running cargo tree")?;
    ensure!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut map = Features::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let Some((package, feats)) = line.split_once('|') else {
            continue;
        };
        // `name vX.Y.Z (path)` for workspace members, then markers such as `(*)`.
        let name: Vec<&str> = package.split_whitespace().take(2).collect();
        let feats = feats.split(" (").next().unwrap_or(feats);
        map.entry(name.join(" "))
            .or_default()
            .insert(feats.to_string());
    }
    Ok(map)
}

/// Every feature set of a crate in the default build (other than the ones the feature
/// rebuilds by design) exists in the wgpu build too; and the wgpu build leaves burn's
/// autotune off ([`no_autotune`]).
pub fn check(repo: &Path, cargo: &str) -> Result<()> {
    let plain = features(repo, cargo, &[])?;
    let wgpu = features(repo, cargo, &["--features", "mosr-tests/wgpu,xtask/wgpu"])?;
    no_autotune(&wgpu)?;
    let mut moved = Vec::new();
    for (package, sets) in &plain {
        if REBUILT.iter().any(|p| package.starts_with(p)) {
            continue;
        }
        let there = wgpu.get(package).cloned().unwrap_or_default();
        for set in sets.difference(&there) {
            let now: Vec<&String> = there.iter().collect();
            moved.push(format!(
                "{package}: [{set}] in the default build, {now:?} with wgpu"
            ));
        }
    }
    if !moved.is_empty() {
        bail!(
            "`--features wgpu` changes the features of crates the default build compiles, so \
             CI's wgpu build recompiles them and everything above them; add the missing \
             features to crates/workspace-hack/Cargo.toml ([build-dependencies] for proc \
             macros' crates):\n  {}",
            moved.join("\n  ")
        );
    }
    Ok(())
}

/// burn's `autotune` times candidate kernels and keeps the fastest, and on a GPU with tensor
/// cores the fastest f32 matmul rounds its inputs to TF32 (10 of f32's 23 bits): the GPU
/// path would no longer be the f32 model the wgpu tests hold to the CPU one (see
/// docs/architecture.md, invariants). A dependency that switches it on fails here.
fn no_autotune(build: &Features) -> Result<()> {
    let on: Vec<&String> = build
        .iter()
        .filter(|(p, sets)| {
            p.starts_with("burn-cubecl ") && sets.iter().any(|s| s.contains("autotune"))
        })
        .map(|(p, _)| p)
        .collect();
    ensure!(
        on.is_empty(),
        "the wgpu build switches on burn's autotune ({on:?}), whose fastest f32 matmuls on a \
         GPU round to TF32; find the dependency that enables it (cargo tree -e features \
         --features mosr-tests/wgpu -i burn-cubecl) and turn it off"
    );
    Ok(())
}
