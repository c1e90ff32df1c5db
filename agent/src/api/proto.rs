//! Rust types and gRPC stubs generated from `proto/invariant/v1/agent.proto` by
//! `build.rs`. The `.proto` file is the contract; read it for what each field means.

#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("invariant.v1");

/// The encoded descriptor set of the API, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/invariant_v1_descriptor.bin"));
