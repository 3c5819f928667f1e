//! Conntrack: what the drop lines of `trace conntrack` and `trace drops` share. Pure.
use serde_json::{Value, json};

use super::decode::{NfDrop, proto_name};
use crate::snapshot::container::Identity;

/// One drop's JSON line: the fields both commands write (when, where, who, which packet) and
/// the command's `own` (its event name and fields).
pub fn drop_json(
    e: &NfDrop,
    ts: String,
    pid: u32,
    comm: &str,
    id: &Identity,
    own: Value,
) -> String {
    let mut line = json!({
        "ts": ts, "count": 1, "netns": e.netns,
        "pid": (pid != 0).then_some(pid), "comm": (!comm.is_empty()).then_some(comm),
        "pod": id.pod, "container": id.container,
        "direction": e.direction(), "proto": proto_name(e.proto),
        "saddr": e.saddr.to_string(), "sport": e.sport, "daddr": e.daddr.to_string(), "dport": e.dport,
    });
    if let (Some(line), Value::Object(own)) = (line.as_object_mut(), own) {
        line.extend(own);
    }
    line.to_string()
}

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

    #[test]
    fn drop_json_lines_carry_the_shared_fields_and_the_commands_own() {
        let e = NfDrop {
            netfilter: true,
            reason: 0,
            ts_ns: 5,
            netns: 7,
            tgid: 0,
            comm: String::new(),
            proto: 6,
            saddr: "10.0.0.1".parse().unwrap(),
            sport: 40000,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: 80,
            has_ct: true,
            outbound: false,
            tcp_flags: 2,
        };
        let pod = Identity::new(Some("shop/api-0".into()), None);
        let line = drop_json(
            &e,
            "T".into(),
            0,
            "",
            &pod,
            json!({"event": "drop", "count": 1}),
        );
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "drop");
        assert_eq!(v["ts"], "T");
        assert_eq!(v["direction"], "in");
        assert_eq!(v["pid"], Value::Null);
        assert_eq!(v["pod"], "shop/api-0");
        assert_eq!(v["daddr"], "10.0.0.2");
        assert_eq!(v["dport"], 80);
    }
}
