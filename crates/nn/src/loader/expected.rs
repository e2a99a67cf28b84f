//! The checkpoint keys and shapes a module expects, without loading or materialising anything.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::{Backend, Tensor};

use super::{KeyMap, ModulePath};

/// Every checkpoint key `module` would read under `key_map`, with its shape in the file's layout (PyTorch's
/// `[out, in]` for linear weights). Lazy parameters stay lazy, so this costs nothing even for a ViT-g or an
/// OPT-6.7b built with `init`: tests use it to check a model's structure against a real checkpoint's key list.
///
/// ```
/// use blip2_nn::backend::DefaultBackend;
/// use blip2_nn::loader::{KeyMap, expected_keys};
/// use burn::nn::{LinearConfig, LinearLayout};
///
/// let proj = LinearConfig::new(768, 2560).with_layout(LinearLayout::Col).init::<DefaultBackend>(&Default::default());
/// let keys = expected_keys(&proj, &KeyMap::under("language_projection"));
/// assert_eq!(keys["language_projection.weight"], [2560, 768]);
/// assert_eq!(keys["language_projection.bias"], [2560]);
/// ```
pub fn expected_keys<B: Backend, M: Module<B>>(
    module: &M,
    key_map: &KeyMap,
) -> BTreeMap<String, Vec<usize>> {
    let mut lister = Lister {
        key_map,
        path: ModulePath::default(),
        keys: BTreeMap::new(),
    };
    module.visit(&mut lister);
    lister.keys
}

struct Lister<'a> {
    key_map: &'a KeyMap,
    path: ModulePath,
    keys: BTreeMap<String, Vec<usize>>,
}

impl<B: Backend> ModuleVisitor<B> for Lister<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let key = self.key_map.to_file_key(&self.path.current());
        // As in `load_module`: a lazy parameter's shape is already the stored layout; an initialised Col weight
        // is a transposed view that `transform_for_save` turns back without copying.
        let shape = if param.is_initialized() {
            param.transform_for_save().val().shape().to_vec()
        } else {
            param.lazy_shape().to_vec()
        };
        self.keys.insert(key, shape);
    }
}
