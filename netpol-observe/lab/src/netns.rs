//! Network namespaces and the commands that configure them (`ip`, `nft`, `sysctl`), and
//! running code inside a namespace: a dedicated std thread `setns`es into it, so that sockets
//! created there keep that namespace (a socket stays in the netns it was created in) and can be
//! handed to tokio.
//!
//! Every namespace of a run is named `npo-lab-<run>-...` (pods `npo-lab-<run>-<namespace>.<pod>`); a run holds an exclusive `flock` on
//! `/run/netpol-observe/lab/<run>.lock` while alive, so the leftovers of a killed run are exactly
//! the namespaces whose run lock can be taken ([`clear_leftovers`]).

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use nix::fcntl::{Flock, FlockArg};

/// Prefix of every network namespace the lab creates.
pub(crate) const PREFIX: &str = "npo-lab-";
const NETNS_DIR: &str = "/run/netns";
const LOCK_DIR: &str = "/run/netpol-observe/lab";

/// A failure while building or tearing down the lab on the machine.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command could not start or failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its standard error (or the spawn error).
        stderr: String,
    },
    /// A file operation failed.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Links did not come up (carrier) in time.
    #[error("links of network namespace {netns} not up within {timeout:?}: {links}")]
    LinksDown {
        /// The namespace.
        netns: String,
        /// How long we waited.
        timeout: std::time::Duration,
        /// The links still down.
        links: String,
    },
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {netns}: {message}")]
    Enter {
        /// The namespace.
        netns: String,
        /// Why.
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> NetnsError + '_ {
    move |source| NetnsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs a command with optional standard input, failing with its stderr.
pub fn command(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetnsError> {
    let line = format!("{program} {}", args.join(" "));
    let fail = |stderr: String| NetnsError::Command {
        command: line.clone(),
        stderr,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(e.to_string()))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(input) = stdin {
            stderr.push_str(&format!("\n--- input ---\n{input}"));
        }
        return Err(fail(stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip -batch -` (in `netns` when given) with one command per line.
pub(crate) fn ip_batch(netns: Option<&str>, script: &str) -> Result<(), NetnsError> {
    let mut args = vec![];
    if let Some(ns) = netns {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    command("ip", &args, Some(script)).map(drop)
}

/// Loads an nftables script into `netns` (`nft -f -` run through `ip netns exec`).
pub fn nft(netns: &str, script: &str) -> Result<(), NetnsError> {
    command(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(script),
    )
    .map(drop)
}

/// Sets sysctls (`key=value`) inside `netns`.
pub fn sysctl(netns: &str, settings: &[&str]) -> Result<(), NetnsError> {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-q", "-w"];
    args.extend_from_slice(settings);
    command("ip", &args, None).map(drop)
}

/// Waits (up to `timeout`) until every link of `netns` but the loopback and bridges has its
/// carrier (`state UP`): a veth's carrier, and with it a bridge port's forwarding, comes up
/// asynchronously, up to a second after both ends are up, and packets sent before are lost.
pub(crate) fn wait_links_up(netns: &str, timeout: std::time::Duration) -> Result<(), NetnsError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let text = command("ip", &["-n", netns, "-o", "link", "show"], None)?;
        let down: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("link/ether") && !l.contains(" br0:") && !l.contains("state UP"))
            .filter_map(|l| l.split(": ").nth(1))
            .collect();
        if down.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(NetnsError::LinksDown {
                netns: netns.to_owned(),
                timeout,
                links: down.join(", "),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Runs `f` on a new thread that has entered network namespace `netns`.
pub fn run_in<T, F>(netns: &str, f: F) -> Result<T, NetnsError>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let path = Path::new(NETNS_DIR).join(netns);
    let file = File::open(&path).map_err(io_err(&path))?;
    let name = netns.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("netns-{name}"))
        .spawn(move || -> Result<T, NetnsError> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetnsError::Enter {
                    netns: name.clone(),
                    message: e.to_string(),
                }
            })?;
            f().map_err(|e| NetnsError::Enter {
                netns: name,
                message: e.to_string(),
            })
        })
        .map_err(io_err(&path))?;
    handle.join().map_err(|_| NetnsError::Enter {
        netns: netns.to_string(),
        message: "the thread panicked".into(),
    })?
}

/// Lists the network namespaces whose name starts with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Kills (SIGKILL) every process whose network namespace is `name` (`ip netns pids`), never
/// this process. Returns the pids killed.
pub(crate) fn kill_processes(name: &str) -> Vec<i32> {
    let own = std::process::id();
    let pids = command("ip", &["netns", "pids", name], None).unwrap_or_default();
    pids.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| u32::try_from(p).is_ok_and(|p| p != own))
        .filter(|&p| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGKILL).is_ok()
        })
        .collect()
}

/// Deletes network namespaces (ignoring those already gone) after killing the processes in
/// them; returns the first failure.
pub fn delete(names: &[String]) -> Result<(), NetnsError> {
    let mut first = None;
    for name in names {
        if !Path::new(NETNS_DIR).join(name).exists() {
            continue;
        }
        let killed = kill_processes(name);
        if !killed.is_empty() {
            tracing::debug!(netns = %name, ?killed, "killed processes left in a lab namespace");
        }
        if let Err(err) = command("ip", &["netns", "delete", name], None) {
            tracing::warn!(%err, "cannot delete a lab namespace");
            first.get_or_insert(err);
        }
    }
    first.map_or(Ok(()), Err)
}

/// The identity of one lab run, alive while this value (its lock) is.
#[derive(Debug)]
pub(crate) struct RunLock {
    id: String,
    path: PathBuf,
    _lock: Flock<File>,
}

impl RunLock {
    /// Takes a fresh run id (`<pid>n<k>`) and its lock, then removes whatever a dead run with
    /// the same id left (pid reuse).
    pub(crate) fn acquire() -> Result<RunLock, NetnsError> {
        use std::os::unix::fs::MetadataExt;
        let dir = Path::new(LOCK_DIR);
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let pid = std::process::id();
        let mut k = 0u32;
        while k < 10_000 {
            let id = format!("{pid}n{k}");
            let path = dir.join(format!("{id}.lock"));
            let file = File::options()
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            let Ok(lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                k += 1; // held by a live run
                continue;
            };
            // A concurrent clear_leftovers may have removed the path between open and lock:
            // the lock counts only if the path still names the locked file.
            let same = match (lock.metadata(), std::fs::metadata(&path)) {
                (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                _ => false,
            };
            if !same {
                continue;
            }
            let run = RunLock {
                id,
                path,
                _lock: lock,
            };
            delete(&list(&run.prefix()))?;
            return Ok(run);
        }
        Err(NetnsError::Enter {
            netns: format!("{PREFIX}{pid}"),
            message: "no free run id".into(),
        })
    }

    /// The run id, e.g. `4242n0`.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The prefix of this run's namespaces: `npo-lab-<id>-`.
    pub(crate) fn prefix(&self) -> String {
        format!("{PREFIX}{}-", self.id)
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes what killed runs left behind: the namespaces of every run whose lock is free
/// (deleting a namespace also removes its veths, routes and nftables tables). Returns the
/// namespaces removed.
pub(crate) fn clear_leftovers() -> Result<Vec<String>, NetnsError> {
    let mut removed = Vec::new();
    let mut runs: Vec<String> = list(PREFIX)
        .iter()
        .filter_map(|n| n[PREFIX.len()..].split('-').next().map(str::to_string))
        .collect();
    if let Ok(dir) = std::fs::read_dir(LOCK_DIR) {
        runs.extend(
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter_map(|n| n.strip_suffix(".lock").map(str::to_string)),
        );
    }
    runs.sort();
    runs.dedup();
    for run in runs {
        let lock_path = Path::new(LOCK_DIR).join(format!("{run}.lock"));
        let dead = match File::options().write(true).open(&lock_path) {
            // Taking the lock proves no live run holds it.
            Ok(file) => Flock::lock(file, FlockArg::LockExclusiveNonblock).is_ok(),
            Err(_) => true,
        };
        if !dead {
            continue;
        }
        let names = list(&format!("{PREFIX}{run}-"));
        tracing::info!(
            run,
            namespaces = names.len(),
            "removing the leftovers of a killed lab run"
        );
        delete(&names)?;
        removed.extend(names);
        let _ = std::fs::remove_file(&lock_path);
    }
    Ok(removed)
}
