//! Explaining why the kernel refused a program: the verifier log's own reason and stack
//! depths, and the errno, in one line.
use aya::programs::ProgramError;

/// The verifier's own reason for a refusal and its stack depths: the last line of the log that
/// is not one of the statistics it prints after every verdict ("processed N insns", "stack
/// depth A+B", "verification time"), then the stack depths (a refusal for the combined stack
/// of a call chain — 512 bytes before private stacks in 6.13 — needs both to be read).
fn verifier_reason(log: &str) -> Vec<&str> {
    const STATISTICS: &[&str] = &["processed ", "stack depth ", "verification time "];
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let is_statistic = |l: &&str| STATISTICS.iter().any(|p| l.starts_with(p));
    let mut out: Vec<&str> = lines
        .iter()
        .rev()
        .find(|l| !is_statistic(l))
        .copied()
        .into_iter()
        .collect();
    out.extend(
        lines
            .iter()
            .find(|l| l.starts_with("stack depth "))
            .copied(),
    );
    out
}

/// Explains a program load/attach failure in one line, with the verifier's last words.
pub fn explain_program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail = verifier_reason(&log);
            let why = match io_error.raw_os_error() {
                Some(libc::EPERM) => {
                    " (EPERM: not allowed on this kernel, e.g. lockdown or missing CAP_BPF/CAP_PERFMON)"
                }
                Some(libc::EINVAL) => " (EINVAL: program type or helper not supported)",
                Some(libc::EACCES) => " (EACCES: rejected by the verifier)",
                _ => "",
            };
            if tail.is_empty() {
                format!("kernel refused to load it: {io_error}{why}")
            } else {
                format!(
                    "kernel refused to load it: {io_error}{why}; verifier: {}",
                    tail.join(" / ")
                )
            }
        }
        other => {
            let mut s = format!("{other}");
            let mut src = std::error::Error::source(other);
            while let Some(inner) = src {
                s.push_str(&format!(": {inner}"));
                src = inner.source();
            }
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_reason_skips_the_statistics() {
        let log = "0: (bf) r6 = r1\n...\ncombined stack size of 3 calls is 528. Too large\nverification time 3129 usec\nstack depth 128+400+0\nprocessed 13871 insns (limit 1000000) max_states_per_insn 14\n";
        assert_eq!(
            verifier_reason(log),
            [
                "combined stack size of 3 calls is 528. Too large",
                "stack depth 128+400+0"
            ]
        );
        assert_eq!(
            verifier_reason("R1 invalid mem access 'scalar'\n"),
            ["R1 invalid mem access 'scalar'"]
        );
        assert!(verifier_reason("").is_empty());
    }
}
