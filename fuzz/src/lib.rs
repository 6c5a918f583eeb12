//! The fuzz targets' checks, shared with the stable test suite (tests/fuzz_checks.rs runs them
//! over generated inputs and the seed corpus).
#[path = "checks.rs"]
pub mod checks;
