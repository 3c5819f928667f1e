//! Tracepoint record layouts from tracefs `events/<category>/<name>/format`.
use std::{collections::HashMap, path::Path};

use anyhow::{Context as _, Result, anyhow};

/// Field name → byte offset, parsed from a tracepoint `format` file.
pub fn parse_format(text: &str) -> HashMap<String, u32> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let mut decl = None;
        let mut offset = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(o) = part.strip_prefix("offset:") {
                offset = o.trim().parse::<u32>().ok();
            } else if decl.is_none() && !part.is_empty() && !part.contains(':') {
                decl = Some(part);
            }
        }
        let (Some(decl), Some(offset)) = (decl, offset) else {
            continue;
        };
        // The name is the last identifier of the declaration, before any array suffix.
        let name = decl
            .split('[')
            .next()
            .unwrap_or(decl)
            .split_whitespace()
            .last()
            .unwrap_or("")
            .trim_start_matches('*');
        if !name.is_empty() {
            fields.insert(name.to_string(), offset);
        }
    }
    fields
}

pub fn field_offset(tracefs: &Path, category: &str, event: &str, field: &str) -> Result<u32> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(event)
        .join("format");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("read tracepoint format {}", path.display()))?;
    parse_format(&text)
        .get(field)
        .copied()
        .ok_or_else(|| anyhow!("tracepoint {category}:{event} has no field `{field}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTEN: &str = "name: sys_enter_listen\nID: 1234\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int fd;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int backlog;\toffset:24;\tsize:8;\tsigned:0;\n\nprint fmt: \"fd: 0x%08lx\"\n";

    #[test]
    fn listen_format() {
        let f = parse_format(LISTEN);
        assert_eq!(f["fd"], 16);
        assert_eq!(f["backlog"], 24);
        assert_eq!(f["__syscall_nr"], 8);
    }

    #[test]
    fn arrays_and_pointers() {
        let f = parse_format(
            "\tfield:__u8 saddr[4];\toffset:28;\tsize:4;\tsigned:0;\n\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:garbage\n",
        );
        assert_eq!(f["saddr"], 28);
        assert_eq!(f["skbaddr"], 8);
        assert_eq!(f.len(), 2);
    }
}
