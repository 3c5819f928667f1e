//! Processes: who holds a socket (by inode), pid/name lookup for `--pid`, comm.
use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Result, bail};
use procfs::process::{FDTarget, Process};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
}

/// The soft RLIMIT_NOFILE of `pid`; None when unreadable or unlimited.
pub fn nofile_limit(pid: u32) -> Option<u64> {
    match Process::new(pid as i32)
        .ok()?
        .limits()
        .ok()?
        .max_open_files
        .soft_limit
    {
        procfs::process::LimitValue::Value(n) => Some(n),
        procfs::process::LimitValue::Unlimited => None,
    }
}

/// Whether process `pid` exists (its /proc entry; an exited one's kernel state can go).
pub fn alive(pid: u32) -> bool {
    Process::new(pid as i32).is_ok()
}

pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

/// For each socket inode in `wanted`, the processes holding a descriptor for it.
/// Processes we may not inspect are skipped (not root: only our own show up).
pub fn socket_owners(wanted: &HashSet<u64>) -> HashMap<u64, BTreeSet<Owner>> {
    let mut out: HashMap<u64, BTreeSet<Owner>> = HashMap::new();
    if wanted.is_empty() {
        return out;
    }
    let Ok(all) = procfs::process::all_processes() else {
        return out;
    };
    for p in all.flatten() {
        let Ok(fds) = p.fd() else { continue };
        let mut comm_cache: Option<String> = None;
        for fd in fds.flatten() {
            if let FDTarget::Socket(inode) = fd.target
                && wanted.contains(&inode)
            {
                let pid = p.pid as u32;
                let c = comm_cache
                    .get_or_insert_with(|| comm(pid).unwrap_or_else(|| "?".into()))
                    .clone();
                out.entry(inode).or_default().insert(Owner { pid, comm: c });
            }
        }
    }
    out
}

/// Socket inode behind `/proc/<pid>/fd/<fd>`.
pub fn fd_socket_inode(pid: u32, fd: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// A `--pid` argument: a pid, or a process name matched against comm and the executable name.
pub fn resolve_pid_arg(arg: &str) -> Result<Vec<Owner>> {
    let arg = arg.trim();
    if arg.is_empty() {
        bail!("--pid needs a pid or a process name");
    }
    if let Ok(pid) = arg.parse::<u32>() {
        if pid == 0 {
            bail!("invalid --pid 0: give a process id or name");
        }
        return match comm(pid) {
            Some(c) => Ok(vec![Owner { pid, comm: c }]),
            None => bail!("no process with pid {pid} (check `ps -p {pid}`)"),
        };
    }
    let mut found = Vec::new();
    if let Ok(all) = procfs::process::all_processes() {
        for p in all.flatten() {
            let pid = p.pid as u32;
            if matches_name(&p, arg) {
                found.push(Owner {
                    pid,
                    comm: comm(pid).unwrap_or_default(),
                });
            }
        }
    }
    if found.is_empty() {
        bail!("no process named '{arg}' is running (check `pgrep -a {arg}`)");
    }
    found.sort();
    Ok(found)
}

fn matches_name(p: &Process, name: &str) -> bool {
    let pid = p.pid as u32;
    if comm(pid).as_deref() == Some(name) {
        return true;
    }
    // comm is truncated to 15 bytes and workers rename themselves ("php-fpm: pool www"):
    // also try argv[0]'s base name and the executable's.
    if let Ok(cmd) = p.cmdline()
        && let Some(argv0) = cmd.first()
    {
        let base = argv0.rsplit('/').next().unwrap_or(argv0);
        let first_word = base.split([' ', ':']).next().unwrap_or(base);
        if base == name || first_word == name {
            return true;
        }
    }
    if let Ok(exe) = p.exe()
        && exe.file_name().and_then(|f| f.to_str()) == Some(name)
    {
        return true;
    }
    false
}

/// Syscall numbers of accept(2) and accept4(2) on this architecture.
#[cfg(target_arch = "x86_64")]
const ACCEPT_SYSCALLS: [u64; 2] = [43, 288];
#[cfg(target_arch = "aarch64")]
const ACCEPT_SYSCALLS: [u64; 2] = [202, 242];
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const ACCEPT_SYSCALLS: [u64; 2] = [u64::MAX, u64::MAX];

/// Parses /proc/PID/task/TID/syscall: the listening fd when the thread sits in accept().
pub fn accept_fd_of(syscall_line: &str) -> Option<u32> {
    let mut it = syscall_line.split_whitespace();
    let nr: u64 = it.next()?.parse().ok()?;
    if !ACCEPT_SYSCALLS.contains(&nr) {
        return None;
    }
    let arg0 = it.next()?;
    u32::from_str_radix(arg0.trim_start_matches("0x"), 16).ok()
}

/// Threads of `pid` blocked in accept()/accept4() on the socket with `inode` (idle acceptors).
/// Needs ptrace access to the process (root, or the same user).
pub fn threads_in_accept(pid: u32, inode: u64) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    let mut n = 0;
    for t in tasks.flatten() {
        let Ok(line) = std::fs::read_to_string(t.path().join("syscall")) else {
            continue;
        };
        if let Some(fd) = accept_fd_of(&line)
            && fd_socket_inode(pid, fd) == Some(inode)
        {
            n += 1;
        }
    }
    n
}

/// The cgroup of `pid` when it is not the root: the v2 path (e.g.
/// `/system.slice/docker-<id>.scope`), or on a v1/hybrid host the `name=systemd` one (Docker
/// and systemd place containers there). None for host processes and gone processes.
pub fn cgroup_path(pid: u32) -> Option<String> {
    let groups = Process::new(pid as i32).ok()?.cgroups().ok()?.0;
    let v2 = groups.iter().find(|g| g.hierarchy == 0);
    let systemd = groups
        .iter()
        .find(|g| g.controllers.iter().any(|c| c == "name=systemd"));
    v2.into_iter()
        .chain(systemd)
        .map(|g| g.pathname.clone())
        .find(|p| p != "/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_arg_errors_are_one_line() {
        let e = resolve_pid_arg("no-such-process-tcpq")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no process named 'no-such-process-tcpq'"), "{e}");
        assert!(!e.contains('\n'));
        let e = resolve_pid_arg("4194399").unwrap_err().to_string();
        assert!(e.contains("no process with pid"), "{e}");
        assert!(resolve_pid_arg("0").is_err());
    }

    #[test]
    fn accept_syscall_line() {
        #[cfg(target_arch = "x86_64")]
        {
            assert_eq!(
                accept_fd_of("288 0x3 0x0 0x0 0x80800 0x0 0x0 0x7ffc 0x7f00"),
                Some(3)
            );
            assert_eq!(
                accept_fd_of("43 0xa 0x0 0x0 0x0 0x0 0x0 0x7ffc 0x7f00"),
                Some(10)
            );
            assert_eq!(
                accept_fd_of("0 0x3 0x0 0x0 0x0 0x0 0x0 0x7ffc 0x7f00"),
                None
            );
        }
        assert_eq!(accept_fd_of("running"), None);
        assert_eq!(accept_fd_of(""), None);
    }

    #[test]
    fn finds_self_and_own_socket() {
        let me = std::process::id();
        let owners = resolve_pid_arg(&me.to_string()).unwrap();
        assert_eq!(owners[0].pid, me);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd as _;
        let inode = fd_socket_inode(me, l.as_raw_fd() as u32).expect("socket inode");
        let map = socket_owners(&HashSet::from([inode]));
        assert!(map[&inode].iter().any(|o| o.pid == me));
    }
}
