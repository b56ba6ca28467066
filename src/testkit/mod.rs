//! Builds real Hugging Face cache layouts holding tiny but valid models, and broken variants of
//! them, for the tests, the demo and the benchmarks. Not part of the public API.
//!
//! Everything is deterministic: the same calls write the same bytes.

pub mod cache;
pub mod fuzz;
pub mod model;

pub use cache::{fake_sha, fixture_cache, FixtureCache};
pub use model::{
    llama_model_files, safetensors_bytes, scripted_model_files, LlamaSpec, Rng, Script, TensorSpec,
    WeightDtype,
};
