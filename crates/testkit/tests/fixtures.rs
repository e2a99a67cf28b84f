//! The committed fixtures are what the generator wrote: every file listed in MANIFEST.json with its hash,
//! every reference tensor described in reference.json with the right shape and dtype, sizes within budget.

use std::collections::BTreeSet;
use std::path::Path;

use blip2_testkit::{Fixture, fixture_names, fixtures_root};
use sha2::{Digest, Sha256};

fn files_under(dir: &Path, root: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, root, out);
        } else {
            out.insert(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
            );
        }
    }
}

#[test]
fn manifest_lists_every_file_with_its_hash() {
    let root = fixtures_root();
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("MANIFEST.json")).unwrap())
            .unwrap();
    let listed: BTreeSet<String> = manifest["files"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut present = BTreeSet::new();
    files_under(&root, &root, &mut present);
    present.remove("MANIFEST.json");
    assert_eq!(
        listed, present,
        "fixtures/ and MANIFEST.json disagree on the files"
    );
    for (file, hash) in manifest["files"].as_object().unwrap() {
        let digest = Sha256::digest(std::fs::read(root.join(file)).unwrap());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            &hex,
            hash.as_str().unwrap(),
            "fixtures/{file} changed after generation"
        );
    }
}

#[test]
fn reference_json_describes_reference_safetensors() {
    let names = fixture_names();
    assert!(
        names.len() >= 8,
        "expected the 8 generated fixtures, found {names:?}"
    );
    for name in names {
        let fixture = Fixture::open(&name);
        let described = fixture.manifest()["tensors"].as_object().unwrap();
        let stored: BTreeSet<&str> = fixture.keys().into_iter().collect();
        let listed: BTreeSet<&str> = described.keys().map(String::as_str).collect();
        assert_eq!(
            stored, listed,
            "{name}: reference.json and reference.safetensors disagree on keys"
        );
        for (key, entry) in described {
            let data = fixture.data(key);
            let shape: Vec<usize> = entry["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(data.shape.to_vec(), shape, "{name}/{key}: shape");
            let dtype = format!("{:?}", data.dtype);
            let want = entry["dtype"].as_str().unwrap();
            assert_eq!(dtype, want, "{name}/{key}: dtype");
            assert!(
                !entry["description"].as_str().unwrap().is_empty(),
                "{name}/{key}: no description"
            );
        }
        for field in ["format_version", "versions", "seed"] {
            assert!(
                fixture.manifest().get(field).is_some(),
                "{name}: reference.json has no `{field}`"
            );
        }
    }
}

#[test]
fn model_fixtures_are_hf_model_directories() {
    for name in fixture_names() {
        let dir = fixtures_root().join(&name);
        if !dir.join("config.json").is_file() {
            continue; // logits-processors holds references only
        }
        for file in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ] {
            if file == "generation_config.json" && name == "tiny-itm" {
                continue; // a retrieval model does not generate
            }
            assert!(dir.join(file).is_file(), "{name} lacks {file}");
        }
        if name.starts_with("tiny-") && !name.contains("-lm") {
            assert!(
                dir.join("processor_config.json").is_file(),
                "{name} lacks processor_config.json"
            );
        }
    }
}

#[test]
fn fixtures_stay_small() {
    let root = fixtures_root();
    let mut all = BTreeSet::new();
    files_under(&root, &root, &mut all);
    let size = |f: &String| std::fs::metadata(root.join(f)).unwrap().len();
    let total: u64 = all.iter().map(size).sum();
    assert!(
        total <= 10_000_000,
        "fixtures total {total} bytes, budget 10 MB"
    );
    for name in fixture_names() {
        let dir_total: u64 = all
            .iter()
            .filter(|f| f.starts_with(&format!("{name}/")))
            .map(size)
            .sum();
        assert!(
            dir_total <= 2_000_000,
            "fixture {name} is {dir_total} bytes, budget 2 MB"
        );
    }
}
