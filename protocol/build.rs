//! Compiles `proto/agent.proto` into protobuf messages and ttrpc client/server code.

use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("gen");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/gen");
    println!("cargo:rerun-if-changed=proto/agent.proto");
    ttrpc_codegen::Codegen::new()
        .out_dir(&out)
        .include("proto")
        .input("proto/agent.proto")
        .rust_protobuf()
        .customize(ttrpc_codegen::Customize {
            async_all: false,
            ..Default::default()
        })
        .run()
        .expect("generate ttrpc code from proto/agent.proto");
    // The generated client runs on our own ttrpc client (see src/rpc.rs),
    // which keeps ttrpc's call contract but does not poll.
    let client = out.join("agent_ttrpc.rs");
    let code = std::fs::read_to_string(&client).expect("read the generated agent_ttrpc.rs");
    let uses = code.matches("::ttrpc::Client").count();
    assert_eq!(
        uses, 2,
        "ttrpc-codegen's AgentClient changed shape: update build.rs's client swap"
    );
    std::fs::write(
        &client,
        code.replace("::ttrpc::Client", "crate::rpc::Client"),
    )
    .expect("write agent_ttrpc.rs");
    // The generated files carry inner attributes, so they must be real modules,
    // not include!d into a block: a tiny mod.rs names them.
    std::fs::write(out.join("mod.rs"), "pub mod agent;\npub mod agent_ttrpc;\n")
        .expect("write OUT_DIR/gen/mod.rs");
}
