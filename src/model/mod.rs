//! Models: manifests, the ONNX Runtime, scoring sessions and the registry of
//! what serves. Only this module knows ort.

pub mod batcher;
pub mod manifest;
pub mod registry;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod scorer;

pub use manifest::Manifest;
pub use registry::{ModelStatus, Registry};
pub use scorer::{LoadedModel, ModelError};
