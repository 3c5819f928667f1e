//! The guest booted in qemu (TCG) with its console read line by line, until the command's exit
//! mark or the timeout.
use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::Guest;

/// Under TCG a test run is 10-20× slower than here; past this the guest is stopped.
const VM_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// What the guest's init prints last: CMD's exit status.
const EXIT_MARK: &str = "TCPQ_VM_EXIT=";

/// Boots the guest and echoes its console; CMD's exit status and the console's lines.
pub(super) fn boot(guest: &Guest, initrd: &Path) -> Result<(i32, Vec<String>)> {
    eprintln!(
        "xtask: vm: booting {} under TCG (/dev/kvm here is kvm-pvm: stock kernels hang on it)…",
        guest.release
    );
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "4G",
        ])
        .args(["-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(&guest.vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 panic=-1 quiet rdinit=/init",
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("start qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut console = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            eprintln!("vm| {}", line.trim_end());
            if let Some(code) = line.trim().strip_prefix(EXIT_MARK) {
                let _ = tx.send(code.trim().parse::<i32>().unwrap_or(126));
            }
            console.push(line);
        }
        console
    });
    let started = Instant::now();
    let status = loop {
        if let Ok(code) = rx.try_recv() {
            break Some(code);
        }
        if child.try_wait()?.is_some() {
            // The mark may still be in the pipe.
            break rx.recv_timeout(Duration::from_secs(1)).ok();
        }
        if started.elapsed() > VM_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the guest did not finish within {VM_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(200));
    };
    // poweroff -f follows the mark; give qemu a moment, then make sure it is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let console = reader.join().unwrap_or_default();
    let status = status.context(
        "the guest stopped before reporting the command's status (see its console above)",
    )?;
    Ok((status, console))
}
