//! Generated wire types (prost + tonic) for `proto/csagent/v1`.
//!
//! Only the agent's link, dispatch and convert/ edge and the plane may use
//! these; capability crates work on their own types, converted at the edge.
//! Nothing else lives here.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csagent.v1");

    /// The encoded `FileDescriptorSet` of every message above: field and
    /// enum names for a CLI that shows enum values by name.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/csagent_descriptor.bin"));
}
