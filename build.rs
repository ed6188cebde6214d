//! Compiles the BPF sampler into a libbpf skeleton and the pprof schema
//! into Rust types. Neither step needs anything but clang: protox parses
//! the .proto in-process, so no protoc is required.

use std::env;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const BPF_SRC: &str = "bpf/profiler.bpf.c";
const BPF_HEADER: &str = "bpf/profiler.h";
const BPF_PYTHON: &str = "bpf/python.bpf.h";
const PROTO: &str = "proto/profile.proto";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    let mut skel = SkeletonBuilder::new();
    skel.source(BPF_SRC).clang_args([
        "-Wall",
        "-O2",
        "-g",
        "-Ibpf",
        // v3: 32-bit jumps and ALU (kernel 5.1+). The program uses no
        // atomic that returns a value (kernel 5.12+): see bpf/profiler.bpf.c.
        "-mcpu=v3",
        // Debian keeps asm/ uapi headers under the multiarch directory.
        "-idirafter",
        "/usr/include/x86_64-linux-gnu",
    ]);
    if let Err(err) = skel.build_and_generate(out.join("profiler.skel.rs")) {
        panic!(
            "failed to build {BPF_SRC}: {err:#}\n\
             hint: run scripts/install-deps.sh to install clang and the kernel headers"
        );
    }

    let fds = protox::compile([PROTO], ["proto"]).unwrap_or_else(|err| panic!("failed to parse {PROTO}: {err}"));
    prost_build::Config::new()
        .compile_fds(fds)
        .unwrap_or_else(|err| panic!("failed to generate code for {PROTO}: {err}"));

    for path in [BPF_SRC, BPF_HEADER, BPF_PYTHON, PROTO] {
        println!("cargo:rerun-if-changed={path}");
    }
}
