//! Key/value caches for incremental decoding, passed explicitly (`&mut`) so that modules stay immutable.
//!
//! One [`LayerCache`] per attention layer holds keys and values as `[batch, num_heads, kv_len, head_dim]`.
//! Self-attention appends each step's keys and values ([`LayerCache::append`]); cross-attention computes them
//! once from the encoder output and reuses them ([`LayerCache::get_or_insert_with`]). Beam search reorders the
//! batch axis ([`KvCache::reorder`]).

use burn::prelude::{Backend, Int, Tensor};

/// `x` row-major: a fast copy of a strided view on flex, `x` itself elsewhere (backends handle layouts).
fn row_major<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "flex")]
    return crate::tensor_flex::contiguous(x);
    #[cfg(not(feature = "flex"))]
    x
}

/// Keys and values of one attention layer.
#[derive(Clone, Debug)]
pub struct LayerCache<B: Backend> {
    kv: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
}

impl<B: Backend> Default for LayerCache<B> {
    fn default() -> Self {
        Self { kv: None }
    }
}

impl<B: Backend> LayerCache<B> {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends this step's keys and values and returns everything cached so far.
    ///
    /// # Shapes
    /// `key`, `value`: `[batch, num_heads, new_len, head_dim]` -> `[batch, num_heads, kv_len, head_dim]`.
    pub fn append(
        &mut self,
        key: Tensor<B, 4>,
        value: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        // Kept row-major: the heads arrive as strided views ([batch, len, heads, dim] with two axes swapped), and
        // flex would otherwise copy a strided cache element by element at the next step's `cat`.
        let (key, value) = (row_major(key), row_major(value));
        let (key, value) = match self.kv.take() {
            Some((k, v)) => (Tensor::cat(vec![k, key], 2), Tensor::cat(vec![v, value], 2)),
            None => (key, value),
        };
        self.kv = Some((key.clone(), value.clone()));
        (key, value)
    }

    /// The cached keys and values, computing them with `compute` the first time (cross-attention).
    pub fn get_or_insert_with(
        &mut self,
        compute: impl FnOnce() -> (Tensor<B, 4>, Tensor<B, 4>),
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        self.kv.get_or_insert_with(compute).clone()
    }

    /// The cached keys and values, if any.
    pub fn get(&self) -> Option<(Tensor<B, 4>, Tensor<B, 4>)> {
        self.kv.clone()
    }

    /// Number of cached positions (`kv_len`), 0 when empty.
    pub fn len(&self) -> usize {
        self.kv.as_ref().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.kv.is_none()
    }

    /// Keeps the batch rows `indices` (in that order), e.g. the surviving beams.
    pub fn reorder(&mut self, indices: Tensor<B, 1, Int>) {
        if let Some((k, v)) = self.kv.take() {
            self.kv = Some((k.select(0, indices.clone()), v.select(0, indices)));
        }
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.kv = None;
    }
}

/// One [`LayerCache`] per layer of a stack.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerCache::new()).collect(),
        }
    }

    /// Number of layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Layer `i`'s cache.
    pub fn layer(&self, i: usize) -> &LayerCache<B> {
        &self.layers[i]
    }

    /// Layer `i`'s cache, mutable.
    pub fn layer_mut(&mut self, i: usize) -> &mut LayerCache<B> {
        &mut self.layers[i]
    }

    /// All layers, mutable (zip them with the model's layers).
    pub fn layers_mut(&mut self) -> &mut [LayerCache<B>] {
        &mut self.layers
    }

    /// Positions cached so far (layer 0's `kv_len`; the layers agree).
    pub fn seq_len(&self) -> usize {
        self.layers.first().map_or(0, LayerCache::len)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.seq_len() == 0
    }

    /// Keeps the batch rows `indices` in every layer.
    pub fn reorder(&mut self, indices: Tensor<B, 1, Int>) {
        for layer in &mut self.layers {
            layer.reorder(indices.clone());
        }
    }

    /// Empties every layer.
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(LayerCache::clear);
    }
}
