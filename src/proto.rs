//! Generated wire types (prost + tonic) for `proto/csagent/v1`.
//!
//! Only link/, dispatch and mgmt/ may use these; inner modules work on the
//! crate's own types, converted at the edge.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("csagent.v1");
}
