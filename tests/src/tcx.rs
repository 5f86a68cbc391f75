//! Another tool's tcx program, for checking how the agent's programs share a hook: a program
//! that only returns a fixed verdict, loaded and attached with raw `bpf()` calls (no object
//! file), detached when dropped.

use std::os::fd::{FromRawFd, OwnedFd};

use anyhow::{Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

/// `TCX_PASS`: the packet goes on and the chain ends (what a CNI's program returns).
pub const TCX_PASS: i32 = 0;

/// A program returning a fixed verdict, appended to the tcx ingress and egress chains of an
/// interface; both links are released on drop, which detaches them.
#[derive(Debug)]
pub struct VerdictProgram {
    _links: [OwnedFd; 2],
}

impl VerdictProgram {
    /// Loads `r0 = verdict; exit` and appends it to both tcx hooks of interface `ifindex`.
    pub fn attach(ifindex: u32, verdict: i32) -> Result<VerdictProgram> {
        let prog = load(verdict)?;
        let link = |attach_type| link_create(&prog, ifindex, attach_type);
        Ok(VerdictProgram {
            _links: [link(BPF_TCX_INGRESS)?, link(BPF_TCX_EGRESS)?],
        })
    }
}

/// `bpf(cmd, attr)` with a zero-filled attribute buffer of 128 bytes (fields the kernel does
/// not know must be zero); returns the new file descriptor.
fn bpf(cmd: libc::c_long, attr: &[u8; 128], what: &str) -> Result<OwnedFd> {
    // SAFETY: the kernel reads `attr.len()` bytes of `attr` and returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        bail!("{what}: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel has just created for us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put_u32(attr: &mut [u8; 128], off: usize, v: u32) {
    attr[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], off: usize, v: u64) {
    attr[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

fn load(verdict: i32) -> Result<OwnedFd> {
    // struct bpf_insn: code, dst/src registers, off (i16), imm (i32).
    let insn = |code: u8, imm: i32| {
        let mut i = [0u8; 8];
        i[0] = code;
        i[4..].copy_from_slice(&imm.to_ne_bytes());
        i
    };
    // BPF_ALU64 | BPF_MOV | BPF_K into r0, then BPF_JMP | BPF_EXIT.
    let insns = [insn(0xb7, verdict), insn(0x95, 0)];
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_SCHED_CLS);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + 7].copy_from_slice(b"verdict");
    bpf(BPF_PROG_LOAD, &attr, "loading the verdict program")
}

fn link_create(prog: &OwnedFd, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, attach_type);
    bpf(
        BPF_LINK_CREATE,
        &attr,
        "attaching the verdict program (tcx)",
    )
}
