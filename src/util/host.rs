//! Moving tensors between the host and the device: the one place that reads values back (each
//! read is a device sync on a GPU backend, so callers batch what they read). Read-backs are
//! counted per thread, so a test can hold a step to a fixed number of them.

use std::cell::Cell;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

thread_local! {
    static READ_BACKS: Cell<u64> = const { Cell::new(0) };
}

/// Read-backs this thread has made so far.
pub fn read_backs() -> u64 {
    READ_BACKS.with(Cell::get)
}

fn read<B: Backend, const D: usize, K: burn::tensor::BasicOps<B>>(t: Tensor<B, D, K>) -> TensorData {
    READ_BACKS.with(|n| n.set(n.get() + 1));
    t.into_data()
}

/// Every value of `t` on the host as f32 (whatever the tensor's float type), in row-major order.
pub fn to_f32<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    read(t).convert::<f32>().to_vec::<f32>().expect("a float tensor converts to f32")
}

/// Every value of `t` on the host as f64.
pub fn to_f64<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
    read(t).convert::<f64>().to_vec::<f64>().expect("a float tensor converts to f64")
}

/// Every value of an integer tensor on the host (whatever the backend's integer type).
pub fn to_i64<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> Vec<i64> {
    read(t).convert::<i64>().to_vec::<i64>().expect("an integer tensor converts to i64")
}

/// The first value of `t` (a loss, a temperature) on the host.
pub fn scalar<B: Backend, const D: usize>(t: Tensor<B, D>) -> f64 {
    to_f64(t)[0]
}

/// `[rows, T]` integer tensor from equally long host rows.
pub fn int_tensor<B: Backend>(rows: &[Vec<i64>], device: &B::Device) -> Tensor<B, 2, Int> {
    let t = rows.first().map_or(0, Vec::len);
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), t]), device)
}

/// `[n]` index tensor.
pub fn index_tensor<B: Backend>(indices: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(v, [indices.len()]), device)
}
