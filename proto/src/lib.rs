//! The `rlhf.v1` wire: generated prost/tonic code, re-exported. Nothing else lives here.

pub use prost;
pub use prost::bytes;

/// Package `rlhf.v1`.
pub mod v1 {
    tonic::include_proto!("rlhf.v1");
}
