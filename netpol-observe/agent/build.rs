//! Builds the eBPF object (`netpol-observe-ebpf`) with the nightly toolchain and bpf-linker so
//! that `cargo build` of the agent embeds it. `cargo xtask setup` installs what this needs.
use std::process::Command;

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../netpol-observe-ebpf");
    if Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        anyhow::bail!(
            "bpf-linker is not installed; run `cargo xtask setup` (it installs bpf-linker 0.10.2 \
             and the nightly rust-src component the eBPF build needs)"
        );
    }
    // aya-build runs a child cargo and forwards each line of its stderr as a
    // `cargo:warning`: its progress ("Compiling …", "Finished …") would be ~40 warning lines on
    // every build. Quiet, that cargo prints only what matters (errors and the compiler's
    // warnings, which stay visible).
    // SAFETY: the build script is single-threaded here; the variable is read only by the
    // child processes it spawns.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "netpol-observe-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}
