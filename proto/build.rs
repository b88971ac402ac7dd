//! Compiles the .proto files with protox (pure Rust), so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/weft/discovery/v1/ads.proto",
        "proto/weft/config/v1/cluster.proto",
        "proto/weft/config/v1/breaker.proto",
        "proto/weft/config/v1/endpoint.proto",
        "proto/weft/config/v1/route.proto",
        "proto/weft/config/v1/retry.proto",
        "proto/weft/config/v1/trust.proto",
        "proto/weft/config/v1/policy.proto",
        "proto/weft/config/v1/ratelimit.proto",
        "proto/weft/config/v1/cors.proto",
        "proto/weft/config/v1/compression.proto",
        "proto/weft/config/v1/cache.proto",
        "proto/weft/config/v1/validation.proto",
        "proto/weft/config/v1/gateway.proto",
        "proto/weft/identity/v1/identity.proto",
        "proto/weft/telemetry/v1/calls.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    let mut config = tonic_prost_build::Config::new();
    // Any::from_msg needs each message to know its own type URL.
    config.enable_type_names();
    // ...and type URLs in the form xDS (and our type_url constants) use.
    config.type_name_domain(["."], "type.googleapis.com");
    // Resources travel in our own `Any` (same wire format) whose value is
    // `Bytes`: the agent encodes a resource once per version and every
    // stream's response shares those bytes instead of copying them.
    config.extern_path(".google.protobuf.Any", "crate::Any");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds_with_config(descriptors, config)?;
    Ok(())
}
