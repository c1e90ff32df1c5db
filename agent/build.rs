//! Generates the gRPC API's Rust code from `proto/` with protox (a Rust protobuf
//! compiler), so building needs no `protoc` program. Also writes the encoded descriptor
//! set that server reflection serves.

use std::path::PathBuf;

use prost::Message;

const PROTO_ROOT: &str = "../proto";
const PROTO_FILES: &[&str] = &["../proto/invariant/v1/agent.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_ROOT}");
    pack_relative_relocations();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let descriptors = protox::compile(PROTO_FILES, [PROTO_ROOT])?;
    std::fs::write(
        out_dir.join("invariant_v1_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .emit_rerun_if_changed(false)
        // Malformed messages are INVALID_ARGUMENT, not tonic-prost's INTERNAL.
        .codec_path("crate::api::codec::Codec")
        .compile_fds(descriptors)?;
    Ok(())
}

/// Links the agent with packed relative relocations (DT_RELR) on GNU/Linux: the table the
/// dynamic loader reads at every start shrinks from about 1.2 MB (`.rela.dyn`, one
/// 24-byte entry per pointer in the binary) to a few KB, and so does the resident memory
/// it took. Needs GNU ld >= 2.38 or lld >= 15 to link and glibc >= 2.36 to run (Debian
/// 12, Ubuntu 22.10 and later; GNU ld leaves DT_RELR out when linking against an older
/// glibc); the static musl build has no dynamic loader to care.
fn pack_relative_relocations() {
    let target = |key: &str| std::env::var(key).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") == "linux" && target("CARGO_CFG_TARGET_ENV") == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
