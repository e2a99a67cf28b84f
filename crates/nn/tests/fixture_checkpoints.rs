//! The loader reads the checkpoints transformers wrote for the fixtures: every key and shape as listed in their
//! manifests, every tensor readable in f32 (and bf16 where the backend holds it).

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::Checkpoint;
use blip2_testkit::{Fixture, fixture_names};

#[test]
fn fixture_checkpoints_open_with_their_keys_and_shapes() {
    let mut checked = 0;
    for name in fixture_names() {
        let fixture = Fixture::open(&name);
        let Some(keys) = fixture
            .manifest()
            .get("checkpoint_keys")
            .and_then(|k| k.as_object())
        else {
            continue;
        };
        let checkpoint = Checkpoint::open(fixture.dir()).unwrap();
        let found: Vec<&str> = checkpoint.keys().collect();
        let listed: Vec<&str> = keys.keys().map(String::as_str).collect();
        assert_eq!(found, listed, "{name}: keys");
        for (key, shape) in keys {
            let shape: Vec<usize> = shape
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let info = checkpoint.info(key).unwrap();
            assert_eq!(info.shape, shape, "{name}/{key}");
            assert!(info.is_float(), "{name}/{key}");
            for dtype in [FloatDType::F32, FloatDType::BF16] {
                let data = checkpoint.read(key, dtype).unwrap();
                assert_eq!(data.shape.to_vec(), shape, "{name}/{key} as {dtype}");
            }
            let values: Vec<f32> = checkpoint
                .read(key, FloatDType::F32)
                .unwrap()
                .to_vec()
                .unwrap();
            assert!(
                values.iter().all(|v| v.is_finite()),
                "{name}/{key} has non-finite values"
            );
        }
        assert_eq!(checkpoint.files().len(), 1);
        checked += 1;
    }
    assert_eq!(checked, 10, "ten model fixtures");
}
