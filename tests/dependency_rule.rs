//! The layering of ARCHITECTURE.md, checked over `cargo metadata`:
//! - `blip2-nn` and `blip2-testkit` depend on no workspace crate;
//! - leaves (vision, qformer, opt, t5, generation, processor, hub) depend only on `blip2-nn`, never on each other;
//! - only `blip2` composes leaves; `blip2-cli` depends on `blip2` (and may name `blip2-nn`'s backend helpers);
//! - any crate may dev-depend on `blip2-testkit` (test support); otherwise dev-dependencies follow the same rule;
//! - every member uses the workspace lints, and burn is pinned to `=0.21.0`.

use std::collections::BTreeSet;
use std::process::Command;

const LEAVES: &[&str] = &[
    "blip2-vision",
    "blip2-qformer",
    "blip2-opt",
    "blip2-t5",
    "blip2-generation",
    "blip2-processor",
    "blip2-hub",
];
const TOOLS: &[&str] = &["xtask", "blip2-workspace-tests", "blip2-benches"];

fn metadata() -> serde_json::Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

/// Allowed workspace dependencies (normal and build) of each workspace package.
fn allowed(package: &str) -> Option<BTreeSet<&'static str>> {
    let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<_>>();
    match package {
        "blip2-nn" | "blip2-testkit" => Some(set(&[])),
        p if LEAVES.contains(&p) => Some(set(&["blip2-nn"])),
        "blip2" => {
            let mut s = set(LEAVES);
            s.insert("blip2-nn");
            Some(s)
        }
        "blip2-cli" => Some(set(&["blip2", "blip2-nn"])),
        _ => None,
    }
}

#[test]
fn workspace_crates_respect_the_layering() {
    let meta = metadata();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    let mut violations = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap();
        if TOOLS.contains(&name) {
            continue;
        }
        let Some(allowed) = allowed(name) else {
            violations.push(format!(
                "{name}: not in the dependency rule; add it to tests/dependency_rule.rs"
            ));
            continue;
        };
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            if !names.contains(dep_name) {
                continue; // third-party
            }
            let kind = dep["kind"].as_str().unwrap_or("normal");
            let ok = allowed.contains(dep_name) || (kind == "dev" && dep_name == "blip2-testkit");
            if !ok {
                violations.push(format!("{name} has a {kind} dependency on {dep_name}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependency rule broken:\n  {}",
        violations.join("\n  ")
    );
}

#[test]
fn members_use_workspace_lints_and_pinned_burn() {
    let meta = metadata();
    let mut problems = Vec::new();
    for package in meta["packages"].as_array().unwrap() {
        let name = package["name"].as_str().unwrap();
        let manifest = std::fs::read_to_string(package["manifest_path"].as_str().unwrap()).unwrap();
        if !manifest.contains("[lints]\nworkspace = true") {
            problems.push(format!("{name}: no `[lints] workspace = true`"));
        }
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let req = dep["req"].as_str().unwrap();
            if dep_name.starts_with("burn") && req != "=0.21.0" {
                problems.push(format!("{name} -> {dep_name} requires {req}, not =0.21.0"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
