//! Reading tensors back to the host: the crate's one device readback (ids for the `<image>` merge and the
//! retrieval models' checks, scores for the pipelines).

use burn::prelude::{Backend, Tensor};
use burn::tensor::{BasicOps, Element};

use crate::Error;

/// The rows of a `[rows, cols]` tensor as `T` on the host; `what` names the tensor in the error.
///
/// # Errors
/// [`Error::BadInput`] when the backend cannot read the values back as `T`.
pub(crate) fn host_rows<B: Backend, K: BasicOps<B>, T: Element>(
    t: Tensor<B, 2, K>,
    what: &str,
) -> Result<Vec<Vec<T>>, Error> {
    let [rows, cols] = t.dims();
    let values: Vec<T> =
        t.into_data().convert::<T>().into_vec().map_err(|e| {
            Error::bad_input(format!("cannot read {what} back from the device: {e:?}"))
        })?;
    Ok((0..rows)
        .map(|r| values[r * cols..(r + 1) * cols].to_vec())
        .collect())
}
