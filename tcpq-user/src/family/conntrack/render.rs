//! Conntrack: what the drop lines of `trace conntrack` and `trace drops` share. Pure.
use crate::snapshot::container::Identity;

/// The PROCESS column of a drop line: `pid/comm` and its pod and container, `-` when unknown.
pub fn process_text(pid: u32, comm: &str, id: &Identity) -> String {
    if pid != 0 {
        format!("{pid}/{comm}{}", id.suffix())
    } else {
        "-".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_lines_name_the_pod_and_container() {
        let pod = Identity::new(Some("shop/api-0".into()), Some("app".into()));
        assert_eq!(
            process_text(12, "curl", &pod),
            "12/curl  pod shop/api-0, container app"
        );
        assert_eq!(process_text(12, "curl", &Identity::default()), "12/curl");
        assert_eq!(process_text(0, "", &pod), "-");
    }
}
