//! Backend selection at run time. `flex` is the default CPU backend (measured about 2× faster than
//! `ndarray` here, see README); `cuda` and `wgpu` exist when built with those features.

use burn::backend::{Autodiff, Flex, NdArray};
use serde::{Deserialize, Serialize};

use crate::kernels::TrainBackend;
use crate::util::error::Result;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    #[default]
    Flex,
    Ndarray,
    Cuda,
    Wgpu,
}

impl BackendKind {
    /// GPU backends: the encoder may run in half precision, and peers take a device each.
    pub fn is_gpu(self) -> bool {
        matches!(self, Self::Cuda | Self::Wgpu)
    }

    /// The name configs and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Ndarray => "ndarray",
            Self::Cuda => "cuda",
            Self::Wgpu => "wgpu",
        }
    }
}

/// Work that runs on whichever backend is chosen.
pub trait BackendJob {
    type Output;
    fn run<B: TrainBackend>(self, device: B::Device) -> Result<Self::Output>;
}

pub fn dispatch<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output> {
    match kind {
        BackendKind::Flex => job.run::<Autodiff<Flex>>(Default::default()),
        BackendKind::Ndarray => job.run::<Autodiff<NdArray>>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => job.run::<Autodiff<burn::backend::Cuda>>(Default::default()),
        #[cfg(not(feature = "cuda"))]
        BackendKind::Cuda => Err(crate::util::error::Error::config(
            "backend",
            "this build has no CUDA support: rebuild with `--features cuda`",
            "command line",
        )),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => job.run::<Autodiff<burn::backend::Wgpu>>(Default::default()),
        #[cfg(not(feature = "wgpu"))]
        BackendKind::Wgpu => Err(crate::util::error::Error::config(
            "backend",
            "this build has no wgpu support: rebuild with `--features wgpu`",
            "command line",
        )),
    }
}
